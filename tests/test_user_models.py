"""A user's own checkpoint, end to end through the CLI, for every supported family.

Each test saves a tiny random model the way a user's checkpoint arrives (sharded safetensors with
the index file, tokenizer with its chat template, image processor config) and runs
``collect -> fit -> evaluate -> stream --html -> trajectories`` on it, from a JSONL file and from a
saved Hugging Face ``datasets`` dataset with DINOv3 regions. The traces are sampled (``--do-sample``,
seeded per example): a random model's greedy trace repeats one token and rarely ends a sentence.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_models as tm
import torch
from PIL import Image, ImageDraw

from attrib.cli import main
from attrib.collect.store import Collection
from attrib.models import load
from attrib.models.signature import model_signature, same_model
from attrib.regions import RegionPartition

COLOURS = [(200, 10, 10), (10, 200, 10), (10, 10, 200), (200, 200, 10), (10, 200, 200), (200, 10, 200)]
SAMPLING = ["--do-sample", "--temperature", "2"]
#: Float32 features against eager attention (the acceptance tolerance).
EAGER_ATOL = 1e-4
#: Features of a model loaded in bfloat16 against float32 eager attention on the same trace (attention
#: weights are fractions summed over a region's tokens; bfloat16 keeps 8 bits of mantissa).
BF16_ATOL = 2e-2


def _image(family: str, i: int) -> Image.Image:
    im = tm.test_image(family, COLOURS[i % len(COLOURS)])
    c = COLOURS[i % len(COLOURS)]
    ImageDraw.Draw(im).rectangle([0, 0, im.width // 2, im.height // 2], fill=(255 - c[0], 255 - c[1], 255 - c[2]))
    return im


def _jsonl(family: str, d: Path, n: int = 6) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    with (d / "data.jsonl").open("w") as f:
        for i in range(n):
            _image(family, i).save(d / f"img{i}.png")
            f.write(json.dumps({"image": f"img{i}.png", "question": "w10 w11 w12", "answer": "w20", "id": f"ex{i}"}))
            f.write("\n")
    return d / "data.jsonl"


def _run(*argv: str) -> None:
    assert main(list(argv)) == 0, argv


def _collect(ckpt: Path, dataset: str, out: Path, *extra: str) -> Collection:
    _run(
        "collect",
        "--model",
        str(ckpt),
        "--dataset",
        dataset,
        "--k",
        "4",
        "--subsets",
        "8",
        "--max-new-tokens",
        "16",
        "--shard-size",
        "2",
        "--out",
        str(out),
        *SAMPLING,
        *extra,
    )
    return Collection.open(out)


def _check_eager(ckpt: Path, coll: Collection, atol: float = EAGER_ATOL) -> int:
    """Every collected span's features equal eager attention recomputed (in float32) from the checkpoint's
    weights."""
    loaded = load(ckpt)
    model = loaded.hf_model
    ds = coll.config["dataset"]
    from attrib.collect.datasets import open_dataset

    dataset = open_dataset(ds)
    n_spans = 0
    for ex in coll.examples():
        x = loaded.build(dataset.image_for(ex), ex["question"])
        prompt_len = int(x["input_ids"].shape[1])
        full = torch.cat([x["input_ids"], torch.tensor([ex["generated_ids"]], dtype=torch.long)], dim=1)
        assign = RegionPartition(np.asarray(ex["regions"])).assign_tokens(loaded.grid_spec).matrix
        rows = tm.eager_rows(model, full, x, prompt_len, assign)  # (T, K, L, H)
        for s, f in zip(ex["spans"], ex["features"], strict=True):
            np.testing.assert_allclose(f, rows[s["start"] : s["end"]].mean(0), atol=atol)
            n_spans += 1
    return n_spans


@pytest.fixture(scope="module")
def dinov3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DINOv3 ViT saved to disk, as ``--dinov3 DIR`` expects."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(0)
    cfg = DINOv3ViTConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16
    )
    d = tmp_path_factory.mktemp("dinov3")
    DINOv3ViTModel(cfg).save_pretrained(d)
    return d


@pytest.mark.parametrize("family", tm.FAMILY_NAMES)
def test_user_checkpoint_end_to_end(family: str, tmp_path: Path) -> None:
    ckpt = tm.save_checkpoint(family, tmp_path / "ckpt")
    assert (ckpt / "model.safetensors.index.json").is_file() and len(list(ckpt.glob("model-*.safetensors"))) > 1
    data = _jsonl(family, tmp_path / "data")
    train = _collect(ckpt, str(data), tmp_path / "train", "--n", "4")
    test = _collect(ckpt, str(data), tmp_path / "test", "--n", "2", "--start", "4", "--loo")
    for c, n in ((train, 4), (test, 2)):
        assert sum(s["n_examples"] for s in c.manifest["shards"]) == n and not c.failures
        assert c.manifest["model_signature"]["version"] == 2
    assert _check_eager(ckpt, train) >= 4

    est = tmp_path / "est"
    _run("fit", "--train", str(tmp_path / "train"), "--out", str(est), "--all-examples")
    meta = json.loads(est.with_suffix(".json").read_text())
    assert meta["model_id"] == str(ckpt) and meta["k"] == 4

    ev = tmp_path / "eval.json"
    _run(
        "evaluate",
        "--test",
        str(tmp_path / "test"),
        "--estimator",
        str(est),
        "--methods",
        "estimator,raw_attention,input_x_gradient,leave_one_out",
        "--sizes",
        "",
        "--json",
        str(ev),
    )
    res = json.loads(ev.read_text())
    for m in ("estimator", "raw_attention", "input_x_gradient", "leave_one_out"):
        assert np.isfinite(res["methods"][m]["lds"]["value"]), m

    html, out = tmp_path / "r.html", tmp_path / "r.json"
    _run(
        "stream",
        "--model",
        str(ckpt),
        "--estimator",
        str(est),
        "--image",
        str(tmp_path / "data" / "img0.png"),
        "--prompt",
        "w10 w11",
        "--system",
        "w30 w31",
        "--max-new-tokens",
        "16",
        *SAMPLING,
        "--html",
        str(html),
        "--json",
        str(out),
    )
    r = json.loads(out.read_text())
    assert r["system"] == "w30 w31" and r["generate_kwargs"]["do_sample"] is True
    assert r["spans"] and all(len(s["scores"]) == 4 for s in r["spans"])
    assert "<html" in html.read_text().lower()

    traj = tmp_path / "traj.json"
    _run(
        "trajectories", "--data", str(tmp_path / "test"), "--estimator", str(est), "--json", str(traj), "--n-boot", "50"
    )
    t = json.loads(traj.read_text())
    assert t["n_chains"] == 2


@pytest.mark.parametrize("family", tm.FAMILY_NAMES)
def test_user_checkpoint_hf_dataset_and_dinov3_regions(family: str, tmp_path: Path, dinov3_dir: Path) -> None:
    import datasets

    ckpt = tm.save_checkpoint(family, tmp_path / "ckpt")
    rows: dict[str, list[Any]] = {"img": [], "q": [], "a": [], "uid": []}
    for i in range(6):
        buf = io.BytesIO()
        _image(family, i).save(buf, format="PNG")
        rows["img"].append({"bytes": buf.getvalue(), "path": None})
        rows["q"].append("w10 w11 w12")
        rows["a"].append("w20")
        rows["uid"].append(f"u{i}")
    rows["img"][1] = {"bytes": b"not an image at all", "path": None}  # cannot be decoded
    rows["img"][3] = None  # no image
    features = datasets.Features(
        {
            "img": datasets.Image(),
            "q": datasets.Value("string"),
            "a": datasets.Value("string"),
            "uid": datasets.Value("string"),
        }
    )
    ds = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": ds.select(range(4)), "test": ds.select(range(4, 6))}).save_to_disk(tmp_path / "hf")
    spec = f"hf:{tmp_path / 'hf'}?image=img&question=q&answer=a&id=uid"
    regions = ["--regions", "dinov3", "--dinov3", str(dinov3_dir)]
    train = _collect(ckpt, spec + "&split=train", tmp_path / "train", "--n", "0", *regions)
    test = _collect(ckpt, spec + "&split=test", tmp_path / "test", "--n", "0", "--loo", *regions)
    reasons = {f["uid"]: f["reason"] for f in train.failures}
    assert set(reasons) == {"u1", "u3"}
    assert "cannot be decoded" in reasons["u1"] and "no image" in reasons["u3"]
    assert sum(s["n_examples"] for s in train.manifest["shards"]) == 2 and not test.failures
    for ex in train.examples():
        assert ex["image"] is None and len(np.unique(ex["regions"])) > 1  # regions from DINOv3 features
    assert _check_eager(ckpt, test) >= 2  # the images come back from the saved dataset

    est = tmp_path / "est"
    _run("fit", "--train", str(tmp_path / "train"), "--out", str(est), "--all-examples")
    assert json.loads(est.with_suffix(".json").read_text())["region_method"] == "dinov3"
    ev = tmp_path / "eval.json"
    _run(
        "evaluate",
        "--test",
        str(tmp_path / "test"),
        "--estimator",
        str(est),
        "--methods",
        "estimator,leave_one_out",
        "--sizes",
        "",
        "--json",
        str(ev),
    )
    assert np.isfinite(json.loads(ev.read_text())["methods"]["estimator"]["lds"]["value"])
    img = tmp_path / "img.png"
    _image(family, 0).save(img)
    html = tmp_path / "r.html"
    _run(
        "stream",
        "--model",
        str(ckpt),
        "--estimator",
        str(est),
        "--image",
        str(img),
        "--prompt",
        "w10 w11",
        "--max-new-tokens",
        "16",
        *SAMPLING,
        *regions,
        "--html",
        str(html),
        "--no-verify",
    )
    assert html.is_file()


@pytest.mark.parametrize("family", tm.FAMILY_NAMES)
def test_bfloat16_on_cpu_agrees_with_float32(family: str, tmp_path: Path) -> None:
    ckpt = tm.save_checkpoint(family, tmp_path / "ckpt")
    data = _jsonl(family, tmp_path / "data", n=2)
    coll = _collect(ckpt, str(data), tmp_path / "bf16", "--n", "2", "--dtype", "bfloat16")
    assert coll.config["dtype"] == "bfloat16" and not coll.failures
    assert _check_eager(ckpt, coll, atol=BF16_ATOL) >= 2
    with pytest.raises(AssertionError):  # the tolerance is not so loose that it would pass anything
        _check_eager(ckpt, coll, atol=1e-7)


def test_signature_is_cheap_stable_across_dtypes_and_tells_weights_apart(tmp_path: Path) -> None:
    a = tm.save_checkpoint("qwen2_5_vl", tmp_path / "a")
    fp32, bf16 = load(a), load(a, dtype="bfloat16")
    sig = model_signature(fp32.model, a)
    assert sig == model_signature(bf16.model, a) and sig["version"] == 2
    assert same_model(sig, bf16.model, a) == []
    b = tm.save_checkpoint("qwen2_5_vl", tmp_path / "b")
    from safetensors.torch import load_file, save_file

    shard = sorted(b.glob("model-*.safetensors"))[-1]
    tensors = load_file(shard)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, shard, metadata={"format": "pt"})
    other = load(b)
    assert "weights" in " ".join(same_model(sig, other.model, b))


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    lines = [ln for ln in err if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_bad_checkpoints_give_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _jsonl("qwen2_5_vl", tmp_path / "data", n=4)
    args = ["--dataset", str(data), "--n", "4", "--k", "4", "--subsets", "4", "--max-new-tokens", "8", *SAMPLING]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no config.json" in _error(capsys, "collect", "--model", str(empty), "--out", str(tmp_path / "o1"), *args)

    text_only = tmp_path / "text-only"
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        text_only
    )
    (text_only / "model.safetensors").write_bytes(b"")
    msg = _error(capsys, "collect", "--model", str(text_only), "--out", str(tmp_path / "o2"), *args)
    assert "unsupported model" in msg and "llama" in msg

    ckpt = tm.save_checkpoint("qwen2_5_vl", tmp_path / "ckpt")
    out = tmp_path / "o3"
    _run("collect", "--model", str(ckpt), "--out", str(out), "--shard-size", "2", *args[:3], "2", *args[4:])
    before = sorted(p.name for p in out.iterdir())
    shard = sorted(ckpt.glob("model-*.safetensors"))[1]
    shard.unlink()
    msg = _error(capsys, "collect", "--model", str(ckpt), "--out", str(out), "--shard-size", "2", *args)
    assert shard.name in msg or "missing" in msg
    assert sorted(p.name for p in out.iterdir()) == before  # completed shards are kept
    assert Collection.open(out).manifest["shards"][0]["n_examples"] == 2

    msg = _error(
        capsys,
        "stream",
        "--model",
        str(ckpt),
        "--image",
        str(tmp_path / "data" / "img0.png"),
        "--prompt",
        "w10",
        "--estimator",
        "x",
    )
    assert "missing" in msg and shard.name in msg
    msg = _error(
        capsys, "collect", "--model", str(tmp_path / "ckpt"), "--device", "cuda:7", "--out", str(tmp_path / "o4"), *args
    )
    assert "cuda:7" in msg
    assert not (tmp_path / "o4").exists() or not any((tmp_path / "o4").iterdir())


def test_bad_rows_are_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    ckpt = tm.save_checkpoint("qwen2_vl", tmp_path / "ckpt")
    d = tmp_path / "data"
    data = _jsonl("qwen2_vl", d, n=3)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    with data.open("a") as f:
        f.write(json.dumps({"question": "w10 w11", "id": "no-image"}) + "\n")
        f.write(json.dumps({"image": "broken.png", "question": "w10 w11", "id": "broken"}) + "\n")
        f.write("{not json\n")
        f.write(json.dumps({"image": "img0.png", "id": "no-question"}) + "\n")
    coll = _collect(ckpt, str(data), tmp_path / "o", "--n", "0")
    reasons = {f["uid"]: f["reason"] for f in coll.failures}
    assert "no image" in reasons["no-image"]
    assert "cannot" in reasons["broken"] and "broken.png" in reasons["broken"]
    assert "not JSON" in reasons["line-6"]
    assert "no question" in reasons["no-question"]
    assert sum(s["n_examples"] for s in coll.manifest["shards"]) == 3
