"""Capture designs, measured: where and when each token's attention row is computed.

Usage:
    python examples/probe_capture_designs.py [--models bundled,30m] [--tokens 1000,512] [--reps 5]
        [--old-ref 63651d0] [--json OUT]

Plain generation and captured generation under each design alternate within every
repeat (``examples/bench_capture.py``'s models and inputs); the table gives medians of
milliseconds per token and their ratio to plain generation:

- ``previous``: the capture before this change (loaded from git, ``--old-ref``): at every step
  and layer, the newest row from a float32 copy of the whole key cache, reduced to regions on
  the host (a device sync per layer);
- ``stepwise``: today's kernel (SDPA against the region value matrix, in the cache's dtype, sums on
  the device) run at every step and layer;
- ``deferred-C`` (shipped, ``C`` = 64): references only during the step; each layer's rows computed
  in one batched pass per span (or every ``C`` tokens).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
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


def old_capture(ref: str) -> ModuleType:
    """``attrib/capture/sdpa.py`` at git ``ref``, registered under its own implementation name."""
    src = subprocess.run(
        ["git", "show", f"{ref}:attrib/capture/sdpa.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    f = Path(tempfile.mkdtemp()) / "attrib_previous_capture.py"
    f.write_text(src)
    mod = _load("attrib_previous_capture", f)
    setattr(mod, "IMPLEMENTATION", "attrib_sdpa_previous")  # noqa: B010  (registered beside today's)
    return mod


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
    args = ap.parse_args()
    bench = _load("bench_capture", ROOT / "examples" / "bench_capture.py")
    prev = old_capture(args.old_ref)
    out: dict[str, Any] = {"reps": args.reps, "old_ref": args.old_ref, "models": {}}
    for name, n in zip(args.models.split(","), [int(t) for t in args.tokens.split(",")], strict=True):
        out["models"][name] = probe_model(bench, prev, name, n, args.reps, [int(v) for v in args.chunks.split(",")])
    if args.json:
        atomic_write_json(args.json, out)


if __name__ == "__main__":
    main()
