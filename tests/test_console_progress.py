"""Progress in a log file: rich draws nothing there until the job ends, so plain lines must appear."""

from __future__ import annotations

import importlib
import io
import time

from rich.console import Console

cc = importlib.import_module("attrib.cli.console")


def _run(monkeypatch, *, terminal: bool, interval: float) -> str:
    buf = io.StringIO()
    con = Console(file=buf, force_terminal=terminal, width=100)
    monkeypatch.setattr(cc, "console", con)
    with cc.progress(interval=interval) as prog:
        task = prog.add_task("[bold]collecting", total=4)
        for _ in range(4):
            time.sleep(0.03)
            prog.advance(task)
    return buf.getvalue()


def test_non_terminal_writes_plain_lines_with_eta(monkeypatch):
    text = _run(monkeypatch, terminal=False, interval=0.0)
    lines = [ln for ln in text.splitlines() if ln.startswith("collecting: ")]
    # every advance logs at interval 0, the last one says done, once
    assert [ln.split(" (")[0] for ln in lines] == [
        "collecting: 1/4",
        "collecting: 2/4",
        "collecting: 3/4",
        "collecting: 4/4",
    ]
    assert "ETA done" in lines[-1] and "ETA done" not in lines[0]
    assert "[bold]" not in text


def test_non_terminal_rate_limited(monkeypatch):
    text = _run(monkeypatch, terminal=False, interval=3600.0)
    lines = [ln for ln in text.splitlines() if ln.startswith("collecting: ")]
    assert lines == [lines[0]] and lines[0].startswith("collecting: 4/4") and "ETA done" in lines[0]


def test_terminal_keeps_the_live_bar_only(monkeypatch):
    text = _run(monkeypatch, terminal=True, interval=0.0)
    assert "collecting: 1/4" not in text
