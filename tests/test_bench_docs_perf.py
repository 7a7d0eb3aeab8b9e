"""examples/tables_perf.py renders the Streaming, Capture and Collection blocks as their JSONs say (by hand)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _streaming(ratio: float, p95: float, incl: float) -> dict[str, Any]:
    run = {
        "generated_tokens": 1000,
        "ms_per_token_plain": 2.0,
        "ms_per_token_streaming": 2.0 * ratio,
        "overhead_ratio": ratio,
        "event_latency_ms": 0.5,
        "event_latency_p95_ms": p95,
        "delivery_latency_ms": 1.25,
        "delivery_latency_p95_ms": 3.0,
        "n_events": 12,
        "setup_s_per_image": 0.15,
    }
    return {
        "model": "m",
        "torch_threads": 2,
        "torch": "2.x",
        "reps": 5,
        "quick": False,
        "wall_s": 90.0,
        "runs": [run],
        "non_main_thread": {
            "generated_tokens": 256,
            "ms_per_token_plain_main": 2.0,
            "ms_per_token_plain_thread": 2.5,
            "ms_per_token_streaming_thread": 2.6,
            "thread_penalty_plain": 1.25,
            "overhead_ratio_vs_plain_thread": 1.04,
        },
        # 50 ms of LOO per span; 10 us/token x 10 tokens + 20 us of event = 120 us: x416.7
        "loo": {
            "loo_s_per_span": 0.05,
            "estimator_s_per_span": 1e-5,
            "capture_s_per_token_instrumented": 8e-6,
            "capture_s_per_token_difference": 1e-5,
            "capture_s_per_token": 1e-5,
            "event_s_per_span": 2e-5,
            "streamed_s_per_span_incl_capture": 1.2e-4,
            "tokens_per_span": 10.0,
            "n_examples": 20,
        },
        "loo_speedup": 5000.0,
        "loo_speedup_incl_capture": incl,
        "memory": {
            "generated_tokens": 4000,
            "reps": 2,
            "peak_rss_plain_mb": 400.0,
            "peak_rss_streamed_mb": 401.5,
            "growth_plain_mb": 10.0,
            "growth_streamed_mb": 11.5,
            "streaming_extra_mb": 1.5,
            "n_spans": 30,
        },
    }


def test_streaming_block_by_hand() -> None:
    tp = _load("tables_perf")
    lines = tp.streaming(_streaming(1.0426, 0.75, 0.05 / 1.2e-4))
    assert "| 1,000 | 2.000 | 2.085 | 1.043 | 0.50 / 0.75 | 1.25 / 3.00 | 12 |" in lines
    text = "\n".join(lines)
    assert "Overhead ≤ 1.05: met (largest 1.043)" in text
    assert "p95 ≤ 5 ms: met (largest 0.75 ms)" in text
    assert "| streamed path incl. capture (10.0 tokens per span) | 120 µs |" in lines
    assert "(`loo_speedup`): ×5,000" in text and "(`loo_speedup_incl_capture`): ×417, target ≥ 100: met" in text
    assert "×1.250" in text and "×1.040 plain generation on that thread" in text
    assert "plain 400.0 MB, streamed 401.5 MB; rise above" in text and "plain 10.0 MB, streamed 11.5 MB" in text
    assert "(capture and events; 30 spans) is +1.5 MB" in text
    assert "5 alternating repeats" in lines[0] and "1.5 min" in lines[0]
    assert "not spread over tokens): 0.150 s." in text  # one length: one value, not a range
    # Misses are said as misses.
    bad = "\n".join(tp.streaming(_streaming(1.2, 6.0, 42.0)))
    assert "Overhead ≤ 1.05: **not met** (largest 1.200)" in bad
    assert "p95 ≤ 5 ms: **not met** (largest 6.00 ms)" in bad
    assert "×42, target ≥ 100: **not met**" in bad
    quick = tp.streaming_quick(_streaming(1.2, 0.75, 150.0))[0]
    assert "overhead ×1.200 (**not met**)" in quick and "p95 0.75 ms (met)" in quick and "×150 (met; n = 20)" in quick
    # The layout that takes the span closes out of the paired difference shows each part.
    d = _streaming(1.0426, 0.75, 0.05 / 1.2e-4)
    d["loo"] |= {
        "capture_s_per_token_difference": 1.4e-5,
        "capture_s_per_token_difference_ci": [5e-6, 3e-5],
        "paired_reps": 31,
        "paired_tokens": 256,
        "paired_spans_per_token": 0.05,
        "span_close_s": 8e-5,
        "stream_fixed_s": 2e-3,
        "stream_fixed_s_per_span": 2e-4,
        "spans_per_example": 10,
    }
    rows = "\n".join(tp.streaming(d))
    assert "(streamed − plain, 31 ABBA pairs of 256 tokens) [95 % interval] | 14.0 µs [5.0, 30.0] |" in rows
    assert "event), 50.0 per 1,000 tokens | 80.0 µs |" in rows
    d["loo"]["span_close_fit"] = {
        "intercept_s": 5e-5,
        "s_per_token": 3e-6,
        "n_spans": 120,
        "median_tokens": 20,
        "median_latency_s": 1.1e-4,
    }
    rows = "\n".join(tp.streaming(d))
    assert "paired streams' 120 spans (50 µs + 3.0 µs per token; median 110 µs at 20 tokens), at 10.0 tokens" in rows
    assert "| per token without the span closes and the one-off cost, used | 10.0 µs |" in rows
    assert "spread over 10 spans (median of the leave-one-out examples) | 2.00 ms, 200 µs per span |" in rows


def test_capture_block_by_hand() -> None:
    tp = _load("tables_perf")
    d = {
        "device": "cpu",
        "torch_threads": 2,
        "reps": 3,
        "quick": True,
        "wall_s": 30.0,
        "runs": [
            {
                "model": "bundled",
                "generated_tokens": 256,
                "ms_per_token_plain": 2.0,
                "ms_per_token_capture": 2.05,
                "added_ms_per_token": 0.05,
                "overhead_ratio": 1.025,
            },
            {
                "model": "30m",
                "generated_tokens": 256,
                "ms_per_token_plain": 10.0,
                "ms_per_token_capture": 10.4,
                "added_ms_per_token": 0.4,
                "overhead_ratio": 1.04,
            },
        ],
        # 4,000 tokens: capture 2.5 MB over plain, 0.5 MB of it features: (2.5 - 0.5) / 4 = 0.5 MB per 1,000
        "memory": [
            {
                "model": "bundled",
                "generated_tokens": 4000,
                "reps": 1,
                "peak_rss_plain_mb": 400.0,
                "peak_rss_capture_mb": 402.5,
                "growth_plain_mb": 7.0,
                "growth_capture_mb": 9.5,
                "capture_extra_mb": 2.5,
                "features_mb": 0.5,
                "capture_growth_mb_per_1000_tokens": 0.5,
            }
        ],
    }
    lines = tp.capture(d)
    assert "| bundled | 256 | 2.000 | 2.050 | +0.050 | 1.025 |" in lines
    assert "| 30m | 256 | 10.000 | 10.400 | +0.400 | 1.040 |" in lines
    text = "\n".join(lines)
    assert "Overhead ≤ 1.03: **not met** (largest 1.040)" in text  # the worst model decides
    assert "| bundled | 4,000 | 400.0 / 402.5 | 7.0 / 9.5 | +2.5 | 0.50 | +0.500 |" in lines
    assert "1 per mode" in text and "Beyond the features ≤ 1 MB per 1,000 tokens: met (largest +0.500)" in text
    assert "`--quick`" in lines[0] and "3 alternating repeats" in lines[0]


def test_collection_block_by_hand_and_through_bench_docs(tmp_path: Path) -> None:
    tp = _load("tables_perf")
    d = {
        "model": "bundled",
        "torch_threads": 2,
        "n_examples_timed": 3,
        "quick": True,
        "batch_size": 16,
        "seconds_per_forward_batched": 0.004,
        "seconds_per_forward_unbatched": 0.01,
        "forwards_per_second": 250.0,
        "forwards_per_second_unbatched": 100.0,
        "batched_speedup": 2.5,
        "examples_per_hour": 7758.4,
        "examples_per_hour_with_loo": 5034.0,
        "projected_hours_2000": 2000 / 7758.4,
        "projected_hours_2000_with_loo": 2000 / 5034.0,
        "collect_examples_timed": 8,
        # 1 M parameters, 100 tokens: 2e8 FLOPs per set; 10 ms -> 20 GFLOP/s, 4 ms -> 50
        # 1.5 ms fixed of 10 ms unbatched: at most 10 / 8.5 = x1.18 from sharing it
        "seconds_fixed_per_forward": 0.0015,
        "batched_speedup_ceiling": 0.01 / 0.0085,
        "dense_params_lm": 1_000_000,
        "tokens_per_removal_set": 100.0,
        "seconds_per_forward_by_batch_size": {"1": 0.01, "16": 0.004},
        "speedup_by_batch_size": {"1": 1.0, "16": 2.5},
        "gflops_per_s_by_batch_size": {"1": 20.0, "16": 50.0},
    }
    lines = tp.collection(d)
    fixed = "| fixed cost of a forward (a one-token text forward) | 1.50 ms (batching all of it away alone: ×1.18) |"
    assert fixed in lines
    assert "| 1 | 10.00 | ×1.00 | 20 |" in lines and "| 16 | 4.00 | ×2.50 | 50 |" in lines
    assert "| batched speed-up (`batched_speedup`) | ×2.50 (target ≥ 2: met) |" in lines
    assert "| examples per hour (32 subsets, n = 8) | 7,758 |" in lines
    assert "| projected wall time for 2,000 examples | 0.26 h (0.40 h with leave-one-out) |" in lines
    assert "| batched speed-up (`batched_speedup`) | ×1.60 (target ≥ 2: **not met**) |" in tp.collection(
        d | {"batched_speedup": 1.6}
    )
    # Registered with bench_docs, and written into a page between its markers.
    bd = _load("bench_docs")
    fname, fn = bd.registry()["collection-quick"]
    assert fname == "bench_collect_quick.json" and fn.__name__ == "collection"
    (tmp_path / "bench_collect_quick.json").write_text(json.dumps(d))
    page = tmp_path / "p.md"
    page.write_text("x\n<!-- collection-quick:start -->\nold\n<!-- collection-quick:end -->\ny\n")
    assert bd.main(["--results", str(tmp_path), "--write", str(page)]) == 0
    text = page.read_text()
    assert "old" not in text and "×2.50 (target ≥ 2: met)" in text and text.endswith("y\n")
