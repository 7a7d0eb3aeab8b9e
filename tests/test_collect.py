"""The resumable collection pipeline on the bundled model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from attrib.collect import CollectConfig, Collection, collect

SMALL = {
    "model": "shapes-qwen25vl",
    "n": 6,
    "k": 8,
    "n_subsets": 4,
    "shard_size": 2,
    "max_new_tokens": 120,
    "dataset": "shapes:test",
}


def _arrays(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return list(Collection.open(path).examples())


def _same(a: list[dict], b: list[dict]) -> None:  # type: ignore[type-arg]
    assert [x["uid"] for x in a] == [x["uid"] for x in b]
    for x, y in zip(a, b, strict=True):
        for key in ("features", "subsets", "subset_deltas", "loo_deltas", "regions"):
            if key in x:
                np.testing.assert_allclose(x[key], y[key], atol=1e-5, err_msg=key)
        assert x["output"] == y["output"] and x["spans"] == y["spans"]


def test_collect_small_split(tmp_path: Path) -> None:
    cfg = CollectConfig(**SMALL, loo=True)
    coll = collect(cfg, tmp_path / "c")
    exs = list(coll.examples())
    assert len(exs) + len(coll.failures) == 6
    assert coll.manifest["complete"] and len(coll.manifest["shards"]) == 3
    for ex in exs:
        s = len(ex["spans"])
        assert ex["features"].shape == (s, 8, 4, 6)
        assert ex["subsets"].shape == (4, 8) and ex["subset_deltas"].shape == (s, 4)
        assert ex["loo_deltas"].shape == (s, 8)
        assert ex["regions"].shape == (224, 224) and ex["regions"].max() == 7
        assert isinstance(ex["correct"], bool)
        assert len(ex["span_gt_regions"]) == s
    # Rerunning a complete collection does nothing and changes nothing.
    before = (tmp_path / "c" / "manifest.json").read_text()
    collect(cfg, tmp_path / "c")
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["shards"] == json.loads(before)["shards"]


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    collect(CollectConfig(**{**SMALL, "n": 2}), tmp_path / "c")
    with pytest.raises(ValueError, match="another dataset/model/settings"):
        collect(CollectConfig(**{**SMALL, "n": 2, "k": 16}), tmp_path / "c")


def test_bad_examples_are_recorded_and_skipped(tmp_path: Path) -> None:
    from attrib.shapes import make_example

    make_example("test", 0).image().save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    lines = [
        {"image": "ok.png", "question": "How many circles are there?", "answer": "1"},
        {"image": "broken.png", "question": "Is there a red circle?"},
        {"image": "missing.png", "question": "Is there a red circle?"},
    ]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    cfg = CollectConfig(**{**SMALL, "dataset": str(tmp_path / "data.jsonl"), "n": 0})
    coll = collect(cfg, tmp_path / "c")
    reasons = {f["uid"]: f["reason"] for f in coll.failures}
    assert set(reasons) == {"1", "2"}
    assert "broken.png" in reasons["1"] and "missing.png" in reasons["2"]
    assert [e["uid"] for e in coll.examples()] == ["0"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_dir(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(OSError, match="not writable"):
        collect(CollectConfig(**SMALL), ro / "c")


def test_unwritable_output_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="not writable"):
        collect(CollectConfig(**SMALL), blocker / "c")


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    args = ["--dataset", "shapes:test", "--n", "6", "--k", "8", "--subsets", "4", "--shard-size", "2"]
    args += ["--max-new-tokens", "120", "--loo", "--threads", "1"]
    cmd = [sys.executable, "-m", "attrib.cli", "collect", *args]
    ref = tmp_path / "ref"
    subprocess.run([*cmd, "--out", str(ref)], check=True, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        mf = out / "manifest.json"
        if mf.is_file() and json.loads(mf.read_text())["shards"]:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = json.loads((out / "manifest.json").read_text())
    assert 1 <= len(partial["shards"]) < 3, "the kill must land mid-run"
    subprocess.run([*cmd, "--out", str(out)], check=True, capture_output=True)
    _same(_arrays(out), _arrays(ref))
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_cli_collect_bad_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from attrib.cli import main

    assert main(["collect", "--dataset", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "dataset not found" in err and "nope.jsonl" in err
    assert "collect" not in err.split("error:")[0]  # refused before the progress bar starts
    assert not (tmp_path / "c" / "manifest.json").exists()


def test_full_disk_leaves_no_corrupt_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import safetensors.numpy

    calls = {"n": 0}
    real = safetensors.numpy.save_file

    def flaky(arrays, path, *a, **kw):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:  # the second shard hits a full disk half-way through writing
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(arrays, path, *a, **kw)

    monkeypatch.setattr(safetensors.numpy, "save_file", flaky)
    cfg = CollectConfig(**{**SMALL, "n": 4})
    with pytest.raises(OSError, match=r"could not write shard shard-00001.*No space left"):
        collect(cfg, tmp_path / "c")
    mf = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert [s["name"] for s in mf["shards"]] == ["shard-00000"]
    assert not (tmp_path / "c" / "shard-00001.safetensors").exists()
    assert not list((tmp_path / "c").glob(".*tmp"))
    monkeypatch.setattr(safetensors.numpy, "save_file", real)
    coll = collect(cfg, tmp_path / "c")
    assert len(list(coll.examples())) + len(coll.failures) == 4


def test_collect_many_matches_separate_collections(tmp_path: Path) -> None:
    from attrib.collect import collect_many

    base = {**SMALL, "n": 3, "loo": True}
    cfgs = [
        CollectConfig(**base),
        CollectConfig(**{**base, "region_method": "voronoi"}),
        CollectConfig(**{**base, "region_method": "blocks", "k": 4}),
    ]
    # One configuration is collected alone first: collect_many must skip it and fill in the others.
    collect(cfgs[1], tmp_path / "solo-voronoi")
    outs = [tmp_path / "m-color", tmp_path / "solo-voronoi", tmp_path / "m-blocks"]
    before = (outs[1] / "manifest.json").read_text()
    colls = collect_many(cfgs, outs)
    assert json.loads((outs[1] / "manifest.json").read_text())["shards"] == json.loads(before)["shards"]
    for cfg, coll in zip(cfgs, colls, strict=True):
        assert coll.manifest["config"]["region_method"] == cfg.region_method
        assert coll.manifest["config"]["k"] == cfg.k
    collect(cfgs[0], tmp_path / "solo-color")
    collect(cfgs[2], tmp_path / "solo-blocks")
    _same(_arrays(outs[0]), _arrays(tmp_path / "solo-color"))
    _same(_arrays(outs[2]), _arrays(tmp_path / "solo-blocks"))
    assert _arrays(outs[2])[0]["features"].shape[1] == 4


def test_collect_many_refuses_configs_differing_beyond_regions(tmp_path: Path) -> None:
    from attrib.collect import collect_many

    a = CollectConfig(**SMALL)
    with pytest.raises(ValueError, match="differ only in region_method and k"):
        collect_many([a, CollectConfig(**{**SMALL, "n_subsets": 8})], [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ValueError, match="distinct"):
        collect_many([a, CollectConfig(**{**SMALL, "k": 4})], [tmp_path / "a", tmp_path / "a"])
    assert not (tmp_path / "a").exists()
