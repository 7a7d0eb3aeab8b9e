"""`attrib collect`'s generation budget follows the dataset when none is given."""

from __future__ import annotations

import json
from pathlib import Path

from attrib.cli import main
from attrib.collect.datasets import dataset_budget


def test_dataset_budget() -> None:
    assert dataset_budget("shapes2:test") == 256  # v2 traces: the budget `attrib shapes eval` uses
    assert dataset_budget("shapes:test") is None  # no budget of its own: the command's default
    assert dataset_budget("questions.jsonl") is None and dataset_budget("C:/data/questions.jsonl") is None


def test_collect_takes_the_datasets_budget_unless_told(tmp_path: Path) -> None:
    base = ["collect", "--model", "shapes2-qwen25vl", "--dataset", "shapes2:test", "--n", "1", "--subsets", "2"]
    assert main([*base, "--threads", "1", "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["config"]["max_new_tokens"] == 256
    assert main([*base, "--threads", "1", "--max-new-tokens", "40", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["config"]["max_new_tokens"] == 40


def test_defaults_follow_the_bundled_model_and_its_benchmark() -> None:
    from attrib.cli.collect import default_train_dataset
    from attrib.collect.pipeline import CollectConfig

    cfg = CollectConfig()
    assert (cfg.model, cfg.dataset, cfg.max_new_tokens) == ("shapes2-qwen25vl", "shapes2:train", 256)
    assert CollectConfig(model="shapes-qwen25vl", dataset="shapes:test").max_new_tokens == 200
    assert CollectConfig(dataset="shapes2:test", max_new_tokens=40).max_new_tokens == 40
    assert default_train_dataset("shapes2-qwen25vl") == "shapes2:train"
    assert default_train_dataset("shapes-qwen25vl") == "shapes:train"  # a named model's own benchmark
    assert default_train_dataset("/some/checkpoint") == "shapes2:train"  # anything else: the default model's
