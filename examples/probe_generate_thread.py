"""Threading designs of the stream, measured: where generation runs, and where attribution runs.

Usage:
    python examples/probe_generate_thread.py [--tokens 512] [--reps 5] [--old-ref 63651d0] [--json OUT]

Bundled model and estimator, one example, ``--tokens`` forced tokens. Each design is set up
untimed (inputs, regions, assignment), then timed; the designs alternate within each repeat
and the table gives medians of milliseconds per token and their ratio to plain generation on
the main thread:

- ``plain_main`` / ``plain_thread``: ``generate`` on the main thread / on a fresh thread;
- ``caller_worker`` (the shipped design): generation on the iterating thread (a greenlet),
  attribution in a worker thread, events handed over at the next token;
- ``caller_worker_thread``: the same stream iterated from a fresh non-main thread (``attrib serve``);
- ``caller_inline``: generation on the caller's thread, each span scored inline at its
  last token (no worker thread);
- ``thread_worker`` (the previous design): generation in its own thread, attribution in a
  worker thread, the consumer waiting on a queue; the previous ``AttributionStream`` is
  loaded from git (``--old-ref``) and run with today's capture;
- ``thread_worker_old_capture``: the previous design with the previous capture too (both from
  ``--old-ref``): what streaming cost before this change.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from attrib.io import atomic_write_json
from attrib.shapes import make_example
from attrib.streaming import Attributor, FinalEvent
from attrib.variants.registry import CaptureRequest

ROOT = Path(__file__).resolve().parent.parent


def old_module(ref: str, path: str, name: str) -> ModuleType:
    """``path`` as it was at git ``ref``, imported as module ``name``."""
    src = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    f = Path(tempfile.mkdtemp()) / f"{name}.py"
    f.write_text(src)
    spec = importlib.util.spec_from_file_location(name, f)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def in_thread(fn: Callable[[], None]) -> None:
    t = threading.Thread(target=fn)
    t.start()
    t.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--old-ref", default="63651d0", help="git revision of the previous stream and capture")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    a = Attributor.load()
    ex = make_example("test", 0)
    n = args.tokens
    x = a.loaded.build(ex.image(), ex.question.text)
    kw: dict[str, Any] = {"max_new_tokens": n, "min_new_tokens": n}

    old_capture = old_module(args.old_ref, "attrib/capture/sdpa.py", "attrib_old_capture")
    setattr(old_capture, "IMPLEMENTATION", "attrib_sdpa_previous")  # noqa: B010  (beside today's, own name)
    old_stream = old_module(args.old_ref, "attrib/streaming/stream.py", "attrib_old_stream")

    def plain() -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                a.model.generate(**x, max_new_tokens=n, min_new_tokens=n, do_sample=False)

        return run

    def consume(stream: Any) -> Callable[[], None]:
        def run() -> None:
            with stream:
                for ev in stream:
                    if isinstance(ev, FinalEvent):
                        break

        return run

    def caller_worker() -> Callable[[], None]:
        return consume(a.stream(ex.image(), ex.question.text, **kw))

    def caller_inline() -> Callable[[], None]:
        s = a.stream(ex.image(), ex.question.text, **kw)  # the same set-up, then generation with inline scoring
        est = a.estimator

        def on_span(span: Any, feats: np.ndarray, parts: dict[str, np.ndarray]) -> None:
            scores = est.region_scores(feats[None])[0]
            events.append((span, scores, np.argsort(-scores, kind="stable")[:3]))

        events: list[Any] = []
        req = CaptureRequest(
            s.inputs, s.assignment, max_new_tokens=n, on_span=on_span, generate_kwargs={"min_new_tokens": n}
        )

        def run() -> None:
            with a.lock, torch.inference_mode():
                a.variant.capture(a.loaded, req)

        return run

    def thread_worker() -> Callable[[], None]:
        return consume(
            old_stream.AttributionStream(
                a,
                ex.image(),
                ex.question.text,
                max_new_tokens=n,
                truth=None,
                flagger=None,
                top=3,
                generate_kwargs={"min_new_tokens": n},
            )
        )

    def with_old_capture(prepare: Callable[[], Callable[[], None]]) -> Callable[[], Callable[[], None]]:
        import attrib.variants.registry as reg

        def prepared() -> Callable[[], None]:
            inner = prepare()

            def run() -> None:
                saved = reg.AttentionCapture
                reg.AttentionCapture = old_capture.AttentionCapture  # type: ignore[misc]
                try:
                    inner()
                finally:
                    reg.AttentionCapture = saved  # type: ignore[misc]

            return run

        return prepared

    def threaded(prepare: Callable[[], Callable[[], None]]) -> Callable[[], Callable[[], None]]:
        def prepared() -> Callable[[], None]:
            inner = prepare()
            return lambda: in_thread(inner)

        return prepared

    # Each design is prepared (set-up: inputs, regions, assignment) untimed, then run.
    designs: dict[str, Callable[[], Callable[[], None]]] = {
        "plain_main": plain,
        "plain_thread": threaded(plain),
        "caller_worker": caller_worker,
        "caller_worker_thread": threaded(caller_worker),
        "caller_inline": caller_inline,
        "thread_worker": thread_worker,
        "thread_worker_old_capture": with_old_capture(thread_worker),
    }
    for prepare in designs.values():  # warm-up
        prepare()()
    times: dict[str, list[float]] = {k: [] for k in designs}
    for _ in range(args.reps):
        for k, prepare in designs.items():
            run = prepare()
            t0 = time.perf_counter()
            run()
            times[k].append((time.perf_counter() - t0) / n * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["plain_main"]
    print(f"{n} tokens, {args.reps} alternating repeats, medians (ms/token, ratio to plain_main):")
    for k, v in med.items():
        print(f"  {k:28s} {v:7.3f}  x{v / base:.3f}")
    if args.json:
        atomic_write_json(
            args.json,
            {
                "tokens": n,
                "reps": args.reps,
                "old_ref": args.old_ref,
                "torch_threads": torch.get_num_threads(),
                "ms_per_token": med,
                "ratio_to_plain_main": {k: v / base for k, v in med.items()},
                "ms_per_token_each": times,
            },
        )


if __name__ == "__main__":
    main()
