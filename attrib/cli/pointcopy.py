"""``attrib pointcopy`` (alias ``attrib v1``): a point-and-copy model against its base, from their collections."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from attrib.cli.console import out

if TYPE_CHECKING:
    from estimators.linear import LinearHeadEstimator

__all__ = ["refit_total_and_direct", "register"]


def refit_total_and_direct(
    train: Sequence[str], *, loss: str = "pearson", only_correct: bool = True
) -> tuple[dict[str, LinearHeadEstimator], dict[str, Any]]:
    """Fit the v1 model's estimator twice on the same train collections: on total and on direct-only features.

    Both fits use the same correctly answered examples, targets, loss and settings as
    ``attrib fit``; only the features differ (the direct ones are the features minus the
    stored via-copy part, see
    [`attrib.analysis.pointcopy.direct_features`][attrib.analysis.pointcopy.direct_features]).

    Args:
        train: Train collection directories of the point-and-copy model.
        loss: Estimator loss (``"pearson"`` or ``"ridge"``).
        only_correct: Fit on correctly answered examples only (as ``attrib fit``).

    Returns:
        ``({"total": estimator, "direct_only": estimator}, info)`` with the collections, the loss
        and the number of examples used.
    """
    from attrib.analysis.pointcopy import with_direct_features
    from attrib.collect.store import Collection
    from attrib.evaluation import design_matrix, train_examples
    from estimators.linear import LinearHeadEstimator

    exs = train_examples([Collection.open(p) for p in train])
    shape = tuple(exs[0]["features"].shape[2:])
    fitted: dict[str, LinearHeadEstimator] = {}
    used = 0
    for kind, rows in (("total", exs), ("direct_only", with_direct_features(exs))):
        x, y, groups, used = design_matrix(rows, only_correct=only_correct)
        est = LinearHeadEstimator(loss=loss, layer_head_shape=shape)  # type: ignore[arg-type]
        fitted[kind] = est.fit(x, y, groups=groups)
    info = {"train": list(train), "loss": loss, "only_correct": only_correct, "n_train_examples": int(used)}
    return fitted, info


def _collection_dataset(path: str) -> str:
    """The dataset spec a collection was made on (``shapes:test`` when its manifest does not say)."""
    from attrib.collect.store import Collection

    return str(Collection.open(path).config.get("dataset") or "shapes:test")


def _cmd(args: argparse.Namespace) -> int:
    from attrib.analysis.pointcopy import run_analysis
    from attrib.io import atomic_write_json, jsonable

    refit, info = (None, None)
    if args.v1_train:
        if not (args.base_estimator and args.v1_estimator):
            raise ValueError("--v1-train needs --base-estimator and --v1-estimator")
        refit, info = refit_total_and_direct(
            args.v1_train, loss=args.refit_loss, only_correct=not args.refit_all_examples
        )
        if args.save_refit:
            for kind, est in refit.items():
                est.save(f"{args.save_refit}-{kind}", **info, features=kind)
    res = run_analysis(
        base_test=args.base_test,
        v1_test=args.v1_test,
        base_estimator=args.base_estimator,
        v1_estimator=args.v1_estimator,
        v1_model=args.v1_model,
        n_copy=args.n_copy,
        figures=args.figures,
        dataset=args.dataset or _collection_dataset(args.v1_test),
        v1_refit=refit,
        refit_info=info,
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
        help="v1 point-and-copy vs base: attention decay, copy attention, late-chain attribution, direct-only control",
    )
    p.add_argument("--base-test", required=True, help="collection of the base model (held-out split)")
    p.add_argument("--v1-test", required=True, help="collection of the point-and-copy model on the same examples")
    p.add_argument("--base-estimator", default=None, help="the base model's estimator (default: raw attention)")
    p.add_argument("--v1-estimator", default=None, help="the point-and-copy model's estimator")
    p.add_argument("--v1-model", default=None, help="bundled name or directory of the v1 model (copy attention)")
    p.add_argument("--n-copy", type=int, default=30, help="examples captured for the per-layer copy attention")
    p.add_argument(
        "--dataset",
        default=None,
        help="where those examples come from (default: the dataset the --v1-test collection was made on)",
    )
    p.add_argument(
        "--v1-train",
        nargs="+",
        default=None,
        help="train collections of the v1 model: refit its estimator on total and on direct-only features",
    )
    p.add_argument("--refit-loss", default="pearson", choices=("pearson", "ridge"), help="loss of the refits")
    p.add_argument(
        "--refit-all-examples",
        action="store_true",
        help="refit on every training example (default: correctly answered ones, as `attrib fit`)",
    )
    p.add_argument("--save-refit", default=None, help="save the refit estimators as STEM-total and STEM-direct_only")
    p.add_argument("--json", default=None, help="write the results here (default: print them)")
    p.add_argument("--figures", default=None, help="write decay.png and copy_attention.png here")
    p.set_defaults(fn=_cmd)
