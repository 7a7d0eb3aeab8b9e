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
    from attrib.collect import CollectConfig, collect

    cfg = CollectConfig(
        model=args.model,
        dataset=args.dataset,
        n=args.n,
        start=args.start,
        k=args.k,
        region_method=args.regions,
        ablation_mode=args.ablation,
        n_subsets=args.subsets,
        loo=args.loo,
        seed=args.seed,
        shard_size=args.shard_size,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    t0 = time.perf_counter()
    with _progress() as prog:
        task = prog.add_task("collect", total=None)
        coll = collect(
            cfg, args.out, threads=args.threads, on_progress=lambda d, t: prog.update(task, completed=d, total=t)
        )
    n_ok = sum(s["n_examples"] for s in coll.manifest["shards"])
    console.print(
        f"collection at {args.out}: {n_ok} examples, {len(coll.failures)} failures "
        f"({time.perf_counter() - t0:.0f} s this run)"
    )
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from attrib.collect import Collection
    from attrib.faithfulness import fit_estimator

    train = Collection.open(args.train)
    t0 = time.perf_counter()
    est, used = fit_estimator(train, loss=args.loss, only_correct=not args.all_examples, limit=args.limit)
    cfg = train.manifest["config"]
    est.save(
        args.out,
        model_id=cfg["model"],
        region_method=cfg["region_method"],
        k=cfg["k"],
        ablation_mode=cfg["ablation_mode"],
        feature_pooling="mean over span tokens, sum over region tokens",
        n_train_examples=used,
        train_collection=str(args.train),
    )
    console.print(f"fit {args.loss} estimator on {used} examples in {time.perf_counter() - t0:.1f} s -> {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from attrib.collect import Collection
    from attrib.faithfulness import evaluate_methods
    from attrib.io import atomic_write_json
    from attrib.shapes.model import load_model, resolve_model
    from estimators.baselines import best_layer_index
    from estimators.linear import LinearHeadEstimator

    test = Collection.open(args.test)
    est = LinearHeadEstimator.load(args.estimator)
    meta = getattr(est, "metadata_", {})
    cfg = test.manifest["config"]
    if meta.get("region_method") not in (None, cfg["region_method"]):
        console.print(
            f"[yellow]warning:[/yellow] estimator fit on {meta['region_method']!r} regions, "
            f"test collection uses {cfg['region_method']!r}"
        )
    model, proc = load_model(resolve_model(cfg["model"]))
    layer = best_layer_index(list(Collection.open(args.train).examples())[:200]) if args.train else 0
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
    t = Table(title=f"faithfulness on {args.test} (n_examples={res['n_examples']}, n_spans={res['n_spans']})")
    for col in ("method", "LDS", "R2", "top5", "top5 norm", "pointing", "s/token"):
        t.add_column(col, justify="right")

    def f(d: dict[str, Any] | None) -> str:
        return "-" if d is None else f"{d['value']:.3f}"

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
    Console().print(t)
    if args.json:
        atomic_write_json(args.json, res)
    if args.heatmap:
        from attrib.plots import weight_heatmap

        weight_heatmap(est.coef_, args.heatmap)
    return 0


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
    c.add_argument("--k", type=int, default=32, help="regions per image")
    c.add_argument("--regions", default="color", help="region method")
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
    fp.add_argument("--train", required=True, help="collection directory")
    fp.add_argument("--out", required=True, help="estimator path stem (.safetensors + .json)")
    fp.add_argument("--loss", default="pearson", choices=["pearson", "ridge"])
    fp.add_argument("--limit", type=int, default=None, help="use at most this many examples")
    fp.add_argument("--all-examples", action="store_true", help="also train on wrongly answered examples")
    fp.set_defaults(fn=_cmd_fit)

    ev = sub.add_parser("evaluate", help="score the estimator and baselines on a held-out collection")
    ev.add_argument("--test", required=True, help="held-out collection (made with --loo)")
    ev.add_argument("--estimator", required=True)
    ev.add_argument("--train", default=None, help="train collection (chooses the best single layer)")
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
