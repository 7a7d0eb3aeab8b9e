"""``attrib collect``: features and causal targets, locally or on a Ray cluster."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.markup import escape

from attrib.cli.console import add_generation_options, add_model_options, console, generate_kwargs, progress
from attrib.collect.datasets import dataset_budget

__all__ = ["register"]


def default_train_dataset(model: str) -> str:
    """The train split of a named model's own benchmark (``shapes2-qwen25vl`` -> ``shapes2:train``); for any
    other model, the default model's."""
    from attrib.models import default_model_name
    from attrib.models.loading import get_named_model

    named = get_named_model(model) or get_named_model(default_model_name())
    spec = named.dataset if named is not None else None
    return f"{spec.partition(':')[0]}:train" if spec else "shapes2:train"


def _cmd_collect(args: argparse.Namespace) -> int:
    from attrib.collect.pipeline import CollectConfig, collect_many, preflight
    from attrib.models import default_model_name

    methods = [m.strip() for m in str(args.regions).split(",") if m.strip()]
    try:
        ks = [int(k) for k in str(args.k).split(",") if k.strip()]
    except ValueError:
        raise ValueError(f"--k must be an integer or a comma-separated list of integers, got {args.k!r}") from None
    if not methods or not ks:
        raise ValueError("--regions and --k need at least one value each")
    gen = generate_kwargs(args)
    model = args.model or default_model_name()
    dataset = args.dataset or default_train_dataset(model)
    cfgs = [
        CollectConfig(
            model=model,
            dataset=dataset,
            n=args.n,
            start=args.start,
            k=k,
            region_method=m,
            ablation_mode=args.ablation,
            n_subsets=args.subsets,
            loo=args.loo,
            seed=args.seed,
            shard_size=args.shard_size,
            max_new_tokens=args.max_new_tokens or dataset_budget(dataset) or 200,
            batch_size=args.batch_size,
            dtype=args.dtype or "float32",
            device=args.device,
            system=args.system,
            do_sample=bool(gen.get("do_sample", False)),
            temperature=float(gen.get("temperature", 1.0)),
            top_p=float(gen.get("top_p", 1.0)),
            dinov3=args.dinov3,
        )
        for m in methods
        for k in ks
    ]
    preflight(cfgs)  # configuration errors are refused here, before any progress or work
    outs = [Path(args.out)] if len(cfgs) == 1 else [Path(args.out) / f"{c.region_method}-k{c.k}" for c in cfgs]
    if args.backend != "ray" and (args.address is not None or args.workers is not None or args.gpus_per_worker):
        raise ValueError("--address, --workers and --gpus-per-worker need --backend ray")
    t0 = time.perf_counter()
    with progress() as prog:
        task = prog.add_task("collect", total=None)

        def on_progress(d: int, t: int) -> None:
            prog.update(task, completed=d, total=t)

        if args.backend == "ray":
            from attrib.collect.ray import RayCollectError, RayUnavailableError, collect_ray

            try:
                colls = collect_ray(
                    cfgs,
                    outs,
                    address=args.address,
                    num_workers=args.workers,
                    num_gpus_per_worker=args.gpus_per_worker or 0.0,
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
    for o, coll in zip(outs, colls, strict=True):
        n_ok = sum(s["n_examples"] for s in coll.manifest["shards"])
        console.print(f"collection at {o}: {n_ok} examples, {len(coll.failures)} failures")
    console.print(f"{time.perf_counter() - t0:.0f} s this run")
    return 0


def register(sub: Any) -> None:
    """Add ``collect``."""
    c = sub.add_parser("collect", help="generate traces, capture features, compute ablation targets (resumable)")
    add_model_options(c)
    c.add_argument(
        "--dataset",
        default=None,
        help="default: the train split of the model's own benchmark (shapes2:train for the bundled model); "
        "shapes2:<split> or shapes:<split> (benchmark v1); "
        "a JSONL file of image, question[, answer][, regions]; folder:DIR (images with "
        "questions.jsonl or question.txt); hf:DIR[?image=COL&question=COL&answer=COL&split=NAME] (a Hugging Face "
        "datasets dataset saved with save_to_disk)",
    )
    c.add_argument("--n", type=int, default=100, help="examples (JSONL: the first n lines; 0 = all)")
    c.add_argument("--start", type=int, default=0, help="first example")
    c.add_argument(
        "--k", default="32", help="regions per image; a comma-separated list writes one collection per value"
    )
    c.add_argument(
        "--regions",
        default="color",
        help="region method: color, dinov3 (needs --dinov3), grid, voronoi, blocks, given (the dataset's own "
        "regions); a comma-separated list (with several --k values) collects every combination from one generation "
        "per example, into OUT/<method>-k<K>/",
    )
    c.add_argument(
        "--dinov3", default=None, help="DINOv3 model directory or hub id, for --regions dinov3 (loaded once)"
    )
    c.add_argument(
        "--ablation",
        default="mask",
        choices=["mask", "mean", "repaint"],
        help="how removed regions are removed (mask: their keys are masked in every layer)",
    )
    c.add_argument("--subsets", type=int, default=32, help="random removal sets per example")
    c.add_argument("--loo", action="store_true", help="also compute leave-one-out targets")
    c.add_argument("--seed", type=int, default=0, help="seed of the regions and removal sets")
    c.add_argument("--shard-size", dest="shard_size", type=int, default=16, help="examples per shard")
    add_generation_options(c, budget_help="the dataset's own budget where it has one, e.g. 256 for shapes2, else 200")
    c.add_argument("--batch-size", dest="batch_size", type=int, default=16, help="removal sets per forward")
    c.add_argument(
        "--threads", type=int, default=0, help="torch threads (with --backend ray: per worker, and its CPUs; default 1)"
    )
    c.add_argument("--out", required=True, help="collection directory (an existing one is resumed)")
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
