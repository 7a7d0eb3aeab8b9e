"""``attrib trajectories``: reasoning trajectories in attribution space, failure statistics, the flagger."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from attrib.cli.console import console

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``trajectories``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "trajectories",
        help="reasoning trajectories in attribution space: success vs failure, early failure flagging",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="collection directory (attrib collect)")
    p.add_argument(
        "--estimator",
        default=None,
        metavar="PATH",
        help="estimator path stem (attrib fit); without it the leave-one-out drops are the scores",
    )
    p.add_argument("--json", default=None, metavar="FILE", help="write the results here")
    p.add_argument("--plots", default=None, metavar="DIR", help="write the figures here")
    p.add_argument("--fpr", type=float, default=0.1, help="flagger false-positive rate on successful chains")
    p.add_argument("--top", type=int, default=32, help="effect-vector entries kept per span")
    p.add_argument("--min-spans", dest="min_spans", type=int, default=3, help="spans before the flagger may raise")
    p.add_argument("--n-boot", dest="n_boot", type=int, default=1000, help="bootstrap resamples of the AUC intervals")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of the flagger's cross-fitting")
    p.add_argument(
        "--check-flagger",
        dest="check_flagger",
        default=None,
        metavar="FILE",
        help="also apply this saved flagger, unchanged, to the collection's chains and report its false-positive "
        "rate and recall there (a held-out check of a flagger calibrated elsewhere)",
    )
    p.add_argument(
        "--flag-statistic",
        dest="flag_statistic",
        default="tortuosity",
        choices=["tortuosity", "stillness"],
        help="what the failure flagger watches (and --save-flagger saves): prefix tortuosity above a threshold "
        "(wandering; default) or prefix mean step size below one (stillness); the JSON reports both",
    )
    p.add_argument(
        "--power-auc",
        dest="power_auc",
        type=float,
        default=0.6,
        help="the AUC whose detection probability is reported (power of the Mann-Whitney test; default 0.6)",
    )
    p.add_argument(
        "--power-alpha",
        dest="power_alpha",
        type=float,
        default=1e-3,
        help="two-sided significance level of that power (default 1e-3)",
    )
    p.add_argument("--limit", type=int, default=None, help="read at most this many examples")
    p.add_argument(
        "--save-flagger",
        dest="save_flagger",
        default=None,
        metavar="FILE",
        help="write the flagger calibrated on this collection's successful chains (JSON; "
        "`attrib stream/serve --flagger FILE`)",
    )
    p.set_defaults(fn=run)


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.3g}"


def run(args: argparse.Namespace) -> int:
    """Run the ``trajectories`` subcommand.

    Returns:
        0 on success.

    Raises:
        ValueError: On unusable input (no scores, too few chains).
        OSError: When the collection or estimator cannot be read or outputs cannot be written.
    """
    from attrib.analysis.trajectories import analyse_chains, load_chains
    from attrib.collect.store import Collection
    from attrib.io import atomic_write_json
    from attrib.plots import trajectory_plots

    if not 0.5 < args.power_auc < 1.0:
        raise ValueError(f"--power-auc must be in (0.5, 1), got {args.power_auc}")
    if not 0.0 < args.power_alpha < 1.0:
        raise ValueError(f"--power-alpha must be in (0, 1), got {args.power_alpha}")
    checked = None
    if args.check_flagger:
        from metrics.trajectory import TortuosityFlagger

        try:
            checked = TortuosityFlagger.from_dict(json.loads(Path(args.check_flagger).read_text()))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--check-flagger {args.check_flagger} is not a saved flagger: {e}") from e
    coll = Collection.open(args.data)
    est = None
    if args.estimator:
        from estimators.linear import LinearHeadEstimator

        est = LinearHeadEstimator.load(args.estimator)
        meta = getattr(est, "metadata_", {})
        region_method = coll.manifest.get("config", {}).get("region_method")
        if meta.get("region_method") not in (None, region_method):
            console.print(
                f"[yellow]warning:[/yellow] estimator fit on {meta.get('region_method')!r} regions, "
                f"the collection uses {region_method!r}"
            )
    chains = load_chains(coll, est, limit=args.limit)
    if not chains:
        raise ValueError(f"collection {args.data} holds no chains with spans")
    res = analyse_chains(
        chains,
        fpr=args.fpr,
        top=args.top,
        min_spans=args.min_spans,
        n_boot=args.n_boot,
        seed=args.seed,
        power_auc=args.power_auc,
        power_alpha=args.power_alpha,
        flag_statistic=args.flag_statistic,
    )
    if checked is not None:
        from attrib.analysis.trajectories import check_flagger

        res["flagger_check"] = {"file": str(args.check_flagger), **check_flagger(chains, checked)}
    res["collection"] = str(args.data)
    res["scores"] = f"estimator {args.estimator}" if args.estimator else "leave-one-out drops"
    if args.json:
        atomic_write_json(args.json, res)
    if args.plots:
        trajectory_plots(res, chains, args.plots)
    if args.save_flagger:
        state = res["flagger"].get("state")
        if state is None:
            raise ValueError(f"the flagger could not be calibrated: {res['flagger'].get('error')}")
        atomic_write_json(args.save_flagger, state)
        h = state.get("heldout") or {}
        from metrics.trajectory import TortuosityFlagger

        shown = "shown by default" if TortuosityFlagger.from_dict(state).works() else "opt-in only (--flagger FILE)"
        console.print(
            f"wrote {args.save_flagger}: held-out recall {_fmt(h.get('recall'))} at FPR {_fmt(h.get('fpr'))} "
            f"({int(h.get('n_failure', 0))} failed, {int(h.get('n_reference', 0))} successful chains); {shown}"
        )
    t = Table(
        title=f"trajectories: {res['n_success']} success, {res['n_failure']} failure "
        f"({res['n_hallucination']} hallucination, {res['n_reasoning_error']} reasoning error)"
    )
    for col in ("metric", "success median", "failure median", "p (Bonferroni)"):
        t.add_column(col, justify="right")
    for name in ("path_length", "tortuosity"):
        r = res[name]
        t.add_row(name, _fmt(r["success_median"]), _fmt(r["failure_median"]), _fmt(r["p_value_bonferroni"]))
    c = res["concentration"]["comparison"]
    t.add_row("concentration", _fmt(c["success_median"]), _fmt(c["failure_median"]), _fmt(c["p_value_bonferroni"]))
    console.print(t)
    a30 = res["auc_by_progress"].get("0.3", {})
    fl = res["flagger"]
    console.print(
        f"failure AUC at 30 % of the reasoning: {_fmt(a30.get('auc'))} "
        f"[{_fmt(a30.get('ci_low'))}, {_fmt(a30.get('ci_high'))}]"
    )
    for st, b in res.get("flaggers", {"tortuosity": fl}).items():
        mark = " (saved with --save-flagger)" if st == args.flag_statistic and args.save_flagger else ""
        console.print(
            f"{st} flagger at FPR {args.fpr}{mark}: threshold {_fmt(b.get('threshold'))}, held-out FPR "
            f"{_fmt(b.get('fpr_heldout'))}, failures flagged {_fmt(b.get('flagged_rate_failure'))} "
            f"(reasoning errors {_fmt(b.get('flagged_rate_reasoning_error'))}, "
            f"hallucinations {_fmt(b.get('flagged_rate_hallucination'))})"
        )
    ck = res.get("flagger_check")
    if ck:
        console.print(
            f"{args.check_flagger} ({ck['statistic']}) applied unchanged: false-positive rate {_fmt(ck['fpr'])} "
            f"({ck['n_success']} successful chains), recall {_fmt(ck['recall'])} ({ck['n_failure']} failed; "
            f"reasoning errors {_fmt(ck['recall_reasoning_error'])}, hallucinations {_fmt(ck['recall_hallucination'])})"
        )
    pw = res.get("power", {}).get("failure")
    if pw:
        console.print(
            f"power: the sample ({int(pw['n_success'])} successes, {int(pw['n_failure'])} failures) detects a "
            f"failure AUC of {pw['auc']:g} at p < {pw['alpha']:g} with probability {pw['power_simulated']:.2f} "
            f"(normal approximation {pw['power_normal']:.2f}); detectable at {pw['target_power']:.0%}: "
            f"AUC {_fmt(pw['detectable_auc'])}"
        )
    adj = res.get("length_adjusted", {}).get("tortuosity", {})
    parts = [
        f"{k.replace('_', ' ')} {v['coef_metric']:+.2f} (p {_fmt(v['p_value'])})"
        for k, v in adj.items()
        if v.get("coef_metric") is not None and v["coef_metric"] == v["coef_metric"]
    ]
    if parts:
        console.print("tortuosity vs failure at equal chain length (log-odds per SD): " + ", ".join(parts))
    if args.json:
        console.print(f"wrote {args.json}")
    if args.plots:
        console.print(f"wrote figures to {args.plots}")
    return 0
