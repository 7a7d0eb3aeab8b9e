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
    overrides["variant"] = args.variant
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
        + (f"  pointing_accuracy {d['pointing_accuracy']:.3f}" if d.get("pointing_accuracy") is not None else "")
    )


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from attrib.io import atomic_write_json
    from attrib.shapes.evaluate import evaluate
    from attrib.shapes.model import load_any

    if args.threads:
        torch.set_num_threads(args.threads)
    path = _resolve_model(args.model)
    model, processor = load_any(path)
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
            copy_feed=args.copy_feed,
        )
    d = res.to_dict(with_outcomes=args.outcomes)
    d["model"] = str(path)
    d["difficulty"] = _difficulty(args).to_dict()
    _print_eval(d)
    if args.json:
        atomic_write_json(args.json, d)
        console.print(f"wrote {args.json}")
    return 0


def _print_event(out: Console, ev: Any) -> None:
    from rich.markup import escape

    from attrib.streaming import SpanEvent

    if isinstance(ev, SpanEvent):
        tops = "  ".join(f"r{r}:{v:+.3f}" for r, v in ev.top_regions)
        flag = " [red bold]FLAG[/red bold]" if ev.flagged else ""
        out.print(
            f"  [dim]{ev.index:>2} @{ev.span_end_s:5.2f}s +{ev.latency_ms:4.1f}ms[/dim] {escape(ev.text)}"
            f"  [cyan]-> {tops}[/cyan]{flag}"
        )


def _run_stream(out: Console, attributor: Any, image: Any, prompt: str, truth: str | None, args: Any) -> Any:
    from rich.markup import escape

    from attrib.streaming import FinalEvent

    flagger = _load_flagger(getattr(args, "flagger", None), attributor)
    with attributor.stream(
        image, prompt, truth=truth, max_new_tokens=args.max_new_tokens, flagger=flagger, top=args.top
    ) as stream:
        for ev in stream:
            if isinstance(ev, FinalEvent):
                res = ev.result
                verdict = ""
                if res.correct is not None:
                    verdict = (
                        " [green]right[/green]" if res.correct else f" [red]wrong[/red] (truth {escape(truth or '')})"
                    )
                out.print(f"  answer: [bold]{escape(str(res.answer))}[/bold]{verdict}")
            else:
                _print_event(out, ev)
    if not getattr(args, "no_verify", False):
        f = attributor.verify(res)
        if f.get("n_spans"):
            out.print(
                f"  [dim]check against ablation: Pearson vs leave-one-out {f['pearson_vs_loo']:.3f}; "
                f"top-{f['k']} drop {f['topk_drop']:.3f} vs oracle {f['topk_drop_oracle']:.3f} "
                f"vs random {f['random_drop']:.3f}[/dim]"
            )
    return res


def _load_flagger(path: str | None, attributor: Any) -> Any:
    import json

    from metrics.trajectory import TortuosityFlagger

    if path == "none":
        return None
    if path is None:
        from attrib.shapes.model import _BUNDLED

        if attributor.name not in _BUNDLED:
            return None
        from attrib.shapes.model import bundled_model_path

        p = bundled_model_path(attributor.name) / "flagger.json"
        if not p.is_file():
            return None
        path = str(p)
    return TortuosityFlagger.from_dict(json.loads(Path(path).read_text()))


def _cmd_demo(args: argparse.Namespace) -> int:
    from attrib.io import atomic_write_json, atomic_write_text
    from attrib.report import render_report
    from attrib.shapes import make_example
    from attrib.streaming import Attributor

    t0 = time.perf_counter()
    attributor = Attributor.load(args.model, args.estimator)
    console.print(
        f"loaded {attributor.name} and its estimator ({attributor.region_method} regions, K={attributor.k}) "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    out = Console()
    results = []
    for i in range(args.n):
        ex = make_example("test", args.start + i)
        out.print(f"\n[bold]{ex.uid}[/bold] ({ex.question.family}): {ex.question.text}")
        results.append(_run_stream(out, attributor, ex.image(), ex.question.text, ex.answer, args))
    outdir = Path(args.out)
    html_path = outdir / "report.html"
    atomic_write_text(html_path, render_report(results, title="attrib demo: the bundled model, streamed"))
    atomic_write_json(outdir / "demo.json", {"results": [r.to_dict() for r in results]})
    n_right = sum(bool(r.correct) for r in results)
    console.print(f"\n{n_right}/{len(results)} answered right; wrote {html_path} and {outdir / 'demo.json'}")
    return 0


def _cmd_stream(args: argparse.Namespace) -> int:
    from attrib.io import atomic_write_json, atomic_write_text
    from attrib.processing import load_image
    from attrib.report import render_report
    from attrib.streaming import Attributor

    image = load_image(args.image)
    attributor = Attributor.load(args.model, args.estimator, region_method=args.regions, k=args.k)
    out = Console()
    res = _run_stream(out, attributor, image, args.prompt, args.truth, args)
    if args.html:
        atomic_write_text(args.html, render_report([res], title="attrib stream"))
        console.print(f"wrote {args.html}")
    if args.json:
        atomic_write_json(args.json, res.to_dict())
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from attrib.serve import make_server, run_until_interrupted
    from attrib.streaming import Attributor

    attributor = Attributor.load(args.model, args.estimator)
    srv = make_server(attributor, host=args.host, port=args.port, flagger=_load_flagger(args.flagger, attributor))
    host, port = srv.server_address[:2]
    console.print(f"attrib serve: open http://{host!s}:{port}/  (Ctrl-C stops)")
    run_until_interrupted(srv)
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
    backend = getattr(args, "backend", "local")
    address = getattr(args, "address", None)
    workers = getattr(args, "workers", None)
    gpus = getattr(args, "gpus_per_worker", None)
    if backend != "ray" and (address is not None or workers is not None or gpus is not None):
        raise ValueError("--address, --workers and --gpus-per-worker need --backend ray")
    t0 = time.perf_counter()
    with _progress() as prog:
        task = prog.add_task("collect", total=None)

        def on_progress(d: int, t: int) -> None:
            prog.update(task, completed=d, total=t)

        if backend == "ray":
            from rich.markup import escape

            from attrib.collect_ray import RayCollectError, RayUnavailableError, collect_ray

            try:
                colls = collect_ray(
                    cfgs,
                    outs,
                    address=address,
                    num_workers=workers,
                    num_gpus_per_worker=gpus or 0.0,
                    num_cpus_per_worker=max(1, args.threads),
                    threads=args.threads or None,
                    on_progress=on_progress,
                )
            except RayUnavailableError as e:
                console.print(f"[bold red]error:[/bold red] {escape(str(e))}")
                return 2
            except RayCollectError as e:
                console.print(
                    f"[bold red]error:[/bold red] {escape(str(e))} (finished shards are kept; rerun to resume)"
                )
                return 1
        else:
            colls = collect_many(cfgs, outs, threads=args.threads, on_progress=on_progress)
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
        model_signature=trains[0].manifest.get("model_signature"),
    )
    console.print(f"fit {args.loss} estimator on {used} examples in {time.perf_counter() - t0:.1f} s -> {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from attrib.collect import Collection
    from attrib.faithfulness import data_efficiency, evaluate_methods, region_comparison
    from attrib.io import atomic_write_json
    from attrib.shapes.model import load_any, resolve_model
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
    model, proc = load_any(resolve_model(cfg["model"]))
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


def _norm_report(args: argparse.Namespace) -> Any:
    from attrib.latent import is_latent_dir
    from attrib.norms import measure_norms
    from attrib.shapes import make_example
    from attrib.shapes.model import _BUNDLED, load_model, resolve_model

    is_bundled = args.model is None or args.model in _BUNDLED
    path = resolve_model(args.model) if is_bundled else Path(str(args.model))
    name = str(args.model or path.name)
    exs = [make_example(args.split, args.start + i) for i in range(args.n)]
    if is_latent_dir(path):  # latent variant: its own greedy traces, latents fed back (type "latent")
        from attrib.shapes.latent_train import latent_norms, load_latent

        lmodel, lproc = load_latent(path)
        return latent_norms(lmodel, lproc, exs, name=name)
    if (path / "attrib_processor.json").is_file():
        model, proc = load_model(path)
        # the question and the reference trace, teacher-forced
        xs = (proc([ex.image()], [ex.question.text], [ex.target_text()]) for ex in exs)
        return measure_norms(model, ({k: v for k, v in x.items() if k != "labels"} for x in xs), name=name)
    from attrib.streaming import load_hf

    hf, build = load_hf(str(path) if path.exists() else str(args.model))
    return measure_norms(hf, (build(ex.image(), ex.question.text) for ex in exs), name=name)


def _cmd_norms(args: argparse.Namespace) -> int:
    from rich.table import Table as _Table

    from attrib.io import atomic_write_json

    rep = _norm_report(args)
    t = _Table(title=f"hidden-state norms by token type ({rep.model}, {rep.n_inputs} inputs)")
    t.add_column("layer", justify="right")
    for ty in rep.mean_norm:
        t.add_column(f"{ty} norm", justify="right")
        t.add_column(f"{ty} / {ty} input", justify="right")
        if ty != "text":
            t.add_column(f"{ty} / text input", justify="right")
    for row in rep.table():
        cells = [str(row["layer"])]
        for ty in rep.mean_norm:
            cells += [f"{row[f'{ty}_norm']:.3g}", f"{row[f'{ty}_ratio']:.3g}"]
            if ty != "text":
                cells.append(f"{row[f'{ty}_ratio_to_text_input']:.3g}")
        t.add_row(*cells)
    Console().print(t)
    if args.json:
        atomic_write_json(args.json, rep.to_dict())
    if args.plot:
        rep.plot(args.plot)
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

    def stream_opts(q: argparse.ArgumentParser) -> None:
        q.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=200)
        q.add_argument("--top", type=int, default=3, help="top regions per span")
        q.add_argument("--no-verify", dest="no_verify", action="store_true", help="skip the ablation check")
        q.add_argument(
            "--flagger", default=None, help="failure-flagger JSON ('none' disables; default: the bundled one)"
        )

    d = sub.add_parser("demo", help="stream attributions on the bundled model (the main job)")
    d.add_argument("--model", default=None, help="bundled model name or a local model directory")
    d.add_argument("--estimator", default=None, help="estimator path stem (default: the bundled one)")
    d.add_argument("--n", type=int, default=4, help="test examples to stream")
    d.add_argument("--start", type=int, default=0, help="first test example")
    d.add_argument("--out", default="out/demo", help="output directory (report.html, demo.json)")
    stream_opts(d)
    d.set_defaults(fn=_cmd_demo)

    st = sub.add_parser("stream", help="stream attributions for one image and prompt, on any supported model")
    st.add_argument("--model", default=None, help="bundled name, local directory or hub id (default: bundled)")
    st.add_argument("--estimator", default=None, help="estimator path stem (required unless the model is bundled)")
    st.add_argument("--image", required=True)
    st.add_argument("--prompt", required=True)
    st.add_argument("--truth", default=None, help="expected answer, if known")
    st.add_argument("--regions", default=None, help="region method (default: the estimator's)")
    st.add_argument("--k", type=int, default=None, help="regions (default: the estimator's)")
    st.add_argument("--html", default=None, help="write a self-contained HTML report here")
    st.add_argument("--json", default=None)
    stream_opts(st)
    st.set_defaults(fn=_cmd_stream)

    sv = sub.add_parser("serve", help="a local web view that streams attributions live")
    sv.add_argument("--model", default=None)
    sv.add_argument("--estimator", default=None)
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8765)
    sv.add_argument("--flagger", default=None)
    sv.set_defaults(fn=_cmd_serve)

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
    c.add_argument(
        "--threads", type=int, default=0, help="torch threads (with --backend ray: per worker, and its CPUs; default 1)"
    )
    c.add_argument("--out", required=True)
    c.add_argument(
        "--backend",
        default="local",
        choices=["local", "ray"],
        help="local: this process; ray: model replicas on a Ray cluster (pip install 'attrib[ray]'; see docs/ray.md)",
    )
    c.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray instance)")
    c.add_argument("--workers", type=int, default=None, help="Ray workers (default: as many as the cluster holds)")
    c.add_argument(
        "--gpus-per-worker", dest="gpus_per_worker", type=float, default=None, help="GPUs per Ray worker (num_gpus)"
    )
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
        "--record-validation",
        dest="record_validation",
        action="store_true",
        help="write the estimator's held-out LDS/R2/top-5/pointing into its JSON metadata (shown in reports)",
    )
    ev.add_argument(
        "--methods",
        default="estimator,raw_attention,best_layer,input_x_gradient,integrated_gradients,contextcite,leave_one_out",
    )
    ev.add_argument("--limit", type=int, default=None)
    ev.add_argument("--json", default=None)
    ev.add_argument("--heatmap", default=None, help="write the estimator's L x H weight heatmap (PNG)")
    ev.set_defaults(fn=_cmd_evaluate)

    from attrib.trajectories import add_parser as add_trajectories

    add_trajectories(sub)

    from attrib.v1analysis import add_parser as add_v1

    add_v1(sub)

    from attrib.latent_cli import add_parser as add_latent

    add_latent(sub)

    nm = sub.add_parser("norms", help="layer-wise hidden-state norms by token type vs the input embeddings")
    nm.add_argument("--model", default=None, help="bundled name, local directory or hub id (default: bundled)")
    nm.add_argument("--split", default="test", choices=["train", "validation", "test"])
    nm.add_argument("--n", type=int, default=16, help="benchmark examples to measure on")
    nm.add_argument("--start", type=int, default=0)
    nm.add_argument("--json", default=None)
    nm.add_argument("--plot", default=None, help="write the norms plot (PNG)")
    nm.set_defaults(fn=_cmd_norms)

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
    t.add_argument(
        "--variant", default="base", choices=["base", "v1"], help="plain model, or v1 point-and-copy on the same base"
    )
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
    e.add_argument(
        "--copy-feed",
        default="source",
        choices=["source", "mean", "token"],
        help="v1 models: what a copy feeds back (source patch; interventions: the image's mean embedding, "
        "or the <|copy|> token embedding alone)",
    )
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
