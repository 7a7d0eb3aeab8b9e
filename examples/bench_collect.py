"""Collection throughput on the bundled model: ablation forwards per second, batching speed-up, examples per hour.

Usage:
    python examples/bench_collect.py --json OUT [--quick]

Writes ``{"forwards_per_second", "batched_speedup", "examples_per_hour",
"projected_hours_2000", ...}``. Batched vs unbatched: the same removal sets
(M = 32 random subsets of K = 32 regions) scored with ``batch_size`` 16 and 1,
alternating, medians over examples. Examples per hour is measured end to end
with ``attrib.collect`` at the default settings (32 subsets, no leave-one-out),
and with leave-one-out as used for evaluation splits.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from attrib.ablation import AblationRunner, random_subsets
from attrib.capture import capture_generate
from attrib.collect import CollectConfig, collect
from attrib.io import atomic_write_json
from attrib.regions import segment
from attrib.shapes import make_example


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n_ex = 3 if args.quick else 10
    import attrib

    m = attrib.load()
    model, proc = m.model, m.processor
    per_batched, per_single = [], []
    for i in range(n_ex):
        ex = make_example("test", i)
        x = proc.build(ex.image(), ex.question.text)
        assign = segment(ex.image(), 32).assign_tokens(proc.grid_spec())
        res = capture_generate(model, x, assign, decode=proc.tokenizer.decode, max_new_tokens=200)
        subsets = random_subsets(32, 32, seed=i)
        for bs, store in ((16, per_batched), (1, per_single)):
            r = AblationRunner(model, x, res.generated_ids, assign, batch_size=bs)
            t0 = time.perf_counter()
            r.logprobs(subsets)
            store.append((time.perf_counter() - t0) / len(subsets))
    fb, fs = statistics.median(per_batched), statistics.median(per_single)
    out = {
        "model": "bundled shapes-qwen25vl",
        "torch_threads": torch.get_num_threads(),
        "n_examples_timed": n_ex,
        "seconds_per_forward_batched": fb,
        "seconds_per_forward_unbatched": fs,
        "forwards_per_second": 1 / fb,
        "forwards_per_second_unbatched": 1 / fs,
        "batched_speedup": fs / fb,
    }
    print(f"ablation forwards/s: batched {1 / fb:.1f}, unbatched {1 / fs:.1f}, speed-up x{fs / fb:.2f}")
    n_col = 8 if args.quick else 32
    for loo in (False, True):
        with tempfile.TemporaryDirectory() as d:
            cfg = CollectConfig(dataset="shapes:validation", n=n_col, loo=loo, shard_size=8)
            t0 = time.perf_counter()
            coll = collect(cfg, d)
            dt = time.perf_counter() - t0
            n_done = sum(s["n_examples"] + s["n_failed"] for s in coll.manifest["shards"])
        key = "examples_per_hour_with_loo" if loo else "examples_per_hour"
        out[key] = 3600 * n_done / dt
        out["projected_hours_2000" + ("_with_loo" if loo else "")] = 2000 / out[key]
        print(f"{key}: {out[key]:.0f} (n={n_done}); 2,000 examples: {2000 / out[key]:.2f} h")
    out["collect_examples_timed"] = n_col
    atomic_write_json(args.json, out)


if __name__ == "__main__":
    main()
