"""Capture layer x head attention mass on image regions while a VLM generates, with SDPA kept on.

How it works. On entering :class:`AttentionCapture`, the language model's
attention implementation is switched from ``sdpa`` to ``attrib_sdpa``, a
function registered with transformers' ``AttentionInterface``. It returns
exactly what ``sdpa`` returns (same kernel, same output) and, beside it, computes
the attention probabilities of the **newest query row only**:
``softmax(q_last · Kᵀ · scale + mask)``, from the post-RoPE query and the cached
keys the attention function receives anyway (so M-RoPE is respected, and GQA is
handled by grouping query heads over their shared KV head). The row is reduced
at once to per-region mass with the region -> token assignment, so per step the
extra memory is O(H · T) for one layer, and what is kept is O(L · H · K) per span.
No T x T matrix is ever formed, in prefill either. The vision tower keeps its
own implementation.

Alignment. The row computed in the forward pass that *predicts* generated token
``y_t`` is that token's feature (the prefill's last row belongs to ``y_1``). This
matches the causal target, which scores ``log p(y_t | x, y_<t)`` at the same
position.

Spans. A :class:`SpanSegmenter` splits the generated text into sentences on the
fly; each completed span's features are the mean over its tokens.

On exit, on normal return or on an exception, the original implementation is
restored and nothing of the capture stays attached to the model.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attrib.adapters import ModelAdapter, adapter_for

__all__ = [
    "IMPLEMENTATION",
    "AttentionCapture",
    "CaptureResult",
    "Span",
    "SpanSegmenter",
    "TokenStreamer",
    "capture_generate",
]

logger = logging.getLogger(__name__)

#: Name under which the capturing attention function is registered.
IMPLEMENTATION = "attrib_sdpa"
_ACTIVE: contextvars.ContextVar[AttentionCapture | None] = contextvars.ContextVar("attrib_capture", default=None)


def _capturing_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    out = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    cap = _ACTIVE.get()
    if cap is not None:
        cap._record(module, query, key, attention_mask, kwargs.get("scaling"))
    return out


_REGISTERED_NAMES: set[str] = set()


def register_implementation(name: str, fn: Callable[..., Any]) -> None:
    """Register ``fn`` as attention implementation ``name`` with SDPA's mask format (idempotent)."""
    if name in _REGISTERED_NAMES:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, sdpa_mask)
    _REGISTERED_NAMES.add(name)


def _ensure_registered() -> None:
    register_implementation(IMPLEMENTATION, _capturing_sdpa)


def last_row_probs(
    query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float | None
) -> torch.Tensor:
    """Attention probabilities of the last query row, ``(B, H, T)``, in float32.

    Args:
        query: ``(B, H, Q, D)`` post-RoPE queries.
        key: ``(B, KV, T, D)`` post-RoPE keys (cache included); ``H`` must be a multiple of ``KV``.
        attention_mask: ``None``, a boolean mask (True = attend) or an additive float mask,
            broadcastable to ``(B, H, Q, T)``.
        scaling: Softmax scale (default ``D ** -0.5``).
    """
    b, h, _, d = query.shape
    kv = key.shape[1]
    t = key.shape[2]
    q = query[:, :, -1, :].float().reshape(b, kv, h // kv, d)
    scores = torch.einsum("bkgd,bktd->bkgt", q, key.float()).reshape(b, h, t)
    scores = scores * (scaling if scaling is not None else d**-0.5)
    if attention_mask is not None:
        m = attention_mask[:, :, -1, :t]
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
    return torch.softmax(scores, dim=-1)


@dataclass(frozen=True)
class Span:
    """A completed reasoning span.

    Attributes:
        index: Span number.
        text: Decoded text (stripped).
        start: First generated-token index (inclusive).
        end: Last generated-token index (exclusive).
    """

    index: int
    text: str
    start: int
    end: int


class SpanSegmenter:
    """Splits generated tokens into sentence spans on the fly.

    A span closes on a token whose decoded text contains a terminator
    (``pattern``, default ``[.!?]``) once the span has non-empty text. With
    ``think_only`` (default), spans are taken inside the thinking block: tokens
    up to and including ``<think>`` are skipped and generation after
    ``</think>`` (the answer) yields no span. When no think tag is ever
    produced, every sentence counts. A trailing incomplete sentence is dropped.

    Args:
        decode: Maps a list of token ids to text (special tokens kept).
        pattern: Regex that ends a sentence when found in a token's text.
        think_open: Tag opening the thinking block.
        think_close: Tag closing it.
        think_only: Restrict spans to the thinking block.
    """

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        *,
        pattern: str = r"[.!?]",
        think_open: str = "<think>",
        think_close: str = "</think>",
        think_only: bool = True,
    ) -> None:
        self.decode = decode
        self.pattern = re.compile(pattern)
        self.think_open = think_open
        self.think_close = think_close
        self.think_only = think_only
        self.reset()

    def reset(self) -> None:
        """Forget all tokens."""
        self._ids: list[int] = []
        self._start = 0
        self._closed = False
        self._n = 0

    def push(self, token_id: int) -> Span | None:
        """Add one generated token; return the span it completes, if any."""
        i = len(self._ids)
        self._ids.append(int(token_id))
        if self._closed:
            return None
        piece = self.decode([int(token_id)])
        if self.think_open in piece:
            self._start = i + 1
            return None
        if self.think_close in piece:
            self._closed = self.think_only
            self._start = i + 1
            return None
        if not self.pattern.search(piece):
            return None
        text = self.decode(self._ids[self._start : i + 1]).strip()
        if not text or not self.pattern.search(text):
            return None
        span = Span(self._n, text, self._start, i + 1)
        self._n += 1
        self._start = i + 1
        return span

    @property
    def open_start(self) -> int:
        """Token index where the currently open span starts."""
        return self._start


@dataclass
class CaptureResult:
    """Captured features of one generation.

    Attributes:
        spans: Completed spans, in order.
        features: ``(n_spans, K, L, H)`` float32: mean over the span's tokens of
            the attention mass each layer's heads put on each region.
        generated_ids: Generated token ids.
        text: Decoded generated text.
        per_token: ``(T, K, L, H)`` per generated token (only with ``per_token=True``).
        meta: Model class, family, L, H, K, number of image tokens.
        copy_features: ``(n_spans, K, L, H)``: the part of :attr:`features` that
            reached the regions through copy tokens (point-and-copy models only;
            the direct part is ``features - copy_features``).
        per_token_copy: ``(T, K, L, H)`` via-copy part of :attr:`per_token`
            (point-and-copy models with ``per_token=True``).
    """

    spans: list[Span]
    features: np.ndarray
    generated_ids: list[int]
    text: str
    per_token: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    copy_features: np.ndarray | None = None
    per_token_copy: np.ndarray | None = None

    def copy_share(self) -> np.ndarray:
        """Per span, the share of region attention mass that flows through copy tokens (zeros without copies)."""
        if self.copy_features is None or not len(self.spans):
            return np.zeros(len(self.spans))
        total = self.features.sum(axis=(1, 2, 3))
        via = self.copy_features.sum(axis=(1, 2, 3))
        return np.divide(via, total, out=np.zeros_like(via), where=total > 0)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of :attr:`features`."""
        return tuple(self.features.shape)

    def save(self, path: str | Path) -> None:
        """Write ``<path>.safetensors`` (arrays) and ``<path>.json`` (spans, text, meta)."""
        from safetensors.numpy import save_file

        from attrib.io import atomic_write_text

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"features": np.ascontiguousarray(self.features, dtype=np.float32)}
        if self.per_token is not None:
            arrays["per_token"] = np.ascontiguousarray(self.per_token, dtype=np.float32)
        if self.copy_features is not None:
            arrays["copy_features"] = np.ascontiguousarray(self.copy_features, dtype=np.float32)
        tmp = p.with_name(p.name + ".tmp.safetensors")
        save_file(arrays, str(tmp))
        tmp.replace(p.with_suffix(".safetensors"))
        doc = {
            "spans": [s.__dict__ for s in self.spans],
            "generated_ids": self.generated_ids,
            "text": self.text,
            "meta": self.meta,
        }
        atomic_write_text(p.with_suffix(".json"), json.dumps(doc) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CaptureResult:
        """Inverse of :meth:`save` (safetensors + JSON; nothing is unpickled).

        Raises:
            FileNotFoundError: If a file is missing.
            ValueError: If the files disagree.
        """
        from safetensors.numpy import load_file

        p = Path(path)
        for f in (p.with_suffix(".safetensors"), p.with_suffix(".json")):
            if not f.is_file():
                raise FileNotFoundError(f"capture file not found: {f}")
        arrays = load_file(str(p.with_suffix(".safetensors")))
        doc = json.loads(p.with_suffix(".json").read_text())
        spans = [Span(**s) for s in doc["spans"]]
        feats = arrays["features"]
        if feats.shape[0] != len(spans):
            raise ValueError(f"capture {p}: {feats.shape[0]} feature rows for {len(spans)} spans")
        return cls(
            spans,
            feats,
            doc["generated_ids"],
            doc["text"],
            arrays.get("per_token"),
            doc["meta"],
            arrays.get("copy_features"),
        )

    def to_dataframe(self, *, reduce: str = "mean") -> Any:
        """A long pandas DataFrame.

        Args:
            reduce: ``"mean"``: one row per (span, region) with the mean over layers and
                heads; ``"none"``: one row per (span, region, layer, head).
        """
        import pandas as pd

        s, k, nl, nh = self.features.shape
        if reduce == "mean":
            vals = self.features.mean(axis=(2, 3))
            return pd.DataFrame(
                {
                    "span": np.repeat(np.arange(s), k),
                    "span_text": np.repeat([sp.text for sp in self.spans], k),
                    "region": np.tile(np.arange(k), s),
                    "mass": vals.ravel(),
                }
            )
        if reduce != "none":
            raise ValueError(f"reduce must be 'mean' or 'none', got {reduce!r}")
        idx = np.indices((s, k, nl, nh)).reshape(4, -1)
        return pd.DataFrame(
            {"span": idx[0], "region": idx[1], "layer": idx[2], "head": idx[3], "mass": self.features.ravel()}
        )


class AttentionCapture:
    """Context manager that records region attention mass during ``model.generate``.

    Example:
        ```python
        with AttentionCapture(model, inputs, assignment, decode=tok_decode) as cap:
            model.generate(**inputs, streamer=cap.streamer, max_new_tokens=256)
        result = cap.result()
        ```

    Args:
        model: A supported VLM (see :mod:`attrib.adapters`).
        inputs: The model inputs (``input_ids`` etc.); batch size 1.
        assignment: ``(K, N_image)`` region -> image-token matrix (rows may be fractional),
            or a :class:`~attrib.regions.partition.TokenAssignment`.
        decode: Token ids -> text, special tokens kept (for span segmentation).
        per_token: Also keep per-token features (O(T · K · L · H) memory).
        segmenter: A custom :class:`SpanSegmenter`.
        on_span: Called with ``(span, features[K, L, H])`` as each span completes.
        aliases: For models that feed image embeddings back as tokens (v1
            point-and-copy): returns the ``(positions, sources)`` of the copy
            tokens in the sequence so far. A copy token is an alias of its source
            image token: attention to it counts for the source's regions, and is
            also kept apart as the *via-copy* part (:attr:`CaptureResult.copy_features`).

    Raises:
        ValueError: For an unsupported model, a prompt with no image or too many images,
            a batch larger than 1, or an assignment whose token count does not match.
    """

    def __init__(
        self,
        model: Any,
        inputs: dict[str, Any],
        assignment: Any,
        *,
        decode: Callable[[list[int]], str],
        per_token: bool = False,
        segmenter: SpanSegmenter | None = None,
        on_span: Callable[[Span, np.ndarray], None] | None = None,
        aliases: Callable[[], tuple[list[int], list[int]]] | None = None,
    ) -> None:
        self.model = model
        self.aliases = aliases
        self.adapter: ModelAdapter = adapter_for(model)
        ids = inputs["input_ids"]
        if ids.shape[0] != 1:
            raise ValueError(f"capture supports batch size 1, got {ids.shape[0]}")
        grids = self.adapter.image_grids(model, inputs)
        if len(grids) > self.adapter.max_images:
            raise ValueError(
                f"the prompt holds {len(grids)} images; the {self.adapter.family} adapter supports "
                f"{self.adapter.max_images}"
            )
        self.image_pos = torch.nonzero(ids[0] == self.adapter.image_token_id(model)).flatten()
        m = np.asarray(getattr(assignment, "matrix", assignment), dtype=np.float32)
        if m.ndim != 2 or m.shape[1] != self.image_pos.numel():
            raise ValueError(
                f"region assignment has shape {m.shape}, but the image has {self.image_pos.numel()} visual "
                f"tokens ({grids[0][0]}x{grids[0][1]}); build it for this image's token grid"
            )
        self.k = m.shape[0]
        self.n_layers, self.n_heads, self.n_kv = self.adapter.dims(model)
        self._mt = torch.from_numpy(m.T.copy())
        self.decode = decode
        self.segmenter = segmenter or SpanSegmenter(decode)
        self.per_token = per_token
        self.on_span = on_span
        self._layer_of: dict[int, int] = {}
        self._saved_impl: str | None = None
        self._token: contextvars.Token[AttentionCapture | None] | None = None
        self._reset_buffers()

    # ------------------------------------------------------------ lifecycle
    def _reset_buffers(self) -> None:
        self._step = torch.zeros(self.n_layers, self.n_heads, self.k)
        self._step_via = torch.zeros(self.n_layers, self.n_heads, self.k)
        self._pending_via: list[torch.Tensor] = []
        self._span_via = torch.zeros(self.n_layers, self.n_heads, self.k, dtype=torch.float64)
        self._span_via_feats: list[np.ndarray] = []
        self._seen: set[int] = set()
        self._pending: list[torch.Tensor] = []
        self._span_sum = torch.zeros(self.n_layers, self.n_heads, self.k, dtype=torch.float64)
        self._span_n = 0
        self._tokens: list[torch.Tensor] = []
        self._tokens_via: list[torch.Tensor] = []
        self._spans: list[Span] = []
        self._span_feats: list[np.ndarray] = []
        self._generated: list[int] = []
        self._prompt_seen = False
        self.segmenter.reset()

    def __enter__(self) -> AttentionCapture:
        if self._token is not None:
            raise RuntimeError("this AttentionCapture is already active")
        _ensure_registered()
        mods = self.adapter.attention_modules(self.model)
        self._layer_of = {id(mod): i for i, mod in enumerate(mods)}
        tc = self.adapter.text_config(self.model)
        self._saved_impl = tc._attn_implementation
        self._reset_buffers()
        tc._attn_implementation = IMPLEMENTATION
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Restore the model's attention implementation. Safe to call twice."""
        if self._token is not None:
            _ACTIVE.reset(self._token)
            self._token = None
        if self._saved_impl is not None:
            self.adapter.text_config(self.model)._attn_implementation = self._saved_impl
            self._saved_impl = None
        self._layer_of = {}

    @property
    def active(self) -> bool:
        """Whether the capture is currently attached."""
        return self._token is not None

    # ------------------------------------------------------------ recording
    def _record(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None,
    ) -> None:
        layer = self._layer_of.get(id(module))
        if layer is None:
            return
        probs = last_row_probs(query, key, attention_mask, scaling)[0]  # (H, T)
        mass = probs[:, self.image_pos.to(probs.device)].cpu() @ self._mt  # (H, K)
        via = torch.zeros_like(mass)
        if self.aliases is not None:
            pos, src = self.aliases()
            if pos:
                p = torch.tensor(pos, dtype=torch.long)
                ok = p < probs.shape[1]
                if bool(ok.any()):
                    via = probs[:, p[ok].to(probs.device)].cpu() @ self._mt[torch.tensor(src, dtype=torch.long)[ok]]
        self._step[layer] = mass + via
        self._step_via[layer] = via
        self._record_extra(layer, probs)
        self._seen.add(layer)
        if len(self._seen) == self.n_layers:
            self._pending.append(self._step.clone())
            self._pending_via.append(self._step_via.clone())
            self._row_complete()
            self._seen.clear()

    def _record_extra(self, layer: int, probs: torch.Tensor) -> None:
        """Subclass hook: layer ``layer``'s newest attention row ``probs`` ``(H, T)`` (no-op here)."""

    def _row_complete(self) -> None:
        """Subclass hook: every layer of the current step has been recorded (no-op here)."""

    @property
    def streamer(self) -> TokenStreamer:
        """Pass as ``streamer=`` to ``model.generate``."""
        return TokenStreamer(self._on_token)

    def _on_token(self, token_id: int) -> None:
        if not self._pending:
            raise RuntimeError("a token arrived without a captured attention row (is the capture active?)")
        row = self._pending.pop(0)
        # rows pushed without a via-copy part (e.g. by the nnsight backend) have none
        via = self._pending_via.pop(0) if self._pending_via else torch.zeros_like(row)
        self._generated.append(token_id)
        if self.per_token:
            self._tokens.append(row)
            self._tokens_via.append(via)
        idx = len(self._generated) - 1
        if idx >= self.segmenter.open_start:
            self._span_sum += row.double()
            self._span_via += via.double()
            self._span_n += 1
        span = self.segmenter.push(token_id)
        if span is not None:
            feats = (self._span_sum / max(1, self._span_n)).float().permute(2, 0, 1).numpy()  # (K, L, H)
            self._spans.append(span)
            self._span_feats.append(feats)
            self._span_via_feats.append((self._span_via / max(1, self._span_n)).float().permute(2, 0, 1).numpy())
            if self.on_span is not None:
                self.on_span(span, feats)
        if self.segmenter.open_start == idx + 1:  # a span closed, or a think tag moved the start
            self._span_sum.zero_()
            self._span_via.zero_()
            self._span_n = 0

    def result(self) -> CaptureResult:
        """The captured features (an empty, valid result when no span completed)."""
        feats = (
            np.stack(self._span_feats).astype(np.float32)
            if self._span_feats
            else np.zeros((0, self.k, self.n_layers, self.n_heads), dtype=np.float32)
        )
        per_token = None
        if self.per_token:
            per_token = (
                torch.stack(self._tokens).permute(0, 3, 1, 2).numpy()
                if self._tokens
                else np.zeros((0, self.k, self.n_layers, self.n_heads), dtype=np.float32)
            )
        copy_feats = None
        per_token_copy = None
        if self.aliases is not None and self.per_token:
            per_token_copy = (
                torch.stack(self._tokens_via).permute(0, 3, 1, 2).numpy()
                if self._tokens_via
                else np.zeros((0, self.k, self.n_layers, self.n_heads), dtype=np.float32)
            )
        if self.aliases is not None:
            copy_feats = (
                np.stack(self._span_via_feats).astype(np.float32) if self._span_via_feats else np.zeros_like(feats)
            )
        return CaptureResult(
            spans=list(self._spans),
            features=feats,
            copy_features=copy_feats,
            per_token_copy=per_token_copy,
            generated_ids=list(self._generated),
            text=self.decode(self._generated),
            per_token=per_token,
            meta={
                "model_class": type(self.model).__name__,
                "family": self.adapter.family,
                "L": self.n_layers,
                "H": self.n_heads,
                "K": self.k,
                "n_image_tokens": int(self.image_pos.numel()),
            },
        )


class TokenStreamer:
    """A transformers streamer that passes each generated token id to ``on_token`` (the prompt is skipped)."""

    def __init__(self, on_token: Callable[[int], None]) -> None:
        self.on_token = on_token
        self._first = True

    def put(self, value: torch.Tensor) -> None:
        if self._first:  # generate() first sends the prompt
            self._first = False
            return
        for t in value.reshape(-1).tolist():
            self.on_token(int(t))

    def end(self) -> None:
        return None


def capture_generate(
    model: Any,
    inputs: dict[str, Any],
    assignment: Any,
    *,
    decode: Callable[[list[int]], str],
    per_token: bool = False,
    on_span: Callable[[Span, np.ndarray], None] | None = None,
    **generate_kwargs: Any,
) -> CaptureResult:
    """Run ``model.generate(**inputs, **generate_kwargs)`` under an :class:`AttentionCapture`.

    Returns:
        The :class:`CaptureResult`.
    """
    with AttentionCapture(model, inputs, assignment, decode=decode, per_token=per_token, on_span=on_span) as cap:
        model.generate(**inputs, streamer=cap.streamer, **generate_kwargs)
    return cap.result()
