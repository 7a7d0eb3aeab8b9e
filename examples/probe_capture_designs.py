"""Capture designs, measured: where and when each token's attention row is computed.

Usage:
    python examples/probe_capture_designs.py [--models bundled,30m] [--tokens 1000,512] [--reps 5]
        [--old-ref 63651d0] [--mem-tokens N [--mem-model 30m] [--mem-reps R] [--by-ref d73f5f2]] [--json OUT]

Plain generation and captured generation under each design alternate within every
repeat (``examples/bench_capture.py``'s models and inputs); the table gives medians of
milliseconds per token and their ratio to plain generation:

- ``previous``: the capture before this change (loaded from git, ``--old-ref``): at every step
  and layer, the newest row from a float32 copy of the whole key cache, reduced to regions on
  the host (a device sync per layer);
- ``stepwise``: today's kernel (SDPA against the region value matrix, in the cache's dtype, sums on
  the device) run at every step and layer;
- ``deferred-C`` (shipped, ``C`` = 64): during the step, the newest query copied into a per-layer
  buffer and a reference to the key cache; each layer's rows computed in one batched pass per span
  (or every ``C`` tokens).

Memory (``--mem-tokens N``, on ``--mem-model``): fresh processes generate ``N`` tokens plainly, under
the deferred capture as committed in ``--by-ref`` (each step's query kept by reference), and under
today's (queries copied into a buffer allocated once); each resets its peak RSS just before, and the
table gives the peak's rise over the RSS before generating (medians of ``--mem-reps``).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from attrib.capture import AttentionCapture
from attrib.io import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def old_capture(ref: str, name: str = "previous") -> ModuleType:
    """``attrib/capture/sdpa.py`` at git ``ref``, registered under its own implementation name."""
    src = subprocess.run(
        ["git", "show", f"{ref}:attrib/capture/sdpa.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    f = Path(tempfile.mkdtemp()) / f"attrib_{name}_capture.py"
    f.write_text(src)
    mod = _load(f"attrib_{name}_capture", f)
    setattr(mod, "IMPLEMENTATION", f"attrib_sdpa_{name}")  # noqa: B010  (registered beside today's)
    return mod


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def memory_child(name: str, design: str, n: int, by_ref: str) -> None:
    """One fresh process: the rise of peak RSS over ``n`` tokens generated plainly or under one design."""
    bench = _load("bench_capture", ROOT / "examples" / "bench_capture.py")
    model, x, decode = bench.build_model(name, "cpu")
    assign = bench.assignment()
    make: Callable[[], Any] | None = {
        "plain": None,
        "by-reference": lambda: old_capture(by_ref, "byref").AttentionCapture(model, x, assign, decode=decode),
        "buffer": lambda: AttentionCapture(model, x, assign, decode=decode),
    }[design]

    def run(k: int) -> None:
        kw = {"max_new_tokens": k, "min_new_tokens": k, "do_sample": False}
        with torch.inference_mode():
            if make is None:
                model.generate(**x, **kw)
                return
            with make() as cap:
                model.generate(**x, streamer=cap.streamer, **kw)
            cap.result()

    run(16)
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    before = _status_mb("VmRSS")
    run(n)
    print(json.dumps({"growth_mb": _status_mb("VmHWM") - before}))


def probe_memory(name: str, n: int, reps: int, by_ref: str) -> dict[str, Any]:
    """Peak-RSS rise while generating ``n`` tokens, per design, fresh subprocesses alternating; medians."""
    designs = ("plain", "by-reference", "buffer")
    got: dict[str, list[float]] = {d: [] for d in designs}
    for _ in range(reps):
        for d in designs:
            cmd = [sys.executable, __file__, "--memory-child", name, d, str(n), "--by-ref", by_ref]
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            got[d].append(json.loads(res.stdout.strip().splitlines()[-1])["growth_mb"])
    med = {d: statistics.median(v) for d, v in got.items()}
    print(f"{name}, {n} tokens, peak RSS rise while generating (MB, medians of {reps}):")
    for d, v in med.items():
        print(f"  {d:14s} {v:8.1f}  {v - med['plain']:+8.1f} over plain")
    return {"tokens": n, "growth_mb": med, "extra_over_plain_mb": {d: v - med["plain"] for d, v in med.items()}}


class Stepwise(AttentionCapture):
    """Today's kernel, run at every step and layer."""

    def _reset_buffers(self) -> None:
        super()._reset_buffers()
        self._stepwise = [True] * self.n_layers


def probe_model(bench: ModuleType, prev: ModuleType, name: str, n: int, reps: int, chunks: list[int]) -> dict[str, Any]:
    """Plain and captured generation of ``n`` tokens under each design, alternating; medians."""
    model, x, decode = bench.build_model(name, "cpu")
    assign = bench.assignment()
    kw = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False}

    def run(make: Callable[[], Any] | None) -> None:
        with torch.inference_mode():
            if make is None:
                model.generate(**x, **kw)
                return
            with make() as cap:
                model.generate(**x, streamer=cap.streamer, **kw)
            cap.result()

    designs: dict[str, Callable[[], Any] | None] = {
        "plain": None,
        "previous": lambda: prev.AttentionCapture(model, x, assign, decode=decode),
        "stepwise": lambda: Stepwise(model, x, assign, decode=decode),
    }
    for c in chunks:
        designs[f"deferred-{c}"] = functools.partial(AttentionCapture, model, x, assign, decode=decode, chunk=c)
    for make in designs.values():  # warm-up
        run(make)
    times: dict[str, list[float]] = {k: [] for k in designs}
    for _ in range(reps):
        for k, make in designs.items():
            t0 = time.perf_counter()
            run(make)
            times[k].append((time.perf_counter() - t0) / n * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{name}, {n} tokens, {reps} alternating repeats (ms/token, ratio to plain):")
    for k, v in med.items():
        print(f"  {k:14s} {v:8.3f}  x{v / med['plain']:.4f}")
    return {
        "tokens": n,
        "ms_per_token": med,
        "ratio_to_plain": {k: v / med["plain"] for k, v in med.items()},
        "ms_per_token_each": times,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="bundled,30m")
    ap.add_argument("--tokens", default="1000,512", help="generated tokens per model (comma-separated)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--old-ref", default="63651d0")
    ap.add_argument("--chunks", default="16,64,256")
    ap.add_argument("--json", default=None)
    ap.add_argument("--mem-model", default="30m", help="model of the memory probe")
    ap.add_argument("--mem-tokens", type=int, default=0, help="tokens of the memory probe (0: no memory probe)")
    ap.add_argument("--mem-reps", type=int, default=1)
    ap.add_argument("--by-ref", default="d73f5f2", help="git revision of the by-reference design")
    ap.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        name, design, n = args.memory_child
        memory_child(name, design, int(n), args.by_ref)
        return
    bench = _load("bench_capture", ROOT / "examples" / "bench_capture.py")
    prev = old_capture(args.old_ref)
    out: dict[str, Any] = {
        "reps": args.reps,
        "old_ref": args.old_ref,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "models": {},
    }
    models = [m for m in args.models.split(",") if m]  # --models "": the memory probe only
    tokens = [int(t) for t in args.tokens.split(",")][: len(models)]
    for name, n in zip(models, tokens, strict=True):
        out["models"][name] = probe_model(bench, prev, name, n, args.reps, [int(v) for v in args.chunks.split(",")])
    if args.mem_tokens:
        out["memory"] = probe_memory(args.mem_model, args.mem_tokens, args.mem_reps, args.by_ref) | {
            "model": args.mem_model,
            "reps": args.mem_reps,
            "by_ref": args.by_ref,
        }
    if args.json:
        atomic_write_json(args.json, out)


if __name__ == "__main__":
    main()
