"""Capture through latent tokens: how much of a span's attribution flows through latents vs the image.

Latent tokens are a token type of their own in capture. A latent is a
continuous vector the model computed from its own context, not an alias of an
image token (unlike a v1 copy token), so attention to it is kept apart rather
than credited to a region:

* ``features`` (``(n_spans, K, L, H)``): as for every model, the span-mean
  attention mass each layer's heads put on each image region (the *direct* part);
* ``latent`` (``(n_spans, L, H)``): the span-mean attention mass on all latent
  positions so far.

Per span, the latent share is

    share = Σ_lh w_lh · latent[l, h] / (Σ_lh w_lh · latent[l, h] + Σ_lh w_lh · Σ_k features[k, l, h])

with ``w`` the estimator's ``(L, H)`` weights (negative weights clipped to 0, so
the share stays in [0, 1]), or uniform weights without an estimator: the share
of the estimator-weighted attribution mass that goes through latents rather
than directly to image tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from attrib.capture import AttentionCapture, CaptureResult
from attrib.latent import LatentGeneration, LatentModel

__all__ = ["LatentCapture", "capture_latent", "latent_share"]


class LatentCapture(AttentionCapture):
    """:class:`~attrib.capture.AttentionCapture` that also records attention to latent positions.

    Args:
        model: The latent model's base (``LatentModel.base``).
        inputs: Prompt inputs (batch 1).
        assignment: ``(K, N_image)`` region -> image-token matrix.
        latent_positions: Returns the sequence positions of the latent tokens so far.
        **kwargs: Passed to :class:`~attrib.capture.AttentionCapture`.
    """

    def __init__(
        self,
        model: Any,
        inputs: dict[str, Any],
        assignment: Any,
        *,
        latent_positions: Callable[[], list[int]],
        **kwargs: Any,
    ) -> None:
        self._latent_positions = latent_positions
        super().__init__(model, inputs, assignment, **kwargs)

    def __enter__(self) -> LatentCapture:
        super().__enter__()
        return self

    def _reset_buffers(self) -> None:
        super()._reset_buffers()
        self._lat_step = torch.zeros(self.n_layers, self.n_heads)
        self._lat_pending: list[torch.Tensor] = []
        self._lat_sum = torch.zeros(self.n_layers, self.n_heads, dtype=torch.float64)
        self._lat_n = 0
        self._lat_feats: list[np.ndarray] = []

    def _record_extra(self, layer: int, probs: torch.Tensor) -> None:
        pos = [p for p in self._latent_positions() if p < probs.shape[1]]
        if pos:
            self._lat_step[layer] = probs[:, torch.tensor(pos, device=probs.device)].sum(-1).cpu()
        else:
            self._lat_step[layer] = 0.0

    def _row_complete(self) -> None:
        self._lat_pending.append(self._lat_step.clone())

    def _on_token(self, token_id: int) -> None:
        lat = self._lat_pending.pop(0) if self._lat_pending else torch.zeros(self.n_layers, self.n_heads)
        idx = len(self._generated)
        if idx >= self.segmenter.open_start:
            self._lat_sum += lat.double()
            self._lat_n += 1
        n_spans = len(self._spans)
        super()._on_token(token_id)
        if len(self._spans) > n_spans:
            self._lat_feats.append((self._lat_sum / max(1, self._lat_n)).float().numpy())
        if self.segmenter.open_start == idx + 1:
            self._lat_sum.zero_()
            self._lat_n = 0

    def latent_features(self) -> np.ndarray:
        """``(n_spans, L, H)`` span-mean attention mass on latent positions."""
        if not self._lat_feats:
            return np.zeros((0, self.n_layers, self.n_heads), dtype=np.float32)
        return np.stack(self._lat_feats).astype(np.float32)


@dataclass
class LatentCaptureResult:
    """What :func:`capture_latent` returns.

    Attributes:
        capture: The region capture (direct part) of the generation.
        latent: ``(n_spans, L, H)`` span-mean attention mass on latent tokens.
        generation: The latent model's generation.
    """

    capture: CaptureResult
    latent: np.ndarray
    generation: LatentGeneration

    def share(self, weights: np.ndarray | None = None) -> np.ndarray:
        """Per span, the share of attribution through latents (see :func:`latent_share`)."""
        return latent_share(self.capture.features, self.latent, weights)


def latent_share(features: np.ndarray, latent: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Per span, the estimator-weighted share of attention mass on latents vs image regions.

    Args:
        features: ``(S, K, L, H)`` region features (direct part).
        latent: ``(S, L, H)`` attention mass on latent tokens.
        weights: ``(L, H)`` estimator weights (negatives clipped to 0); uniform when ``None``.

    Returns:
        ``(S,)`` shares in [0, 1] (0 where a span has no mass at all).

    Raises:
        ValueError: If shapes disagree.
    """
    f = np.asarray(features, dtype=np.float64)
    lat = np.asarray(latent, dtype=np.float64)
    if f.ndim != 4 or lat.shape != (f.shape[0], f.shape[2], f.shape[3]):
        raise ValueError(f"features {f.shape} and latent {lat.shape} disagree (want (S,K,L,H) and (S,L,H))")
    w = np.ones(f.shape[2:]) if weights is None else np.clip(np.asarray(weights, dtype=np.float64), 0, None)
    if w.shape != f.shape[2:]:
        raise ValueError(f"weights {w.shape} do not match (L, H) = {f.shape[2:]}")
    via = (lat * w).sum(axis=(1, 2))
    direct = (f.sum(axis=1) * w).sum(axis=(1, 2))
    total = via + direct
    return np.divide(via, total, out=np.zeros_like(via), where=total > 0)


def capture_latent(
    model: LatentModel,
    inputs: dict[str, Any],
    assignment: Any,
    *,
    decode: Callable[[list[int]], str],
    max_new_tokens: int = 256,
    eos_token_id: int | None = None,
    intervene: Any = None,
) -> LatentCaptureResult:
    """Generate greedily with a latent model, capturing region attention and attention to latents.

    Args:
        model: The latent model.
        inputs: Prompt inputs (batch size 1).
        assignment: ``(K, N_image)`` region -> image-token matrix.
        decode: Token ids -> text, special tokens kept.
        max_new_tokens: Generation budget.
        eos_token_id: Stop id (default: the model config's).
        intervene: Passed to :meth:`LatentModel.generate`.
    """
    prompt_len = int(inputs["input_ids"].shape[1])
    positions: list[int] = []
    with LatentCapture(model.base, inputs, assignment, decode=decode, latent_positions=lambda: positions) as cap:
        count = [0]

        def on_token(_row: int, token: int) -> None:
            cap._on_token(token)
            if token == model.latent_id:
                positions.append(prompt_len + count[0])
            count[0] += 1

        gen = model.generate(
            inputs["input_ids"],
            inputs.get("attention_mask"),
            inputs.get("mm_token_type_ids"),
            inputs.get("pixel_values"),
            inputs.get("image_grid_thw"),
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
            on_token=on_token,
            intervene=intervene,
        )
        lat = cap.latent_features()
    return LatentCaptureResult(cap.result(), lat, gen)
