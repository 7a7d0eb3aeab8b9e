"""Region benchmark: quality of the offline default, clustering time, and the share of regions in a run.

Usage:
    python examples/bench_regions.py --json OUT [--quick] [--benchmark shapes2|shapes]

Writes ``{"purity": {"16", "32", "64"}, "object_recall": {...}, "baselines": {...},
"cluster_seconds": {"256": {K: s}, "1024": {K: s}}, "region_share": {...}}``.
Purity is measured on ``attrib.shapes`` test images (benchmark v2 by default, its mix
of canvases; ``--benchmark shapes`` for v1) with the offline default (``color``);
cluster times are medians over repeats of Ward clustering on feature maps of 256
(16x16) and 1,024 (32x32) patches with D = 384 (DINOv3-S width). The share of a run
is measured with the benchmark's bundled model, generating up to its token budget.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from attrib.io import atomic_write_json
from attrib.regions import cluster_features, segment
from metrics.regions import object_recall, region_purity


def _features(side: int, dim: int, seed: int) -> np.ndarray:
    """Piecewise-smooth random features: 12 random 'objects' plus noise, projected to ``dim``."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(13, dim)).astype(np.float32)
    lab = np.zeros((side, side), dtype=int)
    for i in range(1, 13):
        x, y = rng.integers(0, side - side // 5, size=2)
        lab[y : y + side // 5, x : x + side // 5] = i
    return base[lab] + 0.3 * rng.normal(size=(side, side, dim)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True)
    ap.add_argument("--quick", action="store_true", help="fewer images and repeats (< 2 minutes)")
    ap.add_argument("--benchmark", choices=("shapes2", "shapes"), default="shapes2", help="which test images")
    args = ap.parse_args()
    if args.benchmark == "shapes2":
        from attrib.shapes.v2 import iter_split

        model_name, budget = "shapes2-qwen25vl", 256
    else:
        from attrib.shapes import iter_split

        model_name, budget = "shapes-qwen25vl", 200
    n_img = 30 if args.quick else 200
    reps = 3 if args.quick else 7
    out: dict = {
        "n_images": n_img,
        "benchmark": args.benchmark,
        "split": "test",
        "method": "color",
        "machine": platform.processor() or platform.machine(),
    }
    out["torch_threads"] = torch.get_num_threads()

    exs = list(iter_split("test", n_img))
    out["purity"], out["object_recall"], out["baselines"] = {}, {}, {}
    for k in (16, 32, 64):
        pur, rec = [], []
        for ex in exs:
            part = segment(ex.image(), k, method="color")
            gt = ex.scene.label_map()
            pur.append(region_purity(part.labels, gt))
            rec.append(object_recall(part.labels, gt))
        out["purity"][str(k)] = float(np.mean(pur))
        out["object_recall"][str(k)] = float(np.mean(rec))
        out["baselines"][str(k)] = {}
        for m in ("voronoi", "blocks", "grid"):
            if m == "grid" and k not in (16, 32, 64):
                continue
            pm = [
                (region_purity(p.labels, e.scene.label_map()), object_recall(p.labels, e.scene.label_map()))
                for e in exs
                for p in [segment(e.image(), k, method=m, seed=e.index)]
            ]
            out["baselines"][str(k)][m] = {
                "purity": float(np.mean([a for a, _ in pm])),
                "object_recall": float(np.mean([b for _, b in pm])),
            }
        print(f"K={k}: purity {out['purity'][str(k)]:.3f} object recall {out['object_recall'][str(k)]:.3f}")

    out["cluster_seconds"] = {}
    for side in (16, 32):
        feats = _features(side, 384, seed=side)
        row = {}
        for k in (16, 32, 64, 128):
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                cluster_features(feats, k)
                ts.append(time.perf_counter() - t0)
            row[str(k)] = statistics.median(ts)
        out["cluster_seconds"][str(side * side)] = row
        print(f"{side * side} patches: " + ", ".join(f"K={k} {s * 1e3:.1f} ms" for k, s in row.items()))

    # Share of region computation in a full run on the bundled model: regions + token
    # assignment vs greedy generation of the reasoning trace, per example (medians).
    import attrib
    from attrib.shapes.evaluate import generate_batch

    m = attrib.load(model_name)
    model, proc = m.model, m.processor
    reg_t, gen_t = [], []
    for ex in exs[: 10 if args.quick else 40]:
        t0 = time.perf_counter()
        part = segment(ex.image(), 32, method="color")
        part.assign_tokens("shapes_qwen25vl")
        reg_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        generate_batch(model, proc, [ex.image()], [ex.question.text], max_new_tokens=budget)
        gen_t.append(time.perf_counter() - t0)
    r, g = statistics.median(reg_t), statistics.median(gen_t)
    out["region_share"] = {
        "model": f"bundled {model_name}",
        "region_seconds_median": r,
        "generation_seconds_median": g,
        "share": r / (r + g),
        "n": len(reg_t),
    }
    print(f"region share of a run: {r / (r + g):.3f} (regions {r * 1e3:.0f} ms, generation {g * 1e3:.0f} ms)")
    atomic_write_json(args.json, out)
    print(json.dumps({k: out[k] for k in ("purity", "cluster_seconds")}, indent=1))


if __name__ == "__main__":
    main()
