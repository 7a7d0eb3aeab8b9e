"""What every command shares: the consoles, progress bars with an ETA, and common options."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["add_model_options", "console", "load_flagger", "out", "progress", "split_choices"]

#: Messages, progress and errors (stderr).
console = Console(stderr=True)
#: Results (stdout).
out = Console()

#: The splits of generated datasets.
split_choices = ("train", "validation", "test")


def progress() -> Progress:
    """A progress bar with counts, elapsed time and an ETA, on stderr."""
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


def add_model_options(p: argparse.ArgumentParser, *, default: str | None = None, required: bool = False) -> None:
    """``--model``, ``--device`` and ``--dtype``, as every command that loads a model takes them."""
    p.add_argument(
        "--model",
        default=default,
        required=required,
        help="bundled model name, local checkpoint directory or hub id (default: the bundled model)"
        if not required
        else "bundled model name, local checkpoint directory or hub id",
    )
    p.add_argument("--device", default=None, help="cpu (default), cuda or cuda:N")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16", "auto"],
        help="parameter dtype (default float32)",
    )


def load_flagger(path: str | None, loaded: Any) -> Any:
    """The failure flagger to stream with: ``none``, a JSON file, or (default) the one that ships with the model."""
    import json
    from pathlib import Path

    from metrics.trajectory import TortuosityFlagger

    if path == "none":
        return None
    if path is None:
        p = loaded.default_flagger()
        if p is None:
            return None
        path = str(p)
    return TortuosityFlagger.from_dict(json.loads(Path(path).read_text()))
