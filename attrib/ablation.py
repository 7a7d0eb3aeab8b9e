"""Causal ablation targets: the log-prob drop of each reasoning span when image regions are removed.

``Δ(S, V) = Σ_{t∈S} [log p(y_t | x, y_<t) − log p(y_t | ablate(x, V), y_<t)]``,
teacher-forced on the original trace: one forward pass per removal set V gives
Δ for every span at once, and many V share one batched forward.

Ablation modes (``ABLATION_MODES``):

- ``mask`` (default): the keys of the removed regions' image tokens are masked
  for every query in every language-model layer, through an explicit additive
  4-D attention mask. Position ids (Qwen's 3-D M-RoPE ids included) are those of
  the *unablated* input: they are read from the model's own unablated forward
  and passed explicitly, because zeroing ``attention_mask`` entries would shift
  them. The image is encoded once and reused for every V.
- ``mean``: the removed regions' image embeddings (vision output after the
  merger) are replaced by the mean image embedding of the image; no mask.
- ``repaint``: the removed regions' pixels are repainted with a baseline colour
  (the image's mean colour) and the image is re-encoded (Captum-style); this
  needs a pixel-level region map and an ``encode_image`` callable.

Every runner satisfies the [`Ablator`][attrib.ablation.Ablator] protocol; research variants bring
their own (see [`attrib.variants`][attrib.variants]), and the pipeline only uses the protocol.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch
from PIL import Image

from attrib.models.adapters import adapter_for

__all__ = [
    "ABLATION_MODES",
    "AblationRunner",
    "Ablator",
    "EmbeddingForward",
    "image_features",
    "loo_subsets",
    "random_subsets",
    "span_deltas",
]

logger = logging.getLogger(__name__)

AblationMode = Literal["mask", "mean", "repaint"]
ABLATION_MODES: tuple[str, ...] = ("mask", "mean", "repaint")


#: ``forward(image_embeddings (B, N, d)) -> (B, n_spans)`` summed span log-probs (for gradient baselines).
EmbeddingForward = Callable[[torch.Tensor], torch.Tensor]


class Ablator(Protocol):
    """Teacher-forced log-probs of a fixed trace under region removals: what the pipeline needs of a runner.

    Attributes:
        k: Number of regions.
    """

    k: int

    @property
    def base_logprobs(self) -> np.ndarray:
        """``(T,)`` unablated log-probs of the generated tokens."""
        ...

    def logprobs(self, removed: np.ndarray) -> np.ndarray:
        """``(M, T)`` log-probs under each ``(M, K)`` boolean removal set."""
        ...

    def deltas(self, removed: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
        """``(M, n_spans)`` Δ(S, V) for each removal set and span."""
        ...

    def embedding_forward(self, spans: Sequence[tuple[int, int]]) -> tuple[EmbeddingForward, torch.Tensor]:
        """A differentiable forward from image embeddings to span log-probs, and the unablated embeddings.

        Raises:
            ValueError: When the model's kind has no such path (the message says which baselines to leave out).
        """
        ...


def random_subsets(k: int, m: int = 32, *, p: float = 0.5, seed: int = 0) -> np.ndarray:
    """``(m, k)`` boolean removal sets: each region removed with probability ``p`` (seeded)."""
    if k < 1 or m < 1:
        raise ValueError(f"need k >= 1 and m >= 1, got k={k}, m={m}")
    rng = np.random.default_rng(seed)
    return rng.random((m, k)) < p


def loo_subsets(k: int) -> np.ndarray:
    """``(k, k)`` leave-one-out removal sets (row j removes region j)."""
    return np.eye(k, dtype=bool)


def span_deltas(base: np.ndarray, ablated: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Sum per-token log-prob drops over spans.

    Args:
        base: ``(T,)`` unablated log-probs of the generated tokens.
        ablated: ``(M, T)`` log-probs under each removal set.
        spans: ``(start, end)`` generated-token ranges.

    Returns:
        ``(M, n_spans)`` array of Δ(S, V).
    """
    drop = base[None, :] - ablated
    if not spans:
        return np.zeros((ablated.shape[0], 0))
    return np.stack([drop[:, s:e].sum(1) for s, e in spans], axis=1)


@dataclass
class _Prepared:
    full_ids: torch.Tensor  # (1, T)
    position_ids: torch.Tensor
    image_pos: torch.Tensor  # (N,)
    prompt_len: int
    lm_kwargs: dict[str, Any]
    #: ``(1, T, d)``: what the language model received in the unablated forward, when removed image tokens
    #: can simply be left out of the ablated forwards (see ``AblationRunner._compact_batch``); else ``None``.
    embeds: torch.Tensor | None = None


def _vision_kwargs(inner: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """The image inputs ``inner.get_image_features`` takes, by keyword (its other options keep their defaults)."""
    params = inspect.signature(inner.get_image_features).parameters
    kw: dict[str, Any] = {"pixel_values": inputs["pixel_values"]}
    for k in ("image_grid_thw", "image_sizes"):
        if k in params and inputs.get(k) is not None:
            kw[k] = inputs[k]
    return kw


def image_features(model: Any, inputs: dict[str, Any]) -> torch.Tensor:
    """``(N_image, d)`` image embeddings as the language model receives them (vision tower + projector), for
    every family.

    Args:
        model: A transformers VLM (``model.model.get_image_features``).
        inputs: Its inputs (``pixel_values`` and the family's grid inputs).
    """
    return _vision_outputs(model, inputs)[0]


def _flat(feats: Any) -> torch.Tensor:
    if isinstance(feats, (list, tuple)):
        feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats])
    return feats.reshape(-1, feats.shape[-1])  # type: ignore[no-any-return]


def _vision_outputs(model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """The image embeddings, and the deepstack features (Qwen3-VL: per deepstack layer, ``(N_image, d)``
    added to the hidden states of the image tokens in the first layers), ``None`` where the family has none."""
    inner = model.model
    out = inner.get_image_features(**_vision_kwargs(inner, inputs), return_dict=True)
    feats = getattr(out, "pooler_output", None)
    deep = getattr(out, "deepstack_features", None)
    return _flat(out if feats is None else feats), ([_flat(d) for d in deep] if deep else None)


class AblationRunner:
    """Teacher-forced log-probs of a fixed trace under region removals.

    Args:
        model: A supported VLM (see [`attrib.models.adapters`][attrib.models.adapters]).
        inputs: The prompt inputs (batch size 1) that produced the trace.
        generated_ids: The generated trace's token ids.
        assignment: ``(K, N_image)`` region -> image-token matrix (or a ``TokenAssignment``).
        mode: ``"mask"``, ``"mean"`` or ``"repaint"``.
        batch_size: Removal sets per forward pass.
        image: The original image (``repaint`` only).
        region_labels: ``(H, W)`` pixel region map (``repaint`` only).
        encode_image: ``image -> inputs`` for the same prompt (``repaint`` only).
        compact: In ``mask`` mode, leave removed image tokens out of the ablated sequences where that is
            exact (their keys are masked for every query, so their rows change nothing): faster, same
            log-probs. ``False`` keeps them in, masked. Families whose image features also enter deeper
            layers or whose image block attends bidirectionally always keep them.

    Raises:
        ValueError: For an unknown mode, a batch size below 1, an assignment that
            does not match the image tokens, or missing ``repaint`` arguments.
    """

    def __init__(
        self,
        model: Any,
        inputs: dict[str, Any],
        generated_ids: Sequence[int],
        assignment: Any,
        *,
        mode: str = "mask",
        batch_size: int = 8,
        image: Image.Image | None = None,
        region_labels: np.ndarray | None = None,
        encode_image: Callable[[Image.Image], dict[str, Any]] | None = None,
        compact: bool = True,
    ) -> None:
        if mode not in ABLATION_MODES:
            raise ValueError(f"unknown ablation mode {mode!r}; choose one of {ABLATION_MODES}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if mode == "repaint" and (image is None or region_labels is None or encode_image is None):
            raise ValueError("mode='repaint' needs image=, region_labels= and encode_image=")
        if mode == "mean" and not adapter_for(model).encode_once:
            raise ValueError(
                f"mode='mean' is not supported for {adapter_for(model).family}: its vision features also enter "
                "deeper layers (deepstack) or are not exposed per token; use mode='mask' or 'repaint'"
            )
        if len(generated_ids) == 0:
            raise ValueError("the trace is empty: nothing to score")
        self.model = model
        self.adapter = adapter_for(model)
        self.inputs = inputs
        self.generated = torch.tensor(list(generated_ids), dtype=torch.long)
        m = np.asarray(getattr(assignment, "matrix", assignment), dtype=np.float32)
        self.assign = torch.from_numpy(m)
        self.mode = mode
        self.batch_size = batch_size
        self.image = image
        self.region_labels = region_labels
        self.encode_image = encode_image
        self.compact = compact
        self._base: np.ndarray | None = None
        self.prep = self._prepare()
        if m.shape[1] != self.prep.image_pos.numel():
            raise ValueError(
                f"region assignment has {m.shape[1]} token columns, the image has {self.prep.image_pos.numel()} "
                "visual tokens"
            )
        if int(self.prep.image_pos.min()) == 0:
            raise ValueError("the prompt must hold at least one token before the image (ablated rows need a key)")
        self.k = m.shape[0]

    # ------------------------------------------------------------ preparation
    def _prepare(self) -> _Prepared:
        model, x = self.model, self.inputs
        ids = x["input_ids"]
        if ids.shape[0] != 1:
            raise ValueError(f"ablation supports batch size 1 inputs, got {ids.shape[0]}")
        gen = self.generated.to(ids.device)[None]
        full = torch.cat([ids, gen], 1)
        extra = self._extend_types(x, gen)
        captured: dict[str, Any] = {}

        def grab(_mod: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured["position_ids"] = kwargs.get("position_ids")
            captured["inputs_embeds"] = kwargs.get("inputs_embeds")
            # Image features that also enter deeper layers (Qwen3-VL's deepstack) pin the image tokens in place.
            captured["deep"] = any(v is not None for k, v in kwargs.items() if k.startswith(("deepstack", "visual_")))

        lm = self._language_model()
        handle = lm.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with torch.inference_mode():
                out = model(
                    input_ids=full, attention_mask=torch.ones_like(full), **extra, logits_to_keep=gen.shape[1] + 1
                )
        finally:
            handle.remove()
        pos = captured.get("position_ids")
        if pos is None:
            pos = torch.arange(full.shape[1], device=full.device)[None]
        image_pos = torch.nonzero(ids[0] == self.adapter.image_token_id(model)).flatten()
        self._base = self._token_logprobs(out.logits, gen)[0]
        lm_kwargs = self._encoded_kwargs(extra)
        embeds = captured.get("inputs_embeds")
        compact = (
            self.compact
            and self.mode == "mask"
            and isinstance(embeds, torch.Tensor)
            and embeds.shape[:2] == full.shape
            and not captured.get("deep")
            and not self.adapter.bidirectional_image
            and image_pos.numel() > 0
            and int(image_pos.max()) < ids.shape[1] - 1  # the last prompt token (it predicts y_1) is text
        )
        return _Prepared(full, pos, image_pos, ids.shape[1], lm_kwargs, embeds if compact else None)

    def _extend_types(self, x: dict[str, Any], gen: torch.Tensor) -> dict[str, Any]:
        """The non-id inputs, with the family's token-type input extended over the trace (zeros: text)."""
        key = self.adapter.token_type_key
        extra = {k: v for k, v in x.items() if k not in ("input_ids", "attention_mask") and k != key}
        if key is not None and key in x:
            extra[key] = torch.cat([x[key], torch.zeros_like(gen)], 1)
        return extra

    def _language_model(self) -> torch.nn.Module:
        obj = self.model
        for part in self.adapter.layers_path.split(".")[:-1]:
            obj = getattr(obj, part)
        return obj

    def _encoded_kwargs(self, extra: dict[str, Any]) -> dict[str, Any]:
        """Vision inputs for a batched forward: encode once where the model accepts ``mm_encoder_outputs``."""
        if not self.adapter.encode_once:
            return dict(extra)
        fwd = inspect.signature(self.model.model.forward).parameters
        if "mm_encoder_outputs" in fwd and "pixel_values" in extra:
            with torch.inference_mode():
                enc = self.model.model.get_image_features(**_vision_kwargs(self.model.model, extra), return_dict=True)
            rest = {k: v for k, v in extra.items() if k not in ("pixel_values",)}
            return {**rest, "_encoded": enc}
        return dict(extra)

    @staticmethod
    def _token_logprobs(logits: torch.Tensor, gen: torch.Tensor) -> np.ndarray:
        # logits cover positions prompt_len-1 .. T-1; the last one predicts beyond the trace.
        lp = torch.log_softmax(logits[:, :-1, :].float(), dim=-1)
        tgt = gen.expand(lp.shape[0], -1)
        return lp.gather(-1, tgt[..., None])[..., 0].cpu().numpy().astype(np.float64)

    @property
    def base_logprobs(self) -> np.ndarray:
        """``(T,)`` unablated log-probs of the generated tokens."""
        assert self._base is not None
        return self._base

    def embedding_forward(self, spans: Sequence[tuple[int, int]]) -> tuple[EmbeddingForward, torch.Tensor]:
        """A differentiable forward from image embeddings to each span's summed log-prob.

        The image embeddings (vision output after the merger) are placed at the
        image positions of the full trace, with the unablated position ids.

        Returns:
            ``(forward, embeddings)``: ``forward(img (B, N, d)) -> (B, n_spans)``, and the
            unablated ``(1, N, d)`` image embeddings.
        """
        p = self.prep
        inner = self.model.model
        with torch.no_grad():
            base = inner.get_input_embeddings()(p.full_ids).detach()
            flat, deep = _vision_outputs(self.model, self.inputs)
            feats = flat.reshape(1, -1, base.shape[-1]).detach()
        gen = self.generated.to(base.device)
        t_prompt = p.prompt_len
        span_list = list(spans)
        model = self.model
        key = self.adapter.token_type_key
        types = p.lm_kwargs.get(key) if key is not None and self.adapter.bidirectional_image else None

        def forward(img: torch.Tensor) -> torch.Tensor:
            b = img.shape[0]
            emb = base.expand(b, -1, -1).clone()
            emb[:, p.image_pos] = img.to(emb.dtype)
            pos = p.position_ids.expand(*p.position_ids.shape[:-2], b, p.position_ids.shape[-1])
            mask = torch.ones(b, emb.shape[1], device=emb.device)
            if deep is not None:
                # Deepstack features (held at their unablated values) enter the first layers at the image
                # positions, as in the model's own forward; the gradient is taken through the embeddings.
                vis = torch.zeros(b, emb.shape[1], dtype=torch.bool, device=emb.device)
                vis[:, p.image_pos] = True
                hidden = inner.language_model(
                    inputs_embeds=emb,
                    position_ids=pos,
                    attention_mask=mask,
                    visual_pos_masks=vis,
                    deepstack_visual_embeds=[d.to(emb.dtype).repeat(b, 1) for d in deep],
                ).last_hidden_state
                logits = model.lm_head(hidden)
            else:
                extra: dict[str, Any] = {} if types is None or key is None else {key: types.expand(b, -1)}
                logits = model(inputs_embeds=emb, position_ids=pos, attention_mask=mask, **extra).logits
            lp = torch.log_softmax(logits[:, t_prompt - 1 : -1].float(), -1)
            tok = lp.gather(-1, gen.expand(b, -1)[..., None])[..., 0]
            return torch.stack([tok[:, s:e].sum(1) for s, e in span_list], 1)

        return forward, feats

    # ------------------------------------------------------------ ablated forwards
    def logprobs(self, removed: np.ndarray) -> np.ndarray:
        """``(M, T)`` log-probs of the trace under each removal set.

        Args:
            removed: ``(M, K)`` boolean, True = region removed.

        Raises:
            ValueError: If ``removed`` does not have K columns.
        """
        rem = np.asarray(removed, dtype=bool)
        if rem.ndim != 2 or rem.shape[1] != self.k:
            raise ValueError(f"removal sets must have shape (M, {self.k}), got {rem.shape}")
        if not rem.shape[0]:
            return np.zeros((0, self.generated.numel()))
        order = np.arange(rem.shape[0])
        if self.prep.embeds is not None:  # sets that remove as many tokens share a batch (less padding)
            order = np.argsort(self._token_mask(rem).sum(1).numpy(), kind="stable")
        bs = self.batch_size
        outs = np.concatenate([np.asarray(self._batch(rem[order[i : i + bs]])) for i in range(0, len(order), bs)], 0)
        res = np.empty_like(outs)
        res[order] = outs
        return res

    def deltas(self, removed: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
        """``(M, n_spans)`` Δ(S, V) for each removal set and span."""
        return span_deltas(self.base_logprobs, self.logprobs(removed), spans)

    def _token_mask(self, rem: np.ndarray) -> torch.Tensor:
        """``(B, N_image)`` True where the image token belongs (with weight > 0) to a removed region."""
        r = torch.from_numpy(rem.astype(np.float32))
        return (r @ self.assign) > 0

    def full_logits(self, removed: np.ndarray) -> torch.Tensor:
        """``(M, T_full, V)`` logits at every position of prompt + trace (for checks; memory-heavy)."""
        rem = np.asarray(removed, dtype=bool)
        return self._batch(rem, keep_all=True)  # type: ignore[return-value]

    def _batch(self, rem: np.ndarray, keep_all: bool = False) -> np.ndarray | torch.Tensor:
        if self.mode == "repaint":
            if keep_all:
                raise ValueError("full_logits is not available for mode='repaint'")
            return np.stack([self._repaint_one(r) for r in rem])
        if self.prep.embeds is not None and not keep_all:
            return self._compact_batch(rem)
        p = self.prep
        b = rem.shape[0]
        t = p.full_ids.shape[1]
        dev = p.full_ids.device
        ids = p.full_ids.expand(b, -1)
        kw = dict(p.lm_kwargs)
        enc = kw.pop("_encoded", None)
        pos = p.position_ids.expand(*p.position_ids.shape[:-2], b, t)
        tok_removed = self._token_mask(rem).to(dev)
        keep = 0 if keep_all else self.generated.numel() + 1
        call: dict[str, Any] = {"input_ids": ids, "position_ids": pos, "logits_to_keep": keep}
        key = self.adapter.token_type_key
        if key is not None and key in kw:
            kw[key] = kw[key].expand(b, -1)
        if enc is not None:
            pooled = enc.pooler_output
            enc_b = copy.copy(enc)
            enc_b.pooler_output = list(pooled) * b if isinstance(pooled, (list, tuple)) else [pooled] * b
            kw["mm_encoder_outputs"] = {"image": enc_b}
            kw["image_grid_thw"] = kw["image_grid_thw"].repeat(b, 1) if "image_grid_thw" in kw else None
        else:
            if "pixel_values" in kw:
                pv = kw["pixel_values"]
                kw["pixel_values"] = pv.repeat(b, *([1] * (pv.ndim - 1)))
            if "image_grid_thw" in kw:
                kw["image_grid_thw"] = kw["image_grid_thw"].repeat(b, 1)
        kw = {k: v for k, v in kw.items() if v is not None}
        if self.mode == "mask":
            dtype = next(self.model.parameters()).dtype
            base = torch.ones(t, t, dtype=torch.bool, device=dev).tril()
            if self.adapter.bidirectional_image:  # the image block attends both ways, as in the model's own mask
                ip = p.image_pos.to(dev)
                base[ip[:, None], ip[None, :]] = True
            allowed = base[None].repeat(b, 1, 1)
            key_removed = torch.zeros(b, t, dtype=torch.bool, device=dev)
            key_removed[:, p.image_pos] = tok_removed
            allowed &= ~key_removed[:, None, :]
            mask = torch.zeros(b, 1, t, t, dtype=dtype, device=dev)
            mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
            call["attention_mask"] = mask
        else:  # mean: replace removed image embeddings by the image's mean embedding
            call["attention_mask"] = torch.ones(b, t, dtype=torch.long, device=dev)
            call["inputs_embeds"] = self._mean_embeds(ids, kw, enc, tok_removed)
            call.pop("input_ids")
            kw.pop("pixel_values", None)
            kw.pop("mm_encoder_outputs", None)
        with torch.inference_mode():
            out = self.model(**call, **kw)
        if keep_all:
            return out.logits
        return self._token_logprobs(out.logits, self.generated.to(dev)[None])

    def _compact_batch(self, rem: np.ndarray) -> np.ndarray:
        """Mask mode with the removed image tokens left out of the sequence.

        A token whose key is masked for every query in every layer contributes nothing to any other
        position, so leaving it out gives the masked forward's log-probs without computing its rows.
        Each removal set's sequence keeps the unablated position ids and the language model's unablated
        input embeddings. Rows are right-padded to one length: every real token comes before every pad,
        so the model's own causal mask is the whole mask (no 4-D mask is built, and SDPA runs its causal
        kernel), and each row's trace logits are read at its own offset.
        """
        p = self.prep
        assert p.embeds is not None
        b, t = rem.shape[0], p.full_ids.shape[1]
        dev = p.embeds.device
        keep = torch.ones(b, t, dtype=torch.bool)
        keep[:, p.image_pos.cpu()] = ~self._token_mask(rem)
        counts = keep.sum(1)
        width, low = int(counts.max()), int(counts.min())
        index = torch.full((b, width), t, dtype=torch.long)  # index t: the pad (a zero embedding)
        rows, cols = keep.nonzero(as_tuple=True)
        index[rows, (keep.cumsum(1) - 1)[rows, cols]] = cols
        index = index.to(dev)
        emb = torch.cat([p.embeds[0], p.embeds.new_zeros(1, p.embeds.shape[-1])])[index]
        pos = p.position_ids[..., 0, :]
        pos = torch.cat([pos, pos.new_zeros(*pos.shape[:-1], 1)], -1)[..., index]
        n = self.generated.numel()
        # Row r's trace logits sit at positions counts[r] - n - 1 .. counts[r] - 1; the kept logits start at
        # width - (n + 1 + width - low) = low - n - 1.
        keep_logits = n + 1 + width - low
        with torch.inference_mode():
            out = self.model(inputs_embeds=emb, position_ids=pos, logits_to_keep=keep_logits)
        start = (counts - low).to(dev)
        offs = start[:, None] + torch.arange(n + 1, device=dev)[None]
        logits = out.logits.gather(1, offs[..., None].expand(-1, -1, out.logits.shape[-1]))
        return self._token_logprobs(logits, self.generated.to(dev)[None])

    def _mean_embeds(self, ids: torch.Tensor, kw: dict[str, Any], enc: Any, tok_removed: torch.Tensor) -> torch.Tensor:
        inner = self.model.model
        emb = inner.get_input_embeddings()(ids).clone()
        if enc is not None:
            feats = enc.pooler_output[0] if isinstance(enc.pooler_output, (list, tuple)) else enc.pooler_output
        else:
            with torch.inference_mode():
                feats = image_features(self.model, self.inputs)
        feats = feats.reshape(-1, emb.shape[-1]).to(emb.dtype)
        mean = feats.mean(0)
        pos = self.prep.image_pos
        for i in range(ids.shape[0]):
            rows = feats.clone()
            rows[tok_removed[i]] = mean
            emb[i, pos] = rows
        return emb

    def _repaint_one(self, removed: np.ndarray) -> np.ndarray:
        assert self.image is not None and self.region_labels is not None and self.encode_image is not None
        arr = np.asarray(self.image.convert("RGB")).copy()
        fill = arr.reshape(-1, 3).mean(0).astype(np.uint8)
        arr[np.isin(self.region_labels, np.nonzero(removed)[0])] = fill
        x = self.encode_image(Image.fromarray(arr))
        gen = self.generated[None]
        full = torch.cat([x["input_ids"], gen], 1)
        extra = self._extend_types(x, gen)
        with torch.inference_mode():
            out = self.model(
                input_ids=full, attention_mask=torch.ones_like(full), **extra, logits_to_keep=gen.shape[1] + 1
            )
        return self._token_logprobs(out.logits, gen)[0]
