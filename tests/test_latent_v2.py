"""The latent experiment on benchmark v2: traces, select -> train -> probe -> table -> attribution on a tiny v2
base, and the refusal of a selection, model or estimator of the other benchmark before any work starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import attrib
from attrib.cli import main
from attrib.shapes import latent_train
from attrib.shapes.latent_train import (
    LatentConfig,
    latent_budget,
    latent_trace,
    pool,
    sample_budget,
    save_selection,
    strip_latent,
    train_latent,
)
from attrib.shapes.model import ModelSize, bundled_model_path, model_benchmark
from attrib.shapes.pointing import target_cells
from attrib.shapes.train import TrainConfig, train
from attrib.shapes.v2 import Example2, make_example
from attrib.variants.latent.model import LATENT, LATENT_OPEN


def _one_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``argv``: it must exit 2 with exactly one ``error:`` line on stderr."""
    capsys.readouterr()
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_v2_latent_traces_and_budgets() -> None:
    canvases = set()
    for i in range(10):
        e = make_example("test", i)
        text, cells = latent_trace(e, n_latent=3)
        assert strip_latent(text) == e.target_text()
        objs = [s for s in e.question.sentences if s.kind == "object"]
        assert text.count(LATENT_OPEN) == len(objs) > 0 and len(cells) == 3 * len(objs)
        expect = []
        for s in objs:
            tc = target_cells(e.scene, s.objects[0])
            expect += [tc[j % len(tc)] for j in range(3)]
        assert cells == expect
        assert all(0 <= c < (e.scene.width // 28) * (e.scene.height // 28) for c in cells)
        canvases.add((e.scene.width, e.scene.height))
    assert len(canvases) > 1  # the v2 canvas mix, non-square canvases included
    assert (sample_budget("shapes"), latent_budget("shapes")) == (200, 240)  # the v1 runs' budgets, unchanged
    assert (sample_budget("shapes2"), latent_budget("shapes2"), latent_budget("shapes2", 2)) == (256, 340, 312)
    with pytest.raises(ValueError, match="unknown benchmark"):
        LatentConfig(benchmark="shapes3")
    exs = pool(LatentConfig(benchmark="shapes2", pool_n=3, pool_start=5))
    assert [e.uid for e in exs] == ["train-5", "train-6", "train-7"] and all(isinstance(e, Example2) for e in exs)
    assert not any(isinstance(e, Example2) for e in pool(LatentConfig(pool_n=2)))  # v1 stays the default


@pytest.fixture(scope="module")
def tiny_v2_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = TrainConfig.v2(steps=2, batch_size=2, size=ModelSize.tiny(), ckpt_every=0, warmup=1, workers=0, curriculum=0)
    out = tmp_path_factory.mktemp("latent_v2") / "base"
    train(cfg, out)
    return out


def test_v2_select_train_probe_table_attribution(
    tiny_v2_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert model_benchmark(tiny_v2_base) == "shapes2"
    seen: dict[str, Any] = {}
    real_sample, real_eval = latent_train.sampled_accuracy, latent_train.evaluate_latent

    def sample_spy(model: Any, proc: Any, exs: Any, **kw: Any) -> np.ndarray:
        seen["sample"] = {"exs": list(exs), **kw}
        return real_sample(model, proc, exs, **{**kw, "max_new_tokens": 8})  # the real sampling, shorter

    def eval_spy(model: Any, proc: Any, exs: Any, **kw: Any) -> dict[str, Any]:
        seen["probe"] = {"exs": list(exs), **kw}
        return real_eval(model, proc, exs, **{**kw, "max_new_tokens": 16})

    monkeypatch.setattr(latent_train, "sampled_accuracy", sample_spy)
    monkeypatch.setattr(latent_train, "evaluate_latent", eval_spy)
    base = str(tiny_v2_base)
    sel = tmp_path / "sel.json"
    common = ["--threads", "1"]
    assert (
        main(["latent", "select", "--base", base, "--pool-n", "3", "--samples", "1", "--out", str(sel), *common]) == 0
    )
    d = json.loads(sel.read_text())
    assert d["benchmark"] == "shapes2" and sorted(d["accuracy"]) == ["train-0", "train-1", "train-2"]
    assert all(isinstance(e, Example2) for e in seen["sample"]["exs"]) and seen["sample"]["max_new_tokens"] == 256

    # refused before any work: a v1 selection (old files record no benchmark) with the v2 base, the v2
    # selection with the v1 base, and a --benchmark the base was not made for
    def no_work(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("work started despite the mismatch")

    monkeypatch.setattr(latent_train, "train_latent", no_work)
    v1sel = tmp_path / "v1sel.json"
    save_selection(v1sel, pool(LatentConfig(pool_n=3)), np.zeros(3), {"samples": 1})
    lat = tmp_path / "lat"
    train_pca = ["latent", "train", "--base", base, "--selection", str(sel), "--mode", "pca"]
    msg = _one_error(
        capsys, ["latent", "train", "--base", base, "--selection", str(v1sel), "--mode", "pca", "--out", str(lat)]
    )
    assert "selection" in msg and "'shapes'" in msg and "'shapes2'" in msg
    v1base = str(bundled_model_path("shapes-qwen25vl"))
    msg = _one_error(
        capsys, ["latent", "train", "--base", v1base, "--selection", str(sel), "--mode", "pca", "--out", str(lat)]
    )
    assert "was made on benchmark v2 ('shapes2')" in msg and "benchmark v1" in msg
    msg = _one_error(capsys, [*train_pca, "--benchmark", "shapes", "--out", str(lat)])
    assert "made for benchmark 'shapes2', not 'shapes'" in msg
    monkeypatch.setattr("attrib.shapes.model.load_model", no_work)
    never = tmp_path / "never.json"
    msg = _one_error(capsys, ["latent", "select", "--base", base, "--benchmark", "shapes", "--out", str(never)])
    assert "made for benchmark 'shapes2'" in msg and not never.exists()
    assert not lat.exists() and not lat.with_name("lat.ckpt").exists()
    with pytest.raises(ValueError, match="benchmark v2 model"):
        train_latent(tiny_v2_base, LatentConfig(pool_n=3, steps=1), tmp_path / "x", d["accuracy"])
    monkeypatch.undo()
    monkeypatch.setattr(latent_train, "evaluate_latent", eval_spy)

    # training: no --base; the selection's benchmark would pick the bundled v2 model, so name the tiny one
    argv = [*train_pca, "--seed", "1", "--out", str(lat)]
    assert main([*argv, "--steps", "2", "--batch-size", "2", "--pool-n", "3", *common]) == 0
    log = json.loads((lat / "latent_train_log.json").read_text())
    assert log["config"]["benchmark"] == "shapes2" and log["n_hard"] == 3 and len(log["losses"]) == 2
    assert model_benchmark(lat) == "shapes2" and attrib.load(lat).default_dataset == "shapes2:test"
    proc = attrib.load(lat).processor
    for i in range(20):  # every v2 latent trace is in the vocabulary and fits the budget
        ids = proc.tokenizer.encode(latent_trace(make_example("test", i))[0], add_special_tokens=False)
        assert proc.tokenizer.unk_token_id not in ids and len(ids) < latent_budget("shapes2")
        assert ids.count(proc.tokenizer.convert_tokens_to_ids(LATENT)) % 4 == 0

    # probing draws shapes2:test with the v2 budget
    probe = tmp_path / "pca-1.json"
    p_args = ["--n", "2", "--batch-size", "2", "--norms-n", "1", "--interventions", "zeros,shuffle", *common]
    assert main(["latent", "probe", "--model", str(lat), *p_args, "--json", str(probe)]) == 0
    r = json.loads(probe.read_text())
    assert (r["benchmark"], r["dataset"], r["max_new_tokens"], r["n"]) == ("shapes2", "shapes2:test", 340, 2)
    assert seen["probe"]["max_new_tokens"] == 340
    assert [e.uid for e in seen["probe"]["exs"]] == ["test-0", "test-1"]
    assert all(isinstance(e, Example2) for e in seen["probe"]["exs"])
    assert set(r["interventions"]) == {"none", "zeros", "shuffle"} and "image" in r["norms"]["ratios"]
    msg = _one_error(capsys, ["latent", "probe", "--model", str(lat), "--benchmark", "shapes", "--n", "2"])
    assert "latent model" in msg and "'shapes2', not 'shapes'" in msg

    # the table: one benchmark at a time
    tab = tmp_path / "table.json"
    assert main(["latent", "table", str(probe), str(probe), "--json", str(tab)]) == 0
    assert json.loads(tab.read_text())["pca"]["seeds"] == 2
    old = tmp_path / "v1-probe.json"
    old.write_text(json.dumps({k: v for k, v in r.items() if k not in ("benchmark", "dataset")}))
    assert "mix benchmarks" in _one_error(capsys, ["latent", "table", str(probe), str(old)])

    # attribution through latents on shapes2:test; an estimator of another model is refused
    real_draw = latent_train.benchmark_examples

    def draw_spy(bench: str, split: str, n: int, start: int = 0) -> list[Any]:
        seen["drawn"] = (bench, split, n, start)
        return real_draw(bench, split, n, start)

    monkeypatch.setattr(latent_train, "benchmark_examples", draw_spy)
    att = tmp_path / "att.json"
    a_args = ["latent", "attribution", "--model", str(lat), "--n", "1", "--max-new-tokens", "24", *common]
    assert main([*a_args, "--json", str(att)]) == 0
    a = json.loads(att.read_text())
    assert (a["benchmark"], a["dataset"], a["max_new_tokens"], a["n_examples"]) == ("shapes2", "shapes2:test", 24, 1)
    assert a["n_spans"] >= a["n_spans_with_latents"] and seen["drawn"] == ("shapes2", "test", 1, 0)
    msg = _one_error(capsys, [*a_args, "--estimator", str(bundled_model_path("shapes-qwen25vl") / "estimator")])
    assert "layers x heads" in msg and "--estimator bundled" in msg
    # 'bundled' is the bundled base's estimator of the model's benchmark (v2's 6 x 8: the tiny model's differs)
    msg = _one_error(capsys, [*a_args, "--estimator", "bundled"])
    assert str(bundled_model_path("shapes2-qwen25vl") / "estimator") in msg and "6 x 8" in msg
