"""A JSON-lines log of streamed events, for safety monitoring and audit.

One line per event, written as it happens (a single ``write`` on a file opened for appending, so lines
of concurrent streams never interleave and a crash loses at most the line being written):

- ``start``: the stream's id, the model, the prompt, the image's size and SHA-256, the flagger's
  threshold and held-out figures;
- ``span``: every field of [`SpanEvent.to_dict`][attrib.streaming.stream.SpanEvent.to_dict] — the
  region scores, top regions, the trajectory statistics so far and the flag state — plus ``flag_rose``
  on the span that raised it;
- ``final``: the answer, whether it was right (when known), the tokens generated, ``flagged_at`` and
  ``stopped_on_flag``;
- ``error``: a stream that ended with an exception, and its one-line message.

Every line carries ``stream`` (an id), ``time`` (UTC, ISO 8601) and ``t`` (seconds since the stream's
start line). [`read_events`][attrib.streaming.events.read_events] reads a log back, skipping a last line a
crash cut short.

Example:
    ```python
    with EventLog("events.jsonl") as log, attributor.stream(image, prompt, flagger=flagger) as s:
        sid = log.start(s, model=attributor.name, flagger=flagger)
        for ev in s:
            log.event(sid, ev)
    ```
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EventLog", "read_events"]


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _finite(x: Any) -> Any:
    """NaN and infinities as ``null`` (JSON has neither)."""
    if isinstance(x, float):
        return x if np.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


class EventLog:
    """Append streamed events to a JSON-lines file, one line per event, safe across threads.

    Args:
        path: The log file; created (with its folder) when missing, appended to otherwise.

    Raises:
        OSError: If the file cannot be opened for appending.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()
        self._t0: dict[str, float] = {}
        self._flagged: set[str] = set()

    def _write(self, stream_id: str, kind: str, fields: dict[str, Any]) -> None:
        now = time.perf_counter()
        t0 = self._t0.setdefault(stream_id, now)
        rec = {
            "type": kind,
            "stream": stream_id,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "t": round(now - t0, 6),
            **fields,
        }
        line = (json.dumps(_finite(rec), default=_json_default, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                raise ValueError(f"event log {self.path} is closed")
            os.write(self._fd, line)

    def start(
        self,
        stream: Any,
        *,
        model: str = "",
        flagger: Any = None,
        stream_id: str | None = None,
        **extra: Any,
    ) -> str:
        """Log a stream's start line; return its id (pass it to [`event`][attrib.streaming.events.EventLog.event]).

        Args:
            stream: The [`AttributionStream`][attrib.streaming.stream.AttributionStream] (its prompt, image
                and system prompt are logged).
            model: The model's name or path.
            flagger: The flagger the stream uses, if any (its threshold and held-out figures are logged).
            stream_id: An id of your own (default: a random one).
            **extra: More JSON-ready fields for the start line.
        """
        sid = stream_id or uuid.uuid4().hex[:12]
        self._t0[sid] = time.perf_counter()
        img = stream.image
        flag: dict[str, Any] | None = None
        if flagger is not None:
            flag = {
                "threshold": getattr(flagger, "threshold_", None),
                "fpr": getattr(flagger, "fpr", None),
                "min_spans": getattr(flagger, "min_spans", None),
                "heldout": flagger.heldout_figures() if hasattr(flagger, "heldout_figures") else None,
            }
        self._write(
            sid,
            "start",
            {
                "model": model,
                "prompt": stream.prompt,
                "system": getattr(stream, "system", None),
                "image_size": list(img.size),
                "image_sha256": hashlib.sha256(img.tobytes()).hexdigest(),
                "n_regions": int(stream.partition.k),
                "flagger": flag,
                **extra,
            },
        )
        return sid

    def event(self, stream_id: str, ev: Any) -> None:
        """Log one event of the stream: a [`SpanEvent`][attrib.streaming.stream.SpanEvent] or the final one."""
        from attrib.streaming.stream import FinalEvent, SpanEvent

        if isinstance(ev, SpanEvent):
            d = ev.to_dict()
            d.pop("type")
            rose = ev.flagged and stream_id not in self._flagged
            if rose:
                self._flagged.add(stream_id)
            self._write(stream_id, "span", {**d, "flag_rose": rose})
        elif isinstance(ev, FinalEvent):
            r = ev.result
            self._write(
                stream_id,
                "final",
                {
                    "answer": r.answer,
                    "truth": r.truth,
                    "correct": r.correct,
                    "generated_tokens": r.generated_tokens,
                    "generation_s": r.generation_s,
                    "n_spans": len(r.spans),
                    "flagged_at": r.flagged_at,
                    "stopped_on_flag": r.stopped_on_flag,
                },
            )
            self._flagged.discard(stream_id)
        else:
            raise TypeError(f"not a stream event: {type(ev).__name__}")

    def error(self, stream_id: str, message: str) -> None:
        """Log that a stream ended with an error (one line, no traceback)."""
        self._write(stream_id, "error", {"message": " ".join(str(message).split())[:500]})
        self._flagged.discard(stream_id)

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """The events of a log, in order; a last line cut short by a crash is skipped.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If a line other than the last is not JSON (not an event log).
    """
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    out: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # no newline after it: the write was cut short
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON: not an event log") from None
    return out
