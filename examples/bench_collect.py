"""Collection throughput on the bundled model: ablation forwards per second, batching speed-up, examples per hour.

Usage:
    python examples/bench_collect.py --json OUT [--quick]

Writes ``{"forwards_per_second", "batched_speedup", "examples_per_hour",
"projected_hours_2000", ...}``. Batched vs unbatched: the same removal sets
(M = 32 random subsets of K = 32 regions) scored with ``batch_size`` 16 and 1
(``batched_speedup``), and 4, 8 and 32 beside them, alternating within each example (in
reverse order on every other example, so a drift cancels), medians over examples (6 with
``--quick``, 12 otherwise). ``gflops_per_s_by_batch_size`` is the rate each reaches, counting
2 FLOPs per decoder-layer parameter per token of the (compacted) sequences: a lower bound
that leaves out attention scores and the LM head, to show how close a batch is to what
the CPU can do. ``seconds_fixed_per_forward`` is a one-token text forward (the cost a
batch shares), and ``batched_speedup_ceiling`` the speed-up that batching would give if it
removed that whole fixed cost and made nothing else faster: unbatched / (unbatched - fixed).
``gflops_per_s_matmul`` is what this CPU reaches on one large float32 matrix product (the same
threads; a practical peak), and ``batched_speedup_ceiling_compute`` the speed-up batching would give
if it brought the unbatched rate up to that peak: peak / unbatched rate.
Examples per hour is measured end to end with ``attrib.collect`` at the default settings
(32 subsets, no leave-one-out), and with leave-one-out as used for evaluation splits.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from attrib.ablation import AblationRunner, random_subsets
from attrib.capture import capture_generate
from attrib.collect import CollectConfig, collect
from attrib.io import atomic_write_json
from attrib.models import default_model_name
from attrib.regions import segment
from attrib.shapes.v2 import make_example  # the bundled model's benchmark (v2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n_ex = 6 if args.quick else 12
    import attrib

    m = attrib.load()
    model, proc = m.model, m.processor
    layers = m.adapter.attention_modules(model)
    # Dense parameters a token passes through in the language model (decoder layers), for the FLOP rate.
    dense = sum(p.numel() for mod in m.adapter.layers(model) for p in mod.parameters())
    sizes = (1, 4, 8, 16, 32)
    per_size: dict[int, list[float]] = {b: [] for b in sizes}
    tokens_per_set: list[float] = []
    for i in range(n_ex):
        ex = make_example("test", i)
        x = proc.build(ex.image(), ex.question.text)
        assign = segment(ex.image(), 32).assign_tokens(proc.grid_spec())
        res = capture_generate(model, x, assign, decode=proc.tokenizer.decode, max_new_tokens=256)
        subsets = random_subsets(32, 32, seed=i)
        for bs in sizes if i % 2 == 0 else sizes[::-1]:  # alternating within each example, order reversed on odd ones
            r = AblationRunner(model, x, res.generated_ids, assign, batch_size=bs)
            t0 = time.perf_counter()
            r.logprobs(subsets)
            per_size[bs].append((time.perf_counter() - t0) / len(subsets))
        removed = (np.asarray(subsets, dtype=np.float32) @ np.asarray(assign.matrix) > 0).sum(1)
        full = x["input_ids"].shape[1] + len(res.generated_ids)
        tokens_per_set.append(float(np.mean(full - removed)))
    # The fixed cost of one forward (Python, module calls, kernel launches): a one-token text forward.
    one = torch.tensor([[int(x["input_ids"][0, 0])]])
    fixed = []
    with torch.inference_mode():
        for _ in range(5):
            model(input_ids=one)
        for _ in range(30):
            t0 = time.perf_counter()
            model(input_ids=one)
            fixed.append(time.perf_counter() - t0)
    fixed_s = statistics.median(fixed)
    # A practical compute peak of this CPU: a large float32 matrix product (median of 7).
    a, b = torch.randn(1536, 1536), torch.randn(1536, 1536)
    mm = []
    with torch.inference_mode():
        for _ in range(3):
            a @ b
        for _ in range(7):
            t0 = time.perf_counter()
            a @ b
            mm.append(time.perf_counter() - t0)
    gflops_peak = 2 * 1536**3 / statistics.median(mm) / 1e9
    per_batched, per_single = per_size[16], per_size[1]
    med_size = {b: statistics.median(v) for b, v in per_size.items()}
    tokens = statistics.median(tokens_per_set)
    fb, fs = statistics.median(per_batched), statistics.median(per_single)
    out = {
        "model": f"bundled {default_model_name()}",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "quick": args.quick,
        "batch_size": 16,
        "n_examples_timed": n_ex,
        "seconds_per_forward_batched": fb,
        "seconds_per_forward_unbatched": fs,
        "forwards_per_second": 1 / fb,
        "forwards_per_second_unbatched": 1 / fs,
        "batched_speedup": fs / fb,
        "seconds_fixed_per_forward": fixed_s,
        # If batching removed the whole fixed cost of a forward and nothing else: unbatched / (unbatched - fixed).
        "batched_speedup_ceiling": fs / max(fs - fixed_s, 1e-12),
        "gflops_per_s_matmul": gflops_peak,
        "n_layers": len(layers),
        "dense_params_lm": dense,
        "tokens_per_removal_set": tokens,
        "seconds_per_forward_by_batch_size": {str(b): v for b, v in med_size.items()},
        "speedup_by_batch_size": {str(b): fs / v for b, v in med_size.items()},
        # 2 FLOPs per dense parameter per token (attention scores and the LM head left out: a lower bound).
        "gflops_per_s_by_batch_size": {str(b): 2 * dense * tokens / v / 1e9 for b, v in med_size.items()},
    }
    out["batched_speedup_ceiling_compute"] = gflops_peak / out["gflops_per_s_by_batch_size"]["1"]
    print(f"ablation forwards/s: batched {1 / fb:.1f}, unbatched {1 / fs:.1f}, speed-up x{fs / fb:.2f}")
    print(
        f"  this CPU's matrix-product peak {gflops_peak:.0f} GFLOP/s: bringing the unbatched forward "
        f"({out['gflops_per_s_by_batch_size']['1']:.0f} GFLOP/s) up to it would give at most "
        f"x{out['batched_speedup_ceiling_compute']:.2f}"
    )
    print(
        f"  fixed cost of a forward {fixed_s * 1e3:.2f} ms: batching that away alone gives at most "
        f"x{out['batched_speedup_ceiling']:.2f}"
    )
    for b in sizes:
        print(
            f"  batch {b:2d}: {med_size[b] * 1e3:.2f} ms per removal set, x{fs / med_size[b]:.2f}, "
            f"{out['gflops_per_s_by_batch_size'][str(b)]:.0f} GFLOP/s (dense layers, {tokens:.0f} tokens per set)"
        )
    n_col = 8 if args.quick else 32
    for loo in (False, True):
        with tempfile.TemporaryDirectory() as d:
            cfg = CollectConfig(dataset="shapes2:validation", n=n_col, loo=loo, shard_size=8)
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
