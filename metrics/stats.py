"""Confidence intervals and paired comparisons."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["bootstrap_ci", "mean_ci", "paired_difference"]


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
    """``{"mean", "ci_low", "ci_high"}`` with a bootstrap interval (see
    [`bootstrap_ci`][metrics.stats.bootstrap_ci])."""
    x = np.asarray(values, dtype=np.float64)
    lo, hi = bootstrap_ci(x, **kwargs)  # type: ignore[arg-type]
    return {"mean": float(x.mean()), "ci_low": lo, "ci_high": hi}


def paired_difference(
    a: np.ndarray | list[bool] | list[float], b: np.ndarray | list[bool] | list[float], *, n_boot: int = 2000
) -> dict[str, float | int]:
    """Mean of ``b - a`` over paired 0/1 outcomes (same examples), with McNemar's exact test.

    Args:
        a: Per-example outcomes of the reference (``True``/1 = right).
        b: The other's outcomes on the same examples, in the same order.
        n_boot: Bootstrap resamples of the paired differences.

    Returns:
        ``n``, ``mean_a``, ``mean_b``, ``difference`` with its bootstrap 95 % interval
        (``ci_low``, ``ci_high``), the discordant counts ``only_a``/``only_b`` and
        ``mcnemar_p`` (two-sided exact binomial test on them; 1 when there are none).

    Raises:
        ValueError: If the two samples differ in length or hold values other than 0/1.
    """
    from scipy.stats import binomtest

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired_difference needs two 1-D samples of equal length, got {x.shape} and {y.shape}")
    if not (np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all()):
        raise ValueError("paired_difference takes 0/1 outcomes")
    only_a, only_b = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    lo, hi = bootstrap_ci(y - x, n_boot=n_boot)
    p = binomtest(only_b, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {
        "n": int(x.size),
        "mean_a": float(x.mean()),
        "mean_b": float(y.mean()),
        "difference": float((y - x).mean()),
        "ci_low": lo,
        "ci_high": hi,
        "only_a": only_a,
        "only_b": only_b,
        "mcnemar_p": float(p),
    }
