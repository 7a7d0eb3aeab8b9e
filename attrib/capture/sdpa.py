"""Capture layer x head attention mass on image regions while a VLM generates, with SDPA kept on.

How it works. On entering [`AttentionCapture`][attrib.capture.sdpa.AttentionCapture], the language model's
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

Spans. A [`SpanSegmenter`][attrib.capture.spans.SpanSegmenter] splits the generated text
into sentences on the fly; each completed span's features are the mean over its tokens.

Key parts. A research variant that adds tokens of its own to the sequence
declares them as [`KeyPart`][attrib.capture.sdpa.KeyPart] objects, and the capture reads attention to
them in the same pass: an *alias* part (v1 copy tokens, each standing for an
image token) counts for its source's regions and is also kept apart; any other
part (latent tokens) is kept apart as ``(L, H)`` mass credited to no region.

On exit, on normal return or on an exception, the original implementation is
restored and nothing of the capture stays attached to the model.
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attrib.capture.spans import Span, SpanSegmenter
from attrib.io import atomic_write_text
from attrib.models.adapters import ModelAdapter, adapter_for

__all__ = [
    "IMPLEMENTATION",
    "AttentionCapture",
    "CaptureResult",
    "KeyPart",
    "SpanCallback",
    "TokenStreamer",
    "active_capture",
    "capture_generate",
    "last_row_probs",
    "register_implementation",
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


def active_capture() -> AttentionCapture | None:
    """The capture active in this context (``None`` when none is attached)."""
    return _ACTIVE.get()


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


#: ``on_span(span, features, parts)``: a completed span, its ``(K, L, H)`` features and its key parts.
SpanCallback = Callable[[Span, np.ndarray, dict[str, np.ndarray]], None]


@dataclass
class KeyPart:
    """Key positions a research variant adds to the sequence, and how attention to them counts.

    The variant appends to ``positions`` (and ``sources``) as it generates;
    the capture reads them at every step.

    Attributes:
        name: The part's name (``"via_copy"``, ``"latent"``).
        positions: Sequence positions of the part's tokens so far.
        sources: For an alias part, the image-token index each position stands
            for: attention to it counts for that token's regions, and is also kept
            apart as this part (``(K, L, H)`` per span). ``None``: attention to the
            positions is kept apart as ``(L, H)`` mass, credited to no region.
    """

    name: str
    positions: list[int] = field(default_factory=list)
    sources: list[int] | None = None

    @property
    def aliases(self) -> bool:
        """Whether the part's tokens alias image tokens."""
        return self.sources is not None


@dataclass
class CaptureResult:
    """Captured features of one generation.

    Attributes:
        spans: Completed spans, in order.
        features: ``(n_spans, K, L, H)`` float32: mean over the span's tokens of
            the attention mass each layer's heads put on each region (alias parts included).
        generated_ids: Generated token ids.
        text: Decoded generated text.
        per_token: ``(T, K, L, H)`` per generated token (only with ``per_token=True``).
        meta: Model class, family, L, H, K, number of image tokens.
        parts: Per key part, its span means: ``(n_spans, K, L, H)`` for an alias part
            (the part of ``features`` that reached the regions through it),
            ``(n_spans, L, H)`` otherwise.
        per_token_parts: Per key part, the same per generated token (with ``per_token=True``).
        token_sources: Per generated token, the image token it aliases (``-1`` for
            none); set by variants whose tokens alias image tokens.
    """

    spans: list[Span]
    features: np.ndarray
    generated_ids: list[int]
    text: str
    per_token: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, np.ndarray] = field(default_factory=dict)
    per_token_parts: dict[str, np.ndarray] = field(default_factory=dict)
    token_sources: list[int] | None = None

    @property
    def copy_features(self) -> np.ndarray | None:
        """The via-copy part (v1 point-and-copy models; ``None`` otherwise); direct: ``features - copy_features``."""
        return self.parts.get("via_copy")

    @property
    def per_token_copy(self) -> np.ndarray | None:
        """The via-copy part of ``per_token`` (v1 point-and-copy models with ``per_token=True``)."""
        return self.per_token_parts.get("via_copy")

    def part_share(self, name: str) -> np.ndarray:
        """Per span, the share of region attention mass that an alias part carries (zeros without it)."""
        part = self.parts.get(name)
        if part is None or not len(self.spans):
            return np.zeros(len(self.spans))
        total = self.features.sum(axis=(1, 2, 3))
        via = part.reshape(part.shape[0], -1).sum(axis=1)
        return np.divide(via, total, out=np.zeros_like(via), where=total > 0)

    def copy_share(self) -> np.ndarray:
        """Per span, the share of region attention mass that flows through copy tokens (zeros without copies)."""
        return self.part_share("via_copy")

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of ``features``."""
        return tuple(self.features.shape)

    def save(self, path: str | Path) -> None:
        """Write ``<path>.safetensors`` (arrays) and ``<path>.json`` (spans, text, meta)."""
        from safetensors.numpy import save_file

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"features": np.ascontiguousarray(self.features, dtype=np.float32)}
        if self.per_token is not None:
            arrays["per_token"] = np.ascontiguousarray(self.per_token, dtype=np.float32)
        for name, a in self.parts.items():
            arrays[f"part.{name}"] = np.ascontiguousarray(a, dtype=np.float32)
        for name, a in self.per_token_parts.items():
            arrays[f"per_token_part.{name}"] = np.ascontiguousarray(a, dtype=np.float32)
        tmp = p.with_name(p.name + ".tmp.safetensors")
        save_file(arrays, str(tmp))
        tmp.replace(p.with_suffix(".safetensors"))
        doc = {
            "spans": [s.__dict__ for s in self.spans],
            "generated_ids": self.generated_ids,
            "text": self.text,
            "meta": self.meta,
            "token_sources": self.token_sources,
        }
        atomic_write_text(p.with_suffix(".json"), json.dumps(doc) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CaptureResult:
        """Inverse of [`save`][attrib.capture.sdpa.CaptureResult.save] (safetensors + JSON; nothing is unpickled).

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
        parts = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("part.")}
        if "copy_features" in arrays:  # written before key parts existed
            parts["via_copy"] = arrays["copy_features"]
        per_token_parts = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("per_token_part.")}
        return cls(
            spans,
            feats,
            doc["generated_ids"],
            doc["text"],
            arrays.get("per_token"),
            doc["meta"],
            parts,
            per_token_parts,
            doc.get("token_sources"),
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

    A model that runs its own decode loop (a research variant) calls
    [`push_token`][attrib.capture.sdpa.AttentionCapture.push_token] for every generated token instead of passing
    [`streamer`][attrib.capture.sdpa.AttentionCapture.streamer].

    Args:
        model: A supported VLM (see [`attrib.models.adapters`][attrib.models.adapters]).
        inputs: The model inputs (``input_ids`` etc.); batch size 1.
        assignment: ``(K, N_image)`` region -> image-token matrix (rows may be fractional),
            or a [`TokenAssignment`][attrib.regions.partition.TokenAssignment].
        decode: Token ids -> text, special tokens kept (for span segmentation).
        per_token: Also keep per-token features (O(T · K · L · H) memory).
        segmenter: A custom [`SpanSegmenter`][attrib.capture.spans.SpanSegmenter].
        on_span: Called as ``on_span(span, features[K, L, H], parts)`` as each span completes.
        parts: The [`KeyPart`][attrib.capture.sdpa.KeyPart] objects of a research variant's own tokens.

    Raises:
        ValueError: For an unsupported model, a prompt with no image or too many images,
            a batch larger than 1, an assignment whose token count does not match, or
            two key parts with one name.
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
        on_span: SpanCallback | None = None,
        parts: Sequence[KeyPart] = (),
    ) -> None:
        self.model = model
        self.parts = list(parts)
        if len({p.name for p in self.parts}) != len(self.parts):
            raise ValueError(f"key part names must be distinct, got {[p.name for p in self.parts]}")
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
    def _part_shape(self, part: KeyPart) -> tuple[int, ...]:
        return (self.n_layers, self.n_heads, self.k) if part.aliases else (self.n_layers, self.n_heads)

    def _reset_buffers(self) -> None:
        self._step = torch.zeros(self.n_layers, self.n_heads, self.k)
        self._part_step = {p.name: torch.zeros(self._part_shape(p)) for p in self.parts}
        self._seen: set[int] = set()
        self._pending: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
        self._span_sum = torch.zeros(self.n_layers, self.n_heads, self.k, dtype=torch.float64)
        self._part_sum = {p.name: torch.zeros(self._part_shape(p), dtype=torch.float64) for p in self.parts}
        self._span_n = 0
        self._tokens: list[torch.Tensor] = []
        self._part_tokens: dict[str, list[torch.Tensor]] = {p.name: [] for p in self.parts}
        self._spans: list[Span] = []
        self._span_feats: list[np.ndarray] = []
        self._part_feats: dict[str, list[np.ndarray]] = {p.name: [] for p in self.parts}
        self._generated: list[int] = []
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
        via_total = torch.zeros_like(mass)
        for part in self.parts:
            buf = self._part_step[part.name]
            pos = torch.tensor(part.positions, dtype=torch.long)
            ok = pos < probs.shape[1]
            if not part.positions or not bool(ok.any()):
                buf[layer] = 0.0
                continue
            rows = probs[:, pos[ok].to(probs.device)].cpu()
            if part.sources is not None:
                src = torch.tensor(part.sources[: len(part.positions)], dtype=torch.long)[ok]
                via = rows @ self._mt[src]
                buf[layer] = via
                via_total = via_total + via
            else:
                buf[layer] = rows.sum(-1)
        self._step[layer] = mass + via_total
        self._seen.add(layer)
        if len(self._seen) == self.n_layers:
            self.push_row(self._step.clone(), {n: b.clone() for n, b in self._part_step.items()})
            self._seen.clear()

    def push_row(self, row: torch.Tensor, parts: dict[str, torch.Tensor] | None = None) -> None:
        """Queue one step's ``(L, H, K)`` region row (and key-part rows) for the next token.

        The native backend calls this from the attention function; another backend
        (nnsight) calls it with rows it read itself. A part missing from ``parts`` counts as zero.
        """
        self._pending.append((row, parts or {}))

    @property
    def streamer(self) -> TokenStreamer:
        """Pass as ``streamer=`` to ``model.generate``."""
        return TokenStreamer(self.push_token)

    def push_token(self, token_id: int) -> None:
        """One generated token: pairs it with its captured row and closes a span when it ends one.

        Raises:
            RuntimeError: If no attention row was captured for it (the capture is not active).
        """
        if not self._pending:
            raise RuntimeError("a token arrived without a captured attention row (is the capture active?)")
        row, part_rows = self._pending.pop(0)
        self._generated.append(token_id)
        prow = {p.name: part_rows.get(p.name, torch.zeros(self._part_shape(p))) for p in self.parts}
        if self.per_token:
            self._tokens.append(row)
            for name, r in prow.items():
                self._part_tokens[name].append(r)
        idx = len(self._generated) - 1
        if idx >= self.segmenter.open_start:
            self._span_sum += row.double()
            for name, r in prow.items():
                self._part_sum[name] += r.double()
            self._span_n += 1
        span = self.segmenter.push(token_id)
        if span is not None:
            n = max(1, self._span_n)
            feats = (self._span_sum / n).float().permute(2, 0, 1).numpy()  # (K, L, H)
            span_parts = {}
            for p in self.parts:
                mean = (self._part_sum[p.name] / n).float()
                span_parts[p.name] = (mean.permute(2, 0, 1) if p.aliases else mean).numpy()
                self._part_feats[p.name].append(span_parts[p.name])
            self._spans.append(span)
            self._span_feats.append(feats)
            if self.on_span is not None:
                self.on_span(span, feats, span_parts)
        if self.segmenter.open_start == idx + 1:  # a span closed, or a think tag moved the start
            self._span_sum.zero_()
            for buf in self._part_sum.values():
                buf.zero_()
            self._span_n = 0

    def result(self) -> CaptureResult:
        """The captured features (an empty, valid result when no span completed)."""
        lhk = (self.k, self.n_layers, self.n_heads)
        feats = (
            np.stack(self._span_feats).astype(np.float32) if self._span_feats else np.zeros((0, *lhk), dtype=np.float32)
        )
        per_token = None
        if self.per_token:
            per_token = (
                torch.stack(self._tokens).permute(0, 3, 1, 2).numpy()
                if self._tokens
                else np.zeros((0, *lhk), dtype=np.float32)
            )
        parts: dict[str, np.ndarray] = {}
        per_token_parts: dict[str, np.ndarray] = {}
        for p in self.parts:
            shape = lhk if p.aliases else (self.n_layers, self.n_heads)
            fs = self._part_feats[p.name]
            parts[p.name] = np.stack(fs).astype(np.float32) if fs else np.zeros((0, *shape), dtype=np.float32)
            if self.per_token:
                ts = self._part_tokens[p.name]
                if ts:
                    t = torch.stack(ts)
                    per_token_parts[p.name] = (t.permute(0, 3, 1, 2) if p.aliases else t).numpy()
                else:
                    per_token_parts[p.name] = np.zeros((0, *shape), dtype=np.float32)
        return CaptureResult(
            spans=list(self._spans),
            features=feats,
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
            parts=parts,
            per_token_parts=per_token_parts,
        )


class TokenStreamer:
    """A transformers streamer that passes each generated token id to ``on_token`` (the prompt is skipped)."""

    def __init__(self, on_token: Callable[[int], None]) -> None:
        self.on_token = on_token
        self._first = True

    def put(self, value: torch.Tensor) -> None:
        """Receive ids from ``generate`` (the first call carries the prompt and is skipped)."""
        if self._first:  # generate() first sends the prompt
            self._first = False
            return
        for t in value.reshape(-1).tolist():
            self.on_token(int(t))

    def end(self) -> None:
        """End of generation (nothing to do)."""
        return None


def capture_generate(
    model: Any,
    inputs: dict[str, Any],
    assignment: Any,
    *,
    decode: Callable[[list[int]], str],
    per_token: bool = False,
    on_span: SpanCallback | None = None,
    **generate_kwargs: Any,
) -> CaptureResult:
    """Run ``model.generate(**inputs, **generate_kwargs)`` under an
    [`AttentionCapture`][attrib.capture.sdpa.AttentionCapture].

    Returns:
        The [`CaptureResult`][attrib.capture.sdpa.CaptureResult].
    """
    with AttentionCapture(model, inputs, assignment, decode=decode, per_token=per_token, on_span=on_span) as cap:
        model.generate(**inputs, streamer=cap.streamer, **generate_kwargs)
    return cap.result()
