"""``attrib shapes``: the benchmark's examples, the bundled models' training and their evaluation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, cast

from rich.table import Table

from attrib.cli.console import console, out, progress, split_choices

__all__ = ["register"]


def _difficulty(args: argparse.Namespace) -> Any:
    from attrib.shapes.scene import Difficulty

    if getattr(args, "benchmark", "shapes") == "shapes2":
        from attrib.shapes.v2.scene import preset

        base = preset(args.difficulty).to_dict()
    else:
        base = Difficulty.preset(args.difficulty).to_dict()
    for k in ("min_objects", "max_objects", "size_scale", "colour_similarity"):
        v = getattr(args, k, None)
        if v is not None:
            base[k] = v
    if getattr(args, "texture", False):
        base["texture"] = True
    return Difficulty.from_dict(base)


def _add_benchmark(p: argparse.ArgumentParser, *, from_model: bool = False) -> None:
    p.add_argument(
        "--benchmark",
        default=None if from_model else "shapes2",
        choices=["shapes", "shapes2"],
        help="benchmark version: shapes2 (v2, the bundled model's: long traces grounded in the image, canvas mix) "
        "or shapes (v1)"
        + (
            "; default: the one the model was trained on (its train_log.json), else shapes"
            if from_model
            else "; default shapes2"
        ),
    )


def _model_benchmark(path: Any) -> str:
    """The benchmark a model directory was made for (latent variants included), ``shapes`` when it does not say.

    See [`model_benchmark`][attrib.shapes.model.model_benchmark].
    """
    from attrib.shapes.model import model_benchmark

    return model_benchmark(Path(str(path)))


def _add_difficulty(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--difficulty",
        default="medium",
        choices=["easy", "medium", "hard"],
        help="difficulty preset (of the chosen benchmark; v2 object counts are those of a 224x224 canvas)",
    )
    p.add_argument(
        "--min-objects", dest="min_objects", type=int, help="fewest objects per scene (overrides the preset)"
    )
    p.add_argument("--max-objects", dest="max_objects", type=int, help="most objects per scene (overrides the preset)")
    p.add_argument("--size-scale", dest="size_scale", type=float, help="object size multiplier (overrides the preset)")
    p.add_argument(
        "--colour-similarity",
        dest="colour_similarity",
        type=float,
        help="0..1: how close the palette's colours are (overrides the preset)",
    )
    p.add_argument("--texture", action="store_true", help="draw a distractor texture")


def _cmd_generate(args: argparse.Namespace) -> int:
    from attrib.io import atomic_write_text
    from attrib.shapes.dataset import iter_split

    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    if args.benchmark == "shapes2":
        from attrib.shapes.v2.dataset import iter_split as iter_split2

        if (args.width is None) != (args.height is None):
            raise ValueError("give both --width and --height (or neither, for the v2 canvas mix)")
        examples: Any = iter_split2(
            args.split,
            args.n,
            start=args.start,
            benchmark_seed=args.seed,
            difficulty=_difficulty(args),
            canvas=None if args.width is None else (args.width, args.height),
            families=args.families,
        )
    else:
        examples = iter_split(
            args.split,
            args.n,
            start=args.start,
            benchmark_seed=args.seed,
            difficulty=_difficulty(args),
            width=args.width or 224,
            height=args.height or 224,
            families=args.families,
        )
    for ex in examples:
        ex.image().save(out_dir / f"{ex.uid}.png")
        rec = ex.to_dict()
        rec["image"] = f"{ex.uid}.png"
        lines.append(json.dumps(rec))
    atomic_write_text(out_dir / "examples.jsonl", "\n".join(lines) + "\n")
    console.print(f"wrote {len(lines)} examples to {out_dir}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from attrib.shapes.model import ModelSize
    from attrib.shapes.train import TrainConfig, train

    overrides: dict[str, Any] = {
        k: getattr(args, k) for k in ("steps", "batch_size", "lr") if getattr(args, k) is not None
    }
    overrides |= {"seed": args.seed, "difficulty": _difficulty(args), "threads": args.threads}
    if args.tiny:
        overrides["size"] = ModelSize.tiny()
    if args.benchmark == "shapes2":  # the v2 recipe; --variant v1 puts the point-and-copy heads on the same base
        cfg = TrainConfig.v2(variant=args.variant, **overrides)
    else:
        cfg = TrainConfig(size=overrides.pop("size", ModelSize()), variant=args.variant, **overrides)
    with progress() as prog:
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
    t.add_column("objects right", justify="right")
    t.add_column("positions right", justify="right")
    t.add_column("median sentences", justify="right")

    def cells(r: dict[str, Any]) -> list[str]:
        return [
            "-" if r.get(k) is None else f"{r[k]:.3f}"
            for k in ("blank_image_accuracy", "object_accuracy", "position_accuracy")
        ] + ["-" if r.get("chain_length_median") is None else f"{r['chain_length_median']:g}"]

    for f, r in d["per_family"].items():
        t.add_row(f, str(r["n"]), f"{r['accuracy']:.3f}", *cells(r))
    t.add_row("all", str(d["n"]), f"{d['accuracy']:.3f}", *cells(d), style="bold")
    out.print(t)
    kinds = d.get("failure_kinds") or {}
    out.print(
        f"parse_rate {d['parse_rate']:.3f}  n_failures {d['n_failures']} "
        f"(hallucination {kinds.get('hallucination', 0)}, reasoning_error {kinds.get('reasoning_error', 0)})  "
        f"seconds_per_example {d['seconds_per_example']:.3f}"
        + (f"  pointing_accuracy {d['pointing_accuracy']:.3f}" if d.get("pointing_accuracy") is not None else "")
    )


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from attrib.io import atomic_write_json
    from attrib.models.loading import load
    from attrib.shapes.evaluate import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load(args.model)
    model, processor, path = loaded.model, cast(Any, loaded.processor), loaded.path or loaded.name
    if args.benchmark is None:
        args.benchmark = _model_benchmark(loaded.path) if loaded.path else "shapes"
    with progress() as prog:
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
            benchmark=args.benchmark,
        )
    d = res.to_dict(with_outcomes=args.outcomes)
    d["model"] = str(path)
    d["benchmark"] = args.benchmark
    d["difficulty"] = _difficulty(args).to_dict()
    _print_eval(d)
    if args.json:
        atomic_write_json(args.json, d)
        console.print(f"wrote {args.json}")
    return 0


def register(sub: Any) -> None:
    """Add ``shapes generate``, ``shapes train`` and ``shapes eval``."""
    s = sub.add_parser("shapes", help="the attrib.shapes benchmark: generate examples, train and evaluate models")
    ss = s.add_subparsers(dest="shapes_command", required=True)

    g = ss.add_parser("generate", help="write examples as PNG + JSONL")
    g.add_argument("--split", default="test", choices=split_choices, help="benchmark split")
    g.add_argument("--n", type=int, default=10, help="examples to write")
    g.add_argument("--start", type=int, default=0, help="first example index")
    g.add_argument("--seed", type=int, default=0, help="benchmark seed")
    g.add_argument("--width", type=int, default=None, help="canvas width in pixels (v1 default 224; v2: the mix)")
    g.add_argument("--height", type=int, default=None, help="canvas height in pixels (v1 default 224; v2: the mix)")
    g.add_argument("--families", nargs="+", default=None, help="question families to draw from (default: all)")
    g.add_argument("--out", required=True, help="output directory (PNG files and examples.jsonl)")
    _add_benchmark(g)
    _add_difficulty(g)
    g.set_defaults(fn=_cmd_generate)

    t = ss.add_parser("train", help="train the bundled model from scratch")
    t.add_argument("--out", required=True, help="model directory to write")
    t.add_argument("--steps", type=int, default=None, help="optimiser steps (default: TrainConfig's)")
    t.add_argument("--batch-size", type=int, default=None, help="examples per step (default: TrainConfig's)")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default: TrainConfig's)")
    t.add_argument("--seed", type=int, default=0, help="training seed")
    t.add_argument("--threads", type=int, default=2, help="torch threads")
    t.add_argument("--tiny", action="store_true", help="tiny architecture (smoke tests)")
    t.add_argument(
        "--variant", default="base", choices=["base", "v1"], help="plain model, or v1 point-and-copy on the same base"
    )
    _add_benchmark(t)
    _add_difficulty(t)
    t.set_defaults(fn=_cmd_train)

    e = ss.add_parser("eval", help="greedy evaluation with a blank-image control")
    e.add_argument("--model", default=None, help="bundled model name or a local model directory")
    e.add_argument("--split", default="test", choices=split_choices, help="benchmark split")
    e.add_argument("--n", type=int, default=1000, help="examples to evaluate")
    e.add_argument("--start", type=int, default=0, help="first example index")
    e.add_argument("--seed", type=int, default=0, help="benchmark seed")
    e.add_argument("--batch-size", type=int, default=50, help="examples per generate call")
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
    _add_benchmark(e, from_model=True)
    _add_difficulty(e)
    e.set_defaults(fn=_cmd_eval)
