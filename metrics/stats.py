"""Confidence intervals."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["bootstrap_ci", "mean_ci"]


def bootstrap_ci(
    values: np.ndarray | list[float],
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``statistic`` over ``values``.

    Args:
        values: 1-D sample.
        statistic: Reduces a resampled array to a number.
        n_boot: Bootstrap resamples.
        level: Coverage, in (0, 1).
        seed: Resampling seed.

    Returns:
        ``(low, high)``.

    Raises:
        ValueError: On an empty sample, NaNs, or a level outside (0, 1).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap_ci needs a non-empty 1-D sample, got shape {x.shape}")
    if np.isnan(x).any():
        raise ValueError(f"bootstrap_ci got {int(np.isnan(x).sum())} NaN values")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    stats = np.array([statistic(x[i]) for i in idx])
    a = (1 - level) / 2
    return float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))


def mean_ci(values: np.ndarray | list[float], **kwargs: float | int) -> dict[str, float]:
    """``{"mean", "ci_low", "ci_high"}`` with a bootstrap interval (see :func:`bootstrap_ci`)."""
    x = np.asarray(values, dtype=np.float64)
    lo, hi = bootstrap_ci(x, **kwargs)  # type: ignore[arg-type]
    return {"mean": float(x.mean()), "ci_low": lo, "ci_high": hi}
