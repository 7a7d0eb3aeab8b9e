"""Faithfulness metrics against exhaustive ablation, as pure functions over arrays.

Each returns a [`MetricResult`][metrics.faithfulness.MetricResult] with a percentile-bootstrap 95 % interval
over the units it averages (spans, or (span, region) pairs), computed by [`metrics.stats`][metrics.stats]
(``scipy.stats.bootstrap``). By default the resampled unit is the span; pass ``groups`` (one label per span,
e.g. the example it comes from) to resample whole groups instead, which accounts for spans of one example
being correlated.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from metrics.stats import bootstrap_ci, paired_bootstrap_ci

logger = logging.getLogger(__name__)

__all__ = ["MetricResult", "lds", "pointing_accuracy", "r2", "topk_drop", "topk_sets"]


@dataclass(frozen=True)
class MetricResult:
    """A metric value with its bootstrap interval.

    Attributes:
        value: The point estimate.
        ci_low: Lower end of the 95 % interval.
        ci_high: Upper end.
        n: Number of units averaged.
        n_skipped: Units left out (e.g. constant rows for Spearman).
    """

    value: float
    ci_low: float
    ci_high: float
    n: int
    n_skipped: int = 0

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready dict."""
        return {
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "n": self.n,
            "n_skipped": self.n_skipped,
        }


def _boot(
    per_unit: np.ndarray, *, n_boot: int, seed: int, skipped: int = 0, groups: np.ndarray | None = None
) -> MetricResult:
    """Mean over units with its percentile-bootstrap 95 % interval (clustered by ``groups`` when given)."""
    x = np.asarray(per_unit, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no units to average (all rows were empty or skipped)")
    lo, hi = bootstrap_ci(x, np.mean, groups=groups, n_boot=n_boot, level=0.95, seed=seed)
    return MetricResult(float(x.mean()), lo, hi, x.size, skipped)


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


def lds(
    actual: np.ndarray,
    predicted: np.ndarray,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> MetricResult:
    """Linear datamodeling score: mean over rows of Spearman ρ(actual, predicted).

    One row is one (example, span); its columns are held-out removal sets V_j:
    ``actual[i, j] = Δ(S_i, V_j)`` and ``predicted[i, j] = Σ_{k∈V_j} score(S_i, k)``.
    Rows where either side is constant (ρ undefined) are skipped and counted.

    Args:
        actual: ``(n_rows, M)`` measured drops.
        predicted: ``(n_rows, M)`` predicted drops.
        groups: Optional label per row (e.g. the example); the bootstrap then resamples whole groups.
        n_boot: Bootstrap resamples (over rows, or over groups).
        seed: Bootstrap seed.

    Raises:
        ValueError: On shape mismatch, NaN (naming the rows) or empty input.
    """
    a, p = _check(actual, predicted, "lds")
    if a.ndim != 2 or a.shape[1] < 3:
        raise ValueError(f"lds needs (n_rows, M>=3) arrays, got {a.shape}")
    g = _groups(groups, a.shape[0], "lds")
    rhos = []
    kept = []
    for i, (ra, rp) in enumerate(zip(a, p, strict=True)):
        if np.ptp(ra) == 0 or np.ptp(rp) == 0:
            continue
        rhos.append(float(spearmanr(ra, rp).statistic))
        kept.append(i)
    gk = None if g is None else g[kept]
    return _boot(np.asarray(rhos), n_boot=n_boot, seed=seed, skipped=a.shape[0] - len(kept), groups=gk)


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

    def stat(ss: np.ndarray, yy: np.ndarray) -> float:
        a, b = ss.ravel(), yy.ravel()
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            return 0.0
        r = float(np.corrcoef(a, b)[0, 1])
        return r * r if r > 0 else 0.0

    lo, hi = paired_bootstrap_ci((s, y), stat, groups=g, n_boot=n_boot, level=0.95, seed=seed)
    return MetricResult(stat(s, y), lo, hi, s.shape[0])


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
