"""Faithfulness metrics against exhaustive ablation, as pure functions over arrays.

Each returns a [`MetricResult`][metrics.faithfulness.MetricResult] with a percentile-bootstrap 95 % interval
over the units it averages (spans, or (span, region) pairs), computed by [`metrics.stats`][metrics.stats]
(``scipy.stats.bootstrap``). By default the resampled unit is the span; pass ``groups`` (one label per span,
e.g. the example it comes from) to resample whole groups instead, which accounts for spans of one example
being correlated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.stats import spearmanr

from metrics.stats import bootstrap_ci, paired_bootstrap_ci

logger = logging.getLogger(__name__)

__all__ = [
    "MetricResult",
    "curve_auc",
    "lds",
    "lds_rows",
    "mean_metric",
    "paired_metric_difference",
    "pointing_accuracy",
    "r2",
    "r2_value",
    "topk_drop",
    "topk_sets",
]


@dataclass(frozen=True)
class MetricResult:
    """A metric value with its bootstrap interval.

    Attributes:
        value: The point estimate.
        ci_low: Lower end of the 95 % interval.
        ci_high: Upper end.
        n: Number of units averaged.
        n_skipped: Units left out (e.g. constant rows for Spearman).
        n_constant: Units a method was scored 0 on because its prediction was constant there (LDS with
            ``constant_prediction="zero"``; counted in ``n``).
    """

    value: float
    ci_low: float
    ci_high: float
    n: int
    n_skipped: int = 0
    n_constant: int = 0

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready dict (``n_constant`` only where some unit was scored 0 for a constant prediction)."""
        d: dict[str, float | int] = {
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "n": self.n,
            "n_skipped": self.n_skipped,
        }
        if self.n_constant:
            d["n_constant"] = self.n_constant
        return d


def _boot(
    per_unit: np.ndarray, *, n_boot: int, seed: int, skipped: int = 0, groups: np.ndarray | None = None
) -> MetricResult:
    """Mean over units with its percentile-bootstrap 95 % interval (clustered by ``groups`` when given)."""
    x = np.asarray(per_unit, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no units to average (all rows were empty or skipped)")
    lo, hi = bootstrap_ci(x, np.mean, groups=groups, n_boot=n_boot, level=0.95, seed=seed)
    return MetricResult(float(x.mean()), lo, hi, x.size, skipped)


def mean_metric(
    values: np.ndarray | Sequence[float],
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_skipped: int = 0,
    n_boot: int = 1000,
    seed: int = 0,
) -> MetricResult:
    """The mean of per-unit values (e.g. per-span ρ, hits or curve areas) with its bootstrap 95 % interval.

    Args:
        values: One value per unit.
        groups: Optional label per unit (e.g. the example); the bootstrap then resamples whole groups.
        n_skipped: Units left out before (reported).
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.

    Raises:
        ValueError: On no values, or NaNs.
    """
    x = np.asarray(values, dtype=np.float64)
    g = _groups(groups, x.shape[0], "mean_metric") if x.ndim == 1 else None
    return _boot(x, n_boot=n_boot, seed=seed, skipped=n_skipped, groups=g)


def _groups(groups: Sequence[Any] | np.ndarray | None, n: int, name: str) -> np.ndarray | None:
    """``groups`` as an array of one label per unit (``None`` stays ``None``)."""
    if groups is None:
        return None
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"{name}: groups needs one label per row ({n}), got shape {g.shape}")
    return g


def _check(actual: np.ndarray, predicted: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(actual, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    if a.shape != p.shape:
        raise ValueError(f"{name}: actual and predicted differ in shape: {a.shape} vs {p.shape}")
    if a.size == 0:
        raise ValueError(f"{name}: empty input")
    for arr, what in ((a, "actual"), (p, "predicted")):
        bad = ~np.isfinite(arr)
        if bad.any():
            rows = sorted({int(i) for i in np.argwhere(bad)[:, 0]})
            raise ValueError(f"{name}: {what} holds NaN/inf in rows {rows[:10]}{'...' if len(rows) > 10 else ''}")
    return a, p


def lds_rows(
    actual: np.ndarray, predicted: np.ndarray, *, constant_prediction: Literal["skip", "zero"] = "skip"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row Spearman ρ of [`lds`][metrics.faithfulness.lds], and which rows are scored.

    A row whose measured drops are constant has no ranking to predict: it is never scored (ρ NaN,
    ``scored`` False), whatever the method. A row whose *prediction* is constant is skipped too with
    ``constant_prediction="skip"``; with ``"zero"`` it scores ρ = 0 (a method that ranks nothing is
    credited nothing), so every method is scored on the same rows.

    Returns:
        ``(rho, scored)``: ``(n_rows,)`` floats (NaN where not scored) and booleans.
    """
    a, p = _check(actual, predicted, "lds")
    if a.ndim != 2 or a.shape[1] < 3:
        raise ValueError(f"lds needs (n_rows, M>=3) arrays, got {a.shape}")
    if constant_prediction not in ("skip", "zero"):
        raise ValueError(f"constant_prediction must be 'skip' or 'zero', got {constant_prediction!r}")
    rho = np.full(a.shape[0], np.nan)
    scored = np.zeros(a.shape[0], dtype=bool)
    for i, (ra, rp) in enumerate(zip(a, p, strict=True)):
        if np.ptp(ra) == 0:
            continue
        if np.ptp(rp) == 0:
            if constant_prediction == "zero":
                rho[i], scored[i] = 0.0, True
            continue
        rho[i], scored[i] = float(spearmanr(ra, rp).statistic), True
    return rho, scored


def lds(
    actual: np.ndarray,
    predicted: np.ndarray,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    constant_prediction: Literal["skip", "zero"] = "skip",
) -> MetricResult:
    """Linear datamodeling score: mean over rows of Spearman ρ(actual, predicted).

    One row is one (example, span); its columns are held-out removal sets V_j:
    ``actual[i, j] = Δ(S_i, V_j)`` and ``predicted[i, j] = Σ_{k∈V_j} score(S_i, k)``.
    Rows where the measured drops are constant (ρ undefined) are skipped and counted. Rows where the
    prediction is constant are skipped too, or, with ``constant_prediction="zero"``, scored ρ = 0 and
    counted in ``n_constant`` (so that methods compared on one collection are scored on the same rows).

    Args:
        actual: ``(n_rows, M)`` measured drops.
        predicted: ``(n_rows, M)`` predicted drops.
        groups: Optional label per row (e.g. the example); the bootstrap then resamples whole groups.
        n_boot: Bootstrap resamples (over rows, or over groups).
        seed: Bootstrap seed.
        constant_prediction: ``"skip"`` or ``"zero"`` (see above).

    Raises:
        ValueError: On shape mismatch, NaN (naming the rows) or empty input.
    """
    rho, scored = lds_rows(actual, predicted, constant_prediction=constant_prediction)
    g = _groups(groups, rho.shape[0], "lds")
    gk = None if g is None else g[scored]
    res = _boot(rho[scored], n_boot=n_boot, seed=seed, skipped=int((~scored).sum()), groups=gk)
    if constant_prediction == "zero":
        const = int(np.sum(np.ptp(np.asarray(predicted, dtype=np.float64)[scored], axis=1) == 0))
        res = MetricResult(res.value, res.ci_low, res.ci_high, res.n, res.n_skipped, const)
    return res


def topk_sets(scores: np.ndarray, k: int = 5) -> np.ndarray:
    """``(n, K)`` boolean: the top-``k`` regions of each row by score (ties: lower index)."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    out = np.zeros(s.shape, dtype=bool)
    np.put_along_axis(out, order, True, axis=1)
    return out


def topk_drop(
    drops: np.ndarray,
    oracle_drops: np.ndarray | None = None,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, MetricResult]:
    """Top-K drop: the mean Δ(S, top-K regions by a method's score), raw and normalised.

    Args:
        drops: ``(n_spans,)`` measured Δ(S, V) with V = the method's top-K regions.
        oracle_drops: ``(n_spans,)`` the same with V = the top-K regions by leave-one-out Δ;
            when given, ``normalized`` = mean(drops) / mean(oracle_drops) (interval from
            a paired bootstrap of the ratio: a span's drop and oracle drop are resampled together).
        groups: Optional label per span (e.g. the example); the bootstrap then resamples whole groups.
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.

    Returns:
        ``{"raw": ..., "normalized": ...}`` (``normalized`` only with an oracle; NaN, with a
        logged warning, when the oracle's mean drop is not positive).
    """
    d = np.asarray(drops, dtype=np.float64)
    g = _groups(groups, d.shape[0], "topk_drop") if d.ndim else None
    out = {"raw": _boot(d, n_boot=n_boot, seed=seed, groups=g)}
    if oracle_drops is not None:
        o = np.asarray(oracle_drops, dtype=np.float64)
        d, o = _check(d, o, "topk_drop")
        denom = o.mean()
        if denom <= 0:
            # removing the oracle's top-K does not lower the log-probability (e.g. an untrained model):
            # there is nothing to normalise by, so say so and keep the raw figures
            logger.warning("topk_drop: the oracle's mean drop is %.3g <= 0; the normalised drop is undefined", denom)
            nan = float("nan")
            out["normalized"] = MetricResult(nan, nan, nan, d.size)
            return out

        def ratio(dd: np.ndarray, oo: np.ndarray, axis: int = -1) -> np.ndarray:
            return np.asarray(np.mean(dd, axis=axis) / np.maximum(np.mean(oo, axis=axis), 1e-12))

        lo, hi = paired_bootstrap_ci((d, o), ratio, groups=g, n_boot=n_boot, level=0.95, seed=seed)
        out["normalized"] = MetricResult(float(d.mean() / denom), lo, hi, d.size)
    return out


def r2(
    scores: np.ndarray,
    loo: np.ndarray,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> MetricResult:
    """R² of per-region scores against leave-one-out Δ(S, {k}), pooled over (span, region) pairs.

    Scores of different methods live on different scales, so this is the R² of the
    best affine calibration ``Δ ≈ a·score + b`` with ``a ≥ 0``: the squared Pearson
    correlation when it is positive, and 0 otherwise (scores that rank regions backwards
    explain nothing a user can read off them). A constant predictor scores 0; a perfect
    (affine) one scores 1.

    Args:
        scores: ``(n_spans, K)`` predicted per-region scores.
        loo: ``(n_spans, K)`` leave-one-out drops.
        groups: Optional label per span (e.g. the example); the bootstrap then resamples whole groups.
        n_boot: Bootstrap resamples (over spans, each with all its regions; or over groups).
        seed: Bootstrap seed.
    """
    s, y = _check(scores, loo, "r2")
    g = _groups(groups, s.shape[0], "r2")
    lo, hi = paired_bootstrap_ci((s, y), r2_value, groups=g, n_boot=n_boot, level=0.95, seed=seed)
    return MetricResult(r2_value(s, y), lo, hi, s.shape[0])


def r2_value(scores: np.ndarray, loo: np.ndarray) -> float:
    """The point value of [`r2`][metrics.faithfulness.r2]: squared Pearson r of the pooled pairs when r > 0, else 0."""
    a, b = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(loo, dtype=np.float64).ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    r = float(np.corrcoef(a, b)[0, 1])
    return r * r if r > 0 else 0.0


def pointing_accuracy(
    scores: np.ndarray,
    gt_regions: Sequence[Sequence[int] | None],
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> MetricResult:
    """Share of spans whose top-scoring region is one of the span's ground-truth regions.

    Spans without ground truth (``None`` or empty: the sentence names no object,
    or the model's sentence matches no ground-truth sentence) are skipped and counted.

    Args:
        scores: ``(n_spans, K)`` per-region scores.
        gt_regions: Per span, the regions inside the objects it names.
        groups: Optional label per span (e.g. the example); the bootstrap then resamples whole groups.
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.shape[0] != len(gt_regions):
        raise ValueError(f"pointing_accuracy: {s.shape[0]} score rows for {len(gt_regions)} spans")
    g = _groups(groups, s.shape[0], "pointing_accuracy")
    hits = []
    kept = []
    for i, (row, gt) in enumerate(zip(s, gt_regions, strict=True)):
        if not gt:
            continue
        hits.append(float(int(np.argmax(row)) in set(gt)))
        kept.append(i)
    gk = None if g is None else g[kept]
    return _boot(np.asarray(hits), n_boot=n_boot, seed=seed, skipped=s.shape[0] - len(kept), groups=gk)


def curve_auc(curves: np.ndarray, fractions: np.ndarray | Sequence[float]) -> np.ndarray:
    """Area under each row's curve over ``fractions`` (trapezoid rule), one value per row.

    For the insertion and deletion curves of image attribution: ``curves[i, j]`` is span i's
    log-probability change (nats, relative to the full image) when the top ``fractions[j]`` share of
    regions by a method's score is removed (deletion) or kept alone (insertion).

    Args:
        curves: ``(n_spans, n_points)``.
        fractions: ``(n_points,)`` increasing, from 0 to 1.

    Raises:
        ValueError: On shapes that disagree, fewer than two points, or fractions that do not increase.
    """
    c = np.asarray(curves, dtype=np.float64)
    x = np.asarray(fractions, dtype=np.float64)
    if c.ndim != 2 or x.ndim != 1 or c.shape[1] != x.shape[0] or x.shape[0] < 2:
        raise ValueError(f"curve_auc needs (n, P) curves and (P,) fractions with P >= 2, got {c.shape} and {x.shape}")
    if np.any(np.diff(x) <= 0):
        raise ValueError("curve_auc: fractions must increase")
    return np.asarray(np.sum((c[:, 1:] + c[:, :-1]) * np.diff(x) / 2.0, axis=1))


def paired_metric_difference(
    statistic: Callable[..., float],
    mine: Sequence[np.ndarray],
    other: Sequence[np.ndarray],
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> MetricResult:
    """``statistic(*mine) - statistic(*other)`` on the same units, with a paired (clustered) bootstrap interval.

    Both methods' per-unit arrays are resampled together (the same units, or with ``groups`` the same
    whole groups, in every resample), so what the two have in common cancels out of the interval.

    Args:
        statistic: Maps one method's arrays (sharing their first axis, the units) to a number, e.g.
            ``np.mean`` of per-row ρ, or [`r2_value`][metrics.faithfulness.r2_value] of ``(scores, loo)``.
        mine: The first method's arrays.
        other: The other method's arrays on the same units, in the same order.
        groups: Optional label per unit (e.g. the example); whole groups are resampled.
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.

    Raises:
        ValueError: If the arrays disagree in their number of units, or as
            [`paired_bootstrap_ci`][metrics.stats.paired_bootstrap_ci].
    """
    xs = [np.asarray(v, dtype=np.float64) for v in (*mine, *other)]
    n = xs[0].shape[0]
    if any(x.shape[0] != n for x in xs):
        raise ValueError(f"paired_metric_difference: unit counts differ: {[x.shape[0] for x in xs]}")
    if n == 0:
        raise ValueError("paired_metric_difference: no units")
    na = len(mine)
    g = _groups(groups, n, "paired_metric_difference")

    def diff(*arrs: np.ndarray) -> float:
        return float(statistic(*arrs[:na])) - float(statistic(*arrs[na:]))

    lo, hi = paired_bootstrap_ci(tuple(xs), diff, groups=g, n_boot=n_boot, level=0.95, seed=seed)
    return MetricResult(diff(*xs), lo, hi, n)
