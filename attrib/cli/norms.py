"""``attrib norms``: layer-wise hidden-state norms by token type, against the input embeddings of that type."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from attrib.cli.console import add_model_options, out

__all__ = ["register"]


def _cmd_norms(args: argparse.Namespace) -> int:
    from attrib.analysis.norms import model_norms
    from attrib.collect.datasets import open_dataset
    from attrib.io import atomic_write_json
    from attrib.models.loading import load

    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    loaded = load(args.model, device=args.device, dtype=args.dtype)
    spec = args.dataset or loaded.default_dataset
    if spec is None:
        raise ValueError(f"{loaded.name} has no default examples: pass --dataset (shapes:test or a JSONL file)")
    items = [(it.load_image(), it.question, it.reference) for it in open_dataset(spec).items(args.n, args.start)]
    name = str(args.model or (loaded.path.name if loaded.path else loaded.name))
    rep = model_norms(loaded, items, name=name)
    t = Table(title=f"hidden-state norms by token type ({rep.model}, {rep.n_inputs} inputs)")
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
    out.print(t)
    if args.json:
        atomic_write_json(args.json, rep.to_dict())
    if args.plot:
        rep.plot(args.plot)
    return 0


def register(sub: Any) -> None:
    """Add ``norms``."""
    nm = sub.add_parser("norms", help="layer-wise hidden-state norms by token type vs the input embeddings")
    add_model_options(nm)
    nm.add_argument(
        "--dataset",
        default=None,
        help="inputs to measure on (default: the model's own examples, e.g. shapes:test; reference traces "
        "are teacher-forced where the dataset has them)",
    )
    nm.add_argument("--n", type=int, default=16, help="examples to measure on")
    nm.add_argument("--start", type=int, default=0, help="first example")
    nm.add_argument("--json", default=None, help="write the norms and ratios here")
    nm.add_argument("--plot", default=None, help="write the norms plot (PNG)")
    nm.set_defaults(fn=_cmd_norms)
