"""Paired comparison of plain generation, capture and the streamed path, with intervals.

Usage:
    python examples/probe_stream_overhead.py --json OUT [--tokens 256] [--reps 21] [--threads N]
        [--modes plain,capture,capture_full,stream]

The bundled model and estimator, one example (``shapes:test`` 0), ``--tokens`` forced tokens per run.
Each repeat runs every mode once, in the listed order on even repeats and reversed on odd ones
(ABBA: a slow drift or an order effect cancels), so each repeat gives one paired difference per mode
against ``plain`` (the first mode). Reports, per mode: the medians, the median paired difference in
µs per token with a 95 % percentile-bootstrap interval over repeats (``scipy.stats.bootstrap``), the
ratio of medians and the median paired ratio.

Modes: ``plain`` (``generate``), ``capture`` (``generate`` under an
:class:`~attrib.capture.AttentionCapture` with its token streamer, the default kernel-normaliser
pass), ``capture_full`` (the same with ``kernel_lse=False``: the batched pass reads the whole cache),
``capture_nostreamer`` (the capture attached but no tokens pushed: the per-layer recording alone),
``stream`` (a fully consumed :class:`~attrib.streaming.AttributionStream`, events made as each span
ends), ``stream_worker`` (the same with ``worker=True``: events made by an attribution thread, generation
waiting up to 5 ms for it to take each span), ``stream_nohandoff`` (``worker=True`` without that wait).

This is a probe for the designs in docs/streaming.md; the benchmarks that the issue's targets read
are ``bench_streaming.py`` and ``bench_capture.py``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy import stats

from attrib.capture import AttentionCapture
from attrib.io import atomic_write_json
from attrib.shapes import make_example
from attrib.streaming import Attributor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--modes", default="plain,capture,capture_full,stream")
    args = ap.parse_args()
    modes = args.modes.split(",")
    if modes[0] != "plain" or len(modes) < 2:
        ap.error("--modes must start with plain and name at least one other mode")
    if args.threads:
        torch.set_num_threads(args.threads)
    a = Attributor.load()
    model, n = a.model, args.tokens
    ex = make_example("test", 0)
    x = a.loaded.build(ex.image(), ex.question.text)
    assign = a.assignment(a.partition(ex.image()), x)
    kw = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False}

    def plain() -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            model.generate(**x, **kw)
            return (time.perf_counter() - t0) / n

    def capture(kernel_lse: bool = True, streamer: bool = True) -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            with AttentionCapture(model, x, assign, decode=a.loaded.decode_raw, kernel_lse=kernel_lse) as cap:
                model.generate(**x, **kw, **({"streamer": cap.streamer} if streamer else {}))
            cap.result()
            return (time.perf_counter() - t0) / n

    def stream(worker: bool = False) -> float:
        s = a.stream(ex.image(), ex.question.text, max_new_tokens=n, min_new_tokens=n, worker=worker)
        t0 = time.perf_counter()
        with s:
            for _ in s:
                pass
        return (time.perf_counter() - t0) / n

    def stream_nohandoff() -> float:
        from attrib.streaming import stream as stream_module

        saved = stream_module._HANDOFF_S
        stream_module._HANDOFF_S = 0.0
        try:
            return stream(worker=True)
        finally:
            stream_module._HANDOFF_S = saved

    fns: dict[str, Callable[[], float]] = {
        "plain": plain,
        "capture": capture,
        "capture_full": lambda: capture(kernel_lse=False),
        "capture_nostreamer": lambda: capture(streamer=False),
        "stream": stream,
        "stream_worker": lambda: stream(worker=True),
        "stream_nohandoff": stream_nohandoff,
    }
    unknown = [m for m in modes if m not in fns]
    if unknown:
        ap.error(f"unknown modes {unknown}; choose from {sorted(fns)}")
    for m in modes:  # warm-up
        fns[m]()
    runs: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.reps):
        for m in modes if r % 2 == 0 else modes[::-1]:
            runs[m].append(fns[m]())
    base = np.asarray(runs["plain"])
    out: dict[str, object] = {
        "model": a.name,
        "tokens": n,
        "reps": args.reps,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "ms_per_token": {m: statistics.median(v) * 1e3 for m, v in runs.items()},
        "ms_per_token_each": {m: [t * 1e3 for t in v] for m, v in runs.items()},
        "modes": {},
    }
    for m in modes[1:]:
        v = np.asarray(runs[m])
        diff = (v - base) * 1e6
        ci = stats.bootstrap((diff,), np.median, confidence_level=0.95, method="percentile", random_state=0)
        row = {
            "added_us_per_token": float(np.median(diff)),
            "added_us_ci": [float(ci.confidence_interval.low), float(ci.confidence_interval.high)],
            "ratio_of_medians": float(np.median(v) / np.median(base)),
            "median_paired_ratio": float(np.median(v / base)),
        }
        out["modes"][m] = row  # type: ignore[index]
        print(
            f"{m}: +{row['added_us_per_token']:.0f} us/token "
            f"[{row['added_us_ci'][0]:.0f}, {row['added_us_ci'][1]:.0f}], "
            f"ratio of medians {row['ratio_of_medians']:.4f}, median paired ratio {row['median_paired_ratio']:.4f}"
        )
    atomic_write_json(args.json, out)


if __name__ == "__main__":
    main()
