"""Capture layer x head attention mass on image regions while a VLM generates, with SDPA kept on.

How it works. On entering [`AttentionCapture`][attrib.capture.sdpa.AttentionCapture], the language model's
attention implementation is switched from ``sdpa`` to ``attrib_sdpa``, a
function registered with transformers' ``AttentionInterface``. It returns
exactly what ``sdpa`` returns (same kernel, same output) and, beside it, keeps
what the **newest query row** needs: that row's post-RoPE query, copied into a
per-layer buffer allocated once (M-RoPE, partial rotary and QK-norm are already
applied). It keeps no tensor made during a step (but the model's attention mask,
when a step has one): small tensors kept across steps sit between the key
cache's blocks, which transformers reallocates at every step, and keep the
allocator from reusing them, so the process's memory grows with the length
(measured in ``examples/probe_capture_designs.py --mem-tokens``). The rows
themselves are computed later, in one batched pass per layer when a span closes
(or every ``chunk`` tokens).

The pass needs each query's softmax normaliser over the whole cache. On the CPU,
a decode step runs SDPA's flash kernel directly, with the arguments transformers
would give it (the output is bit for bit the same), and keeps the log-normaliser
the kernel computes anyway (``kernel_lse``, the default); the prefill's last row
gets it from one extra product with the prompt's keys. Then a row's mass on key
``j`` is ``exp(q . k_j * scale - lse)``, and the pass multiplies the buffered
queries with the keys of the image tokens (and of a variant's key parts) only,
copied once per layer, against their rows of the region -> token assignment:
its cost and memory do not grow with the length, and no reference to the
growing cache is kept. Elsewhere (a GPU, a model whose attention takes a
position bias), the capture keeps a reference to the layer's key cache (no
copy) and the pass attends each buffered query to the whole cache, causal per
token, through SDPA itself with the assignment as the value matrix (float32
accumulation inside the kernel, GQA by grouping query heads over their KV head,
no ``T x T`` or ``H x T`` probability matrix). Span sums
stay on the model's device; one ``(L, H, K)`` array per span moves to the host.
A layer whose cache drops old keys (sliding-window layers past their window)
computes its row at each step instead, from the keys it is given.

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
restored and nothing of the capture stays attached to the model (the references
to queries and keys are dropped).
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.functional import scaled_dot_product_attention

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


_SDPA: Callable[..., Any] | None = None  # transformers' sdpa_attention_forward, imported on first use


def _capturing_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    global _SDPA
    cap = _ACTIVE.get()
    if cap is not None and cap.kernel_lse and query.shape[2] == 1:
        # The usual decode step (no mask, nothing exotic) takes a plan made at the module's first step.
        if attention_mask is None and _plain_step(kwargs):
            direct = cap._direct.get(id(module))
            if direct is None:
                direct = cap._direct[id(module)] = _flash_direct(module, query, key, value, kwargs.get("scaling"))
            if direct:
                o, lse = _FLASH_CPU(query, key, value, 0.0, False, scale=kwargs.get("scaling"))
                cap._record(module, query, key, None, kwargs.get("scaling"), lse)
                return o.transpose(1, 2).contiguous(), None
        got = _decode_with_lse(module, query, key, value, attention_mask, kwargs)
        if got is not None:
            cap._record(module, query, key, attention_mask, kwargs.get("scaling"), got[1])
            return got[0], None
    elif cap is not None and cap.kernel_lse and attention_mask is None:
        got = _prefill_with_lse(module, query, key, value, kwargs)
        if got is not None:  # the prefill's last row's normaliser comes with its output: no second pass over it
            cap._record(module, query, key, None, kwargs.get("scaling"), got[1])
            return got[0], None
    if _SDPA is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        _SDPA = sdpa_attention_forward
    out = _SDPA(module, query, key, value, attention_mask, **kwargs)
    if cap is not None:
        row_lse: torch.Tensor | None = None
        if cap.kernel_lse and query.device.type == "cpu" and kwargs.get("position_bias") is None:
            row_lse = _last_row_lse(query, key, attention_mask, kwargs.get("scaling"))  # the prefill: once per layer
        cap._record(module, query, key, attention_mask, kwargs.get("scaling"), row_lse)
    return out  # type: ignore[no-any-return]


def _last_row_lse(
    query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float | None
) -> torch.Tensor:
    """``(1, H, 1)`` float32 log-normalisers of the last query row's softmax (a prefill's row, which no kernel
    returns)."""
    h, d = query.shape[1], query.shape[3]
    kv, t = key.shape[1], key.shape[2]
    q = query[0, :, -1].float().reshape(kv, h // kv, d)
    s = torch.bmm(q, key[0].float().transpose(1, 2)).mul_(scaling if scaling is not None else d**-0.5)  # (KV, G, T)
    if attention_mask is not None:
        m = attention_mask[0, :, -1, :t]
        m = m.reshape(kv, h // kv, t) if m.shape[0] == h else m.reshape(1, 1, t)
        s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m.float()
    return torch.logsumexp(s, dim=-1).reshape(1, h, 1)


#: ``torch.ops.aten._fused_sdp_choice`` -> SDPA's flash kernel (``SDPBackend.FLASH_ATTENTION``).
_FLASH_CHOICE = 1
#: (dtype, query shape, key heads, head dims, mask shape or None, GQA) -> whether SDPA runs the CPU flash kernel.
_FLASH_OK: dict[tuple[Any, ...], bool] = {}
_GQA_RULES: tuple[Callable[..., Any], Callable[..., Any]] | None = None
#: The CPU flash kernel: the public binding where torch has one (the op-overload call costs microseconds more).
_FLASH_CPU: Callable[..., tuple[torch.Tensor, torch.Tensor]] = getattr(
    torch, "_scaled_dot_product_flash_attention_for_cpu", torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
)


def _flash_ok(
    sig: tuple[Any, ...],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    scaling: float | None,
    gqa: bool,
) -> bool:
    """Whether SDPA runs the CPU flash kernel on tensors of signature ``sig`` (asked once per signature)."""
    ok = _FLASH_OK.get(sig)
    if ok is None:
        choice = torch.ops.aten._fused_sdp_choice(q, k, v, mask, 0.0, causal, scale=scaling, enable_gqa=gqa)
        ok = _FLASH_OK[sig] = bool(choice == _FLASH_CHOICE)
    return ok


def _plain_step(kwargs: dict[str, Any]) -> bool:
    """No dropout, soft cap, position bias, attention sinks or attention weights asked for."""
    g = kwargs.get
    return (
        not g("dropout")
        and g("softcap") is None
        and g("position_bias") is None
        and g("s_aux") is None
        and not (g("output_attentions"))
    )


def _flash_direct(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None
) -> bool:
    """Whether a mask-free decode step of ``module`` is, in transformers' ``sdpa``, the CPU flash kernel on these
    very tensors (no GQA packing), so the kernel can be called on them as they are.

    Decided once per module and capture (device, dtypes, head counts and sizes do not change during a
    generation); the keywords are checked at every step by the caller (``_plain_step``).
    """
    if query.device.type != "cpu" or query.shape[0] != 1 or getattr(module, "training", False):
        return False
    rules = _gqa_rules()
    if rules is None:
        return False
    gqa = False
    if getattr(module, "num_key_value_groups", 1) > 1:
        if not rules[0](None, key, value):
            return False  # transformers packs the heads: the general path handles it
        gqa = True
    sig = ("decode", query.dtype, tuple(query.shape), key.shape[1], key.shape[3], value.shape[3], None, gqa)
    return _flash_ok(sig, query, key, value, None, False, scaling, gqa)  # one answer per shape, for every capture


def _gqa_rules() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """transformers' own ``use_gqa_in_sdpa`` and ``pack_gqa`` (``None`` where this transformers has neither)."""
    global _GQA_RULES
    if _GQA_RULES is None:
        try:
            from transformers.integrations.sdpa_attention import pack_gqa, use_gqa_in_sdpa
        except ImportError:  # an older transformers: the decode fast path stays off
            return None
        _GQA_RULES = (use_gqa_in_sdpa, pack_gqa)
    return _GQA_RULES


def _decode_with_lse(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    kwargs: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One decode step's attention as transformers' ``sdpa`` computes it, and each head's log-sum-exp.

    On the CPU, ``scaled_dot_product_attention`` runs the flash kernel, which computes the
    softmax's log-normaliser of every query row and drops it. Calling that kernel directly with
    the arguments SDPA would give it returns the same output, bit for bit, and the normaliser:
    with it, a query's attention to any key is ``exp(q . k * scale - lse)``, so the capture needs
    the query against the image keys only, not against the whole cache.

    Returns:
        ``(output, lse)``: the attention output laid out as ``sdpa_attention_forward`` returns it,
        and the ``(1, H, 1)`` float32 log-normalisers; ``None`` wherever SDPA would not run that kernel
        (another device, a batch, dropout, a soft cap, a position bias, attention weights asked
        for), and the caller takes transformers' own path.
    """
    if query.device.type != "cpu" or query.shape[0] != 1 or not _plain_step(kwargs):
        return None
    rules = _gqa_rules()
    if rules is None:
        return None
    q, mask, gqa = query, attention_mask, False
    n_rep = getattr(module, "num_key_value_groups", 1)
    if n_rep > 1:
        if rules[0](attention_mask, key, value):
            gqa = True
        else:  # transformers packs a single query's heads over their KV head
            q = rules[1](query, n_rep)
            mask = rules[1](attention_mask, n_rep)
    if mask is not None:
        if mask.dtype == torch.bool:  # as SDPA converts it: -inf where a key is not attended
            mask = torch.zeros(mask.shape, dtype=q.dtype).masked_fill_(~mask, float("-inf"))
        elif mask.dtype != q.dtype:
            return None
    scaling = kwargs.get("scaling")
    ms = (
        None if mask is None else tuple(mask.shape[:-1])
    )  # the key length grows every step; the choice does not depend on it
    sig = ("decode", q.dtype, tuple(q.shape), key.shape[1], key.shape[3], value.shape[3], ms, gqa)
    if not _flash_ok(sig, q, key, value, mask, False, scaling, gqa):
        return None
    out, lse = _FLASH_CPU(q, key, value, 0.0, False, attn_mask=mask, scale=scaling)
    out = out.reshape(out.shape[0], -1, 1, value.shape[-1]).transpose(1, 2).contiguous()
    return out, lse.reshape(1, -1, 1)


def _prefill_with_lse(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kwargs: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A mask-free causal prefill as transformers' ``sdpa`` computes it, and its last row's log-normalisers.

    Where SDPA would run the CPU flash kernel on these very tensors (a causal prefill with no mask, no prefix in
    the cache, heads not repeated by transformers), calling the kernel directly returns the same output and every
    row's normaliser; the capture keeps the last row's, ``(1, H, 1)``. ``None`` elsewhere (the caller takes
    transformers' own path).
    """
    t = query.shape[2]
    if query.device.type != "cpu" or query.shape[0] != 1 or key.shape[2] != t or not _plain_step(kwargs):
        return None
    causal = kwargs.get("is_causal")
    if not (causal if causal is not None else getattr(module, "is_causal", True)):
        return None
    rules = _gqa_rules()
    if rules is None:
        return None
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    if gqa and not rules[0](None, key, value):
        return None  # transformers repeats the heads: its own path
    scaling = kwargs.get("scaling")
    sig = ("prefill", query.dtype, query.shape[1], key.shape[1], key.shape[3], value.shape[3], None, gqa)
    if not _flash_ok(sig, query, key, value, None, True, scaling, gqa):
        return None
    out, lse = _FLASH_CPU(query, key, value, 0.0, True, scale=scaling)
    return out.transpose(1, 2).contiguous(), lse[:, :, -1:].float()


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


#: Keys converted to float32 at a time by ``last_row_probs`` for a low-precision cache (bounds the transient copy).
_SCORE_CHUNK = 1024


def last_row_probs(
    query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float | None
) -> torch.Tensor:
    """Attention probabilities of the last query row, ``(B, H, T)``, in float32.

    A float32 cache is used as it is; a lower-precision one is read in chunks of
    ``_SCORE_CHUNK`` keys converted to float32, so no float32 copy of the whole cache is made.

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
    if key.dtype in (torch.float32, torch.float64):
        scores = torch.einsum("bkgd,bktd->bkgt", q.to(key.dtype), key).float()
    else:
        scores = torch.cat(
            [
                torch.einsum("bkgd,bktd->bkgt", q, key[:, :, i : i + _SCORE_CHUNK].float())
                for i in range(0, t, _SCORE_CHUNK)
            ],
            dim=-1,
        )
    scores = scores.reshape(b, h, t) * (scaling if scaling is not None else d**-0.5)
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


class _ValueTable:
    """The value matrix of the batched pass: one row per key position, ``(T, C)``.

    Columns ``[0, K)`` hold the region -> token assignment at the image positions (direct mass);
    each alias key part adds ``K`` columns (the assignment of each position's source image token),
    each other key part one column (1 at its positions). Attention against it gives each query's
    mass per region and per part in one kernel call. Grown by doubling as the sequence grows.
    """

    def __init__(self, cap: AttentionCapture, device: torch.device, dtype: torch.dtype) -> None:
        self.cap = cap
        self.device = device
        self.dtype = dtype
        self.buf = torch.zeros(0, cap._n_cols, dtype=dtype, device=device)
        self.filled = [0] * len(cap.parts)  # part positions already written

    def rows(self, stop: int) -> torch.Tensor:
        """Rows ``[0, stop)``, with every key-part position noted so far written."""
        cap = self.cap
        if stop > self.buf.shape[0]:
            self._grow(stop)
        for i, part in enumerate(cap.parts):
            n = len(part.positions)
            if n > self.filled[i]:
                self._write(i, part, self.filled[i], n)
                self.filled[i] = n
        return self.buf[:stop]

    def _grow(self, need: int) -> None:
        cap = self.cap
        size = max(need, 2 * self.buf.shape[0], 256, int(cap.image_pos.max()) + 1)
        new = torch.zeros(size, cap._n_cols, dtype=self.dtype, device=self.device)
        if self.buf.shape[0]:
            new[: self.buf.shape[0]] = self.buf
        else:
            new[cap.image_pos.to(self.device), : cap.k] = cap._mt.to(self.device, self.dtype)
        self.buf = new

    def _write(self, i: int, part: KeyPart, lo: int, hi: int) -> None:
        cap = self.cap
        pos = torch.tensor(part.positions[lo:hi], dtype=torch.long)
        if pos.numel() and int(pos.max()) >= self.buf.shape[0]:
            self._grow(int(pos.max()) + 1)
        col = cap._part_cols[i]
        if part.sources is not None:
            src = torch.tensor(part.sources[lo:hi], dtype=torch.long)
            self.buf[pos.to(self.device), col] = cap._mt[src].to(self.device, self.dtype)
        else:
            self.buf[pos.to(self.device), col] = 1


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
        chunk: Tokens whose rows wait for one batched pass at most (a span closing runs the pass earlier).
        kernel_lse: On the CPU, take each decode step's softmax normaliser from the attention kernel
            (see `_decode_with_lse` in this module), so the batched pass
            reads the image (and key-part) keys only; ``False`` recomputes the normaliser over the
            whole cache, as on other devices.

    Attributes:
        last_token_s: ``time.perf_counter()`` when the latest token arrived (before its span's pass ran).

    Raises:
        ValueError: For an unsupported model, a prompt with no image or too many images,
            a batch larger than 1, an assignment whose token count does not match,
            two key parts with one name, or ``chunk < 1``.
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
        chunk: int = 64,
        kernel_lse: bool = True,
    ) -> None:
        self.model = model
        self.parts = list(parts)
        if len({p.name for p in self.parts}) != len(self.parts):
            raise ValueError(f"key part names must be distinct, got {[p.name for p in self.parts]}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
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
        self.image_pos = torch.nonzero(ids[0] == self.adapter.image_token_id(model)).flatten().cpu()
        m = np.asarray(getattr(assignment, "matrix", assignment), dtype=np.float32)
        if m.ndim != 2 or m.shape[1] != self.image_pos.numel():
            raise ValueError(
                f"region assignment has shape {m.shape}, but the image has {self.image_pos.numel()} visual "
                f"tokens ({grids[0][0]}x{grids[0][1]}); build it for this image's token grid"
            )
        self.k = m.shape[0]
        self.n_layers, self.n_heads, self.n_kv = self.adapter.dims(model)
        self._mt = torch.from_numpy(m.T.copy())  # (N_image, K)
        self.decode = decode
        self.segmenter = segmenter or SpanSegmenter(decode)
        self.per_token = per_token
        self.on_span = on_span
        self.chunk = chunk
        self.kernel_lse = kernel_lse
        # Columns of the batched pass: direct region mass, then each part's (K for an alias part, else 1).
        cols, n = [], self.k
        for p in self.parts:
            width = self.k if p.aliases else 1
            cols.append(slice(n, n + width) if p.aliases else n)
            n += width
        self._part_cols: list[slice | int] = cols
        self._n_cols = n
        self._layer_of: dict[int, int] = {}
        self._saved_impl: str | None = None
        self._token: contextvars.Token[AttentionCapture | None] | None = None
        self.last_token_s = 0.0
        self._reset_buffers()

    # ------------------------------------------------------------ lifecycle
    def _part_shape(self, part: KeyPart) -> tuple[int, ...]:
        return (self.n_layers, self.n_heads, self.k) if part.aliases else (self.n_layers, self.n_heads)

    def _reset_buffers(self) -> None:
        nl = self.n_layers
        # Per layer, one entry per buffered forward while the layer's rows wait for the batched pass:
        # (key length, mask, the newest query (1, H, 1, D), the kernel's (1, H, 1) log-normaliser or None);
        # or the computed (H, C) row of a layer that computes at each step. The query and normaliser are the
        # forward's own tensors, held, not copied (a prefill's last query row is copied once).
        self._buf: list[list[Any]] = [[] for _ in range(nl)]
        self._rel: tuple[Any, torch.Tensor] | None = None  # key positions that carry region or part mass
        self._direct: dict[int, bool] = {}  # id(attention module) -> its mask-free decode step is the flash kernel
        self._relk: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * nl  # those positions, their float keys
        self._fused: tuple[torch.Tensor, torch.Tensor] | None = None  # all layers' keys, values (_fused_rows)
        self._keys: list[torch.Tensor | None] = [None] * nl  # the latest key cache of each waiting layer
        self._scale: list[float | None] = [None] * nl
        self._stepwise = [False] * nl  # the layer's cache drops keys: rows are computed at each step
        self._seen = [0] * nl  # sequence length each layer has seen
        self._forwards = 0  # forward passes recorded (by the last layer)
        self._buffered = 0  # tokens whose rows wait for the batched pass
        self._unfusable = False  # a waiting forward had a mask or no kernel normaliser
        self._discard = False  # no further span can complete and no per-token rows are kept
        self._values: dict[tuple[torch.device, torch.dtype], _ValueTable] = {}
        self._mask_cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}
        self._external: deque[torch.Tensor] = deque()  # rows pushed by another backend (push_row)
        self._ext_buf: list[torch.Tensor] = []
        self._span_sum: torch.Tensor | None = None  # (L, H, C) float32 on the model's device
        self._span_n = 0
        self._token_rows: list[np.ndarray] = []  # per_token: (n, L, H, C) blocks
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

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._detach(flush=exc_type is None)

    def close(self) -> None:
        """Restore the model's attention implementation and drop the references to the model's tensors.

        Rows still waiting for the batched pass are computed first when ``per_token`` is set. Safe to call twice.
        """
        self._detach(flush=True)

    def _detach(self, *, flush: bool) -> None:
        try:
            if flush and self.per_token and self._buffered:
                self._flush(count=False)
        finally:
            if self._token is not None:
                _ACTIVE.reset(self._token)
                self._token = None
            if self._saved_impl is not None:
                self.adapter.text_config(self.model)._attn_implementation = self._saved_impl
                self._saved_impl = None
            self._layer_of = {}
            self._drop()
            self._keys = [None] * self.n_layers
            self._relk = [None] * self.n_layers
            self._fused = None
            self._values = {}
            self._span_sum = None

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
        lse: torch.Tensor | None = None,
    ) -> None:
        layer = self._layer_of.get(id(module))
        if layer is None:
            return
        seen = self._seen[layer] + query.shape[2]
        t = key.shape[2]
        if t > seen:  # a cache filled before the capture began
            seen = t
        self._seen[layer] = seen
        if layer == self.n_layers - 1:
            self._forwards += 1
        if self._discard:
            return
        if t == seen and not self._stepwise[layer]:
            # Hold the newest query (and the kernel's normaliser), keep a reference to the keys: the row is
            # computed in the next batched pass. (This runs for every layer at every token: a few operations.)
            if lse is None:
                self._keys[layer] = key
            elif self.parts or self._relk[layer] is None:  # copy the relevant keys (once for a plain model)
                self._snapshot_keys(layer, key, seen)  # and the growing cache is not held
            self._scale[layer] = scaling
            q = query if query.shape[2] == 1 else query[:, :, -1:].clone()  # a prefill's whole query is not held
            self._buf[layer].append((seen, attention_mask, q, lse))
            if lse is None or attention_mask is not None:
                self._unfusable = True  # this batch of forwards takes the per-layer passes (_fused_rows)
            return
        if not self._stepwise[layer]:  # the cache has started dropping keys: compute what waits, then step by step
            self._buf[layer] = list(self._layer_rows(layer).unbind(1)) if self._buf[layer] else []
            self._stepwise[layer] = True
            self._keys[layer] = None
        self._buf[layer].append(self._row_now(query, key, attention_mask, scaling, seen))

    def _table(self, like: torch.Tensor) -> _ValueTable:
        return self._table_for(like.device, like.dtype)

    def _table_for(self, device: torch.device, dtype: torch.dtype) -> _ValueTable:
        tab = self._values.get((device, dtype))
        if tab is None:
            tab = self._values[(device, dtype)] = _ValueTable(self, device, dtype)
        return tab

    def _row_now(
        self, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float | None, seen: int
    ) -> torch.Tensor:
        """``(H, C)`` row of the newest query against keys that end at position ``seen`` (a suffix of the sequence)."""
        h, d = query.shape[1], query.shape[3]
        kv, t = key.shape[1], key.shape[2]
        q = query[:, :, -1:].reshape(1, kv, h // kv, d)
        vals = self._table(key).rows(seen)[seen - t :]
        m = None
        if mask is not None:
            m = mask[:, :, -1:, :t]
            if m.shape[1] == h:
                m = m.reshape(1, kv, h // kv, t)
        out = scaled_dot_product_attention(q, key, vals.expand(1, kv, t, vals.shape[1]), attn_mask=m, scale=scaling)
        return out.reshape(h, vals.shape[1])

    def _layer_rows(self, layer: int) -> torch.Tensor:
        """``(H, n, C)`` rows of one layer's buffered forwards, in one batched pass."""
        entries = self._buf[layer]
        if self._stepwise[layer]:
            return torch.stack(entries, 1)
        if all(e[3] is not None for e in entries):
            return self._layer_rows_lse(layer)
        key = self._keys[layer]
        assert key is not None
        n = len(entries)
        q = torch.cat([e[2] for e in entries], 2)  # (1, H, n, D)
        h, d = q.shape[1], q.shape[3]
        kv, t = key.shape[1], key.shape[2]
        g = h // kv
        q = q.reshape(1, kv, g * n, d)  # row r = head-in-group * n + token
        vals = self._table(key).rows(t)
        if any(e[1] is not None for e in entries):
            mask = self._causal_mask(entries, t, kv, g, key.device)
        elif (t, g, key.device) in self._mask_cache:  # the usual case: one mask for every layer of this pass
            mask = self._mask_cache[(t, g, key.device)]
        else:
            mask = self._mask_cache[(t, g, key.device)] = self._causal_mask(entries, t, kv, g, key.device)
        out = scaled_dot_product_attention(
            q, key, vals.expand(1, kv, t, vals.shape[1]), attn_mask=mask, scale=self._scale[layer]
        )
        return out.reshape(h, n, vals.shape[1])

    def _relevant(self, t: int, device: torch.device) -> torch.Tensor:
        """Key positions below ``t`` whose value rows are not zero: the image tokens and every key part's."""
        n = sum(len(p.positions) for p in self.parts)
        if self._rel is None or self._rel[0] != (device, n):
            parts = [torch.tensor(p.positions, dtype=torch.long) for p in self.parts if p.positions]
            self._rel = ((device, n), torch.cat([self.image_pos, *parts]).to(device))
        rel = self._rel[1]
        return rel[rel < t] if n else rel

    def _snapshot_keys(self, layer: int, key: torch.Tensor, t: int) -> None:
        """Copy the layer's keys at the relevant positions below ``t`` when positions have been added since."""
        pos = self._relevant(t, key.device)
        snap = self._relk[layer]
        if snap is None or snap[0].shape[0] != pos.shape[0]:
            self._relk[layer] = (pos, key[0].index_select(1, pos).float())  # (P,), (KV, P, D)

    def _layer_rows_lse(self, layer: int) -> torch.Tensor:
        """``(H, n, C)`` rows from the kernel's log-normalisers: each query against the relevant keys only.

        A row's mass on key ``j`` is ``exp(q . k_j * scale - lse)``; summed against the value
        rows of the image and key-part positions it is the same mass per region and part as the
        full pass, without reading the rest of the cache.
        """
        entries = self._buf[layer]
        snap = self._relk[layer]
        assert snap is not None
        pos, keys = snap  # (P,), (KV, P, D) float32
        n = len(entries)
        q = torch.cat([e[2] for e in entries], 2)[0].float()  # (H, n, D)
        h, d = q.shape[0], q.shape[2]
        kv = keys.shape[0]
        g = h // kv
        t = entries[-1][0]
        vals = self._table_for(keys.device, torch.float32).rows(t).index_select(0, pos)  # (P, C)
        q = q.reshape(kv, g * n, d)  # row r = head-in-group * n + token
        lse = torch.cat([e[3] for e in entries], 2).to(keys.device, torch.float32).reshape(kv, g, n, 1)  # (1, H, n)
        scale = self._scale[layer]
        s = torch.bmm(q, keys.transpose(1, 2)).mul_(scale if scale is not None else d**-0.5)
        s = s.view(kv, g, n, -1).sub_(lse)
        ends = [e[0] for e in entries]
        if pos.numel() and int(pos.max()) >= min(ends):  # a key part generated after some of these tokens
            late = pos[None, :] >= torch.tensor(ends, device=keys.device)[:, None]  # (n, P)
            s.masked_fill_(late, float("-inf"))
        for i, (_end, m, _, _) in enumerate(entries):
            if m is None:
                continue
            row = m[0, :, -1].index_select(-1, pos.clamp(max=m.shape[-1] - 1))  # (1 or H, P)
            row = row.reshape(kv, g, -1) if row.shape[0] == h else row.reshape(1, 1, -1)
            if row.dtype == torch.bool:
                s[:, :, i].masked_fill_(~row, float("-inf"))
            else:
                s[:, :, i].add_(row.float())
        p = s.exp_().view(kv, g * n, -1)
        out = torch.matmul(p, vals)  # (KV, G * n, C)
        return out.reshape(h, n, vals.shape[1])

    def _fused_rows(self, *, total: bool = False) -> torch.Tensor | None:
        """Every layer's rows in one pass, for the usual case: ``(L, H, n, C)``, or with ``total`` their sum
        over the buffered tokens, ``(L, H, C)``; ``None`` outside the usual case.

        The usual case: a model without key parts whose every layer took the kernel's normaliser at every
        buffered forward, with no mask, on one device, with one head layout. Each layer's relevant keys were
        copied once per capture, so the stacked keys (scaled by their layer's softmax scale) and their value
        rows are built once and reused; a pass is then a handful of batched operations for all layers
        instead of a handful per layer, and a span's total is summed before the product with the values.
        """
        if self.parts or self._unfusable:
            return None
        bufs = self._buf
        n = len(bufs[0])
        for layer, entries in enumerate(bufs):
            if self._stepwise[layer] or len(entries) != n or self._relk[layer] is None:
                return None
        fused = self._fused
        if fused is None:
            snaps = [snap for snap in self._relk if snap is not None]
            pos = snaps[0][0]
            if any(k.shape != snaps[0][1].shape or k.device != snaps[0][1].device for _, k in snaps):
                return None
            d = snaps[0][1].shape[2]
            scaled = [k * (sc if sc is not None else d**-0.5) for (_, k), sc in zip(snaps, self._scale, strict=True)]
            keys_t = torch.cat(scaled).transpose(1, 2).contiguous()  # (L * KV, D, P) float32
            vals = self._table_for(keys_t.device, torch.float32).rows(int(pos.max()) + 1).index_select(0, pos)
            fused = self._fused = (keys_t, vals)  # and (P, C)
        keys_t, vals = fused
        nl = self.n_layers
        lkv, d = keys_t.shape[0], keys_t.shape[1]
        q0 = bufs[0][0][2]
        h = q0.shape[1]
        if q0.shape[3] != d or q0.device != keys_t.device or (h * nl) % lkv:
            return None
        kv = lkv // nl
        g = h // kv
        # (1, H, L * n, D), layer-major -> (L, H, n, D) -> rows (L * KV, G * n, D): row r = head-in-group * n + token
        q = torch.cat([e[2] for entries in bufs for e in entries], 2)
        if q.dtype != torch.float32:  # (no call on the usual float32 path: every call here runs on cold caches)
            q = q.float()
        q = q.view(h, nl, n, d).transpose(0, 1).reshape(lkv, g * n, d)
        lse = torch.cat([e[3] for entries in bufs for e in entries], 2)  # (1, H, L*n)
        if lse.dtype != torch.float32 or lse.device != keys_t.device:
            lse = lse.to(keys_t.device, torch.float32)
        lse = lse.view(h, nl, n).transpose(0, 1).reshape(lkv, g * n, 1)
        p = torch.baddbmm(lse, q, keys_t, beta=-1).exp_()  # (L * KV, G * n, P): exp(q . k * scale - lse)
        if total:
            return torch.matmul(p.view(lkv, g, n, -1).sum(2), vals).view(nl, h, vals.shape[1])
        return torch.matmul(p, vals).view(nl, h, n, vals.shape[1])  # (L * KV, G * n, C) -> (L, H, n, C)

    def _causal_mask(self, entries: list[Any], t: int, kv: int, g: int, device: torch.device) -> torch.Tensor:
        """``(1, 1 or KV, G * n, T)`` boolean mask: token i sees keys before its own end, and its model mask."""
        n = len(entries)
        ends = torch.tensor([e[0] for e in entries], device=device)
        allowed = torch.arange(t, device=device)[None, :] < ends[:, None]  # (n, T)
        if all(e[1] is None for e in entries):
            return allowed.expand(g, n, t).reshape(1, 1, g * n, t)
        full = allowed.expand(kv, g, n, t).clone()
        for i, (end, m, _, _) in enumerate(entries):
            if m is None:
                continue
            row = m[0, :, -1, :end]
            if row.dtype != torch.bool:  # additive: 0 attends, a large negative value does not
                row = row > torch.finfo(row.dtype).min / 2
            full[:, :, i, :end] &= row[0] if row.shape[0] == 1 else row.reshape(kv, g, end)
        return full.reshape(1, kv, g * n, t)

    def _flush(self, *, count: bool) -> None:
        """Compute the buffered tokens' rows: add them to the open span (``count``) and keep them per token."""
        n = self._buffered
        if not n:
            return
        rows: torch.Tensor | None = None
        s: torch.Tensor | None = None
        if self._ext_buf:
            rows = torch.stack(self._ext_buf, 2)
            self._ext_buf = []
        elif count and not self.per_token:
            s = self._fused_rows(total=True)  # only the span's total is needed
        else:
            rows = self._fused_rows()
        if rows is None and s is None:
            self._mask_cache = {}
            per_layer = [self._layer_rows(i) for i in range(self.n_layers)]
            self._mask_cache = {}
            dev = per_layer[0].device
            rows = torch.stack([r.to(dev, torch.float32) for r in per_layer])  # (L, H, n, C)
        self._drop()
        if count:
            if s is None:
                assert rows is not None
                s = rows.sum(2)
            acc = self._span_sum
            if acc is None or acc.shape != s.shape or acc.device != s.device:
                self._span_sum = s  # kept, and reused by every later span (nothing new per flush)
            elif self._span_n == 0:
                acc.copy_(s)
            else:
                acc.add_(s)
            self._span_n += n
        if self.per_token:
            assert rows is not None
            self._token_rows.append(rows.permute(2, 0, 1, 3).cpu().numpy())

    def _drop(self) -> None:
        """Forget the buffered tokens (their rows are not needed)."""
        for entries in self._buf:
            entries.clear()
        self._ext_buf = []
        self._buffered = 0
        self._unfusable = False

    def push_row(self, row: torch.Tensor, parts: dict[str, torch.Tensor] | None = None) -> None:
        """Queue one step's ``(L, H, K)`` region row (and key-part rows) for the next token.

        For another backend (nnsight) that computes rows itself; the native backend records them
        from the attention function. ``row`` includes the alias parts' mass, as the native features do.
        A part missing from ``parts`` counts as zero.
        """
        parts = parts or {}
        out = torch.zeros(self.n_layers, self.n_heads, self._n_cols)
        direct = row.detach().float().cpu().clone()
        for p, col in zip(self.parts, self._part_cols, strict=True):
            r = parts.get(p.name)
            if r is None:
                continue
            r = r.detach().float().cpu()
            out[..., col] = r
            if p.aliases:
                direct -= r
        out[..., : self.k] = direct
        self._external.append(out)

    @property
    def streamer(self) -> TokenStreamer:
        """Pass as ``streamer=`` to ``model.generate``."""
        return TokenStreamer(self.push_token)

    def push_token(self, token_id: int) -> None:
        """One generated token: pairs it with its captured row and closes a span when it ends one.

        Raises:
            RuntimeError: If no attention row was captured for it (the capture is not active).
        """
        self.last_token_s = time.perf_counter()
        idx = len(self._generated)
        if self._external:
            self._ext_buf.append(self._external.popleft())
        elif self._forwards <= idx:
            raise RuntimeError("a token arrived without a captured attention row (is the capture active?)")
        self._generated.append(token_id)
        seg = self.segmenter
        if seg.closed:  # no span can complete any more
            if self.per_token:
                self._buffered += 1
                if self._buffered >= self.chunk:
                    self._flush(count=False)
            else:
                self._drop()
                self._discard = True
            return
        self._buffered += 1
        span = seg.push(token_id)
        if span is not None:
            self._flush(count=True)
            self._emit(span)
        elif seg.open_start == idx + 1:  # a think tag moved the span's start past this token
            if self.per_token:
                self._flush(count=False)
            else:
                self._drop()
            self._span_n = 0
            if seg.closed and not self.per_token:
                self._discard = True
        elif self._buffered >= self.chunk:
            self._flush(count=True)

    def _emit(self, span: Span) -> None:
        """Close the open span: its mean features move to the host, once."""
        if self._span_sum is None or self._span_n == 0:
            feats, span_parts = self._split(np.zeros((self.n_layers, self.n_heads, self._n_cols), dtype=np.float32))
        elif not self.parts and self._span_sum.device.type == "cpu" and self._span_sum.dtype == torch.float32:
            # (L, H, K) -> (K, L, H): a view of the sum and one division into a new array (three calls on a cold
            # path; the same float32 division as in torch)
            feats = np.divide(self._span_sum.numpy().transpose(2, 0, 1), self._span_n, order="C")
            span_parts = {}
        elif not self.parts:
            feats, span_parts = (self._span_sum / self._span_n).permute(2, 0, 1).contiguous().cpu().numpy(), {}
        else:
            feats, span_parts = self._split((self._span_sum / self._span_n).cpu().numpy())
        self._span_n = 0
        for name, a in span_parts.items():
            self._part_feats[name].append(a)
        self._spans.append(span)
        self._span_feats.append(feats)
        if self.on_span is not None:
            self.on_span(span, feats, span_parts)

    def _split(self, rows: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(..., L, H, C)`` -> features ``(..., K, L, H)`` (alias parts included) and each part's share."""
        if not self.parts:  # C = K
            return np.ascontiguousarray(np.moveaxis(rows, -1, -3), dtype=np.float32), {}
        total = rows[..., : self.k].copy()
        parts: dict[str, np.ndarray] = {}
        for p, col in zip(self.parts, self._part_cols, strict=True):
            a = rows[..., col]
            if p.aliases:
                total += a
                parts[p.name] = np.ascontiguousarray(np.moveaxis(a, -1, -3), dtype=np.float32)
            else:
                parts[p.name] = np.ascontiguousarray(a, dtype=np.float32)
        return np.ascontiguousarray(np.moveaxis(total, -1, -3), dtype=np.float32), parts

    def result(self) -> CaptureResult:
        """The captured features (an empty, valid result when no span completed)."""
        if self.per_token and self._buffered:
            self._flush(count=False)
        lhk = (self.k, self.n_layers, self.n_heads)
        feats = (
            np.stack(self._span_feats).astype(np.float32) if self._span_feats else np.zeros((0, *lhk), dtype=np.float32)
        )
        per_token = None
        parts: dict[str, np.ndarray] = {}
        per_token_parts: dict[str, np.ndarray] = {}
        if self.per_token:
            rows = (
                np.concatenate(self._token_rows)
                if self._token_rows
                else np.zeros((0, self.n_layers, self.n_heads, self._n_cols), dtype=np.float32)
            )
            per_token, per_token_parts = self._split(rows)
        for p in self.parts:
            shape = lhk if p.aliases else (self.n_layers, self.n_heads)
            fs = self._part_feats[p.name]
            parts[p.name] = np.stack(fs).astype(np.float32) if fs else np.zeros((0, *shape), dtype=np.float32)
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
