"""Attribution through copy tokens, for v1 point-and-copy models.

A copy token is an **alias of its source image token**, and so of that token's
regions:

* **Capture** ([`capture`][attrib.variants.base.VariantModel.capture] of a
  [`PointCopyModel`][attrib.variants.pointcopy.model.PointCopyModel]). Attention from a
  generated token to a copy token counts for the regions of the copied image
  token, exactly as attention to the image token itself would. Per span, the
  features are the sum of the *direct* part (attention to image tokens) and the
  *via-copy* part (attention to copies): the capture's ``via_copy`` key part
  ([`copy_features`][attrib.capture.sdpa.CaptureResult.copy_features]), whose share is
  [`copy_share`][attrib.capture.sdpa.CaptureResult.copy_share].
* **Ablation.** Removing a region removes its copies as well:

  - ``mean`` (the default here): the removed image tokens' embeddings are
    replaced by the image's mean embedding **at their image positions and at
    every copy of them**, so a copy token of a removed patch carries the mean
    embedding; the pointer's keys (hidden states at image positions, or the
    image embeddings) change with them;
  - ``mask``: the removed image tokens **and the copy tokens of removed
    patches** are masked as attention keys for every query. The pointer head
    still scores removed patches (its keys are the hidden states at their image
    positions), so ``mask`` removes the attention paths, not the pointer's
    targets.

  The log-probability of a copy token is that of its joint outcome
  ``V + source`` under the model's joint distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from attrib.ablation import EmbeddingForward, span_deltas
from attrib.variants.pointcopy.model import PointCopyModel

__all__ = ["PointCopyAblation"]


class PointCopyAblation:
    """Teacher-forced joint log-probs of a fixed v1 trace under region removals.

    The same interface as [`AblationRunner`][attrib.ablation.AblationRunner] (``base_logprobs``,
    ``logprobs``, ``deltas``), with the copy semantics of the module docstring.

    Args:
        model: The point-and-copy model.
        inputs: The prompt inputs (batch size 1).
        generated_ids: Generated ids (``<|copy|>`` at copies).
        copy_sources: Copied image token per generated token (``-1`` for text).
        assignment: ``(K, N_image)`` region -> image-token matrix.
        mode: ``"mean"`` (default) or ``"mask"``.
        batch_size: Removal sets per forward pass.

    Raises:
        ValueError: For an unknown mode, an empty trace, lengths that disagree, or an
            assignment that does not match the image tokens.
    """

    def __init__(
        self,
        model: PointCopyModel,
        inputs: dict[str, Any],
        generated_ids: Sequence[int],
        copy_sources: Sequence[int],
        assignment: Any,
        *,
        mode: str = "mean",
        batch_size: int = 8,
    ) -> None:
        if mode not in ("mean", "mask"):
            raise ValueError(f"point-and-copy ablation supports mode 'mean' or 'mask', got {mode!r}")
        if not generated_ids:
            raise ValueError("the trace is empty: nothing to score")
        if len(generated_ids) != len(copy_sources):
            raise ValueError(f"{len(generated_ids)} generated ids but {len(copy_sources)} copy sources")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        ids = inputs["input_ids"]
        if ids.shape[0] != 1:
            raise ValueError(f"ablation supports batch size 1 inputs, got {ids.shape[0]}")
        self.model = model
        self.mode = mode
        self.batch_size = batch_size
        gen = torch.tensor(list(generated_ids), dtype=torch.long)[None]
        src = torch.tensor(list(copy_sources), dtype=torch.long)[None]
        self.full_ids = torch.cat([ids, gen], 1)
        self.copy_src = torch.cat([torch.full_like(ids, -1), src], 1)
        self.prompt_len = int(ids.shape[1])
        self.grid = inputs["image_grid_thw"]
        mm = inputs.get("mm_token_type_ids")
        mm_full = torch.cat([mm, torch.zeros_like(gen)], 1) if mm is not None else None
        if mm_full is None:
            mm_full = (self.full_ids == model.image_token_id).long()
        # the unablated input's M-RoPE positions, shared by every removal set
        self.position_ids = model.position_ids(self.full_ids, mm_full, self.grid, torch.ones_like(self.full_ids))
        with torch.inference_mode():
            self.image_embeds = model.image_embeddings(inputs["pixel_values"], self.grid)
        self.image_pos = torch.nonzero(ids[0] == model.image_token_id).flatten()
        m = np.asarray(getattr(assignment, "matrix", assignment), dtype=np.float32)
        if m.ndim != 2 or m.shape[1] != self.image_pos.numel():
            raise ValueError(
                f"region assignment has shape {m.shape}, the image has {self.image_pos.numel()} visual tokens"
            )
        self.assign = torch.from_numpy(m)
        self.k = m.shape[0]
        v = model.n_vocab
        self.targets = torch.where(src[0] >= 0, v + src[0].clamp(min=0), gen[0])
        self._base = self._score(np.zeros((1, self.k), dtype=bool))[0]

    @property
    def base_logprobs(self) -> np.ndarray:
        """``(T,)`` unablated joint log-probs of the generated tokens."""
        return self._base

    def logprobs(self, removed: np.ndarray) -> np.ndarray:
        """``(M, T)`` joint log-probs under each removal set (``(M, K)`` boolean).

        Raises:
            ValueError: If ``removed`` does not have K columns.
        """
        rem = np.asarray(removed, dtype=bool)
        if rem.ndim != 2 or rem.shape[1] != self.k:
            raise ValueError(f"removal sets must have shape (M, {self.k}), got {rem.shape}")
        outs = [self._score(rem[i : i + self.batch_size]) for i in range(0, rem.shape[0], self.batch_size)]
        return np.concatenate(outs, 0) if outs else np.zeros((0, self.targets.numel()))

    def deltas(self, removed: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
        """``(M, n_spans)`` Δ(S, V) for each removal set and span."""
        return span_deltas(self.base_logprobs, self.logprobs(removed), spans)

    def embedding_forward(self, spans: Sequence[tuple[int, int]]) -> tuple[EmbeddingForward, torch.Tensor]:
        """Not available: a copy token's input is an image embedding too, so a gradient path must follow copies.

        Raises:
            ValueError: Always (leave the gradient baselines out of ``--methods``).
        """
        raise ValueError(
            "gradient baselines are not implemented for point-and-copy models; "
            "leave input_x_gradient and integrated_gradients out of --methods"
        )

    def token_removed(self, removed: np.ndarray) -> torch.Tensor:
        """``(M, N_image)`` True where an image token belongs to a removed region."""
        r = torch.from_numpy(np.asarray(removed, dtype=np.float32))
        return (r @ self.assign) > 0

    def _row_embeddings(self, tok_removed: torch.Tensor) -> torch.Tensor:
        """Image embeddings of every row, stacked ``(M * N, d)``: removed ones replaced in ``mean`` mode."""
        b = tok_removed.shape[0]
        feats = self.image_embeds[None].repeat(b, 1, 1)
        if self.mode == "mean":
            feats[tok_removed] = self.image_embeds.mean(0)
        return feats.reshape(-1, feats.shape[-1])

    def ablated_inputs(self, removed: np.ndarray) -> torch.Tensor:
        """``(M, T, d)`` input embeddings under each removal set (copies carry their source's embedding)."""
        tok_removed = self.token_removed(removed)
        b = tok_removed.shape[0]
        return self.model.embed(
            self.full_ids.expand(b, -1), self.copy_src.expand(b, -1), self._row_embeddings(tok_removed)
        )

    def _score(self, rem: np.ndarray) -> np.ndarray:
        pc = self.model
        b = rem.shape[0]
        t = self.full_ids.shape[1]
        ids = self.full_ids.expand(b, -1)
        src = self.copy_src.expand(b, -1)
        tok_removed = self.token_removed(rem)
        with torch.inference_mode():
            feats = self._row_embeddings(tok_removed)
            emb = pc.embed(ids, src, feats)
            attention_mask: torch.Tensor
            if self.mode == "mean":
                attention_mask = torch.ones(b, t, dtype=torch.long)
            else:
                key_removed = torch.zeros(b, t, dtype=torch.bool)
                key_removed[:, self.image_pos] = tok_removed
                key_removed |= (src >= 0) & torch.gather(tok_removed, 1, src.clamp(min=0))
                allowed = torch.ones(t, t, dtype=torch.bool).tril()[None].repeat(b, 1, 1) & ~key_removed[:, None, :]
                attention_mask = torch.zeros(b, 1, t, t, dtype=emb.dtype)
                attention_mask.masked_fill_(~allowed[:, None], torch.finfo(emb.dtype).min)
            pos = self.position_ids.expand(-1, b, -1)
            hidden = pc.base.model.language_model(
                inputs_embeds=emb, position_ids=pos, attention_mask=attention_mask, use_cache=False
            ).last_hidden_state
            keys, valid = pc._keys(ids, hidden, feats)
            logits = pc._joint(hidden[:, self.prompt_len - 1 : -1], keys, valid)
            lp = torch.log_softmax(logits.float(), dim=-1)
            tgt = self.targets[None, :, None].expand(b, -1, 1)
            return lp.gather(-1, tgt)[..., 0].numpy().astype(np.float64)
