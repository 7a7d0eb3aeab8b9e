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

from metrics.stats import paired_difference


def _outcomes(path: str) -> dict[str, dict[str, Any]]:
    with open(path) as f:
        d = json.load(f)
    if "outcomes" not in d:
        raise SystemExit(f"{path} has no per-example outcomes; rerun attrib shapes eval with --outcomes")
    return {o["uid"]: o for o in d["outcomes"]}


def compare(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy of ``b`` minus ``a`` over paired outcomes (same examples, same order)."""
    r = paired_difference([o["correct"] for o in a], [o["correct"] for o in b])
    return {
        "n": r["n"],
        "accuracy_a": r["mean_a"],
        "accuracy_b": r["mean_b"],
        "difference": r["difference"],
        "ci_low": r["ci_low"],
        "ci_high": r["ci_high"],
        "only_a_right": r["only_a"],
        "only_b_right": r["only_b"],
        "mcnemar_p": r["mcnemar_p"],
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
