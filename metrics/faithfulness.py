"""Faithfulness metrics against exhaustive ablation, as pure functions over arrays.

Each returns a [`MetricResult`][metrics.faithfulness.MetricResult] with a percentile-bootstrap 95 % interval
over the units it averages (spans, or (span, region) pairs).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

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


def _boot(per_unit: np.ndarray, *, n_boot: int, seed: int, skipped: int = 0) -> MetricResult:
    x = np.asarray(per_unit, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no units to average (all rows were empty or skipped)")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1)
    return MetricResult(
        float(x.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975)), x.size, skipped
    )


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


def lds(actual: np.ndarray, predicted: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> MetricResult:
    """Linear datamodeling score: mean over rows of Spearman ρ(actual, predicted).

    One row is one (example, span); its columns are held-out removal sets V_j:
    ``actual[i, j] = Δ(S_i, V_j)`` and ``predicted[i, j] = Σ_{k∈V_j} score(S_i, k)``.
    Rows where either side is constant (ρ undefined) are skipped and counted.

    Args:
        actual: ``(n_rows, M)`` measured drops.
        predicted: ``(n_rows, M)`` predicted drops.
        n_boot: Bootstrap resamples (over rows).
        seed: Bootstrap seed.

    Raises:
        ValueError: On shape mismatch, NaN (naming the rows) or empty input.
    """
    a, p = _check(actual, predicted, "lds")
    if a.ndim != 2 or a.shape[1] < 3:
        raise ValueError(f"lds needs (n_rows, M>=3) arrays, got {a.shape}")
    rhos = []
    skipped = 0
    for ra, rp in zip(a, p, strict=True):
        if np.ptp(ra) == 0 or np.ptp(rp) == 0:
            skipped += 1
            continue
        rhos.append(float(spearmanr(ra, rp).statistic))
    return _boot(np.asarray(rhos), n_boot=n_boot, seed=seed, skipped=skipped)


def topk_sets(scores: np.ndarray, k: int = 5) -> np.ndarray:
    """``(n, K)`` boolean: the top-``k`` regions of each row by score (ties: lower index)."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    out = np.zeros(s.shape, dtype=bool)
    np.put_along_axis(out, order, True, axis=1)
    return out


def topk_drop(
    drops: np.ndarray, oracle_drops: np.ndarray | None = None, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, MetricResult]:
    """Top-K drop: the mean Δ(S, top-K regions by a method's score), raw and normalised.

    Args:
        drops: ``(n_spans,)`` measured Δ(S, V) with V = the method's top-K regions.
        oracle_drops: ``(n_spans,)`` the same with V = the top-K regions by leave-one-out Δ;
            when given, ``normalized`` = mean(drops) / mean(oracle_drops) (interval from
            a paired bootstrap of the ratio).
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.

    Returns:
        ``{"raw": ..., "normalized": ...}`` (``normalized`` only with an oracle; NaN, with a
        logged warning, when the oracle's mean drop is not positive).
    """
    d = np.asarray(drops, dtype=np.float64)
    out = {"raw": _boot(d, n_boot=n_boot, seed=seed)}
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
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, d.size, size=(n_boot, d.size))
        ratios = d[idx].mean(1) / np.maximum(o[idx].mean(1), 1e-12)
        out["normalized"] = MetricResult(
            float(d.mean() / denom), float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975)), d.size
        )
    return out


def r2(scores: np.ndarray, loo: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> MetricResult:
    """R² of per-region scores against leave-one-out Δ(S, {k}), pooled over (span, region) pairs.

    Scores of different methods live on different scales, so this is the R² of the
    best affine calibration ``Δ ≈ a·score + b``, which equals the squared Pearson
    correlation. A constant predictor scores 0; a perfect (affine) one scores 1.

    Args:
        scores: ``(n_spans, K)`` predicted per-region scores.
        loo: ``(n_spans, K)`` leave-one-out drops.
        n_boot: Bootstrap resamples (over spans).
        seed: Bootstrap seed.
    """
    s, y = _check(scores, loo, "r2")

    def stat(rows: np.ndarray) -> float:
        a, b = s[rows].ravel(), y[rows].ravel()
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            return 0.0
        return float(np.corrcoef(a, b)[0, 1] ** 2)

    rng = np.random.default_rng(seed)
    n = s.shape[0]
    boots = [stat(np.asarray(rng.integers(0, n, size=n))) for _ in range(n_boot)]
    return MetricResult(stat(np.arange(n)), float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975)), n)


def pointing_accuracy(
    scores: np.ndarray, gt_regions: Sequence[Sequence[int] | None], *, n_boot: int = 1000, seed: int = 0
) -> MetricResult:
    """Share of spans whose top-scoring region is one of the span's ground-truth regions.

    Spans without ground truth (``None`` or empty: the sentence names no object,
    or the model's sentence matches no ground-truth sentence) are skipped and counted.

    Args:
        scores: ``(n_spans, K)`` per-region scores.
        gt_regions: Per span, the regions inside the objects it names.
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.shape[0] != len(gt_regions):
        raise ValueError(f"pointing_accuracy: {s.shape[0]} score rows for {len(gt_regions)} spans")
    hits = []
    skipped = 0
    for row, gt in zip(s, gt_regions, strict=True):
        if not gt:
            skipped += 1
            continue
        hits.append(float(int(np.argmax(row)) in set(gt)))
    return _boot(np.asarray(hits), n_boot=n_boot, seed=seed, skipped=skipped)
