"""Stream region attributions while the model thinks.

Three threads, two queues::

    generation thread --(span, features)--> attribution worker --(event)--> your loop

- The **generation thread** runs ``model.generate`` under an
  :class:`~attrib.capture.AttentionCapture`; when a reasoning span completes,
  its ``(K, L, H)`` features go on a queue and generation carries on at once.
- The **attribution worker** turns each span's features into per-region scores
  with the estimator (one dot product), picks the top regions, updates the
  optional failure flagger and emits a :class:`SpanEvent`.
- **Iterating** the :class:`AttributionStream` yields those events as they
  arrive, then one :class:`FinalEvent` carrying the answer and the whole
  :class:`StreamResult`.

An exception in either thread is re-raised by the iterator. Closing the stream
(``close()``, leaving a ``with`` block, or a web client disconnecting) stops
generation at the next token.

Example:
    >>> attributor = Attributor.load()  # the bundled model and estimator
    >>> for event in attributor.stream(image, "How many red circles are there?"):
    ...     if isinstance(event, SpanEvent):
    ...         print(event.text, event.top_regions)
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from attrib.capture import AttentionCapture, Span
from attrib.processing import to_rgb
from attrib.regions import RegionPartition, segment
from estimators.linear import LinearHeadEstimator

__all__ = [
    "AttributionStream",
    "Attributor",
    "FinalEvent",
    "SpanEvent",
    "StreamResult",
    "bundled_estimator_path",
    "model_signature",
]

logger = logging.getLogger(__name__)


class Flagger(Protocol):
    """What the stream needs of an online failure flagger (see :mod:`metrics.trajectory`)."""

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
        faithfulness: Optional per-example check against ablation (see :meth:`Attributor.verify`).
        flagged_at: Span index at which the flagger first fired, if it did.
        generated_ids: The generated token ids.
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
    generated_ids: list[int] = field(default_factory=list)

    @property
    def correct(self) -> bool | None:
        """Whether the answer matches :attr:`truth` (``None`` when there is no truth)."""
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
        return {
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
            "spans": [s.to_dict() for s in self.spans],
        }

    def to_html(self, *, title: str = "attrib report") -> str:
        """A self-contained HTML report (see :mod:`attrib.report`)."""
        from attrib.report import render_report

        return render_report([self], title=title)

    def _repr_html_(self) -> str:
        from attrib.report import render_report

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


_DONE = object()


class AttributionStream:
    """Iterator over :class:`SpanEvent` then one :class:`FinalEvent`, while generation runs.

    Created by :meth:`Attributor.stream`; use it as an iterator, ideally in a ``with`` block.
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
    ) -> None:
        self._a = attributor
        self.image = to_rgb(image)
        self.prompt = prompt
        self.truth = truth
        self.top = top
        self._flagger = flagger
        self._max_new_tokens = max_new_tokens
        self._gen_kwargs = generate_kwargs
        self._stop = threading.Event()
        self._spans_q: queue.Queue[Any] = queue.Queue()
        self._events_q: queue.Queue[Any] = queue.Queue()
        self._events: list[SpanEvent] = []
        self._t0 = 0.0
        self._flagged_at: int | None = None
        # Validate and prepare in the caller's thread, so bad input fails here, before any thread starts.
        self.inputs = attributor.make_inputs(self.image, prompt)
        attributor.check_context(self.inputs, max_new_tokens)
        self.partition: RegionPartition = attributor.partition(self.image)
        self.assignment = attributor.assignment(self.partition, self.inputs)
        self._gen: threading.Thread | None = None
        self._worker: threading.Thread | None = None
        self._finished = False
        self.generation_done_s: float | None = None

    # -- threads -------------------------------------------------------------------------------

    def _start(self) -> None:
        self._t0 = time.perf_counter()
        self._gen = threading.Thread(target=self._generate, name="attrib-generate", daemon=True)
        self._worker = threading.Thread(target=self._attribute, name="attrib-attribute", daemon=True)
        self._worker.start()
        self._gen.start()

    def _now(self) -> float:
        return time.perf_counter() - self._t0

    def _generate(self) -> None:
        from transformers import StoppingCriteria, StoppingCriteriaList

        stop = self._stop

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kw: Any) -> torch.Tensor:
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool)

        def on_span(span: Span, feats: np.ndarray) -> None:
            self._spans_q.put((span, feats.copy(), self._now()))

        try:
            a = self._a
            with (
                a.lock,
                torch.inference_mode(),
                AttentionCapture(a.model, self.inputs, self.assignment, decode=a.decode, on_span=on_span) as cap,
            ):
                a.model.generate(
                    **self.inputs,
                    streamer=cap.streamer,
                    max_new_tokens=self._max_new_tokens,
                    do_sample=False,
                    stopping_criteria=StoppingCriteriaList([_Stop()]),
                    **self._gen_kwargs,
                )
            self.generation_done_s = self._now()
            self._spans_q.put(("done", cap.result()))
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._spans_q.put(("error", e))

    def _attribute(self) -> None:
        try:
            while True:
                item = self._spans_q.get()
                if item[0] == "error":
                    self._events_q.put(item)
                    return
                if item[0] == "done":
                    self._events_q.put(("final", self._final(item[1])))
                    return
                span, feats, end_s = item
                scores = self._a.estimator.region_scores(feats[None])[0]
                order = np.argsort(-scores, kind="stable")[: self.top]
                flagged = self._flagged_at is not None
                if self._flagger is not None and not flagged and self._flagger.update(scores):
                    self._flagged_at = span.index
                    flagged = True
                ev = SpanEvent(
                    index=span.index,
                    text=span.text,
                    start=span.start,
                    end=span.end,
                    scores=scores.astype(np.float32),
                    top_regions=[(int(r), float(scores[r])) for r in order],
                    span_end_s=end_s,
                    emitted_s=self._now(),
                    flagged=flagged,
                )
                self._events.append(ev)
                self._events_q.put(("span", ev))
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._stop.set()
            self._events_q.put(("error", e))

    def _final(self, cap: Any) -> FinalEvent:
        text = self._a.decode(cap.generated_ids)
        res = StreamResult(
            image=self.image,
            prompt=self.prompt,
            regions=self.partition.labels,
            spans=list(self._events),
            output=text,
            answer=self._a.parse_answer(text),
            generated_tokens=len(cap.generated_ids),
            generation_s=self.generation_done_s or self._now(),
            truth=self.truth,
            model=self._a.name,
            estimator=dict(getattr(self._a.estimator, "metadata_", {})),
            flagged_at=self._flagged_at,
            generated_ids=list(cap.generated_ids),
        )
        return FinalEvent(answer=res.answer, result=res)

    # -- iteration -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[SpanEvent | FinalEvent]:
        if self._gen is None:
            self._start()
        while not self._finished:
            kind, payload = self._events_q.get()
            if kind == "error":
                self._finished = True
                self._stop.set()
                raise payload
            if kind == "final":
                self._finished = True
            yield payload

    def __enter__(self) -> AttributionStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout: float = 30.0) -> None:
        """Stop generation (at the next token) and wait for both threads to end."""
        self._stop.set()
        for t in (self._gen, self._worker):
            if t is not None:
                t.join(timeout)

    def run(self) -> StreamResult:
        """Consume the whole stream and return the result."""
        for ev in self:
            if isinstance(ev, FinalEvent):
                return ev.result
        raise RuntimeError("the stream ended without a final event")


def model_signature(model: Any) -> dict[str, Any]:
    """A fingerprint of a loaded model: class, L x H, a hash of its config and of its input embeddings.

    An estimator records the signature of the model it was fit on; streaming
    with another model is refused.
    """
    from attrib.adapters import adapter_for

    cfg = {k: v for k, v in model.config.to_dict().items() if not k.startswith("_")}
    for key in ("transformers_version", "torch_dtype", "dtype", "architectures", "name_or_path"):
        cfg.pop(key, None)
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
    emb = model.get_input_embeddings().weight.detach()
    digest = hashlib.sha256(emb.float().cpu().numpy().tobytes())
    inner = model
    if hasattr(model, "copy_token_id"):  # point-and-copy wrapper: its copy heads are part of the model
        inner = model.base
        for name, param in model.named_parameters():
            if not name.startswith("base."):
                digest.update(param.detach().float().cpu().numpy().tobytes())
    e = digest.hexdigest()[:16]
    n_layers, n_heads, _ = adapter_for(inner).dims(inner)
    return {"class": type(model).__name__, "L": n_layers, "H": n_heads, "config_sha": h, "embeddings_sha": e}


def bundled_estimator_path(model: str = "shapes-qwen25vl") -> Path:
    """Path stem of the estimator bundled with a bundled model.

    Raises:
        FileNotFoundError: If it is absent from this install.
    """
    from attrib.shapes.model import bundled_model_path

    p = bundled_model_path(model) / "estimator"
    if not p.with_suffix(".safetensors").is_file():
        raise FileNotFoundError(f"no bundled estimator at {p}.safetensors; run `attrib fit` and pass --estimator")
    return p


class Attributor:
    """A model, its input builder, region settings and a fitted estimator, ready to stream.

    Args:
        model: The loaded model (eval mode).
        make_inputs: ``(image, prompt) -> model inputs``.
        grid_spec: The visual-token grid of ``make_inputs``' images (maps regions to tokens).
        decode: Token ids -> text.
        estimator: A fitted :class:`~estimators.linear.LinearHeadEstimator`.
        region_method: Region method (see :mod:`attrib.regions`).
        k: Regions per image.
        name: Model name or path (for reports).
        parse_answer: Text -> final answer (default: the text after ``</think>``).

    Raises:
        ValueError: If the estimator does not fit this model (shape or recorded signature).
    """

    def __init__(
        self,
        model: Any,
        make_inputs: Callable[[Image.Image, str], dict[str, Any]],
        grid_spec: Any,
        decode: Callable[[list[int]], str],
        estimator: LinearHeadEstimator,
        *,
        region_method: str = "color",
        k: int = 32,
        name: str = "",
        parse_answer: Callable[[str], str | None] | None = None,
    ) -> None:
        from attrib.adapters import adapter_for

        self.model = model
        self.make_inputs = make_inputs
        self.grid_spec = grid_spec
        self.decode = decode
        self.estimator = estimator
        self.region_method = region_method
        self.k = k
        self.name = name
        self.parse_answer = parse_answer or _answer_after_think
        self.lock = threading.Lock()
        self.adapter = adapter_for(model)
        n_layers, n_heads, _ = self.adapter.dims(model)
        coef = np.asarray(estimator.coef_)
        meta = dict(getattr(estimator, "metadata_", {}))
        if coef.shape != (n_layers, n_heads):
            raise ValueError(
                f"estimator is {coef.shape[0]} x {coef.shape[1]} (fit on model {meta.get('model_id', '?')}), "
                f"but this model has {n_layers} layers x {n_heads} heads: use an estimator fit on this model"
            )
        sig = meta.get("model_signature")
        if sig:
            mine = model_signature(model)
            diff = [k for k in ("class", "config_sha", "embeddings_sha") if sig.get(k) != mine.get(k)]
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

    @classmethod
    def load(
        cls,
        model: str | None = None,
        estimator: str | Path | None = None,
        *,
        region_method: str | None = None,
        k: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Attributor:
        """Load a model (bundled name, or a local directory / hub id of a supported family) and an estimator.

        Args:
            model: ``None`` for the bundled model, a bundled name, a directory written by
                ``attrib shapes train``, or a Hugging Face checkpoint (local path or hub id).
            estimator: Estimator path stem; ``None`` uses the bundled model's estimator.
            region_method: Region method (default: the estimator's).
            k: Regions per image (default: the estimator's).
            dtype: Parameter dtype for Hugging Face checkpoints.

        Raises:
            FileNotFoundError: For a missing model or estimator.
            ValueError: For an unsupported model class or an estimator of another model.
        """
        from attrib.shapes.model import _BUNDLED, load_model, resolve_model

        is_bundled = model is None or model in _BUNDLED
        path = resolve_model(model) if is_bundled else Path(str(model))
        if estimator is None:
            if not is_bundled:
                raise ValueError("--estimator is required for a model that is not bundled")
            estimator = bundled_estimator_path(model or "shapes-qwen25vl")
        est = LinearHeadEstimator.load(estimator)
        meta = getattr(est, "metadata_", {})
        region_method = region_method or meta.get("region_method", "color")
        k = k or int(meta.get("k", 32))
        if (path / "attrib_processor.json").is_file():
            from attrib.shapes.parse import parse_output

            m, proc = load_model(path)

            def parse(text: str) -> str | None:
                return parse_output(text).answer

            return cls(
                m,
                lambda im, p: proc([im], [p]),
                proc.grid_spec(),
                proc.decode,
                est,
                region_method=region_method,
                k=k,
                name=str(model or "shapes-qwen25vl"),
                parse_answer=parse,
            )
        m, build = load_hf(str(path) if path.exists() else str(model), dtype=dtype)
        return cls(
            m,
            build,
            grid_spec_for(build),
            lambda ids: build.tokenizer.decode(ids, skip_special_tokens=True),
            est,
            region_method=region_method,
            k=k,
            name=str(model),
        )

    # -- per-input steps -----------------------------------------------------------------------

    def partition(self, image: Image.Image) -> RegionPartition:
        """Regions of ``image``."""
        return segment(image, self.k, method=self.region_method)

    def assignment(self, partition: RegionPartition, inputs: dict[str, Any]) -> Any:
        """Region -> visual-token assignment for ``inputs``' image."""
        return partition.assign_tokens(self.grid_spec)

    def check_context(self, inputs: dict[str, Any], max_new_tokens: int) -> None:
        """Refuse a prompt that, with ``max_new_tokens``, would overflow the model's context.

        Raises:
            ValueError: With the numbers.
        """
        n = int(inputs["input_ids"].shape[1])
        cfg = self.adapter.text_config(self.model)
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
        **generate_kwargs: Any,
    ) -> AttributionStream:
        """Start streaming attributions for one image and prompt.

        Args:
            image: The image.
            prompt: The question.
            max_new_tokens: Generation budget.
            truth: The expected answer, when known (the result then says whether it was right).
            flagger: Optional online failure flagger (``update(scores) -> bool``).
            top: Top regions per event.
            **generate_kwargs: Passed to ``generate`` (e.g. ``min_new_tokens``).

        Returns:
            The stream; generation starts when iteration does.

        Raises:
            ValueError: For a prompt that would overflow the context, or bad regions.
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
        )

    def verify(self, result: StreamResult, *, topk: int = 5) -> dict[str, Any]:
        """Check a streamed result against real ablation: leave-one-out per region, and the top-K drop.

        Costs ``K + n_spans`` teacher-forced forwards (a causal method's price, paid once here to
        show the streamed scores are faithful on this very example).

        Returns:
            ``{"pearson_vs_loo", "topk_drop", "topk_drop_oracle", "topk_drop_normalized",
            "random_drop", "k", "n_spans"}`` (means over spans).
        """
        from attrib.ablation import AblationRunner, loo_subsets
        from metrics.faithfulness import topk_sets

        ids = result.generated_ids
        if not result.spans or not ids:
            return {"n_spans": 0}
        inputs = self.make_inputs(result.image, result.prompt)
        part = RegionPartition(result.regions)
        runner = AblationRunner(self.model, inputs, ids, self.assignment(part, inputs), batch_size=16)
        spans = [(s.start, s.end) for s in result.spans]
        with self.lock:
            loo = runner.deltas(loo_subsets(part.k), spans).T  # (n_spans, K)
        est = result.scores
        kk = min(topk, part.k)
        rng = np.random.default_rng(0)
        rand = np.zeros((len(spans), part.k), dtype=bool)
        for i in range(len(spans)):
            rand[i, rng.choice(part.k, kk, replace=False)] = True
        sets = np.concatenate([topk_sets(est, kk), topk_sets(loo, kk), rand])
        with self.lock:
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


def _answer_after_think(text: str) -> str | None:
    tail = text.split("</think>")[-1].strip()
    return tail or None


def load_hf(path_or_id: str, *, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Load a supported Hugging Face VLM (local path or hub id) under SDPA, and its input builder.

    Raises:
        ValueError: For a model class attrib does not support (the message lists the families).
        FileNotFoundError: For a local path that does not exist.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    from attrib.adapters import adapter_for_config
    from attrib.inputs import InputBuilder
    from attrib.pointcopy import check_not_pointcopy

    if ("/" in path_or_id and path_or_id.startswith((".", "/"))) and not Path(path_or_id).exists():
        raise FileNotFoundError(f"model directory not found: {path_or_id}")
    if Path(path_or_id).is_dir():
        check_not_pointcopy(path_or_id)
    cfg = AutoConfig.from_pretrained(path_or_id)
    adapter = adapter_for_config(cfg)
    model = AutoModelForImageTextToText.from_pretrained(path_or_id, dtype=dtype, attn_implementation="sdpa").eval()
    return model, InputBuilder.from_pretrained(adapter, path_or_id, model)


def grid_spec_for(builder: Any) -> Any:
    """The visual-token grid of an :class:`~attrib.inputs.InputBuilder`'s image processor."""
    from attrib.regions.geometry import GridSpec, get_grid_spec

    a = builder.adapter
    ip = builder.image_processor
    size = getattr(ip, "size", None)
    if a.family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl") and size is not None:
        lo = size["shortest_edge"] if isinstance(size, dict) else size.shortest_edge
        hi = size["longest_edge"] if isinstance(size, dict) else size.longest_edge
        return GridSpec(
            a.family,
            int(ip.patch_size),
            int(getattr(ip, "merge_size", 2)),
            "smart",
            min_pixels=int(lo),
            max_pixels=int(hi),
        )
    return get_grid_spec(a.grid_spec_name)
