"""``attrib fit`` and ``attrib evaluate``: the L x H estimator, and every method scored on held-out data."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from attrib.cli.console import add_model_options, console, out, progress

__all__ = ["register"]


def _cmd_fit(args: argparse.Namespace) -> int:
    from attrib.collect.store import Collection
    from attrib.evaluation import fit_estimator

    trains = [Collection.open(t) for t in args.train]
    t0 = time.perf_counter()
    est, used = fit_estimator(trains, loss=args.loss, only_correct=not args.all_examples, limit=args.limit)
    cfg = trains[0].manifest["config"]
    est.save(
        args.out,
        model_id=cfg["model"],
        region_method=cfg["region_method"],
        k=cfg["k"],
        ablation_mode=cfg["ablation_mode"],
        feature_pooling="mean over span tokens, sum over region tokens",
        n_train_examples=used,
        train_collection=",".join(str(t) for t in args.train),
        model_signature=trains[0].manifest.get("model_signature"),
    )
    console.print(f"fit {args.loss} estimator on {used} examples in {time.perf_counter() - t0:.1f} s -> {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from attrib.collect.store import Collection
    from attrib.evaluation import data_efficiency, evaluate_methods, region_comparison
    from attrib.io import atomic_write_json
    from attrib.models.loading import load
    from estimators.baselines import BASELINES, best_layer_index
    from estimators.linear import LinearHeadEstimator

    test = Collection.open(args.test)
    trains = [Collection.open(t) for t in (args.train or [])]
    est = LinearHeadEstimator.load(args.estimator)
    meta = getattr(est, "metadata_", {})
    cfg = test.manifest["config"]
    if meta.get("region_method") not in (None, cfg["region_method"]):
        console.print(
            f"[yellow]warning:[/yellow] estimator fit on {meta['region_method']!r} regions, "
            f"test collection uses {cfg['region_method']!r}; its weights transfer, but its scores are not "
            "the ones it was validated on"
        )
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in BASELINES]
    if unknown:
        raise ValueError(
            f"--methods: unknown method(s) {', '.join(unknown)}; registered: {', '.join(sorted(BASELINES))}"
        )
    # The collection's dtype unless asked otherwise: its targets were computed at that precision.
    loaded = load(cfg["model"], device=args.device, dtype=args.dtype or cfg.get("dtype", "float32"))
    layer = best_layer_index([ex for t in trains for ex in t.examples()][:200]) if trains else 0
    with progress() as prog:
        task = prog.add_task("evaluate", total=None)
        res = evaluate_methods(
            test,
            est,
            loaded=loaded,
            methods=methods,
            best_layer=layer,
            limit=args.limit,
            on_progress=lambda d, t: prog.update(task, completed=d, total=t),
        )
        res["best_layer"] = layer
        sizes = [int(v) for v in args.sizes.split(",") if v.strip()]
        if trains and sizes:
            task = prog.add_task("data efficiency", total=len(sizes))
            res["data_efficiency"] = data_efficiency(
                trains,
                test,
                sizes,
                loaded=loaded,
                loss=est.loss,
                limit=args.limit,
                on_progress=lambda d, t: prog.update(task, completed=d, total=t),
            )
        if args.compare_train and args.compare_test:
            pairs, names = [], []
            for sub_dir in sorted(Path(args.compare_test).iterdir()):
                tr = Path(args.compare_train) / sub_dir.name
                if (sub_dir / "manifest.json").is_file() and (tr / "manifest.json").is_file():
                    pairs.append((Collection.open(tr), Collection.open(sub_dir)))
                    names.append(sub_dir.name)
            if not pairs:
                raise ValueError(
                    f"no matching <method>-k<K> collections under {args.compare_train} and {args.compare_test}"
                )
            task = prog.add_task("regions", total=len(pairs))
            res["region_comparison"] = region_comparison(
                pairs,
                loaded=loaded,
                loss=est.loss,
                limit=args.limit,
                on_progress=lambda d, t: prog.update(task, completed=d, total=t),
            )
    _print_faithfulness(args.test, res)
    if args.json:
        atomic_write_json(args.json, res)
    if args.record_validation:
        import json as _json

        from attrib.io import atomic_write_text

        meta_path = Path(str(args.estimator) + ".json")
        meta_d = _json.loads(meta_path.read_text())
        mine = res["methods"].get("estimator", {})
        meta_d["validation"] = {
            key: round(float(mine[key]["value"]), 4)
            for key in ("lds", "r2", "top5_drop_normalized", "pointing")
            if key in mine
        }
        meta_d["validation"]["n_test_examples"] = int(res["n_examples"])
        meta_d["validation"]["test_collection"] = str(args.test)
        atomic_write_text(meta_path, _json.dumps(meta_d, indent=1) + "\n")
        console.print(f"recorded held-out metrics in {meta_path}")
    figs = Path(args.figures) if args.figures else None
    if figs is not None:
        figs.mkdir(parents=True, exist_ok=True)
    from attrib.plots import data_efficiency_plot, region_comparison_plot, weight_heatmap

    heat = args.heatmap or (figs / "weights.png" if figs else None)
    if heat:
        weight_heatmap(est.coef_, heat)
    if figs is not None and "data_efficiency" in res:
        data_efficiency_plot(res["data_efficiency"], figs / "data_efficiency.png")
    if figs is not None and "region_comparison" in res:
        region_comparison_plot(res["region_comparison"], figs / "regions.png")
    return 0


def _print_faithfulness(test: str, res: dict[str, Any]) -> None:
    def f(d: dict[str, Any] | None) -> str:
        return "-" if d is None else f"{d['value']:.3f} [{d['ci_low']:.2f}, {d['ci_high']:.2f}]"

    t = Table(title=f"faithfulness on {test} (n_examples={res['n_examples']}, n_spans={res['n_spans']})")
    for col in ("method", "LDS", "R2", "top5", "top5 / LOO", "pointing", "s/token"):
        t.add_column(col, justify="right")
    for name, r in res["methods"].items():
        t.add_row(
            name,
            f(r.get("lds")),
            f(r.get("r2")),
            f(r.get("top5_drop")),
            f(r.get("top5_drop_normalized")),
            f(r.get("pointing")),
            f"{r['seconds_per_token']:.2e}",
        )
    out.print(t)
    if res.get("data_efficiency"):
        t = Table(title="data efficiency (estimator)")
        for col in ("n_train", "LDS", "top5 / LOO"):
            t.add_column(col, justify="right")
        for r in res["data_efficiency"]:
            t.add_row(str(r["n_train"]), r.get("skipped") or f(r.get("lds")), f(r.get("top5_drop_normalized")))
        out.print(t)
    if res.get("region_comparison"):
        t = Table(title="region methods (estimator)")
        for col in ("regions", "K", "n_train", "LDS", "R2", "top5 / LOO", "pointing"):
            t.add_column(col, justify="right")
        for r in res["region_comparison"]:
            t.add_row(
                r["region_method"],
                str(r["k"]),
                str(r["n_train"]),
                f(r.get("lds")),
                f(r.get("r2")),
                f(r.get("top5_drop_normalized")),
                f(r.get("pointing")),
            )
        out.print(t)


def register(sub: Any) -> None:
    """Add ``fit`` and ``evaluate``."""
    from estimators.baselines import BASELINES

    fp = sub.add_parser("fit", help="fit the L x H estimator on a collected train split")
    fp.add_argument("--train", required=True, nargs="+", help="collection directory (several are concatenated)")
    fp.add_argument("--out", required=True, help="estimator path stem (.safetensors + .json)")
    fp.add_argument(
        "--loss", default="pearson", choices=["pearson", "ridge"], help="Pearson loss (the paper's) or ridge"
    )
    fp.add_argument("--limit", type=int, default=None, help="use at most this many examples")
    fp.add_argument("--all-examples", action="store_true", help="also train on wrongly answered examples")
    fp.set_defaults(fn=_cmd_fit)

    ev = sub.add_parser("evaluate", help="score the estimator and baselines on a held-out collection")
    ev.add_argument("--test", required=True, help="held-out collection (made with --loo)")
    ev.add_argument("--estimator", required=True, help="estimator path stem (attrib fit)")
    ev.add_argument(
        "--train",
        default=None,
        nargs="+",
        help="train collection(s): choose the best single layer and run the data-efficiency curve",
    )
    ev.add_argument("--sizes", default="100,500,1000,2000", help="data-efficiency training sizes ('' skips the curve)")
    ev.add_argument("--compare-train", default=None, help="directory of <method>-k<K> train collections")
    ev.add_argument("--compare-test", default=None, help="directory of <method>-k<K> held-out collections (--loo)")
    ev.add_argument("--figures", default=None, help="write weights.png, data_efficiency.png and regions.png here")
    ev.add_argument(
        "--record-validation",
        dest="record_validation",
        action="store_true",
        help="write the estimator's held-out LDS/R2/top-5/pointing into its JSON metadata (shown in reports)",
    )
    ev.add_argument(
        "--methods",
        default="estimator,raw_attention,best_layer,input_x_gradient,integrated_gradients,contextcite,leave_one_out",
        help=f"comma-separated methods to score; registered: {', '.join(sorted(BASELINES))}",
    )
    ev.add_argument("--limit", type=int, default=None, help="evaluate at most this many held-out examples")
    ev.add_argument("--json", default=None, help="write the results here")
    ev.add_argument("--heatmap", default=None, help="write the estimator's L x H weight heatmap (PNG)")
    add_model_options(ev, model_option=False)
    ev.set_defaults(fn=_cmd_evaluate)
