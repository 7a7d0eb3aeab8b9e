"""What every command shares: the consoles, progress bars with an ETA, and common options."""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

__all__ = [
    "add_generation_options",
    "add_model_options",
    "console",
    "flag_label",
    "generate_kwargs",
    "load_flagger",
    "out",
    "progress",
    "split_choices",
]

#: Messages, progress and errors (stderr).
console = Console(stderr=True, soft_wrap=True)
#: Results (stdout).
out = Console()

#: The splits of generated datasets.
split_choices = ("train", "validation", "test")


class _LoggedProgress(Progress):
    """A :class:`~rich.progress.Progress` that, when stderr is not a terminal (a log file, a pipe, CI), also
    writes one plain line per task every ``interval`` seconds and when the task completes: rich's live bar
    draws nothing there until the job ends, and a long job must show its progress and ETA."""

    def __init__(self, *columns: Any, interval: float = 30.0, **kw: Any) -> None:
        super().__init__(*columns, **kw)
        self._interval = interval
        self._last: dict[Any, float] = {}

    def _log(self, task_id: Any) -> None:
        task = self._tasks.get(task_id)
        if task is None or task.total is None:
            return
        now = time.monotonic()
        done = task.completed >= task.total
        if not done and now - self._last.get(task_id, task.start_time or now) < self._interval:
            return
        if done and self._last.get(task_id) == float("inf"):
            return
        self._last[task_id] = float("inf") if done else now
        elapsed = task.elapsed or 0.0
        eta = task.time_remaining
        if eta is None and task.completed > 0 and elapsed > 0:
            # rich's estimate needs updates within its 30 s window; slower steps use the average rate so far
            eta = elapsed / task.completed * (task.total - task.completed)
        eta_s = "done" if done else ("unknown" if eta is None else f"{eta:.0f} s")
        self.console.print(
            f"{Text.from_markup(str(task.description)).plain}: {task.completed:g}/{task.total:g} "
            f"({elapsed:.0f} s elapsed, ETA {eta_s})",
            markup=False,
            highlight=False,
        )

    def update(self, task_id: Any, **kw: Any) -> None:  # type: ignore[override]
        super().update(task_id, **kw)
        self._log(task_id)

    def advance(self, task_id: Any, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)


def progress(*, interval: float = 30.0) -> Progress:
    """A progress bar with counts, elapsed time and an ETA, on stderr; where stderr is not a terminal,
    one plain progress line (counts, elapsed, ETA) every ``interval`` seconds and one at completion."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    if not console.is_terminal:
        return _LoggedProgress(*columns, console=console, transient=False, interval=interval)
    return Progress(*columns, console=console, transient=False)


def add_model_options(
    p: argparse.ArgumentParser, *, default: str | None = None, required: bool = False, model_option: bool = True
) -> None:
    """``--model``, ``--device`` and ``--dtype``, as every command that loads a model takes them
    (``model_option=False``: the model comes from elsewhere, e.g. a collection)."""
    if model_option:
        p.add_argument(
            "--model",
            default=default,
            required=required,
            help="bundled model name, local checkpoint directory or hub id (default: the bundled model)"
            if not required
            else "bundled model name, local checkpoint directory or hub id",
        )
    p.add_argument(
        "--device",
        default=None,
        help="cpu (default), cuda, cuda:N, mps, or auto (accelerate device_map: spread over the GPUs)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16", "auto"],
        help="parameter dtype (default float32, or a collection's own; auto: the checkpoint's)",
    )


def add_generation_options(
    p: argparse.ArgumentParser, *, max_new_tokens: int = 200, budget_help: str | None = None
) -> None:
    """``--max-new-tokens``, ``--system``, ``--do-sample``, ``--temperature`` and ``--top-p``.

    With ``budget_help``, ``--max-new-tokens`` defaults to ``None`` (the command resolves it) and that text
    says what the default is.
    """
    p.add_argument(
        "--max-new-tokens",
        dest="max_new_tokens",
        type=int,
        default=None if budget_help else max_new_tokens,
        help=f"generation budget in tokens (default {budget_help or max_new_tokens}; thinking traces often need "
        "thousands)",
    )
    p.add_argument("--system", default=None, help="a system prompt before every question")
    p.add_argument("--do-sample", dest="do_sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (with --do-sample)")
    p.add_argument("--top-p", dest="top_p", type=float, default=None, help="nucleus-sampling mass (with --do-sample)")


def generate_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding options of ``args`` (empty: greedy).

    Raises:
        ValueError: For ``--temperature`` or ``--top-p`` without ``--do-sample``, or out of range.
    """
    t, top_p = getattr(args, "temperature", None), getattr(args, "top_p", None)
    if not getattr(args, "do_sample", False):
        if t is not None or top_p is not None:
            raise ValueError("--temperature and --top-p need --do-sample (decoding is greedy without it)")
        return {}
    if t is not None and not t > 0:
        raise ValueError(f"--temperature must be > 0, got {t}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {top_p}")
    kw: dict[str, Any] = {"do_sample": True}
    if t is not None:
        kw["temperature"] = t
    if top_p is not None:
        kw["top_p"] = top_p
    return kw


def load_flagger(path: str | None, loaded: Any) -> Any:
    """The failure flagger to stream with: ``none``, a JSON file (always used), or (default) the one that
    ships with the model, used only when its held-out recall is at least twice its false-positive rate.

    Raises:
        ValueError: For a file that is not a flagger.
    """
    import json
    from pathlib import Path

    from metrics.trajectory import TortuosityFlagger

    if path == "none":
        return None
    explicit = path is not None
    if path is None:
        p = loaded.default_flagger()
        if p is None:
            return None
        path = str(p)
    try:
        fl = TortuosityFlagger.from_dict(json.loads(Path(path).read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--flagger {path} is not a flagger saved by `attrib trajectories --save-flagger`: {e}") from e
    if not explicit and not fl.works():
        h = fl.heldout_figures()
        why = (
            f"its held-out recall {h['recall']:.3f} at FPR {max(h['fpr'], fl.fpr):.2f} is under twice the FPR"
            if h
            else "it records no held-out figures"
        )
        console.print(
            f"[dim]failure flag off: the model's flagger does not earn a default place ({why}); "
            f"pass --flagger {escape(path)} to use it anyway[/dim]"
        )
        return None
    return fl


def flag_label(flagger: Any) -> str:
    """``FLAG`` with the flagger's held-out recall and false-positive rate, when recorded."""
    h = flagger.heldout_figures() if flagger is not None and hasattr(flagger, "heldout_figures") else None
    if not h:
        return "FLAG (held-out recall unknown)"
    return f"FLAG (catches {h['recall']:.0%} of failures, {max(h['fpr'], flagger.fpr):.0%} false alarms, held out)"
