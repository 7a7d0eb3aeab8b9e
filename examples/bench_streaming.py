"""Streaming attribution cost: per-token overhead against plain generation, event latency, leave-one-out, memory.

Usage:
    python examples/bench_streaming.py --json OUT [--quick] [--reps N] [--mem-tokens N]

On the bundled model with its bundled estimator, everything in one process except memory.

Overhead. For each length (256, 1,000 and 2,000 generated tokens, forced with
``min_new_tokens``; ``--quick``: 256), plain ``generate`` on the main thread and a
fully consumed :class:`~attrib.streaming.AttributionStream` (generation on the
caller's thread under the capture, each span's event made as the span ends, events
handed to the loop) alternate in ABBA order (plain first on even repeats, streamed
first on odd ones), and the overhead is the ratio of the medians of seconds per token.
The per-image set-up of a stream (model inputs, regions, token assignment) is a
fixed cost, reported apart (``setup_s_per_image``), not spread over the tokens.

Latency. ``event_latency_ms``: from a span's last token to its event's emission by
the stream (``SpanEvent.latency_ms``); ``delivery_latency_ms``: from the span's last
token to the moment the consumer's loop receives the event (generation hands
events over at its next token), over every span of the streamed runs.

Off the main thread. ``attrib serve`` iterates streams on a server thread; the same
comparison is repeated with both plain generation and the stream run on a fresh
non-main thread (``non_main_thread``), and against plain generation on the main thread.

Leave-one-out against the streamed path, per span: LOO pays ``K`` teacher-forced
ablation forwards per example (all spans scored at once), divided by the number of
spans. The streamed path pays the estimator's dot product (``loo_speedup`` counts
only that) and, counting everything (``loo_speedup_incl_capture``): what the streamed
path adds to each of the span's tokens plus the span's close. The per-token cost is
the net one, measured: ``--paired-reps`` (31; quick 21) short ABBA pairs of plain
generation and a fully consumed stream at the first length, the median of the paired
differences (at least 0), with a 95 % percentile-bootstrap interval over the pairs
(``capture_s_per_token_difference_ci``). Those streams close spans too: each close's
cost is its event latency (the span's batched pass, its features to the host, scores,
trajectory and event object, on the generation path); the paired streams' closes are
taken out of the difference, and a close is counted once per span at its cost for a
span of the leave-one-out examples' length (``span_close_s``: latency against span
length, a Theil-Sen line over the paired streams' spans, ``span_close_fit``; or the
event measured apart, ``event_s_per_span``, if larger). What a stream costs once
(``stream_fixed_s``: capture set-up, prefill, final event, teardown; the same paired
design at 2 generated tokens) is taken out of the difference too and spread over the
spans of one stream of the leave-one-out examples (``spans_per_example``);
``loo_speedup_incl_capture_low`` is the speed-up with the interval's upper end in
its place. The time spent inside the capture's own code (``_record`` and
``push_token`` wrapped in separate instrumented streams) is reported beside
(``capture_s_per_token_instrumented``); it is not net of the transformers attention
code that the capture's direct kernel call replaces.

Memory. Fresh subprocesses of one kind (this script, same example, same length,
same warm-up; only the mode differs), alternating, generate ``--mem-tokens`` tokens
(default 4,000) plainly or streamed (capture and events included). Each resets
its peak RSS just before (Linux ``/proc/self/clear_refs``; a stream's set-up is done
before), so ``peak_rss_*_mb`` is the peak while generating and ``growth_*_mb`` its rise
above the RSS before; ``streaming_extra_mb`` is the streamed growth minus the plain one
(medians). Loading the model peaks higher and would hide it: that whole-process peak is
``peak_rss_process_*_mb``.

Writes ``{"runs": [{"generated_tokens", "overhead_ratio", "event_latency_ms", ...}],
"loo_speedup", "loo_speedup_incl_capture", "memory", "non_main_thread", ...}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _rss import reset_peak_rss, status_mb  # examples/_rss.py (this folder is on sys.path)
from scipy import stats

from attrib.ablation import AblationRunner, loo_subsets
from attrib.capture.sdpa import AttentionCapture
from attrib.io import atomic_write_json
from attrib.shapes.v2 import make_example  # the bundled model's benchmark (v2)
from attrib.streaming import Attributor, SpanEvent


def plain(attributor: Attributor, x: dict[str, torch.Tensor], n: int) -> float:
    """Seconds per token of plain greedy ``generate`` of ``n`` tokens."""
    with torch.inference_mode():
        t0 = time.perf_counter()
        attributor.model.generate(**x, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return (time.perf_counter() - t0) / n


def streamed(
    attributor: Attributor,
    ex: Any,
    n: int,
    latencies: list[float],
    delivery: list[float],
    setup: list[float],
    lengths: list[int] | None = None,
) -> float:
    """Seconds per token of a consumed stream; the per-image set-up (inputs, regions) is timed apart.

    Each span event's latency (ms) goes to ``latencies``, and its span's token count to ``lengths`` if given.
    """
    t0 = time.perf_counter()
    s = attributor.stream(ex.image(), ex.question.text, max_new_tokens=n, min_new_tokens=n)
    setup.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    with s:
        for ev in s:
            if isinstance(ev, SpanEvent):
                delivery.append(1000.0 * (time.perf_counter() - s._t0 - ev.span_end_s))
                latencies.append(ev.latency_ms)
                if lengths is not None:
                    lengths.append(ev.end - ev.start)
    return (time.perf_counter() - t0) / n


def in_thread(fn: Callable[[], float]) -> float:
    """Run ``fn`` on a fresh thread (as ``attrib serve`` does) and return its result."""
    out: list[float] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def capture_seconds(attributor: Attributor, ex: Any, n: int) -> float:
    """Seconds per token spent inside the capture's own code during one stream (instrumented run)."""
    spent = [0.0]
    names = ("_record", "push_token")
    saved = {k: getattr(AttentionCapture, k) for k in names}

    def timed(fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[0] += time.perf_counter() - t0

        return run

    try:
        for k, fn in saved.items():
            setattr(AttentionCapture, k, timed(fn))
        with attributor.stream(ex.image(), ex.question.text, max_new_tokens=n, min_new_tokens=n) as s:
            for _ in s:
                pass
    finally:
        for k, fn in saved.items():
            setattr(AttentionCapture, k, fn)
    return spent[0] / n


def event_seconds(attributor: Attributor, ex: Any, reps: int = 2000) -> float:
    """Seconds of one span's whole event as a stream makes it (scores, top regions, trajectory, event object)."""
    from attrib.capture.spans import Span

    stream = attributor.stream(ex.image(), ex.question.text)  # never iterated: no generation
    f = np.random.default_rng(0).random((attributor.k, *attributor.estimator.coef_.shape), dtype=np.float32)
    span = Span(0, "A span.", 0, 4)
    t0 = time.perf_counter()
    for _ in range(reps):
        stream._event(span, f, {}, 0.0)
    return (time.perf_counter() - t0) / reps


def loo_vs_estimator(attributor: Attributor, n_examples: int) -> dict[str, Any]:
    loo_per_span, est_per_span, tokens_per_span, spans_per_example = [], [], [], []
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
        spans_per_example.append(len(spans))
    return {
        "loo_s_per_span": statistics.median(loo_per_span),
        "estimator_s_per_span": statistics.median(est_per_span),
        "tokens_per_span": statistics.median(tokens_per_span),
        "spans_per_example": statistics.median(spans_per_example),
        "n_examples": len(loo_per_span),
    }


def child(mode: str, tokens: int) -> None:
    """One memory run: ``tokens`` tokens generated plainly or streamed; prints the peak RSS while generating."""
    attributor = Attributor.load()
    ex = make_example("test", 1)  # 224x224: 64 visual tokens, so 4,000 generated tokens fit the 4,096 context
    x = attributor.loaded.build(ex.image(), ex.question.text)
    plain(attributor, x, 16)  # the same warm-up in both modes
    attributor.stream(ex.image(), ex.question.text, max_new_tokens=16, min_new_tokens=16).run()
    n_spans = 0
    if mode == "plain":
        before = reset_peak_rss()
        plain(attributor, x, tokens)
    else:
        s = attributor.stream(ex.image(), ex.question.text, max_new_tokens=tokens, min_new_tokens=tokens)
        before = reset_peak_rss()
        n_spans = len(s.run().spans)
    peak = status_mb("VmHWM")
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    doc = {"peak_rss_mb": peak, "rss_before_mb": before, "growth_mb": peak - before}
    print(json.dumps(doc | {"peak_rss_process_mb": process_peak, "n_spans": n_spans}))


def memory(tokens: int, reps: int) -> dict[str, Any]:
    got: dict[str, list[dict[str, Any]]] = {"plain": [], "streamed": []}
    for _ in range(reps):
        for mode in got:
            cmd = [sys.executable, __file__, "--child", mode, "--tokens", str(tokens)]
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            got[mode].append(json.loads(res.stdout.strip().splitlines()[-1]))
    med = {m: statistics.median(r["peak_rss_mb"] for r in rs) for m, rs in got.items()}
    grow = {m: statistics.median(r["growth_mb"] for r in rs) for m, rs in got.items()}
    return {
        "generated_tokens": tokens,
        "reps": reps,
        "peak_rss_plain_mb": med["plain"],
        "peak_rss_streamed_mb": med["streamed"],
        "peak_rss_plain_mb_each": [r["peak_rss_mb"] for r in got["plain"]],
        "peak_rss_streamed_mb_each": [r["peak_rss_mb"] for r in got["streamed"]],
        "growth_plain_mb": grow["plain"],
        "growth_streamed_mb": grow["streamed"],
        "growth_plain_mb_each": [r["growth_mb"] for r in got["plain"]],
        "growth_streamed_mb_each": [r["growth_mb"] for r in got["streamed"]],
        "peak_rss_process_plain_mb": statistics.median(r["peak_rss_process_mb"] for r in got["plain"]),
        "peak_rss_process_streamed_mb": statistics.median(r["peak_rss_process_mb"] for r in got["streamed"]),
        "streaming_extra_mb": grow["streamed"] - grow["plain"],
        "n_spans": statistics.median(r["n_spans"] for r in got["streamed"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true", help="256 tokens, 5 LOO examples, one memory run per mode")
    ap.add_argument("--reps", type=int, default=None, help="timing repeats per mode and length (default 5)")
    ap.add_argument("--mem-tokens", type=int, default=4000)
    ap.add_argument(
        "--paired-reps", type=int, default=None, help="paired repeats for the per-token cost (default 31, quick 21)"
    )
    ap.add_argument("--child", choices=("plain", "streamed"), help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.tokens)
        return
    if not args.json:
        ap.error("--json is required")
    lengths = [256] if args.quick else [256, 1000, 2000]
    reps = args.reps or 5
    args.paired_reps = args.paired_reps or (21 if args.quick else 31)
    t_start = time.perf_counter()
    attributor = Attributor.load()
    ex = make_example("test", 1)  # 224x224: 64 visual tokens, so 4,000 generated tokens fit the 4,096 context
    x = attributor.loaded.build(ex.image(), ex.question.text)
    streamed(attributor, ex, 16, [], [], [])  # warm-up
    plain(attributor, x, 16)
    out: dict[str, Any] = {
        "model": attributor.name,
        "runs": [],
        "machine": platform.machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "reps": reps,
        "quick": args.quick,
    }
    for n in lengths:
        p: list[float] = []
        s: list[float] = []
        lat: list[float] = []
        dlv: list[float] = []
        setup: list[float] = []
        for r in range(reps):  # ABBA: plain first on even repeats, streamed first on odd ones
            if r % 2 == 0:
                p.append(plain(attributor, x, n))
                s.append(streamed(attributor, ex, n, lat, dlv, setup))
            else:
                s.append(streamed(attributor, ex, n, lat, dlv, setup))
                p.append(plain(attributor, x, n))
        mp, ms = statistics.median(p), statistics.median(s)
        run = {
            "generated_tokens": n,
            "ms_per_token_plain": mp * 1e3,
            "ms_per_token_streaming": ms * 1e3,
            "ms_per_token_plain_each": [v * 1e3 for v in p],
            "ms_per_token_streaming_each": [v * 1e3 for v in s],
            "added_ms_per_token": (ms - mp) * 1e3,
            # Each repeat's streamed run minus its plain run (ABBA order): drift between repeats cancels.
            "added_ms_per_token_paired": statistics.median(b - a for a, b in zip(p, s, strict=True)) * 1e3,
            "overhead_ratio": ms / mp,
            "event_latency_ms": statistics.median(lat),
            "event_latency_p95_ms": float(np.percentile(lat, 95)),
            "delivery_latency_ms": statistics.median(dlv),
            "delivery_latency_p95_ms": float(np.percentile(dlv, 95)),
            "n_events": len(lat),
            "setup_s_per_image": statistics.median(setup),
        }
        out["runs"].append(run)
        print(
            f"{n} tokens: plain {mp * 1e3:.3f} ms/tok, streaming {ms * 1e3:.3f} ms/tok, x{ms / mp:.4f}; "
            f"event latency median {run['event_latency_ms']:.2f} ms, p95 {run['event_latency_p95_ms']:.2f} ms; "
            f"delivery p95 {run['delivery_latency_p95_ms']:.2f} ms"
        )
    # The serve case: generation on a non-main thread.
    n0 = lengths[0]
    pm, pt, st = [], [], []
    for _ in range(reps):
        pm.append(plain(attributor, x, n0))
        pt.append(in_thread(lambda: plain(attributor, x, n0)))
        st.append(in_thread(lambda: streamed(attributor, ex, n0, [], [], [])))
    mpm, mpt, mst = statistics.median(pm), statistics.median(pt), statistics.median(st)
    out["non_main_thread"] = {
        "generated_tokens": n0,
        "ms_per_token_plain_main": mpm * 1e3,
        "ms_per_token_plain_thread": mpt * 1e3,
        "ms_per_token_streaming_thread": mst * 1e3,
        "thread_penalty_plain": mpt / mpm,
        "overhead_ratio_vs_plain_thread": mst / mpt,
        "overhead_ratio_vs_plain_main": mst / mpm,
    }
    print(
        f"non-main thread, {n0} tokens: plain {mpt * 1e3:.3f} ms/tok (main {mpm * 1e3:.3f}), streamed "
        f"{mst * 1e3:.3f} ms/tok: x{mst / mpt:.3f} vs plain there, x{mst / mpm:.3f} vs plain on the main thread"
    )
    # Leave-one-out against the streamed path, per span.
    loo = loo_vs_estimator(attributor, 5 if args.quick else 20)
    direct = statistics.median(capture_seconds(attributor, ex, n0) for _ in range(3))
    # What the streamed path adds to a token, net: many short paired ABBA repeats (plain vs fully consumed stream)
    # at the first length, the median of the paired differences with a bootstrap interval over repeats.
    pp: list[float] = []
    sp: list[float] = []
    paired_events: list[float] = []  # one entry per span event of the paired streams: its latency (ms)
    paired_lengths: list[int] = []  # and its span's token count
    for r in range(args.paired_reps):
        pair = [
            lambda: plain(attributor, x, n0),
            lambda: streamed(attributor, ex, n0, paired_events, [], [], paired_lengths),
        ]
        got = [f() for f in (pair if r % 2 == 0 else pair[::-1])]
        a_, b_ = got if r % 2 == 0 else got[::-1]
        pp.append(a_)
        sp.append(b_)
    diffs = np.asarray(sp) - np.asarray(pp)
    # What a stream costs once, whatever its length (capture set-up, prefill, final event, teardown): the same
    # paired ABBA design at 2 generated tokens, seconds per stream.
    fp: list[float] = []
    fs: list[float] = []
    for r in range(args.paired_reps):
        pair = [lambda: plain(attributor, x, 2), lambda: streamed(attributor, ex, 2, [], [], [])]
        got = [f() for f in (pair if r % 2 == 0 else pair[::-1])]
        a_, b_ = got if r % 2 == 0 else got[::-1]
        fp.append(2 * a_)
        fs.append(2 * b_)
    fixed_s = max(0.0, float(np.median(np.asarray(fs) - np.asarray(fp))))
    ci = stats.bootstrap((diffs,), np.median, confidence_level=0.95, method="percentile", random_state=0)
    diff = max(0.0, float(np.median(diffs)))
    event_s = event_seconds(attributor, ex)
    # The paired streams made their own events: what a span's close costs in them (its event latency: the last
    # batched pass, the features to the host, the event) is taken out of the per-token cost once per span and
    # counted once per span below. (The last pass covers a longer span there than the average: conservative.)
    # A span's close runs the batched pass over the span's tokens, then the event: its cost grows with the span's
    # length. Fitted on the paired streams' spans (Theil-Sen: robust to a preempted one) and read at the leave-one-
    # out examples' tokens per span; the paired streams' own closes (their measured latencies) come out of the
    # per-token difference.
    fit = stats.theilslopes(np.asarray(paired_events) / 1e3, np.asarray(paired_lengths, dtype=float))
    span_close_s = max(0.0, float(fit.intercept + fit.slope * loo["tokens_per_span"]))
    spans_per_token = len(paired_events) / (args.paired_reps * n0)
    closes_per_token = sum(paired_events) / 1e3 / (args.paired_reps * n0)
    # The per-stream cost is spread over a stream's spans on the leave-one-out examples (their median count),
    # and taken out of the per-token difference, where it was spread over n0 tokens.
    capture_s_per_token = max(0.0, diff - closes_per_token - fixed_s / n0)
    fixed_per_span = fixed_s / max(1.0, loo["spans_per_example"])
    close = max(span_close_s, event_s, loo["estimator_s_per_span"])
    per_span = capture_s_per_token * loo["tokens_per_span"] + close + fixed_per_span
    loo |= {
        "capture_s_per_token_instrumented": direct,
        "capture_s_per_token_difference": diff,
        "capture_s_per_token_difference_ci": [float(ci.confidence_interval.low), float(ci.confidence_interval.high)],
        "paired_reps": args.paired_reps,
        "paired_tokens": n0,
        "capture_s_per_token": capture_s_per_token,
        "paired_spans_per_token": spans_per_token,
        "span_close_s": span_close_s,
        "span_close_fit": {
            "intercept_s": float(fit.intercept),
            "s_per_token": float(fit.slope),
            "n_spans": len(paired_events),
            "median_tokens": statistics.median(paired_lengths),
            "median_latency_s": statistics.median(paired_events) / 1e3,
        },
        "stream_fixed_s": fixed_s,
        "stream_fixed_s_per_span": fixed_per_span,
        "event_s_per_span": event_s,
        "streamed_s_per_span_incl_capture": per_span,
    }
    out["loo"] = loo
    out["loo_speedup"] = loo["loo_s_per_span"] / loo["estimator_s_per_span"]
    out["loo_speedup_incl_capture"] = loo["loo_s_per_span"] / per_span
    # The same with the interval's upper end as the per-token cost: the speed-up the data cannot rule out being.
    high = max(0.0, float(ci.confidence_interval.high) - closes_per_token - fixed_s / n0)
    worst = high * loo["tokens_per_span"] + close + fixed_per_span
    out["loo_speedup_incl_capture_low"] = loo["loo_s_per_span"] / worst
    print(
        f"leave-one-out {loo['loo_s_per_span'] * 1e3:.2f} ms/span vs estimator "
        f"{loo['estimator_s_per_span'] * 1e6:.1f} us/span: x{out['loo_speedup']:.0f}; streamed path incl. capture "
        f"{per_span * 1e6:.0f} us/span (capture {capture_s_per_token * 1e6:.1f} us/token x "
        f"{loo['tokens_per_span']:.1f} tokens + span close {close * 1e6:.0f} us + per-stream {fixed_s * 1e3:.2f} ms / "
        f"{loo['spans_per_example']:.0f} spans): x{out['loo_speedup_incl_capture']:.0f}"
    )
    out["memory"] = memory(args.mem_tokens, 1 if args.quick else 2)
    m = out["memory"]
    print(
        f"peak RSS at {args.mem_tokens} tokens: plain {m['peak_rss_plain_mb']:.1f} MB, streamed "
        f"{m['peak_rss_streamed_mb']:.1f} MB ({m['streaming_extra_mb']:+.1f} MB, {m['n_spans']} spans)"
    )
    out["wall_s"] = time.perf_counter() - t_start
    atomic_write_json(args.json, out)


if __name__ == "__main__":
    main()
