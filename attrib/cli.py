"""The ``attrib`` command line.

Subcommands:

- ``attrib demo``: the main job on the bundled model (for now: the benchmark evaluation).
- ``attrib shapes generate``: write benchmark examples (JSONL + PNG).
- ``attrib shapes train``: train the bundled model from scratch.
- ``attrib shapes eval``: greedy evaluation with the blank-image control.
- ``attrib info``: versions and bundled models.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

__all__ = ["main"]

console = Console(stderr=True)
logger = logging.getLogger("attrib.cli")


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _difficulty(args: argparse.Namespace) -> Any:
    from attrib.shapes.scene import Difficulty

    base = Difficulty.preset(args.difficulty).to_dict()
    for k in ("min_objects", "max_objects", "size_scale", "colour_similarity"):
        v = getattr(args, k, None)
        if v is not None:
            base[k] = v
    if getattr(args, "texture", False):
        base["texture"] = True
    return Difficulty.from_dict(base)


def _add_difficulty(p: argparse.ArgumentParser) -> None:
    p.add_argument("--difficulty", default="medium", choices=["easy", "medium", "hard"], help="difficulty preset")
    p.add_argument("--min-objects", dest="min_objects", type=int)
    p.add_argument("--max-objects", dest="max_objects", type=int)
    p.add_argument("--size-scale", dest="size_scale", type=float)
    p.add_argument("--colour-similarity", dest="colour_similarity", type=float)
    p.add_argument("--texture", action="store_true", help="draw a distractor texture")


def _resolve_model(name: str | None) -> Path:
    from attrib.shapes.model import resolve_model

    return resolve_model(name)


# ---------------------------------------------------------------------------- commands
def _cmd_generate(args: argparse.Namespace) -> int:
    from attrib.io import atomic_write_text
    from attrib.shapes.dataset import iter_split

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for ex in iter_split(
        args.split,
        args.n,
        start=args.start,
        benchmark_seed=args.seed,
        difficulty=_difficulty(args),
        width=args.width,
        height=args.height,
        families=args.families,
    ):
        ex.image().save(out / f"{ex.uid}.png")
        rec = ex.to_dict()
        rec["image"] = f"{ex.uid}.png"
        lines.append(json.dumps(rec))
    atomic_write_text(out / "examples.jsonl", "\n".join(lines) + "\n")
    console.print(f"wrote {len(lines)} examples to {out}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from attrib.shapes.model import ModelSize
    from attrib.shapes.train import TrainConfig, train

    size = ModelSize.tiny() if args.tiny else ModelSize()
    overrides = {k: getattr(args, k) for k in ("steps", "batch_size", "lr") if getattr(args, k) is not None}
    cfg = TrainConfig(seed=args.seed, size=size, difficulty=_difficulty(args), threads=args.threads, **overrides)
    with _progress() as prog:
        task = prog.add_task("train", total=cfg.steps)

        def on_step(step: int, total: int, loss: float) -> None:
            prog.update(task, completed=step, description=f"train loss {loss:.3f}")

        res = train(cfg, args.out, on_step=on_step)
    console.print(f"saved {res.out_dir} ({res.seconds:.0f} s, final loss {res.losses[-1][1]:.4f})")
    return 0


def _print_eval(d: dict[str, Any]) -> None:
    t = Table(title=f"attrib.shapes {d['split']} (n={d['n']})")
    t.add_column("family")
    t.add_column("n", justify="right")
    t.add_column("accuracy", justify="right")
    t.add_column("blank image", justify="right")
    for f, r in d["per_family"].items():
        b = r.get("blank_image_accuracy")
        t.add_row(f, str(r["n"]), f"{r['accuracy']:.3f}", "-" if b is None else f"{b:.3f}")
    b = d.get("blank_image_accuracy")
    t.add_row("all", str(d["n"]), f"{d['accuracy']:.3f}", "-" if b is None else f"{b:.3f}", style="bold")
    Console().print(t)
    Console().print(
        f"parse_rate {d['parse_rate']:.3f}  n_failures {d['n_failures']}  "
        f"seconds_per_example {d['seconds_per_example']:.3f}"
    )


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from attrib.io import atomic_write_json
    from attrib.shapes.evaluate import evaluate
    from attrib.shapes.model import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    path = _resolve_model(args.model)
    model, processor = load_model(path)
    with _progress() as prog:
        task = prog.add_task("eval", total=args.n * (1 if args.no_blank else 2))

        def on_progress(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        res = evaluate(
            model,
            processor,
            split=args.split,
            n=args.n,
            start=args.start,
            benchmark_seed=args.seed,
            difficulty=_difficulty(args),
            batch_size=args.batch_size,
            blank_control=not args.no_blank,
            on_progress=on_progress,
        )
    d = res.to_dict(with_outcomes=args.outcomes)
    d["model"] = str(path)
    d["difficulty"] = _difficulty(args).to_dict()
    _print_eval(d)
    if args.json:
        atomic_write_json(args.json, d)
        console.print(f"wrote {args.json}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from attrib.io import atomic_write_json
    from attrib.shapes.evaluate import evaluate
    from attrib.shapes.model import load_model

    path = _resolve_model(args.model)
    t0 = time.perf_counter()
    model, processor = load_model(path)
    console.print(f"loaded bundled model {path.name} in {time.perf_counter() - t0:.1f} s")
    with _progress() as prog:
        task = prog.add_task("demo eval", total=2 * args.n)
        res = evaluate(
            model,
            processor,
            split="test",
            n=args.n,
            batch_size=25,
            on_progress=lambda d, t: prog.update(task, completed=d, total=t),
        )
    out = Console()
    for o in res.outcomes[: args.show]:
        mark = "[green]right[/green]" if o.correct else "[red]wrong[/red]"
        out.print(f"[bold]{o.uid}[/bold] ({o.family}) truth={o.answer} {mark}\n  {o.output}")
    d = res.to_dict(with_outcomes=True)
    d["model"] = str(path)
    _print_eval(d)
    atomic_write_json(Path(args.out) / "demo_eval.json", d)
    console.print(f"wrote {Path(args.out) / 'demo_eval.json'}")
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    from attrib.collect import CollectConfig, collect_many

    methods = [m.strip() for m in str(args.regions).split(",") if m.strip()]
    try:
        ks = [int(k) for k in str(args.k).split(",") if k.strip()]
    except ValueError:
        raise ValueError(f"--k must be an integer or a comma-separated list of integers, got {args.k!r}") from None
    if not methods or not ks:
        raise ValueError("--regions and --k need at least one value each")
    cfgs = [
        CollectConfig(
            model=args.model,
            dataset=args.dataset,
            n=args.n,
            start=args.start,
            k=k,
            region_method=m,
            ablation_mode=args.ablation,
            n_subsets=args.subsets,
            loo=args.loo,
            seed=args.seed,
            shard_size=args.shard_size,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
        )
        for m in methods
        for k in ks
    ]
    outs = [Path(args.out)] if len(cfgs) == 1 else [Path(args.out) / f"{c.region_method}-k{c.k}" for c in cfgs]
    t0 = time.perf_counter()
    with _progress() as prog:
        task = prog.add_task("collect", total=None)
        colls = collect_many(
            cfgs, outs, threads=args.threads, on_progress=lambda d, t: prog.update(task, completed=d, total=t)
        )
    for out, coll in zip(outs, colls, strict=True):
        n_ok = sum(s["n_examples"] for s in coll.manifest["shards"])
        console.print(f"collection at {out}: {n_ok} examples, {len(coll.failures)} failures")
    console.print(f"{time.perf_counter() - t0:.0f} s this run")
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from attrib.collect import Collection
    from attrib.faithfulness import fit_estimator

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
    )
    console.print(f"fit {args.loss} estimator on {used} examples in {time.perf_counter() - t0:.1f} s -> {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from attrib.collect import Collection
    from attrib.faithfulness import data_efficiency, evaluate_methods, region_comparison
    from attrib.io import atomic_write_json
    from attrib.shapes.model import load_model, resolve_model
    from estimators.baselines import best_layer_index
    from estimators.linear import LinearHeadEstimator

    test = Collection.open(args.test)
    trains = [Collection.open(t) for t in (args.train or [])]
    est = LinearHeadEstimator.load(args.estimator)
    meta = getattr(est, "metadata_", {})
    cfg = test.manifest["config"]
    if meta.get("region_method") not in (None, cfg["region_method"]):
        logger.warning(
            "estimator fit on %r regions, test collection uses %r", meta["region_method"], cfg["region_method"]
        )
        console.print(
            f"[yellow]warning:[/yellow] estimator fit on {meta['region_method']!r} regions, "
            f"test collection uses {cfg['region_method']!r}; its weights transfer, but its scores are not "
            "the ones it was validated on"
        )
    model, proc = load_model(resolve_model(cfg["model"]))
    layer = best_layer_index([ex for t in trains for ex in t.examples()][:200]) if trains else 0
    methods = args.methods.split(",")
    with _progress() as prog:
        task = prog.add_task("evaluate", total=None)
        res = evaluate_methods(
            test,
            est,
            model=model,
            processor=proc,
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
                model=model,
                processor=proc,
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
                model=model,
                processor=proc,
                loss=est.loss,
                limit=args.limit,
                on_progress=lambda d, t: prog.update(task, completed=d, total=t),
            )
    _print_faithfulness(args.test, res)
    if args.json:
        atomic_write_json(args.json, res)
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
    out = Console()
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


def _cmd_info(args: argparse.Namespace) -> int:
    import torch
    import transformers

    from attrib import __version__
    from attrib.shapes.model import BUNDLED_DIR

    info = {
        "attrib": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.cuda.is_available(),
        "bundled": sorted(p.name for p in BUNDLED_DIR.iterdir() if p.is_dir()) if BUNDLED_DIR.is_dir() else [],
    }
    Console().print_json(json.dumps(info))
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``attrib`` command."""
    p = argparse.ArgumentParser(prog="attrib", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the main job on the bundled model")
    d.add_argument("--model", default=None, help="bundled model name or a local model directory")
    d.add_argument("--n", type=int, default=100, help="test examples")
    d.add_argument("--show", type=int, default=5, help="traces to print")
    d.add_argument("--out", default="out/demo", help="output directory")
    d.set_defaults(fn=_cmd_demo)

    c = sub.add_parser("collect", help="generate traces, capture features, compute ablation targets (resumable)")
    c.add_argument("--model", default="shapes-qwen25vl", help="bundled model name or local model directory")
    c.add_argument("--dataset", default="shapes:train", help="shapes:<split> or a JSONL of image/question[/answer]")
    c.add_argument("--n", type=int, default=100)
    c.add_argument("--start", type=int, default=0)
    c.add_argument(
        "--k", default="32", help="regions per image; a comma-separated list writes one collection per value"
    )
    c.add_argument(
        "--regions",
        default="color",
        help="region method; a comma-separated list (with several --k values) collects every combination from "
        "one generation per example, into OUT/<method>-k<K>/",
    )
    c.add_argument("--ablation", default="mask", choices=["mask", "mean", "repaint"])
    c.add_argument("--subsets", type=int, default=32, help="random removal sets per example")
    c.add_argument("--loo", action="store_true", help="also compute leave-one-out targets")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--shard-size", dest="shard_size", type=int, default=16)
    c.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=200)
    c.add_argument("--batch-size", dest="batch_size", type=int, default=16, help="removal sets per forward")
    c.add_argument("--threads", type=int, default=0)
    c.add_argument("--out", required=True)
    c.set_defaults(fn=_cmd_collect)

    fp = sub.add_parser("fit", help="fit the L x H estimator on a collected train split")
    fp.add_argument("--train", required=True, nargs="+", help="collection directory (several are concatenated)")
    fp.add_argument("--out", required=True, help="estimator path stem (.safetensors + .json)")
    fp.add_argument("--loss", default="pearson", choices=["pearson", "ridge"])
    fp.add_argument("--limit", type=int, default=None, help="use at most this many examples")
    fp.add_argument("--all-examples", action="store_true", help="also train on wrongly answered examples")
    fp.set_defaults(fn=_cmd_fit)

    ev = sub.add_parser("evaluate", help="score the estimator and baselines on a held-out collection")
    ev.add_argument("--test", required=True, help="held-out collection (made with --loo)")
    ev.add_argument("--estimator", required=True)
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
        "--methods",
        default="estimator,raw_attention,best_layer,input_x_gradient,integrated_gradients,contextcite,leave_one_out",
    )
    ev.add_argument("--limit", type=int, default=None)
    ev.add_argument("--json", default=None)
    ev.add_argument("--heatmap", default=None, help="write the estimator's L x H weight heatmap (PNG)")
    ev.set_defaults(fn=_cmd_evaluate)

    i = sub.add_parser("info", help="versions and bundled models")
    i.set_defaults(fn=_cmd_info)

    s = sub.add_parser("shapes", help="the attrib.shapes benchmark")
    ss = s.add_subparsers(dest="shapes_command", required=True)

    g = ss.add_parser("generate", help="write examples as PNG + JSONL")
    g.add_argument("--split", default="test", choices=["train", "validation", "test"])
    g.add_argument("--n", type=int, default=10)
    g.add_argument("--start", type=int, default=0)
    g.add_argument("--seed", type=int, default=0, help="benchmark seed")
    g.add_argument("--width", type=int, default=224)
    g.add_argument("--height", type=int, default=224)
    g.add_argument("--families", nargs="+", default=None)
    g.add_argument("--out", required=True)
    _add_difficulty(g)
    g.set_defaults(fn=_cmd_generate)

    t = ss.add_parser("train", help="train the bundled model from scratch")
    t.add_argument("--out", required=True, help="model directory to write")
    t.add_argument("--steps", type=int, default=None, help="optimiser steps (default: TrainConfig's)")
    t.add_argument("--batch-size", type=int, default=None, help="examples per step (default: TrainConfig's)")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default: TrainConfig's)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--tiny", action="store_true", help="tiny architecture (smoke tests)")
    _add_difficulty(t)
    t.set_defaults(fn=_cmd_train)

    e = ss.add_parser("eval", help="greedy evaluation with a blank-image control")
    e.add_argument("--model", default=None, help="bundled model name or a local model directory")
    e.add_argument("--split", default="test", choices=["train", "validation", "test"])
    e.add_argument("--n", type=int, default=1000)
    e.add_argument("--start", type=int, default=0)
    e.add_argument("--seed", type=int, default=0, help="benchmark seed")
    e.add_argument("--batch-size", type=int, default=50)
    e.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    e.add_argument("--no-blank", action="store_true", help="skip the blank-image control")
    e.add_argument("--outcomes", action="store_true", help="include per-example outputs in the JSON")
    e.add_argument("--json", default=None, help="write the summary JSON here")
    _add_difficulty(e)
    e.set_defaults(fn=_cmd_eval)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attrib`` console script.

    Returns:
        The process exit code: 0 on success, 2 on bad input.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.fn(args))
    except (ValueError, OSError) as e:
        console.print(f"[bold red]error:[/bold red] {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
