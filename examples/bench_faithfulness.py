"""Faithfulness end to end on the bundled model: collect small splits, fit the estimator, evaluate every method.

Usage:
    python examples/bench_faithfulness.py --json OUT [--quick] [--work DIR] [--methods LIST]

Stages, each through the ``attrib`` command line in this process (so what runs is what a user runs):

1. ``attrib collect`` a train split (``shapes:train``, 32 removal sets per example), a held-out split
   (``shapes:test``, ``--loo --subsets 64``) and a small validation split (``shapes:validation``,
   ``--subsets 64``) on which ContextCite's Lasso penalty is chosen;
2. ``attrib fit`` the L x H estimator (Pearson loss) on the train split;
3. ``attrib evaluate`` every method on the held-out split with the protocol of docs/evaluate.md: span
   populations, paired differences, clustered intervals, ContextCite at 32 and 64 ablations, insertion and
   deletion curves, 3 estimator seeds and the resampled data-efficiency curve.

The evaluate JSON is written to ``OUT`` (its layout is ``attrib evaluate --json``'s) with one more key,
``bench``: the sizes, the commands and the wall time of every stage. Collections are resumed when ``--work``
already holds them (the identity check refuses different settings), so a rerun only redoes what is missing.

Sizes (train / held-out / validation examples; data-efficiency sizes):

- default: 600 / 200 / 50; ``100,300,600``;
- ``--quick``: 120 / 32 / 12; ``40,120``. Its figures rest on few examples: read their intervals.
- ``--sizes TRAIN,TEST,VALIDATION`` and ``--curve`` override them (``--sizes 10,3,3 --curve 4,8``: a smoke run).

Time. ``--quick`` is sized to about 15 minutes on 2 CPU cores, an *estimate* from its parts, not a
measured run (the machine was shared when it was written): collection at the measured 7,758 examples per
hour with 32 removal sets and about 1.2 s per held-out example with ``--loo --subsets 64`` (docs/benchmarks.md),
about 4 minutes for the three splits on a busy machine; the evaluation at the measured 2.1 s per held-out
example for five feature- and ablation-based methods with insertion/deletion curves (``data/test``, 200
examples, 419 s), doubled for the gradient baselines, about 2.5 minutes; 3 seeds and 6 data-efficiency fits
of a few seconds to half a minute each, and their held-out scoring, about 5 minutes. A measured smoke run
(``--quick --sizes 10,3,3 --curve 4,8``, every default method, the machine shared) took 53 s: collection
8.5 + 1.9 + 1.6 s, fit 0.9 s, evaluate 38 s. The JSON's ``bench.stages`` records what a run really took.

The full runs behind docs/benchmarks.md stay in ``examples/rebuild_faithfulness.sh``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

SIZES: dict[str, dict[str, Any]] = {
    "full": {"train": 600, "test": 200, "validation": 50, "curve": "100,300,600"},
    "quick": {"train": 120, "test": 32, "validation": 12, "curve": "40,120"},
}


def _run(args: list[str], stages: dict[str, Any], name: str) -> None:
    from attrib.cli import main

    t0 = time.perf_counter()
    rc = main(args)
    stages[name] = {"seconds": round(time.perf_counter() - t0, 1), "command": "attrib " + " ".join(args)}
    print(f"[bench] {name}: {stages[name]['seconds']} s", file=sys.stderr, flush=True)
    if rc != 0:
        raise SystemExit(f"{name} failed (exit {rc}): attrib {' '.join(args)}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--json", required=True, help="write the evaluate JSON (plus a 'bench' key) here")
    ap.add_argument("--quick", action="store_true", help="small splits (about 15 minutes on 2 CPU cores)")
    ap.add_argument(
        "--work", default=None, help="directory for collections and the estimator (default: out/bench_faith[-quick])"
    )
    ap.add_argument("--methods", default=None, help="methods to score (default: every registered default method)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument(
        "--sizes",
        default=None,
        help="override the split sizes, TRAIN,TEST,VALIDATION (e.g. 12,4,4 for a smoke run)",
    )
    ap.add_argument("--curve", default=None, help="override the data-efficiency sizes (comma-separated)")
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full"
    size = dict(SIZES[mode])
    if args.sizes:
        size["train"], size["test"], size["validation"] = (int(v) for v in args.sizes.split(","))
        mode += "+custom"
    if args.curve is not None:
        size["curve"] = args.curve
    work = Path(args.work or f"out/bench_faith{'-quick' if args.quick else ''}")
    work.mkdir(parents=True, exist_ok=True)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    stages: dict[str, Any] = {}
    t_all = time.perf_counter()
    common = ["--shard-size", "8"]
    _run(
        ["collect", "--dataset", "shapes:train", "--n", str(size["train"]), "--out", str(work / "train"), *common],
        stages,
        "collect_train",
    )
    _run(
        [
            "collect",
            "--dataset",
            "shapes:test",
            "--n",
            str(size["test"]),
            "--loo",
            "--subsets",
            "64",
            "--out",
            str(work / "test"),
            *common,
        ],
        stages,
        "collect_test",
    )
    _run(
        [
            "collect",
            "--dataset",
            "shapes:validation",
            "--n",
            str(size["validation"]),
            "--subsets",
            "64",
            "--out",
            str(work / "validation"),
            *common,
        ],
        stages,
        "collect_validation",
    )
    _run(["fit", "--train", str(work / "train"), "--out", str(work / "estimator")], stages, "fit")
    out = Path(args.json)
    ev = ["evaluate", "--test", str(work / "test"), "--estimator", str(work / "estimator")]
    ev += ["--train", str(work / "train"), "--sizes", size["curve"], "--seeds", "3", "--resamples", "3"]
    ev += ["--contextcite-validation", str(work / "validation"), "--json", str(out)]
    if args.methods:
        ev += ["--methods", args.methods]
    _run(ev, stages, "evaluate")
    res = json.loads(out.read_text())
    res["bench"] = {
        "mode": mode,
        "sizes": size,
        "work": str(work),
        "stages": stages,
        "seconds_total": round(time.perf_counter() - t_all, 1),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "note": "collections found in --work are resumed: their stage times then cover only what was missing",
    }
    from attrib.io import atomic_write_json

    atomic_write_json(out, res)
    print(f"[bench] total {res['bench']['seconds_total']} s -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
