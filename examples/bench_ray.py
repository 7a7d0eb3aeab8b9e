"""Ray collection throughput on a real two-node Ray cluster (loopback), against the local backend.

Usage:
    python examples/bench_ray.py --json OUT [--quick]

Starts a head node (``ray start --head --num-cpus 1``) and one more node
(``ray start --address 127.0.0.1:PORT --num-cpus 1``) on this machine, each in
its own process group and temporary directory, then collects the same
``shapes2:validation`` examples three ways, on the bundled model (the v2 one, up to its
benchmark's 256-token budget), one torch thread per replica:

- the local backend (``attrib.collect.collect``, one thread);
- ``collect_ray`` with 1 worker, and with 2 workers (one per node).

Writes ``{"local_examples_per_hour", "ray": [{"workers", "examples_per_hour", ...}],
"scaling_efficiency", ...}``; scaling efficiency is throughput(2) / (2 x throughput(1)),
end to end (worker start-up and model loading included); the ``*_steady`` figures
start the clock when the workers are ready. The two Ray nodes are torn down at the
end by the process ids this script started (never ``ray stop``, which would stop
every Ray instance of the user on the machine).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attrib.collect import CollectConfig, Collection, collect
from attrib.io import atomic_write_json


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(d.name))
    return tree


def _descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        for c in tree.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class LoopbackCluster:
    """A Ray head plus ``n_nodes - 1`` more nodes on 127.0.0.1, each with ``cpus`` CPUs and its own temp dir."""

    def __init__(self, n_nodes: int, cpus: int, root: Path) -> None:
        self.n_nodes, self.cpus, self.root = n_nodes, cpus, root
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.temp_dirs: list[Path] = []
        self.ray = str(Path(sys.executable).with_name("ray"))

    def _start(self, i: int, args: list[str]) -> None:
        # Short temp dirs: Ray's Unix socket paths must stay under ~107 characters.
        tmp = Path(tempfile.mkdtemp(prefix=f"r{i}-"))
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [self.ray, "start", "--block", "--num-cpus", str(self.cpus), "--num-gpus", "0"]
        cmd += ["--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--temp-dir", str(tmp)]
        cmd += ["--object-store-memory", str(200 * 2**20), "--metrics-export-port", str(_free_port())]
        cmd += ["--dashboard-agent-listen-port", str(_free_port()), "--runtime-env-agent-port", str(_free_port())]
        log = (self.root / f"node{i}.log").open("wb")
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        self.temp_dirs.append(tmp)
        self.procs.append(
            subprocess.Popen([*cmd, *args], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        )

    def start(self, timeout: float = 90.0) -> None:
        """Start the nodes and connect this process to them.

        Raises:
            TimeoutError: If the nodes do not come up in time.
            RuntimeError: If a ``ray start`` exits.
        """
        import ray

        head = ["--head", "--port", str(self.port), "--include-dashboard", "false"]
        self._start(0, head)
        deadline = time.time() + timeout
        while not self._port_open():
            self._check_alive()
            if time.time() > deadline:
                raise TimeoutError(f"the Ray head did not come up; see {self.root}/node0.log")
            time.sleep(0.2)
        for i in range(1, self.n_nodes):
            self._start(i, ["--address", self.address])
        ray.init(address=self.address, log_to_driver=False)
        while len([n for n in ray.nodes() if n["Alive"]]) < self.n_nodes:
            self._check_alive()
            if time.time() > deadline:
                raise TimeoutError(f"only {len(ray.nodes())} of {self.n_nodes} Ray nodes came up; see {self.root}")
            time.sleep(0.2)
        ray.shutdown()  # collect_ray connects by address, as `attrib collect --address` does

    def _port_open(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def _check_alive(self) -> None:
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                log = (self.root / f"node{i}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"ray start (node {i}) exited with {p.returncode}:\n{log}")

    def stop(self) -> None:
        """Disconnect, then stop the processes these nodes started (and only them), by process id.

        ``ray start`` leaves its raylet, GCS and workers running when it is
        terminated, so they are found (descendants of the ``ray start`` processes,
        and members of the process groups created for them) and signalled one by
        one: SIGTERM, then SIGKILL for what is left after 8 s.
        """
        import ray

        if ray.is_initialized():
            ray.shutdown()
        mine = {p.pid for p in self.procs}
        pids = [pid for p in self.procs for pid in [*_descendants(p.pid), p.pid]]
        pids += [pid for pid in _group_members(mine) if pid not in pids]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 8
        left = pids
        while left and time.time() < deadline:
            time.sleep(0.2)
            left = [pid for pid in left if _alive(pid)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        for d in self.temp_dirs:
            shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _group_members(pgids: set[int]) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) in pgids:
                out.append(int(d.name))
    return out


def _timed_local(cfg: CollectConfig, out: Path) -> float:
    t0 = time.perf_counter()
    collect(cfg, out, threads=1)
    return time.perf_counter() - t0


def _timed_ray(cfg: CollectConfig, out: Path, workers: int, address: str) -> tuple[float, float]:
    from attrib.collect.ray import collect_ray

    ready: list[float] = []

    def on_progress(done: int, total: int) -> None:
        if not ready:  # the first call: every worker is up and has its first shard
            ready.append(time.perf_counter())

    t0 = time.perf_counter()
    collect_ray(
        [cfg], [out], address=address, num_workers=workers, num_cpus_per_worker=1, threads=1, on_progress=on_progress
    )
    t1 = time.perf_counter()
    return t1 - t0, t1 - ready[0]


def _max_diff(a: Path, b: Path) -> float:
    worst = 0.0
    for (xa, _), (xb, _) in zip(Collection.open(a).shards(), Collection.open(b).shards(), strict=True):
        for key in ("features", "subset_deltas"):
            worst = max(worst, float(np.max(np.abs(xa[key] - xb[key]), initial=0.0)))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True)
    ap.add_argument("--quick", action="store_true", help="16 examples instead of 48 (under 2 minutes here)")
    args = ap.parse_args()
    # `ray start` clusters use token authentication (the token in ~/.ray/auth_token, made by the head if missing);
    # a driver that connects by address must ask for it explicitly.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    n = 16 if args.quick else 48
    cfg = CollectConfig(dataset="shapes2:validation", n=n, k=32, n_subsets=32, shard_size=4 if args.quick else 8)
    threads = torch.get_num_threads()
    out: dict[str, Any] = {
        "model": f"bundled {cfg.model}",
        "dataset": cfg.dataset,
        "n_examples": n,
        "k": cfg.k,
        "n_subsets": cfg.n_subsets,
        "shard_size": cfg.shard_size,
        "max_new_tokens": cfg.budget,
        "torch_threads_per_replica": 1,
        "nodes": 2,
        "cpus_per_node": 1,
        "machine_cpus": os.cpu_count(),
        "quick": args.quick,
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "load_average_start": os.getloadavg()[0],  # other jobs on the machine (1-minute load average)
    }
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        root = Path(tmp)
        dt = _timed_local(cfg, root / "local")
        torch.set_num_threads(threads)
        out["local_seconds"] = dt
        out["local_examples_per_hour"] = 3600 * n / dt
        print(f"local (1 thread): {dt:.1f} s, {out['local_examples_per_hour']:.0f} examples/h")
        cluster = LoopbackCluster(2, 1, root / "ray")
        t0 = time.perf_counter()
        try:
            cluster.start()
            out["cluster_start_seconds"] = time.perf_counter() - t0
            out["ray"] = []
            for workers in (1, 2):
                total, steady = _timed_ray(cfg, root / f"ray{workers}", workers, cluster.address)
                row = {
                    "workers": workers,
                    "seconds": total,
                    "examples_per_hour": 3600 * n / total,
                    "seconds_steady": steady,
                    "examples_per_hour_steady": 3600 * n / steady,
                    "max_abs_diff_vs_local": _max_diff(root / f"ray{workers}", root / "local"),
                }
                out["ray"].append(row)
                print(
                    f"ray, {workers} worker(s): {total:.1f} s, {row['examples_per_hour']:.0f} examples/h "
                    f"({row['examples_per_hour_steady']:.0f} once the workers are up); "
                    f"max |diff| vs local {row['max_abs_diff_vs_local']:.2e}"
                )
        finally:
            cluster.stop()
    one, two = out["ray"]
    out["scaling_efficiency"] = two["examples_per_hour"] / (2 * one["examples_per_hour"])
    out["scaling_efficiency_steady"] = two["examples_per_hour_steady"] / (2 * one["examples_per_hour_steady"])
    print(f"scaling efficiency: {out['scaling_efficiency']:.2f} ({out['scaling_efficiency_steady']:.2f} steady)")
    atomic_write_json(args.json, out)


if __name__ == "__main__":
    main()
