"""``attrib collect --backend ray``: the collection pipeline spread over a Ray cluster.

The work is cut into the same example shards as the local backend (shard ``i``
holds examples ``i * shard_size .. (i + 1) * shard_size - 1``), and the storage is
the same (see [`attrib.collect.store`][attrib.collect.store]): a Ray collection and a local one with the
same settings are interchangeable, and either backend resumes the other's
partial collection.

Roles:

- The **driver** (the process calling [`collect_ray`][attrib.collect.ray.collect_ray]) owns the manifests
  and writes every shard, atomically, as results come back. Nothing is written
  by the workers, so nothing can be written twice.
- Each **worker** is a Ray actor holding one model replica (loaded once). It is
  sent a shard index, rebuilds that shard's examples itself from the
  collection's settings (no images travel over the network), checks that it
  sees the same example ids as the driver, and returns the shard's arrays,
  records and failures.

Fault tolerance: a worker that dies mid-shard (killed, crashed, out of memory,
its node lost) fails only its shard, which is resubmitted to another worker
(or to the same one once Ray has restarted it), up to ``max_retries`` times per
shard. A driver that dies loses only the shards in flight; rerunning the same
command resumes from the manifest.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attrib.collect.datasets import CollectItem, open_dataset
from attrib.collect.pipeline import (
    CollectConfig,
    check_configs,
    collect_chunk,
    iter_items,
    make_segmenters,
    model_fingerprint,
)
from attrib.collect.store import Collection, check_writable, open_manifest, write_shard
from attrib.io import atomic_write_json
from attrib.models.loading import check_model
from attrib.regions.methods import check_region_method

__all__ = ["INSTALL_HINT", "RayCollectError", "RayUnavailableError", "collect_ray"]

logger = logging.getLogger(__name__)

#: The message of [`RayUnavailableError`][attrib.collect.ray.RayUnavailableError].
INSTALL_HINT = 'ray is not installed: pip install "attrib[ray]" (or pip install -e ".[ray]" in a checkout)'

_ShardResult = tuple[dict[str, np.ndarray], list[dict[str, Any]], list[dict[str, str]]]


class RayUnavailableError(ImportError):
    """``ray`` cannot be imported (install the ``ray`` extra)."""


class RayCollectError(RuntimeError):
    """A Ray collection cannot go on: workers fail to start, disagree, or keep dying on a shard.

    Every shard finished before the error is listed in the manifest; a rerun resumes.
    """


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise RayUnavailableError(INSTALL_HINT) from e
    return ray


def _retryable(ray: Any) -> tuple[type[BaseException], ...]:
    """The errors that mean "the worker (or its node) died", as opposed to an error in the work itself."""
    names = (
        "RayActorError",  # includes ActorDiedError and ActorUnavailableError
        "WorkerCrashedError",
        "ObjectLostError",  # the result was lost with its node
        "NodeDiedError",
        "OutOfMemoryError",  # Ray's memory monitor killed the worker
    )
    return tuple(getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n))


def _shard_items(cfg: CollectConfig, shard_index: int) -> list[CollectItem]:
    """The examples of one shard, the same as ``list(iter_items(cfg))[shard slice]``.

    Examples of a registered dataset kind (``shapes:``) are generated from their
    index, so only the shard's examples are made; a JSONL file is read up to the
    shard's end (no image is loaded while skipping).
    """
    lo = shard_index * cfg.shard_size
    if open_dataset(cfg.dataset).kind is not None:  # a generated dataset: make only this shard's examples
        n = min(cfg.shard_size, cfg.n - lo)
        return list(iter_items(replace(cfg, start=cfg.start + lo, n=n))) if n > 0 else []
    return list(itertools.islice(iter_items(cfg), lo, lo + cfg.shard_size))


class _ShardWorker:
    """One model replica computing shards; the body of a Ray actor (usable without Ray as well).

    Args:
        model: A named model, a model directory or a hub id (as in
            [`CollectConfig`][attrib.collect.pipeline.CollectConfig]).
        threads: torch CPU threads.
        use_gpu: Put the model on the GPU Ray assigned to this worker.
        workdir: The driver's working directory; relative dataset, image and
            model paths resolve against it where it exists on this node.
        dtype: Parameter dtype (as in [`CollectConfig`][attrib.collect.pipeline.CollectConfig]).
    """

    def __init__(self, model: str, threads: int, use_gpu: bool, workdir: str | None, dtype: str = "float32") -> None:
        from attrib.models.loading import load

        if workdir and os.path.isdir(workdir):
            os.chdir(workdir)
        self.threads = threads
        torch.set_num_threads(threads)
        self.device = "cpu"
        if use_gpu:
            if not torch.cuda.is_available():
                raise RuntimeError("Ray gave this worker a GPU, but torch sees no CUDA device")
            self.device = "cuda"
        self.loaded = load(model, device=self.device, dtype=dtype)
        self._segmenters: dict[tuple[Any, ...], Any] = {}
        self._info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "device": self.device,
            "threads": torch.get_num_threads(),
            "signature": self.loaded.signature,
        }

    def info(self) -> dict[str, Any]:
        """``pid``, ``host``, ``device``, ``threads`` and the loaded model's ``signature``."""
        return dict(self._info)

    def pid(self) -> int:
        """This worker's process id."""
        return os.getpid()

    def run_shard(self, cfgs: list[CollectConfig], shard_index: int, uids: list[str]) -> list[_ShardResult]:
        """Compute one shard for every configuration (one generation per example).

        Raises:
            ValueError: If this worker's view of the dataset gives other example ids than the driver's.
        """
        torch.set_num_threads(self.threads)  # a method may run on another thread than __init__
        items = _shard_items(cfgs[0], shard_index)
        got = [it.uid for it in items]
        if got != list(uids):
            raise ValueError(
                f"worker on {socket.gethostname()} sees other examples for shard {shard_index} than the driver "
                f"({got[:3]}... vs {list(uids)[:3]}...): the dataset must be the same on every node"
            )
        dataset = open_dataset(cfgs[0].dataset)
        key = tuple((c.region_method, c.k, c.dinov3) for c in cfgs)
        if key not in self._segmenters:  # a DINOv3 model loads once per worker, not once per shard
            self._segmenters[key] = make_segmenters(list(cfgs), self.device)
        segs = self._segmenters[key]
        return collect_chunk(list(cfgs), self.loaded, dataset, items, shard_index, None, 0, len(items), segs)


def _validate(
    cfgs: Sequence[CollectConfig],
    out_dirs: Sequence[str | Path],
    num_workers: int | None,
    num_cpus_per_worker: int,
    num_gpus_per_worker: float,
    max_retries: int,
) -> None:
    check_configs(cfgs, out_dirs, "collect_ray")
    dev = cfgs[0].device
    if dev is not None and str(dev) != "cpu":
        raise ValueError(
            f"with the Ray backend each worker's device comes from --gpus-per-worker, not --device {dev}: drop --device"
        )
    for c in cfgs:
        check_region_method(c.region_method, dinov3=c.dinov3)
    check_model(cfgs[0].model)
    if num_workers is not None and num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if num_cpus_per_worker < 0 or num_gpus_per_worker < 0 or max_retries < 0:
        raise ValueError("num_cpus_per_worker, num_gpus_per_worker and max_retries must be >= 0")


def _capacity(resources: dict[str, float], cpus: float, gpus: float) -> int | None:
    """How many workers of ``cpus`` CPUs and ``gpus`` GPUs the cluster holds (``None``: unbounded)."""
    slots = []
    if cpus > 0:
        slots.append(int(resources.get("CPU", 0.0) / cpus + 1e-9))
    if gpus > 0:
        slots.append(int(resources.get("GPU", 0.0) / gpus + 1e-9))
    return min(slots) if slots else None


def _fmt_eta(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def collect_ray(
    cfgs: Sequence[CollectConfig],
    out_dirs: Sequence[str | Path],
    *,
    address: str | None = None,
    num_workers: int | None = None,
    num_gpus_per_worker: float = 0.0,
    num_cpus_per_worker: int = 1,
    max_retries: int = 3,
    on_progress: Callable[[int, int], None] | None = None,
    threads: int | None = None,
) -> list[Collection]:
    """Run (or resume) collections on a Ray cluster; the same result as
    [`attrib.collect.pipeline.collect_many`][attrib.collect.pipeline.collect_many].

    Each worker (a Ray actor with ``num_cpus_per_worker`` CPUs and
    ``num_gpus_per_worker`` GPUs) loads the model once, then computes whole
    shards; the driver writes them. Configurations that differ only in their
    regions share one generation per example, as with ``collect_many``.

    With the same settings and torch thread count, on CPU, the result equals a
    local run's (same examples and shards; targets within float rounding).
    Datasets must be visible to every worker at the same path: ``shapes:``
    splits always are; for a JSONL dataset the file and its images must be on a
    shared file system (relative paths resolve against the driver's working
    directory where that exists on the node). A worker that sees other example
    ids than the driver refuses the shard.

    Args:
        cfgs: Settings; they must agree on everything except ``region_method`` and ``k``.
        out_dirs: One output directory per configuration (on the driver's file system).
        address: Ray cluster address (``"auto"``, ``"host:6379"``, ``"ray://..."``);
            ``None`` starts a local Ray instance for this call. When Ray is already
            initialised in this process, that session is used.
        num_workers: Model replicas; default: as many as the cluster's resources hold.
        num_gpus_per_worker: GPUs per worker (Ray ``num_gpus``; fractions share a GPU).
        num_cpus_per_worker: CPUs per worker (Ray ``num_cpus``).
        max_retries: Resubmissions of a shard whose worker died (and Ray restarts per worker).
        on_progress: Called as ``on_progress(done_examples, total_examples)`` once the
            workers are running, and after every finished shard.
        threads: torch CPU threads per worker (default: ``num_cpus_per_worker``).

    Returns:
        The finished collections, in the order of ``cfgs``.

    Raises:
        RayUnavailableError: If ``ray`` is not installed.
        ValueError: For inconsistent configurations or worker counts, more workers
            than the cluster can hold, an output directory holding another
            collection, or a worker seeing another dataset.
        OSError: If an output directory is not writable.
        RayCollectError: If workers fail to start, load different models, or a
            shard's worker died more than ``max_retries`` times.
    """
    ray = _import_ray()
    _validate(cfgs, out_dirs, num_workers, num_cpus_per_worker, num_gpus_per_worker, max_retries)
    base = cfgs[0]
    outs = [Path(o) for o in out_dirs]
    for o in outs:
        check_writable(o)
    fingerprint = model_fingerprint(base.model)
    uids = [it.uid for it in iter_items(base)]  # a bad dataset fails here, before anything is written
    order = {u: i for i, u in enumerate(uids)}
    manifests = [open_manifest(c.identity(), o, fingerprint) for c, o in zip(cfgs, outs, strict=True)]
    total, size = len(uids), base.shard_size
    n_shards = (total + size - 1) // size
    done_names = [{s["name"] for s in m["shards"]} for m in manifests]
    pending: deque[tuple[int, list[int]]] = deque()
    for si in range(n_shards):
        todo = [i for i in range(len(cfgs)) if f"shard-{si:05d}" not in done_names[i]]
        if todo:
            pending.append((si, todo))
    done = total - sum(len(uids[si * size : (si + 1) * size]) for si, _ in pending)
    if not pending and all(m.get("model_signature") for m in manifests):
        if on_progress:
            on_progress(done, total)
        return _finish(manifests, outs)

    started = False
    if not ray.is_initialized():
        if address is None:
            n_cpus = num_workers * num_cpus_per_worker if num_workers else None
            ray.init(num_cpus=n_cpus, include_dashboard=False)
        else:
            try:
                ray.init(address=address)
            except ConnectionError as e:
                hint = ""
                if os.environ.get("RAY_AUTH_MODE") is None:
                    hint = (
                        "; recent Ray versions start clusters with token authentication, and a driver that "
                        "connects by address must opt in: export RAY_AUTH_MODE=token, with the cluster's token in "
                        "~/.ray/auth_token or RAY_AUTH_TOKEN"
                    )
                raise ConnectionError(f"cannot connect to the Ray cluster at {address}: {e}{hint}") from e
        started = True
    elif address is not None:
        logger.info("Ray is already initialised in this process; using that session, not %s", address)
    actors: list[Any] = []
    try:
        capacity = _capacity(ray.cluster_resources(), num_cpus_per_worker, num_gpus_per_worker)
        if capacity == 0:
            raise ValueError(
                f"the Ray cluster ({ray.cluster_resources()}) cannot hold one worker of "
                f"{num_cpus_per_worker} CPUs and {num_gpus_per_worker} GPUs"
            )
        n_workers = num_workers or capacity or 1
        if capacity is not None and n_workers > capacity:
            raise ValueError(
                f"{n_workers} workers of {num_cpus_per_worker} CPUs and {num_gpus_per_worker} GPUs do not fit the "
                f"Ray cluster (room for {capacity}: {ray.cluster_resources()})"
            )
        n_workers = min(n_workers, max(1, len(pending)))
        remote = ray.remote(_ShardWorker)
        token = uuid.uuid4().hex[:8]
        torch_threads = threads or max(1, int(num_cpus_per_worker))
        for w in range(n_workers):
            actors.append(
                remote.options(
                    name=f"attrib-collect-{token}-{w}",
                    num_cpus=num_cpus_per_worker,
                    num_gpus=num_gpus_per_worker,
                    max_restarts=max_retries,
                    max_task_retries=0,  # the driver resubmits, to any worker, and counts
                    max_concurrency=2,  # info() and pid() answer while a shard runs
                    scheduling_strategy="SPREAD",
                ).remote(base.model, torch_threads, num_gpus_per_worker > 0, os.getcwd(), base.dtype)
            )
        try:
            infos = ray.get([a.info.remote() for a in actors])
        except _retryable(ray) as e:
            raise RayCollectError(
                f"a Ray worker failed to start (the model {base.model!r} must load on every node): {e}"
            ) from e
        for w, inf in enumerate(infos):
            logger.info(
                "Ray worker %d: pid %d on %s (%s, %d threads)",
                w,
                inf["pid"],
                inf["host"],
                inf["device"],
                inf["threads"],
            )
        sig = infos[0]["signature"]
        if any(inf["signature"] != sig for inf in infos):
            hosts = {inf["host"]: inf["signature"] for inf in infos}
            raise RayCollectError(f"Ray workers loaded different models for {base.model!r}: {hosts}")
        for m, o in zip(manifests, outs, strict=True):
            if m.get("model_signature") != sig:
                m["model_signature"] = sig
                atomic_write_json(o / "manifest.json", m)
        _run(
            ray,
            actors,
            pending,
            cfgs,
            outs,
            manifests,
            uids,
            order,
            done,
            max_retries,
            on_progress,
        )
    finally:
        for a in actors:
            try:
                ray.kill(a)
            except Exception as e:  # best effort: the actor may already be gone
                logger.debug("could not kill Ray worker: %s", e)
        if started:
            ray.shutdown()
    return _finish(manifests, outs)


def _run(
    ray: Any,
    actors: list[Any],
    pending: deque[tuple[int, list[int]]],
    cfgs: Sequence[CollectConfig],
    outs: list[Path],
    manifests: list[dict[str, Any]],
    uids: list[str],
    order: dict[str, int],
    done: int,
    max_retries: int,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    """Keep every worker busy with one shard; write each shard as it comes back; resubmit lost ones.

    A worker whose shard was lost gets no work until a probe (``info()``,
    retried by Ray until the worker has restarted) answers; its shard goes to
    the next idle worker meanwhile.
    """
    retryable = _retryable(ray)
    size, total = cfgs[0].shard_size, len(uids)
    attempts: dict[int, int] = {}
    deaths = [0] * len(actors)
    alive = set(range(len(actors)))
    idle: deque[int] = deque(range(len(actors)))
    in_flight: dict[Any, tuple[int, list[int], int]] = {}
    probes: dict[Any, int] = {}

    def submit() -> None:
        while pending and idle:
            w = idle.popleft()
            si, todo = pending.popleft()
            ref = actors[w].run_shard.remote([cfgs[i] for i in todo], si, uids[si * size : (si + 1) * size])
            in_flight[ref] = (si, todo, w)

    def drop(w: int, e: BaseException) -> None:
        alive.discard(w)
        logger.warning("Ray worker %d is gone (%s); it gets no more work", w, type(e).__name__)
        if not alive:
            raise RayCollectError(f"every Ray worker died; last error: {type(e).__name__}: {e}") from e

    submit()
    t0, done0 = time.monotonic(), done
    if on_progress:
        on_progress(done, total)
    while in_flight or (pending and probes):
        ready, _ = ray.wait([*in_flight, *probes], num_returns=1)
        if ready[0] in probes:
            w = probes.pop(ready[0])
            try:
                ray.get(ready[0])
            except retryable as e:
                drop(w, e)
                continue
            logger.info("Ray worker %d is back", w)
            idle.append(w)
            submit()
            continue
        si, todo, w = in_flight.pop(ready[0])
        name = f"shard-{si:05d}"
        try:
            results: list[_ShardResult] = ray.get(ready[0])
        except retryable as e:
            deaths[w] += 1
            attempts[si] = attempts.get(si, 0) + 1
            if attempts[si] > max_retries:
                raise RayCollectError(
                    f"{name}: its worker died {attempts[si]} times (max_retries={max_retries}); "
                    f"last error: {type(e).__name__}: {e}"
                ) from e
            logger.warning(
                "Ray worker %d died while computing %s (%s); resubmitting it (retry %d of %d)",
                w,
                name,
                type(e).__name__,
                attempts[si],
                max_retries,
            )
            if deaths[w] > max_retries:
                drop(w, e)
            else:  # wait for Ray to restart it (max_restarts) before giving it work again
                probes[actors[w].info.options(max_task_retries=-1).remote()] = w
            pending.appendleft((si, todo))
            submit()
            continue
        idle.append(w)
        submit()  # keep the workers busy while this shard is written
        for i, (arrays, recs, failures) in zip(todo, results, strict=True):
            m = manifests[i]
            write_shard(outs[i], name, arrays, recs)
            m["shards"].append({"name": name, "n_examples": len(recs), "n_failed": len(failures)})
            m["shards"].sort(key=lambda s: s["name"])
            m["failures"].extend(failures)
            m["failures"].sort(key=lambda f: order.get(f["uid"], total))
            atomic_write_json(outs[i] / "manifest.json", m)
        done += len(uids[si * size : (si + 1) * size])
        rate = (done - done0) / max(time.monotonic() - t0, 1e-9)
        eta = _fmt_eta((total - done) / rate) if rate > 0 else "?"
        logger.info("%s written: %d/%d examples, %.0f examples/h, ETA %s", name, done, total, 3600 * rate, eta)
        if on_progress:
            on_progress(done, total)
    if pending:  # unreachable while a worker is alive; never report an unfinished collection as complete
        raise RayCollectError(f"{len(pending)} shards were left undone")


def _finish(manifests: list[dict[str, Any]], outs: list[Path]) -> list[Collection]:
    out = []
    for m, o in zip(manifests, outs, strict=True):
        m["complete"] = True
        atomic_write_json(o / "manifest.json", m)
        out.append(Collection.open(o))
    return out
