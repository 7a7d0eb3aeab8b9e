"""``attrib fit`` and ``attrib evaluate``: the L x H estimator, and every method scored on held-out data."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from attrib.cli.console import add_model_options, console, out, progress

__all__ = ["register"]

# attrib.evaluation's defaults, spelled out so that building the parser imports no model code (a test checks
# that they agree)
DEFAULT_METHODS = (
    "estimator",
    "raw_attention",
    "best_layer",
    "input_x_gradient",
    "integrated_gradients",
    "contextcite",
    "contextcite_64",
    "leave_one_out",
)
IMAGE_DEPENDENT_RULES = ("fit_std", "fit_max", "all_regions")
IMAGE_DEPENDENT_MIN = 0.1


def _cmd_fit(args: argparse.Namespace) -> int:
    from attrib.collect.store import Collection
    from attrib.evaluation import fit_estimator

    trains = [Collection.open(t) for t in args.train]
    t0 = time.perf_counter()
    est, used = fit_estimator(
        trains, loss=args.loss, only_correct=not args.all_examples, limit=args.limit, span_scale=args.span_scale
    )
    cfg = trains[0].manifest["config"]
    est.save(
        args.out,
        model_id=cfg["model"],
        region_method=cfg["region_method"],
        k=cfg["k"],
        ablation_mode=cfg["ablation_mode"],
        feature_pooling="mean over span tokens, sum over region tokens",
        span_scale="exp(<u, sum over regions of the span's features> + c)" if args.span_scale else "none",
        n_train_examples=used,
        only_correct=not args.all_examples,
        train_collection=",".join(str(t) for t in args.train),
        model_signature=trains[0].manifest.get("model_signature"),
    )
    console.print(f"fit {args.loss} estimator on {used} examples in {time.perf_counter() - t0:.1f} s -> {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from attrib.collect.store import Collection
    from attrib.evaluation import (
        choose_contextcite_alpha,
        data_efficiency,
        estimator_seeds,
        evaluate_methods,
        region_comparison,
        span_metadata,
    )
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
    alpha: float | dict[int, float] | None = args.contextcite_alpha
    chosen = None
    if args.contextcite_validation:
        chosen = choose_contextcite_alpha(Collection.open(args.contextcite_validation), limit=args.limit)
        chosen["collection"] = str(args.contextcite_validation)
        alpha = chosen["alphas"]
    with progress() as prog:
        task = prog.add_task("span populations", total=None)
        meta, meta_notes = span_metadata(test, loaded=loaded, limit=args.limit)
        task = prog.add_task("evaluate", total=None)
        res = evaluate_methods(
            test,
            est,
            loaded=loaded,
            methods=methods,
            best_layer=layer,
            limit=args.limit,
            on_progress=lambda d, t: prog.update(task, completed=d, total=t),
            image_dependent=args.image_dependent,
            image_dependent_min=args.image_dependent_min,
            auc_steps=args.auc_steps,
            contextcite_alpha=alpha,
            span_meta=meta,
            n_boot=args.n_boot,
        )
        res["best_layer"] = layer
        res["protocol"]["notes"] = sorted({*res["protocol"]["notes"], *meta_notes})
        if chosen is not None:
            res["protocol"]["contextcite_alpha_choice"] = chosen
        elif args.contextcite_alpha is None:
            res["protocol"]["notes"].append("contextcite alpha: the default (no --contextcite-validation given)")
        if trains and args.seeds > 0:
            task = prog.add_task("estimator seeds", total=None)
            # Refit on the examples the estimator was fit on (attrib fit records whether it kept only the
            # correctly answered ones); a refit that cannot run is noted, never a reason to lose the rest.
            only_correct = bool(getattr(est, "metadata_", {}).get("only_correct", True))
            try:
                res["estimator_seeds"] = estimator_seeds(
                    trains,
                    test,
                    est,
                    args.seeds,
                    limit=args.limit,
                    only_correct=only_correct,
                    span_meta=meta,
                    n_boot=args.n_boot,
                )
            except ValueError as e:
                res["estimator_seeds"] = {"skipped": str(e)}
                res["protocol"]["notes"].append(f"estimator seeds skipped: {e}")
        sizes = [int(v) for v in args.sizes.split(",") if v.strip()]
        if trains and sizes:
            task = prog.add_task("data efficiency", total=len(sizes))
            res["data_efficiency"] = data_efficiency(
                trains,
                test,
                sizes,
                loaded=loaded,
                loss=est.loss,
                span_scale=bool(getattr(est, "span_scale", False)),
                limit=args.limit,
                on_progress=lambda d, t: prog.update(task, completed=d, total=t),
                resamples=args.resamples,
                span_meta=meta,
                n_boot=args.n_boot,
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
    for col in ("method", "LDS", "R2", "top5", "top5 / LOO", "pointing", "deletion", "insertion", "s/token"):
        t.add_column(col, justify="right")
    for name, r in res["methods"].items():
        t.add_row(
            name,
            f(r.get("lds")),
            f(r.get("r2")),
            f(r.get("top5_drop")),
            f(r.get("top5_drop_normalized")),
            f(r.get("pointing")),
            f(r.get("deletion_auc")),
            f(r.get("insertion_auc")),
            f"{r['seconds_per_token']:.2e}",
        )
    out.print(t)
    pops = res.get("populations", {})
    if pops:
        t = Table(title="LDS by span population (intervals resample examples)")
        t.add_column("method", justify="right")
        for pop, body in pops.items():
            t.add_column(f"{pop} (n={body['n_spans']})", justify="right")
        for name in res["methods"]:
            t.add_row(name, *(f(body["methods"].get(name, {}).get("lds")) for body in pops.values()))
        out.print(t)
    paired = res.get("paired", {})
    if paired:
        t = Table(title="estimator minus method: LDS, paired on the same spans")
        t.add_column("method", justify="right")
        for pop in paired:
            t.add_column(pop, justify="right")
        others = [n for n in res["methods"] if n != "estimator"]
        for name in others:
            t.add_row(
                name, *(f(paired[pop].get(name) if "value" in paired[pop].get(name, {}) else None) for pop in paired)
            )
        out.print(t)
    for note in res.get("protocol", {}).get("notes", []):
        console.print(f"[dim]note: {note}[/dim]")
    if res.get("data_efficiency"):
        t = Table(title="data efficiency (estimator; mean over resampled training sets)")
        for col in ("n_train", "draws", "LDS", "LDS sd", "LDS image-dep.", "top5 / LOO"):
            t.add_column(col, justify="right")
        for r in res["data_efficiency"]:
            sd = r.get("lds", {}).get("sd_resamples")
            t.add_row(
                str(r["n_train"]),
                str(r.get("n_resamples", "-")),
                r.get("skipped") or f(r.get("lds")),
                "-" if sd is None else f"{sd:.3f}",
                f(r.get("lds_image_dependent")),
                f(r.get("top5_drop_normalized")),
            )
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
    fp.add_argument(
        "--span-scale",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fit the per-span scale head that carries each span's magnitude (default on; rankings are unchanged)",
    )
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
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated methods to score; registered: {', '.join(sorted(BASELINES))}",
    )
    ev.add_argument(
        "--image-dependent",
        default="fit_std",
        choices=list(IMAGE_DEPENDENT_RULES),
        help="rule of the image_dependent span population: the standard deviation (fit_std) or the largest "
        "(fit_max) of the span's drops over the fit removal sets, or its drop when every region is removed "
        "(all_regions); none reads a scored set",
    )
    ev.add_argument(
        "--image-dependent-min",
        type=float,
        default=IMAGE_DEPENDENT_MIN,
        help=f"threshold of that rule, in nats (default {IMAGE_DEPENDENT_MIN:g})",
    )
    ev.add_argument(
        "--auc-steps",
        type=int,
        default=8,
        help="points of the insertion and deletion curves (0 skips them; they cost ablation forwards)",
    )
    ev.add_argument(
        "--contextcite-validation",
        default=None,
        help="validation collection (>= 35 removal sets per example) on which ContextCite's Lasso penalty is chosen",
    )
    ev.add_argument("--contextcite-alpha", type=float, default=None, help="ContextCite's Lasso penalty (default 0.01)")
    ev.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="with --train: refit the estimator with this many seeds and report the spread (0 skips)",
    )
    ev.add_argument("--resamples", type=int, default=3, help="training sets drawn per data-efficiency size (default 3)")
    ev.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of every interval")
    ev.add_argument("--limit", type=int, default=None, help="evaluate at most this many held-out examples")
    ev.add_argument("--json", default=None, help="write the results here")
    ev.add_argument("--heatmap", default=None, help="write the estimator's L x H weight heatmap (PNG)")
    add_model_options(ev, model_option=False)
    ev.set_defaults(fn=_cmd_evaluate)
