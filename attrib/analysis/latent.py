"""How much of a span's attribution flows through latent tokens rather than directly to the image.

Per span, with region features ``features`` ``(K, L, H)`` (the direct part) and
the attention mass on latent positions ``latent`` ``(L, H)`` (the ``"latent"``
key part of a latent model's capture), the latent share is

    share = Σ_lh w_lh · latent[l, h] / (Σ_lh w_lh · latent[l, h] + Σ_lh w_lh · Σ_k features[k, l, h])

with ``w`` the estimator's ``(L, H)`` weights (negative weights clipped to 0, so
the share stays in [0, 1]), or uniform weights without an estimator.
"""

from __future__ import annotations

import numpy as np

__all__ = ["latent_share"]


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
