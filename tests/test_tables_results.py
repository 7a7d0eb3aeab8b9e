"""Renderers of examples/tables_results.py, on small hand-built JSONs, and the published copies they read."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tables() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tables_results", ROOT / "examples" / "tables_results.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _train_log() -> dict[str, Any]:
    return {
        "config": {
            "steps": 1000,
            "batch_size": 8,
            "lr": 0.001,
            "warmup": 50,
            "weight_decay": 0.01,
            "seed": 3,
            "threads": 2,
            "ckpt_every": 250,
            "variant": "v1",
            "workers": 1,
            "compile": True,
            "flush_denormal": False,
        },
        "losses": [[0, 4.5], [25, 2.0], [999, 0.1234]],
        "train_seconds": 1234.4,
        "checkpoint_digests": [[250, "abcdef0123456789"], [500, "1111"], [750, "2222"]],
        "final_digest": "0123456789abcdef0123",
        "torch": "2.13.0+cpu",
        "parameters": 2_768_640,
    }


def test_training_block_by_hand() -> None:
    text = "\n".join(_tables().training("m-v1")(_train_log()))
    assert "`m-v1`" in text and "variant `v1`" in text
    assert "1,000 steps at batch 8" in text and "seed 3" in text and "torch 2.13.0+cpu" in text
    assert "`torch.compile` on, denormal flushing off, 1 prefetch worker;" in text
    assert "2,768,640 parameters (2.77 M)" in text
    assert "**1,234 s in the training loop**" in text and "1.23 s per step" in text
    assert "**0.123** at the last logged step (999; logged every 25 steps)" in text
    assert "3 checkpoint weight digests, every 250 steps (step 250: `abcdef01…`)" in text
    assert "`0123456789abcdef…`" in text


def test_reproducibility_block_by_hand() -> None:
    tr = _tables()
    d = {
        "train_log": "run/train_log.json",
        "date": "2026-12-01",
        "torch": "2.13.0+cpu",
        "threads": 2,
        "steps": 500,
        "config": {"threads": 2},
        "checkpoints": [
            {"step": 250, "recorded": "aaaaaaaa11", "rerun": "aaaaaaaa11", "equal": True},
            {"step": 500, "recorded": "bbbbbbbb22", "rerun": "bbbbbbbb22", "equal": True},
        ],
        "all_equal": True,
        "seconds": 903.6,
    }
    (line,) = tr.reproducibility(d)
    assert line.startswith("`check_reproducibility.py run/train_log.json --steps 500` on 2026-12-01")
    assert "(torch 2.13.0+cpu, 2 threads; 904 s)" in line
    assert "step 250: recorded `aaaaaaaa…`, rerun `aaaaaaaa…` (equal)" in line
    assert line.endswith("bit for bit equal.")
    d |= {"transformers": "5.0", "cpu": "X (x86_64)", "recorded_environment": {"torch": "2.13.0+cpu"}}
    (line,) = tr.reproducibility(d)
    assert "(torch 2.13.0+cpu, transformers 5.0, CPU X (x86_64), 2 threads; 904 s)" in line
    assert line.endswith(
        "bit for bit equal. The recorded run's environment: torch 2.13.0+cpu (transformers, cpu not recorded)."
    )
    del d["recorded_environment"], d["transformers"], d["cpu"]
    d["checkpoints"][1] |= {"rerun": "cccccccc33", "equal": False}
    d["all_equal"] = False
    for k in ("date", "torch", "threads", "steps", "train_log"):
        del d[k]  # a JSON of the script before it recorded them
    (line,) = tr.reproducibility(d)
    assert "(**different**)" in line and line.endswith("**not equal**.") and "--steps 500`" in line


def test_ray_block_says_when_and_how_loaded() -> None:
    d = {
        "model": "bundled shapes-qwen25vl",
        "n_examples": 16,
        "dataset": "shapes:validation",
        "k": 32,
        "n_subsets": 32,
        "shard_size": 4,
        "nodes": 2,
        "cpus_per_node": 1,
        "torch_threads_per_replica": 1,
        "machine_cpus": 2,
        "quick": True,
        "date": "2026-12-01",
        "load_average_start": 0.42,
        "local_seconds": 15.7,
        "local_examples_per_hour": 3665.0,
        "ray": [
            {
                "workers": 1,
                "seconds": 27.3,
                "examples_per_hour": 2110.0,
                "examples_per_hour_steady": 3260.0,
                "max_abs_diff_vs_local": 0.0,
            },
            {
                "workers": 2,
                "seconds": 26.7,
                "examples_per_hour": 2157.0,
                "examples_per_hour_steady": 4446.0,
                "max_abs_diff_vs_local": 0.0,
            },
        ],
        "scaling_efficiency": 0.511,
        "scaling_efficiency_steady": 0.682,
    }
    lines = _tables().ray(d)
    assert "(quick run); measured on 2026-12-01, 1-minute load average 0.4 at the start." in lines[0]
    assert "| Ray, 2 workers | 26.7 s | 2,157 | 4,446 | 0.0 |" in lines
    assert lines[-1].startswith("Scaling efficiency") and "0.51 end to end, 0.68 once" in lines[-1]


@pytest.mark.parametrize(
    ("published", "bundled"),
    [("base", "shapes-qwen25vl"), ("v1", "shapes-qwen25vl-v1"), ("v2", "shapes2-qwen25vl")],
)
def test_the_published_train_logs_are_the_bundled_ones(published: str, bundled: str) -> None:
    """docs/results/train_log_*.json are copies of the train_log.json each bundled model ships."""
    copy = json.loads((ROOT / "docs" / "results" / f"train_log_{published}.json").read_text())
    assert copy == json.loads((ROOT / "attrib" / "shapes" / "bundled" / bundled / "train_log.json").read_text())


def test_v2_eval_block_by_hand() -> None:
    fam = {
        "n": 2,
        "accuracy": 0.5,
        "blank_image_accuracy": 0.0,
        "object_accuracy": 1.0,
        "position_accuracy": 0.5,
        "chain_length_median": 12.0,
        "reference_chain_length_median": 11.0,
    }
    d = {
        "model": "shapes2-qwen25vl",
        "benchmark": "shapes2",
        "split": "test",
        "start": 0,
        "n": 4,
        "accuracy": 0.75,
        "accuracy_ci": [0.5, 1.0],
        "blank_image_accuracy": 0.25,
        "blank_image_accuracy_ci": [0.0, 0.5],
        "n_failures": 1,
        "failure_kinds": {"hallucination": 1},
        "parse_rate": 1.0,
        "seconds_per_example": 0.08,
        "object_accuracy": 0.9,
        "position_accuracy": 0.8,
        "object_mentions": 40,
        "positioned_mentions": 36,
        "chain_length_median": 12.0,
        "reference_chain_length_median": 11.0,
        "per_family": {"count": fam, "hop": {**fam, "chain_length_median": 8.0}},
    }
    text = "\n".join(_tables().v2_eval(d))
    assert "`shapes2:test` 0–3 (n = 4): accuracy **0.750**" in text
    assert "| count | 2 | 0.500 | 0.000 | 1.000 | 0.500 | 12 (11) |" in text
    assert "accuracy in [0.6, 0.92]: met" in text and "blank-image accuracy at least 0.25 lower: met (0.500)" in text
    assert "position words ≥ 0.85: **not met**" in text and "object descriptions ≥ 0.85: met" in text
    # One long-chain family of two, and no reasoning errors among the failures.
    assert "median chain ≥ 10 on at least two families: **not met** (count)" in text
    assert "each ≥ 10 % of failures: **not met**" in text


def test_regions_faithfulness_block_by_hand() -> None:
    def row(method: str, k: int, lds: float) -> dict[str, Any]:
        return {
            "region_method": method,
            "k": k,
            "n_train": 88,
            "lds": {"value": lds, "ci_low": lds - 0.05, "ci_high": lds + 0.05, "n": 113},
            "r2": {"value": 0.25},
            "top5_drop_normalized": {"value": 1.1},
            "pointing": {"value": 0.5},
        }

    d = {"interval_unit": "example", "region_comparison": [row("blocks", 16, 0.5), row("color", 32, 0.427)]}
    lines = _tables().regions_faithfulness(d)
    assert lines[0].startswith("Training examples per configuration: 88; held-out spans scored: 113;")
    assert "resampling examples (each with all its spans)" in lines[0]
    rows = [x for x in lines if x.startswith("| ") and not x.startswith("| regions")]
    assert rows == [  # colour first, whatever the JSON's order
        "| colour (semantic) | 32 | 0.427 [0.38, 0.48] | 0.250 | 1.100 | 0.50 |",
        "| random blocks | 16 | 0.500 [0.45, 0.55] | 0.250 | 1.100 | 0.50 |",
    ]
    d["interval_unit"] = "span"
    assert "resampling spans." in _tables().regions_faithfulness(d)[0]


def test_copy_attention_in_the_decay_block_by_hand() -> None:
    ca = {
        "copy_mass": [0.01, 0.05],
        "source_mass": [0.02, 0.04],
        "n_tokens": 1078,
        "dataset": "shapes:test",
        "n_examples": 30,
    }
    lines = _tables()._copy_attention(ca)
    assert "1,078 tokens generated after at least one copy (`shapes:test` 0–29," in lines[0]
    assert "| 0 | 0.010 | 0.020 | 0.50 |" in lines and "| 1 | 0.050 | 0.040 | 1.25 |" in lines
    assert lines[-1] == "More attention to the copies than to their sources in layer 1; less in layer 0."


def test_trajectories_block_shows_power_and_length_adjusted_from_the_published_json() -> None:
    d = json.loads((ROOT / "docs" / "results" / "trajectories_v2.json").read_text())
    text = "\n".join(_tables().trajectories(d))
    pw = d["power"]["failure"]
    assert f"| all failures | {int(pw['n_success'])} / {int(pw['n_failure'])} | {pw['power_simulated']:.3f} |" in text
    adj = d["length_adjusted"]["tortuosity"]["reasoning_error"]
    assert f"| tortuosity | reasoning error | {int(adj['n'])} | {adj['coef_metric']:+.2f}" in text
    # an older JSON without the blocks still renders, without them
    old = {k: v for k, v in d.items() if k not in ("power", "length_adjusted")}
    text_old = "\n".join(_tables().trajectories(old))
    assert "Power" not in text_old and "equal chain length" not in text_old and "tortuosity" in text_old


def test_faithfulness_protocol_block_from_the_published_json() -> None:
    d = json.loads((ROOT / "docs" / "results" / "faithfulness.json").read_text())
    text = "\n".join(_tables().faithfulness_protocol(d))
    obj = d["populations"]["object"]
    est = obj["methods"]["estimator"]["lds"]["value"]
    assert f"object (n = {obj['n_spans']:,})" in text and f"{est:.3f} [" in text
    pr = d["paired"]["all"]["leave_one_out"]
    assert "| leave-one-out | " + f"{pr['value']:+.3f}".replace("-", "−") in text
    assert "deletion area" in text and "Estimator refit with seeds" in text
    # a JSON without the protocol's extras renders nothing rather than failing
    bare = {"methods": d["methods"], "n_examples": 1, "n_spans": 1}
    assert _tables().faithfulness_protocol({**bare, "methods": {}}) == []


def test_collection_summary_and_its_block_by_hand(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("collection_summary", ROOT / "examples" / "collection_summary.py")
    assert spec is not None and spec.loader is not None
    cs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cs)
    col = tmp_path / "col"
    col.mkdir()
    shards = []
    # two shards: 3 examples (2 right; 2 + 1 + 0 spans) and 1 example (wrong; 4 spans); one example failed
    for name, recs in (("shard-00000", [(2, True), (1, True), (0, False)]), ("shard-00001", [(4, False)])):
        examples = [{"spans": [[0, 1]] * n, "correct": ok} for n, ok in recs]
        (col / f"{name}.json").write_text(json.dumps({"examples": examples}))
        shards.append({"name": name, "n_examples": len(recs), "n_failed": 0})
    cfg = {"model": "m", "dataset": "shapes2:test", "start": 10, "n": 5, "k": 8, "n_subsets": 64, "loo": True}
    cfg |= {"region_method": "color", "ablation_mode": "mask", "max_new_tokens": 256}
    manifest = {"shards": shards, "config": cfg, "failures": [{"uid": "x", "error": "e"}], "complete": True}
    manifest["created"] = "2026-11-30T10:00:00"
    (col / "manifest.json").write_text(json.dumps(manifest))
    s = cs.summarise(col)
    assert (s["n_examples"], s["n_spans"], s["n_failed"]) == (4, 7, 1)
    assert s["correct"] == pytest.approx(0.5) and s["loo"] is True and s["complete"] is True
    assert s["mb_on_disk"] == pytest.approx(sum(f.stat().st_size for f in col.iterdir()) / 2**20)
    out = tmp_path / "c.json"
    assert cs.main([str(col), "--json", str(out)]) == 0
    lines = _tables().collections(json.loads(out.read_text()))
    assert "| `shapes2:test` 10–14 | m | 4 | 7 | 0.500 | 1 | 64 | yes | 0 |" in lines
    want = "All with `color` regions, K = 8, `mask` ablation, up to 256 generated tokens; created 2026-11-30."
    assert lines[-1] == want
    manifest["complete"] = False
    (col / "manifest.json").write_text(json.dumps(manifest))
    assert "**not all complete**" in _tables().collections({"collections": [cs.summarise(col)]})[-1]


def test_latent_summary_and_its_block_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("latent_summary", ROOT / "examples" / "latent_summary.py")
    assert spec is not None and spec.loader is not None
    ls = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ls)
    out, runs = tmp_path / "out", tmp_path / "runs"
    out.mkdir()
    # a pool of 4: sampled accuracies 0.25, 0.5, 0.75, 1 -> mean 0.625, two at most 0.5
    sel = {"accuracy": {"train-0": 0.25, "train-1": 0.5, "train-2": 0.75, "train-3": 1.0}, "samples": 4}
    (out / "selection.json").write_text(json.dumps(sel | {"base": "/x/shapes2-qwen25vl/", "benchmark": "shapes2"}))
    base = {"accuracy": 0.7, "accuracy_ci": [0.6, 0.8], "parse_rate": 1.0, "n": 10, "split": "test", "start": 0}
    (out / "base-eval.json").write_text(json.dumps(base | {"per_family": {}}))
    kinds = ("zeros", "noise", "mean", "shuffle")
    for seed, (acc, d0) in enumerate(((0.6, -0.1), (0.8, 0.1))):
        iv = {"none": {"accuracy": acc, "parse_rate": 1.0, "delta": 0.0, "delta_ci": [0.0, 0.0], "n_latents": 8}}
        for k in kinds:
            iv[k] = {"accuracy": acc + d0, "parse_rate": 1.0, "delta": d0, "delta_ci": [d0 - 0.05, d0 + 0.05]}
            iv[k]["n_latents"] = 8
        probe = {"n": 10, "mode": "raw", "interventions": iv, "blocks_per_example": 1.5 + seed, "correct": {}}
        probe["latent_norms"] = {"n": 8, "latent_norm": 2.0, "ratio_to_image_input": 0.5, "ratio_to_text_input": 4.0}
        (out / f"raw-{seed}.json").write_text(json.dumps(probe))
        (runs / f"raw-{seed}").mkdir(parents=True)
        log = {"seconds": 100.4 + seed, "n_hard": 2, "config": {"steps": 300, "batch_size": 8}}
        (runs / f"raw-{seed}" / "latent_train_log.json").write_text(json.dumps(log))
    table = {"raw": {"seeds": 2, "accuracy_mean": 0.7, "accuracy_std": 0.1414, "accuracy_per_seed": [0.6, 0.8]}}
    table["raw"] |= {"ratio_to_image_input": 0.5, "ratio_to_text_input": 4.0} | {f"delta_{k}": 0.0 for k in kinds}
    (out / "table.json").write_text(json.dumps(table))
    norms = {"model": "/x/shapes2-qwen25vl", "n_inputs": 16, "n_layers": 6, "ratios": {"text": 12.0}}
    norms["types"] = {"text": {"mean_norm": [1.5, 3.0, 18.0], "n_tokens": 100}}
    (out / "norms-base.json").write_text(json.dumps(norms))
    att = {"model": "m", "mode": "raw", "n_examples": 3, "n_spans": 30, "latent_share_mean": 0.05}
    att |= {"latent_share_spans_with_latents": 0.2, "latent_share_later_spans": 0.1}
    att |= {"n_spans_with_latents": 5, "n_later_spans": 12}
    (out / "attribution-raw.json").write_text(json.dumps(att))
    (out / "not-a-probe-1.json").write_text("{}")  # ignored: not <mode>-<seed>.json
    dest = tmp_path / "latent.json"
    assert ls.main(["--out-dir", str(out), "--runs", str(runs), "--json", str(dest)]) == 0
    d = json.loads(dest.read_text())
    assert d["selection"] == {"pool_n": 4, "samples": 4, "mean_sampled_accuracy": 0.625, "n_hard": 2}
    assert [(r["mode"], r["seed"]) for r in d["runs"]] == [("raw", 0), ("raw", 1)]
    assert "correct" not in json.dumps(d["runs"])  # the per-example outcomes stay out
    lines = _tables().latent(d)
    text = "\n".join(lines)
    assert "mean sampled accuracy 0.625, 2 of 4 examples (50%) at most 0.5" in text
    assert "`shapes2:test` 0–9 (n = 10); the base model answers 0.700 [0.600, 0.800]" in text
    # blocks per example: the mean of the seeds' 1.5 and 2.5
    assert "| raw | 2 | 0.700 ± 0.141 (0.600, 0.800) | 2.00 | 0.5 | 4 | +0.000 | +0.000 | +0.000 | +0.000 |" in lines
    assert "| raw-0 | 0.600 | −0.100 [−0.150, −0.050] |" in text and "| 100 s (300 steps × 8) |" in text
    assert "- base (`shapes2-qwen25vl`, 16 inputs): text 1.5 → 18 (ratio 12)." in lines
    assert "| raw | 30 (3 examples) | 0.050 | 0.200 (5 spans) | 0.100 (12 spans) |" in lines
    (out / "base-eval.json").unlink()
    assert ls.main(["--out-dir", str(out), "--runs", str(runs), "--json", str(dest)]) == 2
    assert "base-eval.json is missing" in capsys.readouterr().err
