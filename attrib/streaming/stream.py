"""Stream region attributions while the model thinks.

Generation runs on the thread that iterates the stream, as a greenlet; each span's event is made as the
span ends:

```text
your loop (thread A) --next()--> generation (greenlet on thread A): token, token, ... span ends
      ^                                     |  capture's batched pass -> (K, L, H) features -> event
      +-------- event (at the next token) --+
```

- **Generation** runs under an attention capture, through the model's variant
  ([`attrib.variants`][attrib.variants]: plain models, v1 point-and-copy, latent tokens), on
  *your* thread, as a greenlet: ``next()`` resumes it, and it suspends itself when an event is
  ready for you. On this project's CPU build of torch, ``generate`` called from a thread other than
  the main one runs slower (1.15x measured, docs/streaming.md; where inside torch that goes was not
  isolated), so keeping it on the caller's thread is what makes streaming cost what generation costs.
- **The event.** When a reasoning span completes, its ``(K, L, H)`` features (and its key parts, e.g.
  the via-copy part) become per-region scores with the estimator (one dot product), the top regions,
  the optional failure flagger's update and the trajectory statistics: a
  [`SpanEvent`][attrib.streaming.stream.SpanEvent], made right there (tens of microseconds). With
  ``worker=True`` a separate attribution thread makes it instead and generation waits (at most 5 ms,
  the interpreter's lock released) until the thread has taken the span; that hand-off costs generation
  more than the event itself, so it is only for an estimator or flagger slow enough to matter.
- **Iterating** the [`AttributionStream`][attrib.streaming.stream.AttributionStream] yields those events:
  generation checks for ready events once per token and hands them over, then one
  [`FinalEvent`][attrib.streaming.stream.FinalEvent] carrying the answer and the whole
  [`StreamResult`][attrib.streaming.stream.StreamResult].

An exception in generation or in making an event (on either path) is re-raised by the iterator. Closing
the stream (``close()``, leaving a ``with`` block, or a web client disconnecting) stops generation: at
once on the iterating thread (generation is unwound where it was suspended), at the next token from
another thread. Your loop's body runs while generation is suspended, so a slow body delays generation
(it never delays the events: they wait for you). No thread outlives the stream.

Example:
    ```python
    attributor = Attributor.load()  # the bundled model and estimator
    for event in attributor.stream(image, "How many red circles are there?"):
        if isinstance(event, SpanEvent):
            print(event.text, event.top_regions)
    ```
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from greenlet import GreenletExit, greenlet
from PIL import Image

from attrib.analysis.latent import latent_share
from attrib.capture.sdpa import CaptureResult, active_capture
from attrib.capture.spans import Span
from attrib.io import to_rgb
from attrib.models.loading import LoadedModel, check_model, load
from attrib.models.signature import same_model
from attrib.regions import RegionPartition
from attrib.regions.methods import Segmenter, check_region_method
from attrib.variants.registry import AblationRequest, CaptureRequest, Variant, check_generate_kwargs, get_variant
from estimators.linear import LinearHeadEstimator
from metrics.trajectory import OnlineTrajectory

__all__ = [
    "AttributionStream",
    "Attributor",
    "FinalEvent",
    "Flagger",
    "SpanEvent",
    "StreamResult",
]

logger = logging.getLogger(__name__)


class Flagger(Protocol):
    """What the stream needs of an online failure flagger (see [`metrics.trajectory`][metrics.trajectory])."""

    def update(self, scores: np.ndarray) -> bool: ...


@dataclass
class SpanEvent:
    """One completed reasoning span and its attribution.

    Attributes:
        index: Span number.
        text: The span's text.
        start: First generated-token index (inclusive).
        end: Last generated-token index (exclusive).
        scores: ``(K,)`` estimated effect of removing each region on the span's log-probability.
        top_regions: ``(region, score)`` pairs, highest first.
        span_end_s: When the span's last token was generated (seconds since the stream started).
        emitted_s: When the event was emitted (same clock).
        flagged: Whether the failure flagger has raised a flag by this span.
        parts: Per alias key part (v1: ``"via_copy"``), the ``(K,)`` part of ``scores``
            that reached each region through it (the direct part is ``scores - parts[name]``).
        shares: Per other key part (latent tokens: ``"latent"``), the estimator-weighted
            share of the span's attention mass on it
            ([`attrib.analysis.latent.latent_share`][attrib.analysis.latent.latent_share]).
        trajectory: The chain's trajectory statistics up to and including this span
            ([`OnlineTrajectory`][metrics.trajectory.OnlineTrajectory]: ``n_spans``, ``path_length``,
            ``displacement``, ``tortuosity``, and this span's ``concentration``), with the flagger's
            effect-vector settings when there is one.
    """

    index: int
    text: str
    start: int
    end: int
    scores: np.ndarray
    top_regions: list[tuple[int, float]]
    span_end_s: float
    emitted_s: float
    flagged: bool = False
    parts: dict[str, np.ndarray] = field(default_factory=dict)
    shares: dict[str, float] = field(default_factory=dict)
    trajectory: dict[str, float] = field(default_factory=dict)

    @property
    def latency_ms(self) -> float:
        """Milliseconds from the span's end to its event."""
        return 1000.0 * (self.emitted_s - self.span_end_s)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "type": "span",
            "index": self.index,
            "text": self.text,
            "start": self.start,
            "end": self.end,
            "scores": [float(v) for v in self.scores],
            "top_regions": [[int(r), float(s)] for r, s in self.top_regions],
            "span_end_s": self.span_end_s,
            "emitted_s": self.emitted_s,
            "latency_ms": self.latency_ms,
            "flagged": self.flagged,
            "parts": {k: [float(v) for v in p] for k, p in self.parts.items()},
            "shares": {k: float(v) for k, v in self.shares.items()},
            "trajectory": {k: (float(v) if np.isfinite(v) else None) for k, v in self.trajectory.items()},
        }


@dataclass
class StreamResult:
    """Everything one streamed generation produced.

    Attributes:
        image: The input image (RGB).
        prompt: The prompt.
        regions: ``(H, W)`` region label map at the image's resolution.
        spans: The span events, in order.
        output: The generated text.
        answer: The parsed final answer (``None`` when none was found).
        generated_tokens: Number of generated tokens.
        generation_s: Wall time of generation.
        truth: The expected answer, when known.
        model: Model name or path.
        estimator: Estimator metadata.
        faithfulness: Optional per-example check against ablation (see
            [`Attributor.verify`][attrib.streaming.stream.Attributor.verify]).
        flagged_at: Span index at which the flagger first fired, if it did.
        flag_rule: What the flagger watches, in words (``None`` without a flagger).
        stopped_on_flag: Whether generation was ended early because the flag rose (``stop_on_flag``).
        generated_ids: The generated token ids.
        token_sources: Per generated token, the image token it copies (v1 models; ``None`` otherwise).
        system: The system prompt, when one was given.
        generate_kwargs: The decoding options (empty: greedy).
    """

    image: Image.Image
    prompt: str
    regions: np.ndarray
    spans: list[SpanEvent]
    output: str
    answer: str | None
    generated_tokens: int
    generation_s: float
    truth: str | None = None
    model: str = ""
    estimator: dict[str, Any] = field(default_factory=dict)
    faithfulness: dict[str, Any] | None = None
    flagged_at: int | None = None
    flag_rule: str | None = None
    stopped_on_flag: bool = False
    generated_ids: list[int] = field(default_factory=list)
    token_sources: list[int] | None = None
    system: str | None = None
    generate_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def correct(self) -> bool | None:
        """Whether the answer matches ``truth`` (``None`` when there is no truth)."""
        if self.truth is None:
            return None
        return self.answer is not None and self.answer.strip().lower() == self.truth.strip().lower()

    @property
    def scores(self) -> np.ndarray:
        """``(n_spans, K)`` span x region scores."""
        if not self.spans:
            return np.zeros((0, int(self.regions.max()) + 1), dtype=np.float32)
        return np.stack([s.scores for s in self.spans])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no image)."""
        extra: dict[str, Any] = {}
        if self.system is not None:
            extra["system"] = self.system
        if self.generate_kwargs:
            extra["generate_kwargs"] = dict(self.generate_kwargs)
        return {
            **extra,
            "prompt": self.prompt,
            "output": self.output,
            "answer": self.answer,
            "truth": self.truth,
            "correct": self.correct,
            "generated_tokens": self.generated_tokens,
            "generation_s": self.generation_s,
            "model": self.model,
            "estimator": self.estimator,
            "faithfulness": self.faithfulness,
            "flagged_at": self.flagged_at,
            "flag_rule": self.flag_rule,
            "stopped_on_flag": self.stopped_on_flag,
            "spans": [s.to_dict() for s in self.spans],
        }

    def to_html(self, *, title: str = "attrib report") -> str:
        """A self-contained HTML report (see [`attrib.streaming.report`][attrib.streaming.report])."""
        from attrib.streaming.report import render_report

        return render_report([self], title=title)

    def _repr_html_(self) -> str:
        from attrib.streaming.report import render_report

        return render_report([self], title="attrib", standalone=False)


@dataclass
class FinalEvent:
    """The last event of a stream.

    Attributes:
        answer: The parsed final answer.
        result: The whole result.
    """

    answer: str | None
    result: StreamResult

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = self.result.to_dict()
        d.pop("spans")
        return {"type": "final", **d}


_WORKER_JOIN_S = 30.0  # how long ending a stream waits for its attribution worker
#: How long generation waits, at the end of a span, for the worker to take it (it normally takes well under 1 ms).
_HANDOFF_S = 0.005


@dataclass(frozen=True)
class _Modes:
    """The autograd modes of a greenlet's code (thread-local in torch, so restored at every switch)."""

    grad: bool
    inference: bool

    @staticmethod
    def current() -> _Modes:
        return _Modes(torch.is_grad_enabled(), torch.is_inference_mode_enabled())


class AttributionStream:
    """Iterator over [`SpanEvent`][attrib.streaming.stream.SpanEvent] then one
    [`FinalEvent`][attrib.streaming.stream.FinalEvent], while generation runs.

    Created by [`Attributor.stream`][attrib.streaming.stream.Attributor.stream]; use it as an iterator, ideally in a
    ``with`` block. Generation runs on the thread that iterates (see the module docstring): iterate
    and close a stream in one thread; [`close`][attrib.streaming.stream.AttributionStream.close] from another thread
    only asks generation to stop at its next token.
    """

    def __init__(
        self,
        attributor: Attributor,
        image: Image.Image,
        prompt: str,
        *,
        max_new_tokens: int,
        truth: str | None,
        flagger: Flagger | None,
        top: int,
        generate_kwargs: dict[str, Any],
        system: str | None = None,
        regions: RegionPartition | np.ndarray | dict[str, Any] | None = None,
        on_flag: Callable[[SpanEvent], object] | None = None,
        stop_on_flag: bool = False,
        worker: bool = False,
    ) -> None:
        if stop_on_flag and flagger is None:
            raise ValueError("stop_on_flag needs a flagger")
        if on_flag is not None and flagger is None:
            raise ValueError("on_flag needs a flagger")
        self._a = attributor
        self.image = to_rgb(image)
        self.prompt = prompt
        self.truth = truth
        self.top = top
        self._flagger = flagger
        if flagger is not None and hasattr(flagger, "reset"):
            flagger.reset()  # a flagger holds one chain's state: every stream starts a new chain
        self._on_flag = on_flag
        self._stop_on_flag = stop_on_flag
        self._stopped_on_flag = False
        self._use_worker = worker
        self._trajectory = OnlineTrajectory(
            top=getattr(flagger, "top", 32), normalize=getattr(flagger, "normalize", True)
        )
        self._scorer = attributor.span_scorer()
        self._max_new_tokens = max_new_tokens
        self._gen_kwargs = generate_kwargs
        self.system = system
        self._stop = threading.Event()
        self._spans_q: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._taken = threading.Event()  # set by the worker when it has turned the latest span into an event
        self._events_q: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._events: list[SpanEvent] = []
        self._t0 = 0.0
        self._flagged_at: int | None = None
        # Validate and prepare in the caller's thread, so bad input fails here, before anything starts.
        check_generate_kwargs(attributor.variant, generate_kwargs)
        self.inputs = attributor.loaded.build(self.image, prompt, system=system)
        attributor.check_context(self.inputs, max_new_tokens)
        self.partition: RegionPartition = attributor.partition(self.image, regions=regions)
        self.assignment = attributor.assignment(self.partition, self.inputs)
        self._gen: greenlet | None = None  # generation, suspended whenever an event goes to the consumer
        self._worker: threading.Thread | None = None
        self._owner: int | None = None  # the thread that iterates
        self._consumer_modes = _Modes.current()
        self._started = False
        self._closed = False
        self._ended = threading.Event()
        self.generation_done_s: float | None = None

    @property
    def flagger(self) -> Flagger | None:
        """The stream's failure flagger, if any."""
        return self._flagger

    # -- generation (a greenlet on the iterating thread) -----------------------------------------

    def _now(self) -> float:
        return time.perf_counter() - self._t0

    def _generate(self) -> None:
        a = self._a
        with a._exclusive(), torch.inference_mode():
            request = CaptureRequest(
                self.inputs,
                self.assignment,
                max_new_tokens=self._max_new_tokens,
                on_span=self._on_span,
                stop=self._poll,
                generate_kwargs=self._gen_kwargs,
            )
            res = a.variant.capture(a.loaded, request)
        self.generation_done_s = self._now()
        if self._use_worker:
            self._spans_q.put(("done", res))
        else:
            self._events_q.put(("final", self._final(res)))

    def _on_span(self, span: Span, feats: np.ndarray, parts: dict[str, np.ndarray]) -> None:
        cap = active_capture()  # the span ended when its last token arrived, before its batched pass
        end_s = cap.last_token_s - self._t0 if cap is not None else self._now()
        if not self._use_worker:  # the event is made here, on generation's greenlet (an exception ends generation)
            self._events_q.put(("span", self._event(span, feats, parts, end_s)))
            return
        self._taken.clear()
        self._spans_q.put(("span", span, feats, parts, end_s))
        # Generation waits (GIL released) until the worker has made the event: a worker left to win the GIL
        # from a busy generation thread waits up to the interpreter's switch interval (5 ms) at the tail.
        self._taken.wait(_HANDOFF_S)

    def _poll(self) -> bool:
        """Once per generated token: hand ready events to the consumer; ``True`` stops generation."""
        q = self._events_q
        while not q.empty():
            try:
                item = q.get_nowait()
            except queue.Empty:
                break
            self._hand_over(item)
        return self._stop.is_set()

    def _hand_over(self, item: tuple[str, Any]) -> None:
        """Suspend generation and give ``item`` to the consumer; return when it asks for the next one."""
        assert self._gen is not None and self._gen.parent is not None
        modes = self._consumer_modes
        with torch.inference_mode(modes.inference), torch.set_grad_enabled(modes.grad):
            self._gen.parent.switch(item)

    # -- the attribution worker (a thread) -------------------------------------------------------

    def _attribute(self) -> None:
        try:
            while True:
                item = self._spans_q.get()
                if item[0] == "stop":
                    return
                if item[0] == "done":
                    self._events_q.put(("final", self._final(item[1])))
                    return
                _, span, feats, parts, end_s = item
                self._events_q.put(("span", self._event(span, feats, parts, end_s)))
                self._taken.set()
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._stop.set()
            self._events_q.put(("error", e))
            self._taken.set()

    def _event(self, span: Span, feats: np.ndarray, parts: dict[str, np.ndarray], end_s: float) -> SpanEvent:
        """A span's event: region scores, top regions, key parts, the flagger and the trajectory (recorded)."""
        est = self._a.estimator
        scores = self._scorer(feats)  # = est.region_scores(feats[None])[0], in one product (a cold path)
        part_scores: dict[str, np.ndarray] = {}
        shares: dict[str, float] = {}
        if parts:  # a research variant's key parts
            coef = np.asarray(est.coef_)
            part_scores = {  # a part is scaled as its whole span is
                n: est.region_scores(p[None], span_features=feats[None])[0].astype(np.float32)
                for n, p in parts.items()
                if p.ndim == 3
            }
            shares = {n: float(latent_share(feats[None], p[None], coef)[0]) for n, p in parts.items() if p.ndim == 2}
        values = scores.tolist()
        # highest first, ties in region order (a stable sort: as np.argsort(-scores, kind="stable"))
        order = sorted(range(len(values)), key=values.__getitem__, reverse=True)[: self.top]
        flagged = self._flagged_at is not None
        if self._flagger is not None and not flagged and self._flagger.update(scores):
            self._flagged_at = span.index
            flagged = True
            if self._stop_on_flag:  # generation stops at its next token; the final event follows
                self._stopped_on_flag = True
                self._stop.set()
        trajectory = self._trajectory.update(values)
        ev = SpanEvent(
            index=span.index,
            text=span.text,
            start=span.start,
            end=span.end,
            scores=scores.astype(np.float32),
            top_regions=[(r, values[r]) for r in order],
            span_end_s=end_s,
            emitted_s=self._now(),
            flagged=flagged,
            parts=part_scores,
            shares=shares,
            trajectory=trajectory,
        )
        self._events.append(ev)
        return ev

    def _final(self, cap: CaptureResult) -> FinalEvent:
        text = self._a.loaded.decode(cap.generated_ids)
        res = StreamResult(
            image=self.image,
            prompt=self.prompt,
            regions=self.partition.labels,
            spans=list(self._events),
            output=text,
            answer=self._a.loaded.parse_answer(text),
            generated_tokens=len(cap.generated_ids),
            generation_s=self.generation_done_s or self._now(),
            truth=self.truth,
            model=self._a.name,
            estimator=dict(getattr(self._a.estimator, "metadata_", {})),
            flagged_at=self._flagged_at,
            flag_rule=getattr(self._flagger, "rule", lambda: None)() if self._flagger is not None else None,
            stopped_on_flag=self._stopped_on_flag,
            generated_ids=list(cap.generated_ids),
            token_sources=cap.token_sources,
            system=self.system,
            generate_kwargs=dict(self._gen_kwargs),
        )
        return FinalEvent(answer=res.answer, result=res)

    # -- iteration -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[SpanEvent | FinalEvent]:
        if self._started:
            if not self._ended.is_set():
                raise RuntimeError("this stream is already being iterated")
            return
        self._started = True
        self._owner = threading.get_ident()
        self._t0 = time.perf_counter()
        if self._use_worker:
            self._worker = threading.Thread(target=self._attribute, name="attrib-attribute", daemon=True)
            self._worker.start()
        self._gen = greenlet(self._generate)
        self._gen.gr_context = contextvars.copy_context()
        try:
            while not self._closed:
                kind, payload = self._next_item()
                if kind == "error":
                    raise payload
                if kind == "span" and self._on_flag is not None and payload.index == self._flagged_at:
                    self._on_flag(payload)  # once: the event on which the flag rose
                yield payload
                if kind == "final":
                    return
        finally:
            self._end()

    def _next_item(self) -> tuple[str, Any]:
        try:
            return self._events_q.get_nowait()
        except queue.Empty:
            pass
        gen = self._gen
        if gen is not None and not gen.dead:
            self._consumer_modes = _Modes.current()
            item = gen.switch()  # generation runs until it hands over an event, or ends (None)
            if item is not None:
                return item  # type: ignore[no-any-return]
        while True:  # generation has ended: the worker (if any) finishes the last spans, then the final event
            try:
                return self._events_q.get(timeout=1.0)
            except queue.Empty:
                if self._worker is None or not self._worker.is_alive():
                    raise RuntimeError("generation ended without a final event") from None

    def _end(self) -> None:
        """Stop generation now (unwinding it: the capture detaches, the model is released) and the worker."""
        self._stop.set()
        self._closed = True
        gen = self._gen
        if gen is not None and not gen.dead:
            gen.throw(GreenletExit)
        if self._worker is not None:
            self._spans_q.put(("stop",))
            self._worker.join(_WORKER_JOIN_S)
        self._ended.set()

    def __enter__(self) -> AttributionStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout: float = 30.0) -> None:
        """Stop generation and the attribution worker.

        On the iterating thread this stops generation at once; from another thread it asks generation to
        stop at its next token and waits up to ``timeout`` seconds for the stream to end. Safe to call twice.
        """
        self._stop.set()
        if not self._started or self._ended.is_set():
            self._closed = True
            return
        if threading.get_ident() == self._owner:
            self._end()
        else:
            self._ended.wait(timeout)

    def run(self) -> StreamResult:
        """Consume the whole stream and return the result."""
        for ev in self:
            if isinstance(ev, FinalEvent):
                return ev.result
        raise RuntimeError("the stream ended without a final event")


class Attributor:
    """A loaded model, its region settings and a fitted estimator, ready to stream.

    Args:
        loaded: The model ([`attrib.models.load`][attrib.models.loading.load]).
        estimator: A fitted [`LinearHeadEstimator`][estimators.linear.LinearHeadEstimator].
        region_method: Region method (see [`attrib.regions`][attrib.regions]); ``"given"`` takes each
            image's regions from [`stream`][attrib.streaming.stream.Attributor.stream]'s ``regions``.
        k: Regions per image.
        dinov3: The DINOv3 model (directory or hub id) of ``region_method="dinov3"``, loaded once here.
        system: A system prompt for every stream (``stream(system=...)`` overrides it).

    Raises:
        ValueError: If the estimator does not fit this model (shape or recorded signature), or for bad
            region settings.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        estimator: LinearHeadEstimator,
        *,
        region_method: str = "color",
        k: int = 32,
        dinov3: str | Path | None = None,
        system: str | None = None,
    ) -> None:
        self.loaded = loaded
        self.variant: Variant = get_variant(loaded.variant)
        self.estimator = estimator
        self.region_method = region_method
        self.k = k
        self.system = system
        self.name = loaded.name
        self.lock = threading.Lock()
        self._lock_owner: int | None = None
        self._scorer: tuple[tuple[Any, ...], Callable[[np.ndarray], np.ndarray]] | None = None
        n_layers, n_heads = loaded.dims
        coef = np.asarray(estimator.coef_)
        meta = dict(getattr(estimator, "metadata_", {}))
        if coef.shape != (n_layers, n_heads):
            raise ValueError(
                f"estimator is {coef.shape[0]} x {coef.shape[1]} (fit on model {meta.get('model_id', '?')}), "
                f"but this model has {n_layers} layers x {n_heads} heads: use an estimator fit on this model"
            )
        sig = meta.get("model_signature")
        if sig:
            diff = same_model(sig, loaded.model, loaded.path)
            if diff:
                raise ValueError(
                    f"estimator was fit on another model ({meta.get('model_id', '?')}; differs in {', '.join(diff)}): "
                    "fit one on this model with `attrib collect` + `attrib fit`"
                )
        else:
            logger.warning("estimator records no model signature; cannot check it was fit on this model")
        fit_method = meta.get("region_method")
        if fit_method and fit_method != region_method:
            logger.warning("estimator fit on %r regions, streaming with %r regions", fit_method, region_method)
        self.segmenter = Segmenter(
            region_method, k, dinov3=str(dinov3) if dinov3 is not None else None, device=loaded.device
        )

    @property
    def model(self) -> Any:
        """The model."""
        return self.loaded.model

    def span_scorer(self) -> Callable[[np.ndarray], np.ndarray]:
        """What scores one span's ``(K, L, H)`` features on the streaming path, as the estimator's
        ``region_scores`` does: its [`SpanScorer`][estimators.linear.SpanScorer] (one product), made once and
        remade when the estimator or its weights are replaced."""
        est = self.estimator
        key = (est, est.coef_, getattr(est, "scale_coef_", None))
        if self._scorer is None or any(a is not b for a, b in zip(self._scorer[0], key, strict=True)):
            make = getattr(est, "span_scorer", None)  # an estimator of another kind: its general method
            self._scorer = (key, make() if make is not None else lambda f: est.region_scores(f[None])[0])
        return self._scorer[1]

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold [`lock`][attrib.streaming.stream.Attributor.lock]: one generation or ablation at a time.

        Raises:
            RuntimeError: If this thread already holds it (a stream of this attributor is suspended
                between two events here): waiting would never end.
        """
        me = threading.get_ident()
        if not self.lock.acquire(blocking=False):
            if self._lock_owner == me:
                raise RuntimeError(
                    "this attributor's model is busy with a stream that this thread is iterating: finish or close "
                    "that stream first (one stream at a time per model)"
                )
            self.lock.acquire()
        self._lock_owner = me
        try:
            yield
        finally:
            self._lock_owner = None
            self.lock.release()

    @classmethod
    def load(
        cls,
        model: str | None = None,
        estimator: str | Path | None = None,
        *,
        region_method: str | None = None,
        k: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        dinov3: str | Path | None = None,
        system: str | None = None,
    ) -> Attributor:
        """Load a model (a bundled name, a local directory or a hub id) and an estimator.

        Args:
            model: ``None`` for the default (bundled) model, a name, a checkpoint directory
                (a research variant's included) or a hub id.
            estimator: Estimator path stem; ``None`` uses the one that ships with the model.
            region_method: Region method (default: the estimator's).
            k: Regions per image (default: the estimator's).
            device: Where to put the model (default CPU; see [`attrib.models.load`][attrib.models.loading.load]).
            dtype: Parameter dtype (default float32).
            dinov3: The DINOv3 model of ``dinov3`` regions (directory or hub id).
            system: A system prompt for every stream.

        Raises:
            FileNotFoundError: For a missing model or estimator.
            ValueError: For an unsupported model, no estimator for it, or an estimator of another model.
        """
        # Everything that can be checked without the model is checked before it loads: the model
        # argument first (a missing directory, a checkpoint missing shards), then the estimator.
        check_model(model)
        est = LinearHeadEstimator.load(estimator) if estimator is not None else None
        meta = getattr(est, "metadata_", {}) if est is not None else {}
        method = region_method or meta.get("region_method")
        if method is not None:
            check_region_method(method, dinov3=dinov3)
        loaded = load(model, device=device, dtype=dtype)
        if est is None:
            default = loaded.default_estimator()
            if default is None:
                raise ValueError(
                    f"no estimator ships with {loaded.name}: pass --estimator (fit one with `attrib collect` "
                    "and `attrib fit`)"
                )
            est = LinearHeadEstimator.load(default)
            meta = getattr(est, "metadata_", {})
        return cls(
            loaded,
            est,
            region_method=region_method or meta.get("region_method", "color"),
            k=k or int(meta.get("k", 32)),
            dinov3=dinov3,
            system=system,
        )

    # -- per-input steps -----------------------------------------------------------------------

    def partition(
        self, image: Image.Image, *, regions: RegionPartition | np.ndarray | dict[str, Any] | None = None
    ) -> RegionPartition:
        """Regions of ``image``: this attributor's method, or the caller's own ``regions``.

        Args:
            image: The image.
            regions: A ready [`RegionPartition`][attrib.regions.RegionPartition], an ``(H, W)`` label map, or the
                options of the ``given`` method (``{"labels": ...}`` or ``{"boxes": ...}``); ``None``: this
                attributor's region method.

        Raises:
            ValueError: For regions that do not fit the image, or ``given`` regions missing.
        """
        if isinstance(regions, RegionPartition):
            part = regions
        elif isinstance(regions, np.ndarray):
            part = self.segmenter.given(image, {"labels": regions})
        elif isinstance(regions, dict):
            part = self.segmenter.given(image, regions)
        else:
            return self.segmenter(image)
        if part.labels.shape != (image.height, image.width):
            raise ValueError(
                f"regions are {part.labels.shape[1]}x{part.labels.shape[0]} but the image is "
                f"{image.width}x{image.height}"
            )
        return part

    def assignment(self, partition: RegionPartition, inputs: dict[str, Any]) -> Any:
        """Region -> visual-token assignment for ``inputs``' image."""
        return partition.assign_tokens(self.loaded.grid_spec)

    def check_context(self, inputs: dict[str, Any], max_new_tokens: int) -> None:
        """Refuse a prompt that, with ``max_new_tokens``, would overflow the model's context.

        Raises:
            ValueError: With the numbers.
        """
        n = int(inputs["input_ids"].shape[1])
        cfg = self.loaded.adapter.text_config(self.loaded.hf_model)
        limit = int(getattr(cfg, "max_position_embeddings", 0) or 0)
        if limit and n + max_new_tokens > limit:
            raise ValueError(
                f"the prompt is {n} tokens (image included); with max_new_tokens={max_new_tokens} it would reach "
                f"{n + max_new_tokens}, past the model's context of {limit} tokens: shorten the prompt or the budget"
            )

    def stream(
        self,
        image: Image.Image,
        prompt: str,
        *,
        max_new_tokens: int = 200,
        truth: str | None = None,
        flagger: Flagger | None = None,
        top: int = 3,
        system: str | None = None,
        regions: RegionPartition | np.ndarray | dict[str, Any] | None = None,
        on_flag: Callable[[SpanEvent], object] | None = None,
        stop_on_flag: bool = False,
        worker: bool = False,
        **generate_kwargs: Any,
    ) -> AttributionStream:
        """Start streaming attributions for one image and prompt.

        Args:
            image: The image.
            prompt: The question.
            max_new_tokens: Generation budget.
            truth: The expected answer, when known (the result then says whether it was right).
            flagger: Optional online failure flagger (``update(scores) -> bool``); the stream resets it
                (``reset()``, when it has one) before the first span, so one flagger serves many streams.
            top: Top regions per event.
            system: A system prompt (default: the attributor's).
            regions: This image's own regions (a partition, a label map, or ``{"boxes": ...}``) instead of
                the attributor's region method.
            on_flag: Called once, with the [`SpanEvent`][attrib.streaming.stream.SpanEvent] on which the flag
                rose, on the iterating thread just before that event is yielded (an exception it raises
                ends the stream and reaches the caller). Needs ``flagger``.
            stop_on_flag: End generation when the flag rises: generation stops at its next token and the
                stream ends with its final event (``result.stopped_on_flag``). Needs ``flagger``.
            worker: Make each span's event on a separate attribution thread instead of on generation's
                greenlet as the span ends. The event is a few dot products (tens of microseconds); handing it
                to a thread costs generation more than that (see docs/streaming.md), so this is for an
                estimator or flagger slow enough to hold generation back.
            **generate_kwargs: Passed to the model's ``generate`` (e.g. ``do_sample``, ``temperature``,
                ``top_p``, ``min_new_tokens``; greedy by default).

        Returns:
            The stream; generation starts when iteration does.

        Raises:
            ValueError: For a prompt that would overflow the context, bad regions, or ``on_flag`` /
                ``stop_on_flag`` without a flagger.
        """
        return AttributionStream(
            self,
            image,
            prompt,
            max_new_tokens=max_new_tokens,
            truth=truth,
            flagger=flagger,
            top=top,
            generate_kwargs=generate_kwargs,
            system=self.system if system is None else system,
            regions=regions,
            on_flag=on_flag,
            stop_on_flag=stop_on_flag,
            worker=worker,
        )

    def verify(self, result: StreamResult, *, topk: int = 5) -> dict[str, Any]:
        """Check a streamed result against real ablation: leave-one-out per region, and the top-K drop.

        Costs ``K + n_spans`` teacher-forced forwards (a causal method's price, paid once here to
        show the streamed scores are faithful on this very example).

        Returns:
            ``{"pearson_vs_loo", "topk_drop", "topk_drop_oracle", "topk_drop_normalized",
            "random_drop", "k", "n_spans"}`` (means over spans).
        """
        from attrib.ablation import loo_subsets
        from metrics.faithfulness import topk_sets

        ids = result.generated_ids
        if not result.spans or not ids:
            return {"n_spans": 0}
        inputs = self.loaded.build(result.image, result.prompt, system=result.system)
        part = RegionPartition(result.regions)
        mode = str(getattr(self.estimator, "metadata_", {}).get("ablation_mode", "mask"))
        if mode not in self.variant.ablation_modes and self.variant.ablation_modes:
            mode = self.variant.ablation_modes[0]
        request = AblationRequest(
            inputs, ids, self.assignment(part, inputs), record={"copy_sources": result.token_sources}, mode=mode
        )
        runner = self.variant.ablator(self.loaded, request)
        spans = [(s.start, s.end) for s in result.spans]
        with self._exclusive():
            loo = runner.deltas(loo_subsets(part.k), spans).T  # (n_spans, K)
        est = result.scores
        kk = min(topk, part.k)
        rng = np.random.default_rng(0)
        rand = np.zeros((len(spans), part.k), dtype=bool)
        for i in range(len(spans)):
            rand[i, rng.choice(part.k, kk, replace=False)] = True
        sets = np.concatenate([topk_sets(est, kk), topk_sets(loo, kk), rand])
        with self._exclusive():
            d = runner.deltas(sets, spans)
        n = len(spans)
        diag = [np.diag(d[i * n : (i + 1) * n]) for i in range(3)]
        pear = [float(np.corrcoef(est[i], loo[i])[0, 1]) for i in range(n) if np.std(est[i]) > 0 and np.std(loo[i]) > 0]
        oracle = float(np.mean(diag[1]))
        out = {
            "k": kk,
            "n_spans": n,
            "pearson_vs_loo": float(np.mean(pear)) if pear else None,
            "topk_drop": float(np.mean(diag[0])),
            "topk_drop_oracle": oracle,
            "topk_drop_normalized": float(np.mean(diag[0]) / oracle) if oracle > 0 else None,
            "random_drop": float(np.mean(diag[2])),
        }
        result.faithfulness = out
        return out
