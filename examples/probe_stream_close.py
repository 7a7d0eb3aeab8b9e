"""Where a streamed span's close spends its time: the stages timed inside real streams, beside the same event
made in a warm loop.

For each span of a few 256-token streams on the bundled model: the span's batched pass over its buffered tokens
(``AttentionCapture._flush``), ``_emit``'s own work (moving the span's features to the host), the event
(``_event``: scores, top regions, flagger, trajectory), and the wait until the consumer receives it (the next
token's poll: latency, not cost). Medians over spans; the warm figure repeats one event 2,000 times.

    python examples/probe_stream_close.py --json out/probe_stream_close.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True, help="write the medians here")
    ap.add_argument("--streams", type=int, default=4, help="streams (shapes2:test 1, 2, ...)")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from attrib.capture.sdpa import AttentionCapture
    from attrib.capture.spans import Span
    from attrib.io import atomic_write_json
    from attrib.shapes.v2.dataset import make_example
    from attrib.streaming import Attributor
    from attrib.streaming.stream import AttributionStream

    torch.set_num_threads(args.threads)
    at = Attributor.load()
    marks: dict[str, list[tuple[float, float]]] = {}

    def timed(cls: Any, name: str) -> Any:
        fn = getattr(cls, name)

        def wrapper(self: Any, *a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(self, *a, **k)
            finally:
                marks.setdefault(name, []).append((t0, time.perf_counter()))

        setattr(cls, name, wrapper)
        return fn

    saved = [(AttentionCapture, "_flush"), (AttentionCapture, "_emit"), (AttributionStream, "_event")]
    originals = [timed(c, n) for c, n in saved]
    rows: list[tuple[float, float, float, float]] = []
    try:
        for i in range(args.streams):
            ex = make_example("test", 1 + i)
            with at.stream(ex.image(), ex.question.text, max_new_tokens=args.tokens) as s:
                for ev in s:
                    got = time.perf_counter()
                    if hasattr(ev, "index") and marks.get("_event"):
                        f0, f1 = marks["_flush"][-1]
                        e0, e1 = marks["_emit"][-1]
                        v0, v1 = marks["_event"][-1]
                        rows.append((f1 - f0, (e1 - e0) - (v1 - v0), v1 - v0, got - v1))
                    marks.clear()
    finally:
        for (c, n), fn in zip(saved, originals, strict=True):
            setattr(c, n, fn)
    stream = at.stream(make_example("test", 1).image(), "How many red squares are there?")  # never iterated
    f = np.random.default_rng(0).random((at.k, *at.estimator.coef_.shape), dtype=np.float32)
    span = Span(0, "A span.", 0, 4)
    for _ in range(200):
        stream._event(span, f, {}, 0.0)
    t0 = time.perf_counter()
    for _ in range(2000):
        stream._event(span, f, {}, 0.0)
    warm = (time.perf_counter() - t0) / 2000
    names = ("batched_pass_s", "emit_own_s", "event_s", "wait_for_consumer_s")
    out = {
        "model": at.name,
        "streams": args.streams,
        "tokens": args.tokens,
        "threads": args.threads,
        "n_spans": len(rows),
        **{n: statistics.median(r[j] for r in rows) for j, n in enumerate(names)},
        "event_warm_loop_s": warm,
    }
    atomic_write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
