"""docs/benchmarks.md's Streaming, Capture and Collection blocks, from the benchmarks' JSONs.

Discovered by ``examples/bench_docs.py`` (``BLOCKS`` below): each block is rebuilt from its JSON in
``docs/results/`` by ``python examples/bench_docs.py --write docs/benchmarks.md``.

- ``streaming`` / ``streaming-quick``: ``examples/bench_streaming.py --json`` (full / ``--quick``);
- ``capture`` / ``capture-quick``: ``examples/bench_capture.py --json`` (full / ``--quick``);
- ``collection`` / ``collection-quick``: ``examples/bench_collect.py --json`` (full / ``--quick``).

Targets are those of the streaming issue: streamed overhead ≤ 1.05 at every length, event
latency p95 ≤ 5 ms, capture overhead ≤ 1.03, capture memory ≤ 1 MB per 1,000 tokens beyond the
features, streamed path incl. capture ≥ 100x cheaper than leave-one-out per span, batched ablation
≥ 2x unbatched. Each figure is printed beside whether it meets its target.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Renderer = Callable[[dict[str, Any]], list[str]]

STREAM_OVERHEAD = 1.05
EVENT_P95_MS = 5.0
CAPTURE_OVERHEAD = 1.03
CAPTURE_MB_PER_1000 = 1.0
LOO_SPEEDUP = 100.0
BATCHED_SPEEDUP = 2.0


def _meets(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _n(x: float) -> str:
    """A count or a large ratio: thousands separated, no decimals."""
    return f"{x:,.0f}"


def _range(lo: float, hi: float, fmt: str) -> str:
    """``lo–hi``, or one value when both print the same."""
    a, b = format(lo, fmt), format(hi, fmt)
    return a if a == b else f"{a}–{b}"


def _conditions(d: dict[str, Any]) -> str:
    reps = d.get("reps")
    kind = "`--quick`" if d.get("quick") else "full run"
    return f"{kind}; {d.get('torch_threads')} torch threads, torch {d.get('torch', '?')}; {reps} alternating repeats"


def streaming(d: dict[str, Any]) -> list[str]:
    """bench_streaming.py: overhead and latency per length, the non-main thread, leave-one-out, memory."""
    runs = d["runs"]
    lines = [
        f"Measured: {d['model']} with its bundled estimator; {_conditions(d)} per length (medians); "
        f"wall time {d['wall_s'] / 60:.1f} min.",
        "",
        "| generated tokens | plain ms / token | streamed ms / token | overhead ratio | event latency median / p95 "
        "(ms) | delivery latency median / p95 (ms) | events |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['generated_tokens']:,} | {r['ms_per_token_plain']:.3f} | {r['ms_per_token_streaming']:.3f} | "
            f"{r['overhead_ratio']:.3f} | {r['event_latency_ms']:.2f} / {r['event_latency_p95_ms']:.2f} | "
            f"{r['delivery_latency_ms']:.2f} / {r['delivery_latency_p95_ms']:.2f} | {r['n_events']} |"
        )
    worst = max(r["overhead_ratio"] for r in runs)
    p95 = max(r["event_latency_p95_ms"] for r in runs)
    setup = [r["setup_s_per_image"] for r in runs]
    lines += [
        "",
        f"Overhead ≤ {STREAM_OVERHEAD}: {_meets(worst <= STREAM_OVERHEAD)} (largest {worst:.3f}); event latency "
        f"p95 ≤ {EVENT_P95_MS:g} ms: {_meets(p95 <= EVENT_P95_MS)} (largest {p95:.2f} ms). Per-image set-up "
        f"(inputs, regions, assignment; not spread over tokens): {_range(min(setup), max(setup), '.3f')} s.",
    ]
    t = d.get("non_main_thread")
    if t:
        lines += [
            "",
            f"Iterated from a non-main thread (as `attrib serve` does), {t['generated_tokens']:,} tokens: plain "
            f"`generate` {t['ms_per_token_plain_thread']:.3f} ms / token there against "
            f"{t['ms_per_token_plain_main']:.3f} on the main thread (×{t['thread_penalty_plain']:.3f}); the stream "
            f"{t['ms_per_token_streaming_thread']:.3f} ms / token, ×{t['overhead_ratio_vs_plain_thread']:.3f} plain "
            f"generation on that thread.",
        ]
    loo = d["loo"]
    inc = d["loo_speedup_incl_capture"]
    lines += [
        "",
        "| per span | cost |",
        "|---|---|",
        f"| leave-one-out (K ablation forwards / spans) | {loo['loo_s_per_span'] * 1e3:.2f} ms |",
        f"| estimator dot product | {loo['estimator_s_per_span'] * 1e6:.1f} µs |",
        *_per_token_rows(loo),
        f"| streamed path incl. capture ({loo['tokens_per_span']:.1f} tokens per span) | "
        f"{loo['streamed_s_per_span_incl_capture'] * 1e6:.0f} µs |",
        "",
        f"Leave-one-out against the dot product (`loo_speedup`): ×{_n(d['loo_speedup'])}; against the streamed "
        f"path including capture (`loo_speedup_incl_capture`): ×{_n(inc)}{_low(d)}, target ≥ {LOO_SPEEDUP:g}: "
        f"{_meets(inc >= LOO_SPEEDUP)} (n = {loo['n_examples']} examples).",
    ]
    m = d.get("memory")
    if m:
        lines += [
            "",
            f"Memory at {m['generated_tokens']:,} generated tokens, fresh subprocesses of this script (medians of "
            f"{m['reps']} per mode, alternating), peak RSS while generating: plain {m['peak_rss_plain_mb']:.1f} MB, "
            f"streamed {m['peak_rss_streamed_mb']:.1f} MB; rise above the RSS before generating: plain "
            f"{m['growth_plain_mb']:.1f} MB, streamed {m['growth_streamed_mb']:.1f} MB: the streamed path's own "
            f"memory (capture and events; {m['n_spans']:.0f} spans) is {m['streaming_extra_mb']:+.1f} MB.",
        ]
    return lines


def _per_token_rows(loo: dict[str, Any]) -> list[str]:
    """The per-token and per-event rows of the leave-one-out table (both layouts of bench_streaming's JSON)."""
    us = 1e6
    if "capture_s_per_token_difference_ci" not in loo:  # runs before 2026-11-30 evening: the larger of two measures
        return [
            f"| capture, per token: instrumented / streamed − plain / used (the larger) | "
            f"{loo['capture_s_per_token_instrumented'] * us:.1f} / {loo['capture_s_per_token_difference'] * us:.1f} / "
            f"{loo['capture_s_per_token'] * us:.1f} µs |",
            f"| the worker's whole event (scores, top regions, event) | {loo['event_s_per_span'] * us:.1f} µs |",
        ]
    lo, hi = loo["capture_s_per_token_difference_ci"]
    if "span_close_s" in loo:  # runs from 2026-12-01: the span closes are taken out of the paired difference
        return [
            f"| streamed path per token, net: median paired difference (streamed − plain, {loo['paired_reps']} ABBA "
            f"pairs of {loo['paired_tokens']:,} tokens) [95 % interval] | "
            f"{loo['capture_s_per_token_difference'] * us:.1f} µs [{lo * us:.1f}, {hi * us:.1f}] |",
            _close_row(loo),
            *(
                [
                    f"| a stream's one-off cost (set-up, prefill, final event; paired at 2 tokens), spread over "
                    f"{loo['spans_per_example']:.0f} spans (median of the leave-one-out examples) | "
                    f"{loo['stream_fixed_s'] * 1e3:.2f} ms, {loo['stream_fixed_s_per_span'] * us:.0f} µs per span |"
                ]
                if "stream_fixed_s" in loo
                else []
            ),
            f"| per token without the span closes{' and the one-off cost' if 'stream_fixed_s' in loo else ''}, used | "
            f"{loo['capture_s_per_token'] * us:.1f} µs |",
            f"| time inside the capture's own code per token (instrumented; not net of the attention code it "
            f"replaces) | {loo['capture_s_per_token_instrumented'] * us:.1f} µs |",
            f"| the whole event made apart (scores, top regions, trajectory, event) | "
            f"{loo['event_s_per_span'] * us:.1f} µs |",
        ]
    return [
        f"| streamed path per token, net: median paired difference (streamed − plain, {loo['paired_reps']} ABBA "
        f"pairs of {loo['paired_tokens']:,} tokens) [95 % interval], used | {loo['capture_s_per_token'] * us:.1f} µs "
        f"[{lo * us:.1f}, {hi * us:.1f}] |",
        f"| time inside the capture's own code per token (instrumented; not net of the attention code it "
        f"replaces) | {loo['capture_s_per_token_instrumented'] * us:.1f} µs |",
        f"| the whole event (scores, top regions, trajectory, event) | {loo['event_s_per_span'] * us:.1f} µs |",
    ]


def _close_row(loo: dict[str, Any]) -> str:
    """The span-close row: the median latency, or the fitted line read at the leave-one-out span length."""
    us = 1e6
    fit = loo.get("span_close_fit")
    if fit is None:
        return (
            f"| a span's close in those streams (median event latency: last batched pass, features to the host, "
            f"event), {loo['paired_spans_per_token'] * 1e3:.1f} per 1,000 tokens | {loo['span_close_s'] * us:.1f} µs |"
        )
    return (
        f"| a span's close (event latency: its batched pass, features to the host, event), fitted on the paired "
        f"streams' {fit['n_spans']} spans ({fit['intercept_s'] * us:.0f} µs + {fit['s_per_token'] * us:.1f} µs per "
        f"token; median {fit['median_latency_s'] * us:.0f} µs at {fit['median_tokens']:.0f} tokens), at "
        f"{loo['tokens_per_span']:.1f} tokens | {loo['span_close_s'] * us:.0f} µs |"
    )


def _low(d: dict[str, Any]) -> str:
    """`` (×N with the per-token interval's upper end)`` where the JSON has it."""
    low = d.get("loo_speedup_incl_capture_low")
    return "" if low is None else f" (×{_n(low)} with the per-token interval's upper end)"


def streaming_quick(d: dict[str, Any]) -> list[str]:
    """bench_streaming.py --quick, in one paragraph."""
    r = d["runs"][0]
    m = d.get("memory") or {}
    mem = (
        f"; at {m['generated_tokens']:,} tokens the streamed path's own memory is {m['streaming_extra_mb']:+.1f} MB "
        f"(rise while generating, streamed minus plain, {m['reps']} per mode)"
        if m
        else ""
    )
    return [
        f"`--quick` ({d['model']}, {r['generated_tokens']:,} tokens, {d['reps']} alternating repeats, "
        f"{d['torch_threads']} torch threads; its own run): overhead ×{r['overhead_ratio']:.3f} "
        f"({_meets(r['overhead_ratio'] <= STREAM_OVERHEAD)}), event latency p95 {r['event_latency_p95_ms']:.2f} ms "
        f"({_meets(r['event_latency_p95_ms'] <= EVENT_P95_MS)}), `loo_speedup` ×{_n(d['loo_speedup'])}, "
        f"`loo_speedup_incl_capture` ×{_n(d['loo_speedup_incl_capture'])}{_low(d)} "
        f"({_meets(d['loo_speedup_incl_capture'] >= LOO_SPEEDUP)}; n = {d['loo']['n_examples']}){mem}.",
    ]


def capture(d: dict[str, Any]) -> list[str]:
    """bench_capture.py: overhead per model and length, then memory per model."""
    lines = [
        f"Measured on {d['device']}: {_conditions(d)} per model and length (medians); wall time "
        f"{d['wall_s'] / 60:.1f} min.",
        "",
        "| model | generated tokens | plain ms / token | capture ms / token | added ms / token | overhead ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in d["runs"]:
        lines.append(
            f"| {r['model']} | {r['generated_tokens']:,} | {r['ms_per_token_plain']:.3f} | "
            f"{r['ms_per_token_capture']:.3f} | {r['added_ms_per_token']:+.3f} | {r['overhead_ratio']:.3f} |"
        )
    worst = max(r["overhead_ratio"] for r in d["runs"])
    lines += ["", f"Overhead ≤ {CAPTURE_OVERHEAD}: {_meets(worst <= CAPTURE_OVERHEAD)} (largest {worst:.3f})."]
    if d.get("memory"):
        lines += [
            "",
            "| model | generated tokens | peak RSS plain / capture MB | rise plain / capture MB | capture's own MB | "
            "features MB | beyond the features, MB / 1,000 tokens |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in d["memory"]:
            lines.append(
                f"| {m['model']} | {m['generated_tokens']:,} | {m['peak_rss_plain_mb']:.1f} / "
                f"{m['peak_rss_capture_mb']:.1f} | {m['growth_plain_mb']:.1f} / {m['growth_capture_mb']:.1f} | "
                f"{m['capture_extra_mb']:+.1f} | {m['features_mb']:.2f} | "
                f"{m['capture_growth_mb_per_1000_tokens']:+.3f} |"
            )
        growth = max(m["capture_growth_mb_per_1000_tokens"] for m in d["memory"])
        reps = d["memory"][0]["reps"]
        lines += [
            "",
            f"Memory: fresh subprocesses of one kind, {reps} per mode, alternating (medians); peak RSS while "
            "generating (reset just before), and its rise above the RSS before generating; the capture's own memory "
            f"is the capture's rise minus the plain one. Beyond the features ≤ {CAPTURE_MB_PER_1000:g} MB per 1,000 "
            f"tokens: {_meets(growth <= CAPTURE_MB_PER_1000)} (largest {growth:+.3f}).",
        ]
    return lines


def collection(d: dict[str, Any]) -> list[str]:
    """bench_collect.py: ablation forwards, batching, examples per hour."""
    s = d["batched_speedup"]
    bs = d.get("batch_size", 16)
    lines = [
        f"Measured: {d['model']}, {d['torch_threads']} torch threads; K = 32 regions, M = 32 random removal "
        f"sets per example, medians over {d['n_examples_timed']} examples "
        f"({'`--quick`' if d.get('quick') else 'full run'}).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| ablation forwards per second, batched ({bs} per forward) | {d['forwards_per_second']:.1f} |",
        f"| ablation forwards per second, unbatched | {d['forwards_per_second_unbatched']:.1f} |",
        f"| batched speed-up (`batched_speedup`) | ×{s:.2f} (target ≥ {BATCHED_SPEEDUP:g}: "
        f"{_meets(s >= BATCHED_SPEEDUP)}) |",
    ]
    if "seconds_fixed_per_forward" in d:
        lines.append(
            f"| fixed cost of a forward (a one-token text forward) | {d['seconds_fixed_per_forward'] * 1e3:.2f} ms "
            f"(batching all of it away alone: ×{d['batched_speedup_ceiling']:.2f}) |"
        )
    if "gflops_per_s_matmul" in d:
        lines.append(
            f"| this CPU's float32 matrix-product rate (1536², the same threads) | {d['gflops_per_s_matmul']:.0f} "
            f"GFLOP/s (an unbatched forward brought up to it: ×{d['batched_speedup_ceiling_compute']:.2f}) |"
        )
    for key, label in (("examples_per_hour", "32 subsets"), ("examples_per_hour_with_loo", "32 subsets + LOO")):
        if key in d:
            lines.append(f"| examples per hour ({label}, n = {d['collect_examples_timed']}) | {_n(d[key])} |")
    if "projected_hours_2000" in d:
        lines.append(
            f"| projected wall time for 2,000 examples | {d['projected_hours_2000']:.2f} h "
            f"({d.get('projected_hours_2000_with_loo', float('nan')):.2f} h with leave-one-out) |"
        )
    by = d.get("seconds_per_forward_by_batch_size")
    if by:
        lines += [
            "",
            f"By batch size (the same removal sets, alternating; {d['tokens_per_removal_set']:.0f} tokens per "
            f"compacted sequence; GFLOP/s counts 2 FLOPs per decoder-layer parameter per token, "
            f"{d['dense_params_lm'] / 1e6:.2f} M parameters: a lower bound):",
            "",
            "| removal sets per forward | ms per removal set | speed-up over 1 | GFLOP/s |",
            "|---|---|---|---|",
        ]
        for b, v in by.items():
            lines.append(
                f"| {b} | {v * 1e3:.2f} | ×{d['speedup_by_batch_size'][b]:.2f} | "
                f"{d['gflops_per_s_by_batch_size'][b]:.0f} |"
            )
    return lines


#: block name -> (JSON file under docs/results, renderer); read by examples/bench_docs.py
BLOCKS: dict[str, tuple[str, Renderer]] = {
    "streaming": ("bench_streaming.json", streaming),
    "streaming-quick": ("bench_streaming_quick.json", streaming_quick),
    "capture": ("bench_capture.json", capture),
    "capture-quick": ("bench_capture_quick.json", capture),
    "collection": ("bench_collect.json", collection),
    "collection-quick": ("bench_collect_quick.json", collection),
}
