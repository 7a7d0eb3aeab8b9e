"""``attrib collect --backend ray``: equal to the local backend, and complete after a worker or driver is killed.

Every test that needs Ray shares one small local Ray instance (2 CPUs) started
by the module fixture; the driver-kill test connects a subprocess driver to it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from attrib.collect import CollectConfig, Collection, collect_many

HAVE_RAY = importlib.util.find_spec("ray") is not None
requires_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed (pip install -e '.[ray]')")

SMALL = {"n": 6, "k": 8, "n_subsets": 4, "shard_size": 2, "max_new_tokens": 120, "dataset": "shapes:test"}
CFGS = [
    CollectConfig(**SMALL, loo=True),
    CollectConfig(**{**SMALL, "loo": True, "region_method": "voronoi", "k": 4}),
]


def _examples(path: Path) -> list[dict[str, Any]]:
    return list(Collection.open(path).examples())


def _same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert [x["uid"] for x in a] == [x["uid"] for x in b]
    for x, y in zip(a, b, strict=True):
        for key in ("features", "subsets", "subset_deltas", "loo_deltas", "regions"):
            assert (key in x) == (key in y), key
            if key in x:
                np.testing.assert_allclose(x[key], y[key], atol=1e-5, err_msg=key)
        assert x["output"] == y["output"] and x["spans"] == y["spans"]


def _same_collection(got: Path, ref: Path) -> None:
    """Shard by shard: the same arrays (atol 1e-5), the same records, the same manifest entries."""
    g, r = Collection.open(got), Collection.open(ref)
    for key in ("identity", "config", "shards", "failures", "model_signature"):
        assert g.manifest.get(key) == r.manifest.get(key), key
    assert g.manifest["complete"]
    for (ga, grecs), (ra, rrecs) in zip(g.shards(), r.shards(), strict=True):
        assert set(ga) == set(ra)
        for key in ra:
            assert ga[key].shape == ra[key].shape and ga[key].dtype == ra[key].dtype, key
            np.testing.assert_allclose(ga[key], ra[key], atol=1e-5, err_msg=key)
        assert grecs == rrecs
    _same(_examples(got), _examples(ref))
    uids = [x["uid"] for x in _examples(got)]
    assert len(uids) == len(set(uids)) == SMALL["n"]
    assert not list(got.glob(".*tmp")) and not list(got.glob("*.tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """The local backend's collections of ``CFGS`` (one thread, as the Ray workers use)."""
    threads = torch.get_num_threads()
    d = tmp_path_factory.mktemp("local")
    outs = [d / "color-k8", d / "voronoi-k4"]
    try:
        collect_many(CFGS, outs, threads=1)
        yield outs
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray instance with 2 CPUs; yields its address."""
    import ray
    import ray.util

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


def _worker_pids() -> list[int]:
    """Process ids of the running collection workers (they answer while computing a shard)."""
    import ray
    import ray.util

    names = sorted(n for n in ray.util.list_named_actors() if n.startswith("attrib-collect-"))
    return [int(ray.get(ray.get_actor(n).pid.remote(), timeout=30)) for n in names]


@requires_ray
def test_ray_equals_local(tmp_path: Path, reference: list[Path], cluster: str) -> None:
    from attrib.collect.ray import collect_ray

    outs = [tmp_path / "color-k8", tmp_path / "voronoi-k4"]
    seen: list[tuple[int, int]] = []
    colls = collect_ray(CFGS, outs, num_workers=2, threads=1, on_progress=lambda d, t: seen.append((d, t)))
    assert [c.path for c in colls] == outs
    for out, ref in zip(outs, reference, strict=True):
        _same_collection(out, ref)
    assert seen[0] == (0, 6) and seen[-1] == (6, 6) and len(seen) == 4
    # Rerunning a complete collection needs no worker and changes no shard.
    before = [json.loads((o / "manifest.json").read_text())["shards"] for o in outs]
    collect_ray(CFGS, outs, num_workers=2, threads=1)
    assert [json.loads((o / "manifest.json").read_text())["shards"] for o in outs] == before


@requires_ray
def test_worker_sigkill_mid_shard_still_complete(
    tmp_path: Path, reference: list[Path], cluster: str, caplog: pytest.LogCaptureFixture
) -> None:
    from attrib.collect.ray import collect_ray

    killed: list[int] = []

    def kill_a_busy_worker(done: int, total: int) -> None:
        # The first call comes right after every worker was handed its first shard.
        if not killed:
            pid = _worker_pids()[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    caplog.set_level(logging.WARNING, logger="attrib.collect_ray")
    out = tmp_path / "c"
    collect_ray([CFGS[0]], [out], num_workers=2, threads=1, max_retries=2, on_progress=kill_a_busy_worker)
    assert killed, "no worker was killed"
    assert "resubmitting" in caplog.text, "the kill must land while a shard is in flight"
    _same_collection(out, reference[0])


@requires_ray
def test_driver_sigkill_then_rerun_resumes(tmp_path: Path, reference: list[Path], cluster: str) -> None:
    args = ["--dataset", "shapes:test", "--n", "6", "--k", "8", "--subsets", "4", "--shard-size", "2"]
    args += ["--max-new-tokens", "120", "--loo", "--threads", "1"]
    args += ["--backend", "ray", "--address", cluster, "--workers", "1"]
    out = tmp_path / "c"
    cmd = [sys.executable, "-m", "attrib.cli", "collect", *args, "--out", str(out)]
    with (tmp_path / "first.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        mf = out / "manifest.json"
        while time.time() < deadline and proc.poll() is None:
            if mf.is_file() and json.loads(mf.read_text())["shards"]:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert mf.is_file(), (tmp_path / "first.log").read_text()
    partial = json.loads(mf.read_text())
    assert 1 <= len(partial["shards"]) < 3, "the kill must land mid-run"
    assert not partial.get("complete")
    # The rerun (in this process, connected to the same cluster) computes only the missing shards.
    from attrib.collect.ray import collect_ray

    written = {s["name"]: (out / f"{s['name']}.safetensors").stat().st_mtime_ns for s in partial["shards"]}
    collect_ray([CFGS[0]], [out], num_workers=1, threads=1)
    assert all((out / f"{n}.safetensors").stat().st_mtime_ns == t for n, t in written.items())
    _same_collection(out, reference[0])
    assert [s["name"] for s in json.loads(mf.read_text())["shards"]] == [f"shard-{i:05d}" for i in range(3)]


def test_without_ray_a_clear_install_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    from attrib.cli import main
    from attrib.collect.ray import RayUnavailableError, collect_ray

    with pytest.raises(RayUnavailableError, match=r'ray is not installed: pip install "attrib\[ray\]"'):
        collect_ray([CollectConfig(**SMALL)], [tmp_path / "c"])
    assert isinstance(RayUnavailableError("x"), ImportError)
    assert (
        main(["collect", "--backend", "ray", "--dataset", "shapes:test", "--n", "2", "--out", str(tmp_path / "c")]) == 2
    )
    err = " ".join(capsys.readouterr().err.split())
    assert 'ray is not installed: pip install "attrib[ray]"' in err
    assert not (tmp_path / "c").exists(), "nothing may be written without ray"


def test_ray_options_need_the_ray_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from attrib.cli import main

    assert main(["collect", "--workers", "2", "--dataset", "shapes:test", "--n", "2", "--out", str(tmp_path)]) == 2
    assert "need --backend ray" in capsys.readouterr().err
