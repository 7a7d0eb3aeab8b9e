"""A quality floor for each bundled model on a small fixed sample: a broken model that still writes
parseable text must fail here.

Floors sit well below what the models measured on the same sample (``attrib shapes eval --split test
--start 500 --n 60``): base accuracy 0.85, parse rate 1.0; v1 accuracy 0.90, pointing accuracy 0.975; v2
(``shapes2:test`` 500-559) accuracy 0.733, blank-image accuracy 0.233, object_accuracy 0.918, position_accuracy
0.867, parse rate 1.0.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attrib.cli import main

SAMPLE = ["--split", "test", "--start", "500", "--n", "60"]


def _eval(model: str, out: Path, *extra: str) -> dict[str, float]:
    assert main(["shapes", "eval", "--model", model, *SAMPLE, "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def test_bundled_base_model_quality(tmp_path: Path) -> None:
    d = _eval("shapes-qwen25vl", tmp_path / "base.json")
    assert d["n"] == 60 and d["parse_rate"] >= 0.95
    assert d["accuracy"] >= 0.70, d["accuracy"]
    # It reads the image: with a blank image it is far worse.
    assert d["blank_image_accuracy"] is not None and d["blank_image_accuracy"] <= d["accuracy"] - 0.25


def test_bundled_v1_model_quality(tmp_path: Path) -> None:
    d = _eval("shapes-qwen25vl-v1", tmp_path / "v1.json", "--no-blank")
    assert d["n"] == 60 and d["parse_rate"] >= 0.95
    assert d["accuracy"] >= 0.75, d["accuracy"]
    assert d["pointing_accuracy"] >= 0.90, d["pointing_accuracy"]


def test_bundled_v2_model_quality(tmp_path: Path) -> None:
    """The v2 model (its benchmark, shapes2, read from its train_log.json) reads the image and grounds its words."""
    d = _eval("shapes2-qwen25vl", tmp_path / "v2.json")
    assert d["benchmark"] == "shapes2" and d["n"] == 60 and d["parse_rate"] >= 0.95
    assert d["accuracy"] >= 0.55, d["accuracy"]
    assert d["blank_image_accuracy"] is not None and d["blank_image_accuracy"] <= d["accuracy"] - 0.25
    assert d["object_accuracy"] >= 0.80, d["object_accuracy"]
    assert d["position_accuracy"] >= 0.70, d["position_accuracy"]


@pytest.mark.parametrize("scale", [0.0])
def test_the_floor_catches_a_broken_model(tmp_path: Path, scale: float) -> None:
    """The same floor fails for the base model with its vision merger zeroed (it still writes text, most of it
    parseable)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from attrib.models.loading import resolve_path

    src = resolve_path("shapes-qwen25vl")
    assert isinstance(src, Path)
    broken = tmp_path / "broken"
    shutil.copytree(src, broken)
    weights = broken / "model.safetensors"
    tensors = load_file(weights)
    for name in [n for n in tensors if "merger" in n]:
        tensors[name] = tensors[name] * scale
    save_file(tensors, weights, metadata={"format": "pt"})
    d = _eval(str(broken), tmp_path / "broken.json", "--no-blank")
    assert d["parse_rate"] >= 0.5  # it still writes answers
    with pytest.raises(AssertionError):
        assert d["accuracy"] >= 0.70, d["accuracy"]
