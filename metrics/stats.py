"""Confidence intervals and paired comparisons, built on ``scipy.stats.bootstrap``.

Every interval here is a bootstrap interval computed by ``scipy.stats.bootstrap``
(percentile by default; ``"BCa"`` and ``"basic"`` on request) with a seeded
``numpy.random.Generator``, so the same call gives the same numbers. Four ways of
resampling are offered:

- **independent units** ([`bootstrap_ci`][metrics.stats.bootstrap_ci] without ``groups``):
  each value is resampled on its own;
- **clusters** (``groups=``): whole groups are resampled (e.g. all spans of one
  example together), which is the right unit when values within a group are
  correlated. It is implemented by bootstrapping the group indices with
  ``scipy.stats.bootstrap`` and pooling the values of the drawn groups;
- **pairs** ([`paired_bootstrap_ci`][metrics.stats.paired_bootstrap_ci],
  [`paired_bootstrap_difference`][metrics.stats.paired_bootstrap_difference]): several
  samples measured on the same units are resampled together (``paired=True``);
- **independent samples** ([`two_sample_bootstrap_ci`][metrics.stats.two_sample_bootstrap_ci]):
  each sample is resampled separately, keeping its size (a stratified bootstrap).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeAlias

import numpy as np
from scipy.stats import binomtest, bootstrap

__all__ = [
    "BootstrapMethod",
    "bootstrap_ci",
    "mean_ci",
    "paired_bootstrap_ci",
    "paired_bootstrap_difference",
    "paired_difference",
    "two_sample_bootstrap_ci",
]

#: Interval methods of ``scipy.stats.bootstrap``.
BootstrapMethod = Literal["percentile", "BCa", "basic"]

_METHODS = {"percentile", "bca", "basic"}
#: Resampled values held in memory at once (the resamples are drawn in batches of this many values).
_BATCH_VALUES = 1 << 22

_Values: TypeAlias = np.ndarray | Sequence[float]


def _takes_axis(statistic: Callable[..., Any]) -> bool:
    """Whether ``statistic`` is vectorised in scipy's sense (it accepts ``axis``)."""
    try:
        return "axis" in inspect.signature(statistic).parameters
    except (TypeError, ValueError):
        return False


def _check_options(n_boot: int, level: float, method: str) -> None:
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if method.lower() not in _METHODS:
        raise ValueError(f"method must be 'percentile', 'BCa' or 'basic', got {method!r}")


def _sample(values: Any, name: str, *, ndim: int | None = 1) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if (ndim is not None and x.ndim != ndim) or x.ndim == 0 or x.shape[0] == 0:
        want = "a non-empty 1-D sample" if ndim == 1 else "a non-empty sample"
        raise ValueError(f"{name} needs {want}, got shape {x.shape}")
    if np.isnan(x).any():
        raise ValueError(f"{name} got {int(np.isnan(x).sum())} NaN values")
    return x


def _group_members(groups: Any, n: int) -> list[np.ndarray]:
    """Per group (in sorted label order), the indices of its units."""
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups needs one label per unit: {n} units, got groups of shape {g.shape}")
    _, codes = np.unique(g, return_inverse=True)
    codes = codes.ravel()
    order = np.argsort(codes, kind="stable")
    return np.split(order, np.cumsum(np.bincount(codes))[:-1])


def _checked(statistic: Callable[..., Any], vectorized: bool) -> Callable[..., Any]:
    """``statistic`` raising a ValueError where a resample gives NaN (the interval would be undefined)."""

    def fail() -> None:
        raise ValueError("the statistic is NaN on a bootstrap resample; the interval is undefined")

    if vectorized:

        def stat_v(*data: np.ndarray, axis: int = -1) -> np.ndarray:
            out = np.asarray(statistic(*data, axis=axis), dtype=np.float64)
            if np.isnan(out).any():
                fail()
            return out

        return stat_v

    def stat(*data: np.ndarray) -> float:
        out = float(statistic(*data))
        if np.isnan(out):
            fail()
        return out

    return stat


def _scipy_ci(
    data: tuple[np.ndarray, ...],
    statistic: Callable[..., Any],
    *,
    vectorized: bool,
    paired: bool,
    n_boot: int,
    level: float,
    method: str,
    seed: int,
) -> tuple[float, float]:
    """One call of ``scipy.stats.bootstrap`` (every sample must hold at least 2 units)."""
    stat = _checked(statistic, vectorized)
    size = max(1, sum(d.shape[-1] for d in data))
    kw: dict[str, Any] = {
        "vectorized": vectorized,
        "paired": paired,
        "confidence_level": level,
        "batch": max(1, _BATCH_VALUES // size),
    }
    res = bootstrap(data, stat, n_resamples=n_boot, method="percentile", rng=np.random.default_rng(seed), **kw)
    dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    if np.ptp(dist) == 0:
        # every resample gives the same value (e.g. constant data): the interval is that point
        # (BCa would be undefined here)
        return float(dist[0]), float(dist[0])
    if method.lower() != "percentile":
        res = bootstrap(data, stat, n_resamples=0, bootstrap_result=res, method=method, **kw)
    lo, hi = res.confidence_interval
    return float(lo), float(hi)


def paired_bootstrap_ci(
    samples: Sequence[Any],
    statistic: Callable[..., Any],
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    method: BootstrapMethod = "percentile",
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap interval of a statistic of several samples measured on the same units.

    Every resample draws units (rows: the first axis of every sample) with
    replacement and takes the same units of every sample, so pairs stay
    together (``scipy.stats.bootstrap`` with ``paired=True``). With ``groups``,
    whole groups of units are drawn instead (the group indices are bootstrapped
    and the drawn groups' units pooled).

    Args:
        samples: Arrays sharing their first axis (the units); 1-D or with
            further axes (e.g. one ``(n_spans, K)`` matrix per sample).
        statistic: Maps the resampled samples, in order, to a number. If it
            accepts ``axis`` and every sample is 1-D (and there are no groups) it
            is called vectorised, as ``scipy.stats.bootstrap`` does.
        groups: One label per unit; whole groups are resampled.
        n_boot: Bootstrap resamples.
        level: Coverage, in (0, 1).
        method: ``"percentile"``, ``"BCa"`` or ``"basic"``.
        seed: Seed of the ``numpy.random.default_rng`` that draws the resamples.

    Returns:
        ``(low, high)``; a single unit (or group) gives the point ``(s, s)`` with
        ``s = statistic(*samples)``, as does a statistic that every resample leaves unchanged.

    Raises:
        ValueError: On no samples, empty samples, samples of different lengths, NaNs,
            groups of the wrong length, bad options, or a statistic that is NaN on a resample.
    """
    _check_options(n_boot, level, method)
    if not len(samples):
        raise ValueError("paired_bootstrap_ci needs at least one sample")
    xs = tuple(_sample(s, "paired_bootstrap_ci", ndim=None) for s in samples)
    n = xs[0].shape[0]
    if any(x.shape[0] != n for x in xs):
        raise ValueError(f"paired samples differ in length: {[x.shape[0] for x in xs]}")
    opts: dict[str, Any] = {"n_boot": n_boot, "level": level, "method": method, "seed": seed}
    if groups is not None:
        members = _group_members(groups, n)
        if len(members) == 1:
            s = float(statistic(*xs))
            return s, s

        def pooled(idx: np.ndarray) -> float:
            rows = np.concatenate([members[i] for i in idx.astype(np.intp)])
            return float(statistic(*(x[rows] for x in xs)))

        return _scipy_ci((np.arange(len(members)),), pooled, vectorized=False, paired=False, **opts)
    if n == 1:
        s = float(statistic(*xs))
        return s, s
    if all(x.ndim == 1 for x in xs):
        return _scipy_ci(xs, statistic, vectorized=_takes_axis(statistic), paired=True, **opts)

    def rows_of(idx: np.ndarray) -> float:
        rows = idx.astype(np.intp)
        return float(statistic(*(x[rows] for x in xs)))

    return _scipy_ci((np.arange(n),), rows_of, vectorized=False, paired=False, **opts)


def bootstrap_ci(
    values: _Values,
    statistic: Callable[..., Any] = np.mean,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    method: BootstrapMethod = "percentile",
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap confidence interval of ``statistic`` over ``values`` (``scipy.stats.bootstrap``).

    Without ``groups`` the values are resampled one by one; with ``groups`` (one
    label per value) whole groups are resampled, e.g. all spans of one example
    together, so that correlation within a group widens the interval as it
    should. The clustered bootstrap draws group indices with
    ``scipy.stats.bootstrap`` and applies ``statistic`` to the pooled values of
    the drawn groups.

    Args:
        values: 1-D sample.
        statistic: Reduces a resampled array to a number. If it accepts ``axis``
            (``np.mean``, ``np.median``) it is called vectorised.
        groups: Optional cluster label per value.
        n_boot: Bootstrap resamples.
        level: Coverage, in (0, 1).
        method: ``"percentile"`` (default), ``"BCa"`` or ``"basic"``.
        seed: Seed of the ``numpy.random.default_rng`` that draws the resamples.

    Returns:
        ``(low, high)``. One value (or one group), or data that every resample leaves
        unchanged, gives the point ``(s, s)``.

    Raises:
        ValueError: On an empty sample, NaNs, groups of the wrong length, ``n_boot < 1``,
            a level outside (0, 1), an unknown method, or a statistic that is NaN on a resample.
    """
    x = _sample(values, "bootstrap_ci")
    return paired_bootstrap_ci((x,), statistic, groups=groups, n_boot=n_boot, level=level, method=method, seed=seed)


def mean_ci(
    values: _Values,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    method: BootstrapMethod = "percentile",
    seed: int = 0,
) -> dict[str, float]:
    """``{"mean", "ci_low", "ci_high"}`` with a bootstrap interval (see
    [`bootstrap_ci`][metrics.stats.bootstrap_ci], whose options it takes)."""
    x = _sample(values, "mean_ci")
    lo, hi = bootstrap_ci(x, np.mean, groups=groups, n_boot=n_boot, level=level, method=method, seed=seed)
    return {"mean": float(x.mean()), "ci_low": lo, "ci_high": hi}


def paired_bootstrap_difference(
    a: _Values,
    b: _Values,
    *,
    statistic: Callable[..., Any] = np.mean,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    method: BootstrapMethod = "percentile",
    seed: int = 0,
) -> dict[str, float | int]:
    """``statistic(b) - statistic(a)`` on paired samples, with a paired bootstrap interval.

    Args:
        a: Per-unit values of the reference.
        b: The other's values on the same units, in the same order.
        statistic: Reduces one sample to a number (default: the mean).
        groups: Optional cluster label per unit; whole groups are resampled.
        n_boot: Bootstrap resamples.
        level: Coverage, in (0, 1).
        method: ``"percentile"``, ``"BCa"`` or ``"basic"``.
        seed: Resampling seed.

    Returns:
        ``difference``, ``ci_low``, ``ci_high``, ``n`` (units) and ``n_groups``
        (resampled clusters; ``n`` without groups).

    Raises:
        ValueError: If the samples differ in length, or as [`paired_bootstrap_ci`][metrics.stats.paired_bootstrap_ci].
    """
    x, y = _sample(a, "paired_bootstrap_difference"), _sample(b, "paired_bootstrap_difference")
    if x.shape != y.shape:
        raise ValueError(f"paired samples need equal length, got {x.shape} and {y.shape}")

    if _takes_axis(statistic) and groups is None:

        def diff_v(u: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
            return np.asarray(statistic(v, axis=axis)) - np.asarray(statistic(u, axis=axis))

        diff: Callable[..., Any] = diff_v
    else:

        def diff_1(u: np.ndarray, v: np.ndarray) -> float:
            return float(statistic(v)) - float(statistic(u))

        diff = diff_1
    lo, hi = paired_bootstrap_ci((x, y), diff, groups=groups, n_boot=n_boot, level=level, method=method, seed=seed)
    n_groups = x.size if groups is None else len(np.unique(np.asarray(groups)))
    return {
        "difference": float(statistic(y)) - float(statistic(x)),
        "ci_low": lo,
        "ci_high": hi,
        "n": int(x.size),
        "n_groups": int(n_groups),
    }


def two_sample_bootstrap_ci(
    a: _Values,
    b: _Values,
    statistic: Callable[..., Any],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    method: BootstrapMethod = "percentile",
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap interval of ``statistic(a, b)`` for two independent samples.

    Each sample is resampled separately at its own size (``scipy.stats.bootstrap``
    with two samples, ``paired=False``): a stratified bootstrap, so every
    resample holds both samples in their observed numbers. A sample of one value
    is the same in every resample and is held fixed.

    Args:
        a: First sample.
        b: Second sample.
        statistic: Maps ``(a, b)`` resamples to a number, e.g. a difference of
            means or an AUC; called vectorised if it accepts ``axis``.
        n_boot: Bootstrap resamples.
        level: Coverage, in (0, 1).
        method: ``"percentile"``, ``"BCa"`` or ``"basic"``.
        seed: Resampling seed.

    Returns:
        ``(low, high)``.

    Raises:
        ValueError: On an empty sample, NaNs, bad options, or a statistic that is NaN on a resample.
    """
    _check_options(n_boot, level, method)
    x, y = _sample(a, "two_sample_bootstrap_ci"), _sample(b, "two_sample_bootstrap_ci")
    opts: dict[str, Any] = {"n_boot": n_boot, "level": level, "method": method, "seed": seed}
    vec = _takes_axis(statistic)
    if x.size == 1 and y.size == 1:
        s = float(statistic(x, y))
        return s, s
    if x.size == 1 or y.size == 1:
        # scipy needs two values per sample; a one-value sample never changes, so fix it
        fixed, free, first = (x, y, True) if x.size == 1 else (y, x, False)

        def one(v: np.ndarray, axis: int = -1) -> Any:
            f = np.broadcast_to(fixed, (*v.shape[:-1], 1)) if vec else fixed
            args = (f, v) if first else (v, f)
            return statistic(*args, axis=axis) if vec else statistic(*args)

        def one_1(v: np.ndarray) -> float:
            return float(one(v))

        return _scipy_ci((free,), one if vec else one_1, vectorized=vec, paired=False, **opts)
    return _scipy_ci((x, y), statistic, vectorized=vec, paired=False, **opts)


def paired_difference(
    a: np.ndarray | list[bool] | list[float],
    b: np.ndarray | list[bool] | list[float],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    method: BootstrapMethod = "percentile",
    seed: int = 0,
) -> dict[str, float | int]:
    """Mean of ``b - a`` over paired 0/1 outcomes (same examples), with McNemar's exact test.

    Args:
        a: Per-example outcomes of the reference (``True``/1 = right).
        b: The other's outcomes on the same examples, in the same order.
        n_boot: Bootstrap resamples of the examples (pairs resampled together).
        level: Coverage of the interval.
        method: Interval method (see [`bootstrap_ci`][metrics.stats.bootstrap_ci]).
        seed: Resampling seed.

    Returns:
        ``n``, ``mean_a``, ``mean_b``, ``difference`` with its paired bootstrap interval
        (``ci_low``, ``ci_high``; see
        [`paired_bootstrap_difference`][metrics.stats.paired_bootstrap_difference]), the
        discordant counts ``only_a``/``only_b`` and ``mcnemar_p`` (two-sided exact binomial
        test on them; 1 when there are none).

    Raises:
        ValueError: If the two samples differ in length or hold values other than 0/1.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired_difference needs two 1-D samples of equal length, got {x.shape} and {y.shape}")
    if not (np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all()):
        raise ValueError("paired_difference takes 0/1 outcomes")
    only_a, only_b = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    d = paired_bootstrap_difference(x, y, n_boot=n_boot, level=level, method=method, seed=seed)
    p = binomtest(only_b, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {
        "n": int(x.size),
        "mean_a": float(x.mean()),
        "mean_b": float(y.mean()),
        "difference": float((y - x).mean()),
        "ci_low": d["ci_low"],
        "ci_high": d["ci_high"],
        "only_a": only_a,
        "only_b": only_b,
        "mcnemar_p": float(p),
    }
