"""Streaming attribution cost: per-token overhead against plain generation, event latency, and leave-one-out.

Usage:
    python examples/bench_streaming.py --json OUT [--quick]

On the bundled model with its bundled estimator. For each length (256, 1,000
and 2,000 generated tokens, forced with ``min_new_tokens``; ``--quick``: 256),
plain ``generate`` and a fully consumed :class:`~attrib.streaming.AttributionStream`
(capture + background attribution worker + events) alternate, and the overhead
is the ratio of the medians of seconds per token. The per-image set-up of a stream
(model inputs, regions, token assignment) is a fixed cost, reported apart
(``setup_s_per_image``), not spread over the tokens. Event latency is the time from
a span's last token to its event's emission, over every span of the streamed runs.

Leave-one-out against the estimator, per span: LOO pays ``K`` teacher-forced
ablation forwards per example (all spans scored at once), divided by the
number of spans; the estimator pays one dot product per span
(``loo_speedup``) plus the capture overhead of the span's tokens
(``loo_speedup_incl_capture``).

Writes ``{"runs": [{"generated_tokens", "overhead_ratio", "event_latency_ms", ...}], "loo_speedup", ...}``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Any

import numpy as np
import torch

from attrib.ablation import AblationRunner, loo_subsets
from attrib.io import atomic_write_json
from attrib.shapes import make_example
from attrib.streaming import Attributor, SpanEvent


def plain(attributor: Attributor, x: dict[str, torch.Tensor], n: int) -> float:
    with torch.inference_mode():
        t0 = time.perf_counter()
        attributor.model.generate(**x, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return (time.perf_counter() - t0) / n


def streamed(attributor: Attributor, ex: Any, n: int, latencies: list[float], setup: list[float]) -> float:
    """Seconds per token of a consumed stream; the per-image set-up (inputs, regions) is timed apart."""
    t0 = time.perf_counter()
    s = attributor.stream(ex.image(), ex.question.text, max_new_tokens=n, min_new_tokens=n)
    setup.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    with s:
        for ev in s:
            if isinstance(ev, SpanEvent):
                latencies.append(ev.latency_ms)
    return (time.perf_counter() - t0) / n


def loo_vs_estimator(attributor: Attributor, n_examples: int) -> dict[str, Any]:
    loo_per_span, est_per_span, tokens_per_span = [], [], []
    for i in range(n_examples):
        ex = make_example("test", 100 + i)
        res = attributor.stream(ex.image(), ex.question.text).run()
        if not res.spans:
            continue
        x = attributor.loaded.build(res.image, res.prompt)
        part = attributor.partition(res.image)
        runner = AblationRunner(attributor.model, x, res.generated_ids, attributor.assignment(part, x), batch_size=16)
        spans = [(s.start, s.end) for s in res.spans]
        t0 = time.perf_counter()
        runner.deltas(loo_subsets(part.k), spans)
        loo_per_span.append((time.perf_counter() - t0) / len(spans))
        f = np.random.default_rng(i).random((len(spans), part.k, *attributor.estimator.coef_.shape), dtype=np.float32)
        reps = 200
        t0 = time.perf_counter()
        for _ in range(reps):
            for j in range(len(spans)):
                attributor.estimator.region_scores(f[j : j + 1])
        est_per_span.append((time.perf_counter() - t0) / reps / len(spans))
        tokens_per_span.append(res.generated_tokens / len(spans))
    return {
        "loo_s_per_span": statistics.median(loo_per_span),
        "estimator_s_per_span": statistics.median(est_per_span),
        "tokens_per_span": statistics.median(tokens_per_span),
        "n_examples": len(loo_per_span),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True)
    ap.add_argument("--quick", action="store_true", help="256 tokens, 2 repeats, 5 LOO examples (< 2 minutes)")
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args()
    lengths = [256] if args.quick else [256, 1000, 2000]
    reps = args.reps or (2 if args.quick else 3)
    attributor = Attributor.load()
    ex = make_example("test", 0)
    x = attributor.loaded.build(ex.image(), ex.question.text)
    streamed(attributor, ex, 16, [], [])  # warm-up
    plain(attributor, x, 16)
    out: dict[str, Any] = {
        "model": attributor.name,
        "runs": [],
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "reps": reps,
        "quick": args.quick,
    }
    for n in lengths:
        p, s, lat, setup = [], [], [], []
        for _ in range(reps):
            p.append(plain(attributor, x, n))
            s.append(streamed(attributor, ex, n, lat, setup))
        mp, ms = statistics.median(p), statistics.median(s)
        run = {
            "generated_tokens": n,
            "ms_per_token_plain": mp * 1e3,
            "ms_per_token_streaming": ms * 1e3,
            "added_ms_per_token": (ms - mp) * 1e3,
            "overhead_ratio": ms / mp,
            "event_latency_ms": statistics.median(lat),
            "event_latency_p95_ms": float(np.percentile(lat, 95)),
            "n_events": len(lat),
            "setup_s_per_image": statistics.median(setup),
        }
        out["runs"].append(run)
        print(
            f"{n} tokens: plain {mp * 1e3:.2f} ms/tok, streaming {ms * 1e3:.2f} ms/tok, x{ms / mp:.3f}; "
            f"event latency median {run['event_latency_ms']:.2f} ms"
        )
    loo = loo_vs_estimator(attributor, 5 if args.quick else 20)
    added_s = max(0.0, out["runs"][0]["added_ms_per_token"] / 1e3)
    out["loo"] = loo
    out["loo_speedup"] = loo["loo_s_per_span"] / loo["estimator_s_per_span"]
    out["loo_speedup_incl_capture"] = loo["loo_s_per_span"] / (
        loo["estimator_s_per_span"] + added_s * loo["tokens_per_span"]
    )
    print(
        f"leave-one-out {loo['loo_s_per_span'] * 1e3:.2f} ms/span vs estimator "
        f"{loo['estimator_s_per_span'] * 1e6:.1f} us/span: x{out['loo_speedup']:.0f} "
        f"(x{out['loo_speedup_incl_capture']:.1f} counting capture overhead)"
    )
    atomic_write_json(args.json, out)


if __name__ == "__main__":
    main()
