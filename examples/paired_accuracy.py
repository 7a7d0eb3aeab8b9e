"""Paired comparison of two models' answer accuracy on the same examples.

Reads two ``attrib shapes eval --outcomes`` JSONs and prints (or writes) the
difference of accuracies with a paired bootstrap interval, the discordant counts
and McNemar's exact test, overall and per family, and the pointing accuracy per
family where the second model points (v1).

Usage::

    python examples/paired_accuracy.py out/eval_base.json out/eval_v1.json --json out/v1_paired.json
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
from scipy.stats import binomtest


def _outcomes(path: str) -> dict[str, dict[str, Any]]:
    with open(path) as f:
        d = json.load(f)
    if "outcomes" not in d:
        raise SystemExit(f"{path} has no per-example outcomes; rerun attrib shapes eval with --outcomes")
    return {o["uid"]: o for o in d["outcomes"]}


def compare(a: list[dict[str, Any]], b: list[dict[str, Any]], *, n_boot: int = 2000) -> dict[str, Any]:
    """Accuracy of ``b`` minus ``a`` over paired outcomes (same examples, same order)."""
    ca = np.array([o["correct"] for o in a], dtype=float)
    cb = np.array([o["correct"] for o in b], dtype=float)
    only_a, only_b = int(((ca == 1) & (cb == 0)).sum()), int(((ca == 0) & (cb == 1)).sum())
    rng = np.random.default_rng(0)
    idx = rng.integers(0, ca.size, (n_boot, ca.size))
    diffs = (cb[idx] - ca[idx]).mean(1)
    p = binomtest(only_b, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {
        "n": int(ca.size),
        "accuracy_a": float(ca.mean()),
        "accuracy_b": float(cb.mean()),
        "difference": float((cb - ca).mean()),
        "ci_low": float(np.quantile(diffs, 0.025)),
        "ci_high": float(np.quantile(diffs, 0.975)),
        "only_a_right": only_a,
        "only_b_right": only_b,
        "mcnemar_p": float(p),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="eval JSON of the reference model (e.g. the base)")
    ap.add_argument("b", help="eval JSON of the other model (e.g. v1)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    a, b = _outcomes(args.a), _outcomes(args.b)
    uids = sorted(set(a) & set(b), key=lambda u: (len(u), u))
    if not uids:
        raise SystemExit("the two evaluations share no example")
    res: dict[str, Any] = {"a": args.a, "b": args.b, "all": compare([a[u] for u in uids], [b[u] for u in uids])}
    res["per_family"] = {}
    res["pointing_per_family"] = {}
    for fam in sorted({a[u]["family"] for u in uids}):
        us = [u for u in uids if a[u]["family"] == fam]
        res["per_family"][fam] = compare([a[u] for u in us], [b[u] for u in us])
        hits = sum(b[u].get("pointing_hits") or 0 for u in us)
        copies = sum(b[u].get("pointing_copies") or 0 for u in us)
        if copies:
            res["pointing_per_family"][fam] = {"accuracy": hits / copies, "copies": copies}
    text = json.dumps(res, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
