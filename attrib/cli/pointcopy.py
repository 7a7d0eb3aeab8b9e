"""``attrib pointcopy`` (alias ``attrib v1``): a point-and-copy model against its base, from their collections."""

from __future__ import annotations

import argparse
import json
from typing import Any

from attrib.cli.console import out

__all__ = ["register"]


def _cmd(args: argparse.Namespace) -> int:
    from attrib.analysis.pointcopy import run_analysis
    from attrib.io import atomic_write_json, jsonable

    res = run_analysis(
        base_test=args.base_test,
        v1_test=args.v1_test,
        base_estimator=args.base_estimator,
        v1_estimator=args.v1_estimator,
        v1_model=args.v1_model,
        n_copy=args.n_copy,
        figures=args.figures,
        dataset=args.dataset,
    )
    if args.json:
        atomic_write_json(args.json, res)
    else:
        out.print_json(json.dumps(jsonable(res)))
    return 0


def register(sub: Any) -> None:
    """Add ``pointcopy`` (and its alias ``v1``)."""
    p = sub.add_parser(
        "pointcopy",
        aliases=["v1"],
        help="v1 point-and-copy vs base: attention decay, copy attention, late-chain attribution",
    )
    p.add_argument("--base-test", required=True, help="collection of the base model (held-out split)")
    p.add_argument("--v1-test", required=True, help="collection of the point-and-copy model on the same examples")
    p.add_argument("--base-estimator", default=None, help="the base model's estimator (default: raw attention)")
    p.add_argument("--v1-estimator", default=None, help="the point-and-copy model's estimator")
    p.add_argument("--v1-model", default=None, help="bundled name or directory of the v1 model (copy attention)")
    p.add_argument("--n-copy", type=int, default=30, help="examples captured for the per-layer copy attention")
    p.add_argument("--dataset", default="shapes:test", help="where those examples come from")
    p.add_argument("--json", default=None, help="write the results here (default: print them)")
    p.add_argument("--figures", default=None, help="write decay.png and copy_attention.png here")
    p.set_defaults(fn=_cmd)
