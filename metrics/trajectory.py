"""Reasoning trajectories in attribution space, as pure functions over arrays.

A reasoning chain with ``n`` spans and an image cut into ``K`` regions gives
per-span region scores ``(n, K)``. Each span becomes a point (its *effect
vector*, [`effect_vectors`][metrics.trajectory.effect_vectors]), and the chain becomes a path through those
points. Geometry of that path ([`path_length`][metrics.trajectory.path_length],
[`net_displacement`][metrics.trajectory.net_displacement],
[`tortuosity`][metrics.trajectory.tortuosity]) and the peakedness of each span's attribution
([`concentration`][metrics.trajectory.concentration]) separate successful chains from failures; the
tortuosity of a chain's first spans flags failures early
([`auc_by_progress`][metrics.trajectory.auc_by_progress], [`TortuosityFlagger`][metrics.trajectory.TortuosityFlagger]).

Choices made here (see ``docs/trajectories.md``):

- **Effect vectors** keep all ``K`` coordinates, so region ``k`` stays
  coordinate ``k`` along a chain; all but the ``top`` entries of largest
  absolute value are zeroed, and each vector is L2-normalised by default, so
  that the path follows *which* regions matter rather than how long a span is
  (span drops are sums over the span's tokens).
- **Geometry is measured in the full effect-vector space**; PCA
  ([`TrajectoryPCA`][metrics.trajectory.TrajectoryPCA]) is for pictures only.
- **Concentration** is ``1 - H(p) / log K`` with ``p = |s| / sum |s|``: 1 for a
  one-hot span, 0 for a uniform one.
- **Prefixes** keep the first ``ceil(fraction * n)`` spans, at least 2.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import numpy as np
from scipy.optimize import brentq
from scipy.special import entr
from scipy.stats import mannwhitneyu, norm
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score
from statsmodels.stats.multitest import multipletests

from metrics.stats import two_sample_bootstrap_ci

__all__ = [
    "DEFAULT_FRACTIONS",
    "EPS",
    "OUTCOMES",
    "STRAIGHT_TOL",
    "OnlineTrajectory",
    "TortuosityFlagger",
    "TrajectoryPCA",
    "auc_by_progress",
    "bonferroni",
    "compare_outcomes",
    "concentration",
    "effect_vectors",
    "holm",
    "length_adjusted",
    "mann_whitney_power",
    "net_displacement",
    "path_length",
    "persistence",
    "prefix",
    "progress_curve",
    "roc_auc",
    "step_lengths",
    "three_outcome",
    "tortuosity",
]

logger = logging.getLogger(__name__)

#: Reasoning progress at which [`auc_by_progress`][metrics.trajectory.auc_by_progress] scores prefixes:
#: 0.1, 0.2, ..., 1.0.
DEFAULT_FRACTIONS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 11))
#: Floor of the net displacement in [`tortuosity`][metrics.trajectory.tortuosity].
EPS = 1e-6
#: Tortuosities below ``1 + STRAIGHT_TOL`` are rounding noise around a straight path and read as 1.
STRAIGHT_TOL = 1e-9
#: The three outcome classes of [`three_outcome`][metrics.trajectory.three_outcome].
OUTCOMES: tuple[str, ...] = ("success", "reasoning_error", "hallucination")


def _as_2d(points: np.ndarray, name: str = "points") -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim == 1:
        p = p[None, :]
    if p.ndim != 2:
        raise ValueError(f"{name} must be (n_spans, D), got shape {p.shape}")
    return p


# ---------------------------------------------------------------------------- representation
def effect_vectors(scores: np.ndarray, top: int = 32, *, normalize: bool = True) -> np.ndarray:
    """Per-span effect vectors of one chain, in a fixed-length representation.

    Each row keeps its ``K`` coordinates (region ``k`` stays coordinate ``k``,
    so consecutive spans of one chain are comparable), with every entry outside
    the row's ``top`` largest by absolute value set to 0 (the paper keeps the
    top 32). Ties at the cut are broken by region index (lower index kept). With
    ``normalize`` each row is scaled to unit L2 norm; an all-zero row stays zero.
    Normalising removes span length from the geometry: a span's drop is a sum
    over its tokens, so long spans would otherwise look like long steps.

    Args:
        scores: ``(n_spans, K)`` per-span per-region scores (estimator scores or
            leave-one-out drops) of one chain.
        top: Entries kept per row; ``top >= K`` keeps every entry.
        normalize: Scale each row to unit L2 norm.

    Returns:
        ``(n_spans, K)`` float64 effect vectors.

    Raises:
        ValueError: If ``scores`` is not 2-D, holds NaN/inf, or ``top < 1``.
    """
    s = _as_2d(scores, "scores")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    if not np.isfinite(s).all():
        raise ValueError(f"scores hold {int((~np.isfinite(s)).sum())} NaN/inf values")
    out = s.copy()
    k = s.shape[1]
    if top < k:
        order = np.argsort(-np.abs(s), axis=1, kind="stable")
        drop = order[:, top:]
        np.put_along_axis(out, drop, 0.0, axis=1)
    if normalize:
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        out = np.divide(out, norm, out=np.zeros_like(out), where=norm > 0)
    return out


def prefix(points: np.ndarray, fraction: float) -> np.ndarray:
    """The first ``ceil(fraction * n)`` spans of a chain, at least 2 (or all, if fewer).

    Args:
        points: ``(n, D)`` chain.
        fraction: Reasoning progress in ``(0, 1]``.

    Returns:
        ``(m, D)`` with ``m = min(n, max(2, ceil(fraction * n)))``.

    Raises:
        ValueError: If ``fraction`` is outside ``(0, 1]``.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    p = _as_2d(points)
    n = p.shape[0]
    # round() guards against 0.3 * 10 = 3.0000000000000004 -> 4.
    m = min(n, max(2, math.ceil(round(fraction * n, 9))))
    return p[:m]


# ---------------------------------------------------------------------------- geometry
def step_lengths(points: np.ndarray) -> np.ndarray:
    """Euclidean lengths of the ``n - 1`` steps ``||e_{s+1} - e_s||`` (empty for ``n < 2``)."""
    p = _as_2d(points)
    if p.shape[0] < 2:
        return np.zeros(0)
    return np.asarray(np.linalg.norm(np.diff(p, axis=0), axis=1))


def path_length(points: np.ndarray) -> float:
    """Path length ``sum_s ||e_{s+1} - e_s||``; 0 for fewer than 2 points."""
    return float(step_lengths(points).sum())


def net_displacement(points: np.ndarray) -> float:
    """Net displacement ``||e_last - e_first||``; 0 for fewer than 2 points."""
    p = _as_2d(points)
    if p.shape[0] < 2:
        return 0.0
    return float(np.linalg.norm(p[-1] - p[0]))


def tortuosity(points: np.ndarray, *, eps: float = EPS) -> float:
    """Tortuosity: path length / net displacement (1 for a straight path, larger when it wanders).

    Conventions: fewer than 2 points gives NaN (undefined; statistics drop it);
    a path that does not move (length < ``eps``) gives 1; otherwise the
    displacement is floored at ``eps``, so a path that returns exactly to its
    start gets a very large but finite value (rank-based statistics treat it
    as "most tortuous"). Ratios within ``1e-9`` of 1 are reported as exactly
    1: two points always make a straight path, and rounding noise must not
    break ties in rank statistics.

    Args:
        points: ``(n, D)`` chain.
        eps: Displacement floor and no-movement tolerance.

    Returns:
        The tortuosity, ``>= 1`` (up to rounding) or NaN.
    """
    p = _as_2d(points)
    if p.shape[0] < 2:
        return float("nan")
    return _ratio(path_length(p), net_displacement(p), eps)


def _ratio(length: float, displacement: float, eps: float) -> float:
    """Path length / displacement with the conventions of [`tortuosity`][metrics.trajectory.tortuosity]."""
    if length < eps:
        return 1.0
    t = length / max(displacement, eps)
    return 1.0 if t < 1.0 + STRAIGHT_TOL else t


def concentration(scores: np.ndarray, *, method: Literal["entropy", "topk"] = "entropy", k: int = 3) -> np.ndarray:
    """How peaked each span's attribution is, in ``[0, 1]``, per step.

    With ``p = |s| / sum |s|`` over the ``K`` regions of a span:

    - ``"entropy"`` (default): ``1 - H(p) / log K``; 1 for a one-hot span, 0 for
      a uniform one. ``K = 1`` gives 1.
    - ``"topk"``: the share of absolute mass in the ``k`` largest regions;
      ``min(k, K) / K`` for a uniform span.

    A span whose scores are all zero has no distribution: NaN.

    Args:
        scores: ``(n_spans, K)`` raw scores (or one ``(K,)`` vector).
        method: ``"entropy"`` or ``"topk"``.
        k: Regions counted by ``"topk"``.

    Returns:
        ``(n_spans,)`` concentrations.

    Raises:
        ValueError: For an unknown method or ``k < 1``.
    """
    a = np.abs(_as_2d(scores, "scores"))
    total = a.sum(axis=1)
    ok = total > 0
    p = np.divide(a, total[:, None], out=np.zeros_like(a), where=ok[:, None])
    kk = a.shape[1]
    if method == "entropy":
        # entr(p) = -p log p (0 at p = 0); one region is fully concentrated.
        out = np.ones(a.shape[0]) if kk == 1 else 1.0 - entr(p).sum(axis=1) / math.log(kk)
    elif method == "topk":
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        out = -np.sort(-p, axis=1)[:, :k].sum(axis=1)
    else:
        raise ValueError(f"unknown concentration method {method!r}; choose 'entropy' or 'topk'")
    return np.where(ok, np.clip(out, 0.0, 1.0), np.nan)


def persistence(scores: np.ndarray) -> float:
    """Share of steps whose top region (largest ``|score|``) is the previous span's top region.

    A fixation measure: 1 when the chain never leaves one region. NaN for
    fewer than 2 spans.
    """
    s = _as_2d(scores, "scores")
    if s.shape[0] < 2:
        return float("nan")
    top = np.argmax(np.abs(s), axis=1)
    return float(np.mean(top[1:] == top[:-1]))


def progress_curve(per_step: Sequence[np.ndarray], n_bins: int = 10) -> dict[str, list[float]]:
    """Mean ± SEM of a per-step quantity over normalised reasoning progress.

    Step ``s`` of a chain of ``n`` sits at progress ``(s + 0.5) / n`` and falls
    into one of ``n_bins`` equal bins of ``[0, 1]``. Each chain contributes the
    mean of its finite values in a bin (one value per chain per bin, so long
    chains do not dominate); the curve is the mean over chains, with the
    standard error of that mean (0 when one chain contributes).

    Args:
        per_step: Per chain, a 1-D array of per-step values (e.g. [`concentration`][metrics.trajectory.concentration]).
        n_bins: Number of progress bins.

    Returns:
        ``{"progress": bin centres, "mean": ..., "sem": ..., "n": chains per bin}``;
        empty bins hold NaN.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    rows = []
    for v in per_step:
        x = np.asarray(v, dtype=np.float64).ravel()
        if x.size == 0:
            continue
        pos = (np.arange(x.size) + 0.5) / x.size
        b = np.minimum((pos * n_bins).astype(int), n_bins - 1)
        row = np.full(n_bins, np.nan)
        for i in range(n_bins):
            sel = x[(b == i) & np.isfinite(x)]
            if sel.size:
                row[i] = sel.mean()
        rows.append(row)
    centres = [(i + 0.5) / n_bins for i in range(n_bins)]
    if not rows:
        nan = [float("nan")] * n_bins
        return {"progress": centres, "mean": nan, "sem": list(nan), "n": [0.0] * n_bins}
    m = np.vstack(rows)
    n = np.isfinite(m).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(m, axis=0) / np.maximum(n, 1), np.nan)
        dev = np.where(np.isfinite(m), (m - mean) ** 2, 0.0).sum(axis=0)
        sd = np.sqrt(dev / np.maximum(n - 1, 1))
        sem = np.where(n > 1, sd / np.sqrt(np.maximum(n, 1)), np.where(n == 1, 0.0, np.nan))
    return {
        "progress": centres,
        "mean": [float(x) for x in mean],
        "sem": [float(x) for x in sem],
        "n": [float(x) for x in n],
    }


# ---------------------------------------------------------------------------- PCA
class TrajectoryPCA:
    """PCA of effect vectors to a few components, for drawing chains in 3-D.

    Fit on the points of a reference set of chains (all spans stacked) with
    ``sklearn.decomposition.PCA`` (full SVD), then project any chain. Component
    signs are fixed (largest absolute loading positive), so refits on the same
    data give the same picture. When the data has fewer than ``n_components``
    directions, the missing components are zero. The fitted state is plain
    arrays, saved as JSON lists ([`to_dict`][metrics.trajectory.TrajectoryPCA.to_dict]), never pickled.

    Args:
        n_components: Output dimension ``d``.

    Attributes:
        mean_: ``(D,)`` mean of the reference points.
        components_: ``(d, D)`` orthonormal directions (zero rows when rank-deficient).
        explained_variance_: ``(d,)`` variance along each component (sample variance, ``ddof = 1``;
            NaN when loaded from a state saved before it was stored).
        explained_variance_ratio_: ``(d,)`` share of variance per component.
    """

    def __init__(self, n_components: int = 3) -> None:
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        self.n_components = n_components

    def fit(self, chains: Sequence[np.ndarray]) -> TrajectoryPCA:
        """Fit on a reference set of chains, each ``(n_spans, D)``.

        Returns:
            self

        Raises:
            ValueError: If there are no points or the chains disagree on ``D``.
        """
        arrs = [_as_2d(c) for c in chains if np.asarray(c).size]
        if not arrs:
            raise ValueError("TrajectoryPCA.fit needs at least one non-empty chain")
        dims = {a.shape[1] for a in arrs}
        if len(dims) != 1:
            raise ValueError(f"chains have different dimensions {sorted(dims)}; effect vectors must share K")
        x = np.vstack(arrs)
        d, dim = self.n_components, x.shape[1]
        comps = np.zeros((d, dim))
        var = np.zeros(d)
        ratio = np.zeros(d)
        self.mean_ = x.mean(axis=0)
        if x.shape[0] > 1 and np.ptp(x, axis=0).max() > 0:
            pca = PCA(n_components=min(d, *x.shape), svd_solver="full").fit(x)
            self.mean_ = np.asarray(pca.mean_, dtype=np.float64)
            sv = np.asarray(pca.singular_values_, dtype=np.float64)
            # Directions with (numerically) zero variance are arbitrary; leave them as zero components.
            tol = sv[0] * max(x.shape) * np.finfo(np.float64).eps
            r = int((sv > tol).sum())
            comps[:r] = pca.components_[:r]
            var[:r] = pca.explained_variance_[:r]
            ratio[:r] = pca.explained_variance_ratio_[:r]
            for i in range(r):
                j = int(np.argmax(np.abs(comps[i])))
                if comps[i, j] < 0:
                    comps[i] = -comps[i]
        self.components_ = comps
        self.explained_variance_ = var
        self.explained_variance_ratio_ = ratio
        return self

    def _check(self) -> None:
        if not hasattr(self, "components_"):
            raise ValueError("TrajectoryPCA is not fitted; call fit() or load() first")

    def transform(self, points: np.ndarray) -> np.ndarray:
        """Project one chain ``(n, D)`` to ``(n, d)``.

        Raises:
            ValueError: If not fitted or ``D`` differs from the fit.
        """
        self._check()
        p = _as_2d(points)
        if p.shape[1] != self.mean_.shape[0]:
            raise ValueError(f"points have D = {p.shape[1]}, the PCA was fit on D = {self.mean_.shape[0]}")
        return np.asarray((p - self.mean_) @ self.components_.T)

    def fit_transform(self, chains: Sequence[np.ndarray]) -> list[np.ndarray]:
        """[`fit`][metrics.trajectory.TrajectoryPCA.fit], then [`transform`][metrics.trajectory.TrajectoryPCA.transform]
        every chain."""
        self.fit(chains)
        return [self.transform(c) for c in chains]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state."""
        self._check()
        return {
            "n_components": self.n_components,
            "mean": self.mean_.tolist(),
            "components": self.components_.tolist(),
            "explained_variance": self.explained_variance_.tolist(),
            "explained_variance_ratio": self.explained_variance_ratio_.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrajectoryPCA:
        """Inverse of [`to_dict`][metrics.trajectory.TrajectoryPCA.to_dict].

        Raises:
            ValueError: If the arrays' shapes disagree.
        """
        pca = cls(int(d["n_components"]))
        pca.mean_ = np.asarray(d["mean"], dtype=np.float64)
        pca.components_ = np.asarray(d["components"], dtype=np.float64).reshape(pca.n_components, -1)
        pca.explained_variance_ratio_ = np.asarray(d["explained_variance_ratio"], dtype=np.float64)
        ev = d.get("explained_variance")
        pca.explained_variance_ = (
            np.asarray(ev, dtype=np.float64) if ev is not None else np.full(pca.n_components, np.nan)
        )
        if pca.components_.shape[1] != pca.mean_.shape[0]:
            raise ValueError(f"PCA state: components {pca.components_.shape} do not match mean {pca.mean_.shape}")
        return pca

    def save(self, path: str | Path) -> None:
        """Write the state as JSON (atomically; no pickle)."""
        _atomic_write(Path(path), json.dumps(self.to_dict()) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrajectoryPCA:
        """Read a state written by [`save`][metrics.trajectory.TrajectoryPCA.save]."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------- statistics
def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float:
    """ROC AUC of ``scores`` for positive ``labels`` (``sklearn.metrics.roc_auc_score``; ties count one half).

    Equals the probability that a random positive scores above a random
    negative. NaN when either class is empty. Non-finite scores are dropped.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in length")
    keep = np.isfinite(s)
    s, y = s[keep], y[keep]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float(roc_auc_score(y, s))


def _auc_two_sample(pos: np.ndarray, neg: np.ndarray, axis: int = -1) -> np.ndarray:
    """ROC AUC of positives ``pos`` against negatives ``neg``, vectorised along ``axis``.

    The Mann–Whitney U of ``pos`` over ``n_pos n_neg`` (ties one half), which equals
    [`roc_auc`][metrics.trajectory.roc_auc]; used for the bootstrap, where it runs on
    all resamples at once.
    """
    u = mannwhitneyu(pos, neg, axis=axis, method="asymptotic", use_continuity=False).statistic
    return np.asarray(u, dtype=np.float64) / (np.shape(pos)[axis] * np.shape(neg)[axis])


def compare_outcomes(
    values_success: Sequence[float] | np.ndarray, values_failure: Sequence[float] | np.ndarray
) -> dict[str, float]:
    """Two-sided Mann–Whitney U test of a per-chain metric, success vs failure.

    Non-finite values are dropped (and not counted).

    Args:
        values_success: The metric on successful chains.
        values_failure: The metric on failed chains.

    Returns:
        ``success_median``, ``failure_median``, ``n_success``, ``n_failure``,
        ``u_statistic`` (U of the success sample), ``p_value`` and ``auc`` (the
        probability that a failure exceeds a success, ``1 - U / (n_s n_f)``).
        Statistics are NaN when a group is empty.
    """
    a, b = _finite(values_success), _finite(values_failure)
    out: dict[str, float] = {
        "success_median": float(np.median(a)) if a.size else float("nan"),
        "failure_median": float(np.median(b)) if b.size else float("nan"),
        "n_success": float(a.size),
        "n_failure": float(b.size),
        "u_statistic": float("nan"),
        "p_value": float("nan"),
        "auc": float("nan"),
    }
    if a.size and b.size:
        res = mannwhitneyu(a, b, alternative="two-sided")
        out["u_statistic"] = float(res.statistic)
        out["p_value"] = float(res.pvalue)
        out["auc"] = 1.0 - float(res.statistic) / (a.size * b.size)
    return out


def _hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an empirical AUC (Hanley and McNeil 1982), ``n_pos`` positives over ``n_neg``
    negatives."""
    q1, q2 = auc / (2.0 - auc), 2.0 * auc * auc / (1.0 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def mann_whitney_power(
    n_success: int,
    n_failure: int,
    auc: float = 0.6,
    *,
    alpha: float = 1e-3,
    power: float = 0.8,
    n_sim: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Power of [`compare_outcomes`][metrics.trajectory.compare_outcomes]' two-sided Mann–Whitney test to
    find that failures exceed successes, when their true AUC is ``auc``.

    Two estimates: a simulation under the equal-variance binormal model (successes ``N(0, 1)``, failures
    ``N(d, 1)`` with ``Phi(d / sqrt 2) = auc``; the test is run ``n_sim`` times and counts as a detection
    when ``p < alpha`` and the sample AUC is above 0.5), and the normal approximation with the null
    standard error ``sqrt((n_s + n_f + 1) / (12 n_s n_f))`` and Hanley and McNeil's standard error under
    the alternative. Also the smallest AUC the test detects with probability ``power`` (normal
    approximation).

    Args:
        n_success: Successful chains.
        n_failure: Failed chains.
        auc: The true AUC (probability that a failure's metric exceeds a success's), in (0.5, 1).
        alpha: Significance level of the two-sided test.
        power: Target power of the detectable AUC.
        n_sim: Simulated samples.
        seed: Seed of the simulation.

    Returns:
        ``n_success``, ``n_failure``, ``auc``, ``alpha``, ``power_simulated`` (with ``power_simulated_se``,
        its binomial standard error), ``power_normal``, ``target_power`` and ``detectable_auc``.

    Raises:
        ValueError: For an empty group, ``auc`` outside (0.5, 1), ``alpha`` or ``power`` outside (0, 1).
    """
    if n_success < 1 or n_failure < 1:
        raise ValueError(f"power needs both groups, got {n_success} successes and {n_failure} failures")
    if not 0.5 < auc < 1.0:
        raise ValueError(f"auc must be in (0.5, 1), got {auc}")
    if not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha} and {power}")
    z = float(norm.isf(alpha / 2))
    se0 = math.sqrt((n_success + n_failure + 1) / (12.0 * n_success * n_failure))

    def normal_power(a: float) -> float:
        return float(norm.sf((z * se0 - (a - 0.5)) / _hanley_mcneil_se(a, n_failure, n_success)))

    detectable = (
        float(brentq(lambda a: normal_power(a) - power, 0.5 + 1e-9, 1.0 - 1e-9))
        if normal_power(1.0 - 1e-9) > power
        else float("nan")
    )
    rng = np.random.default_rng(seed)
    d = math.sqrt(2.0) * float(norm.ppf(auc))
    hits = 0
    chunk = max(1, min(n_sim, 2_000_000 // (n_success + n_failure)))
    for start in range(0, n_sim, chunk):
        m = min(chunk, n_sim - start)
        s = rng.standard_normal((m, n_success))
        f = rng.standard_normal((m, n_failure)) + d
        res = mannwhitneyu(f, s, axis=1, alternative="two-sided", method="asymptotic")
        hits += int(np.sum((res.pvalue < alpha) & (res.statistic > 0.5 * n_success * n_failure)))
    p_sim = hits / n_sim
    return {
        "n_success": float(n_success),
        "n_failure": float(n_failure),
        "auc": float(auc),
        "alpha": float(alpha),
        "power_simulated": p_sim,
        "power_simulated_se": math.sqrt(p_sim * (1 - p_sim) / n_sim),
        "power_normal": normal_power(auc),
        "target_power": float(power),
        "detectable_auc": detectable,
        "n_sim": float(n_sim),
    }


def length_adjusted(
    values: Sequence[float] | np.ndarray,
    n_spans: Sequence[int] | np.ndarray,
    failed: Sequence[bool] | np.ndarray,
) -> dict[str, float]:
    """Does a per-chain metric tell failures from successes once chain length is accounted for?

    A logistic regression (statsmodels ``Logit``) of ``failed`` on the standardised log of the metric and
    the standardised log of the chain's span count: the metric's coefficient is its association with
    failure among chains of the same length (a longer chain can wander more, and failure rates differ by
    length). Chains with a non-finite or non-positive metric are dropped.

    Args:
        values: The metric per chain (positive, e.g. tortuosity or path length).
        n_spans: Spans per chain.
        failed: Whether each chain failed.

    Returns:
        ``n``, ``n_failure``, ``coef_metric`` (log-odds of failure per standard deviation of the log metric,
        length held fixed), ``se_metric``, ``ci_low``, ``ci_high`` (95 %), ``p_value``, ``coef_length``,
        ``p_value_length``, and ``coef_metric_unadjusted`` / ``p_value_unadjusted`` (without the length
        term). NaN when a group is empty or the fit does not converge.
    """
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationWarning

    v = np.asarray(values, dtype=np.float64).ravel()
    n = np.asarray(n_spans, dtype=np.float64).ravel()
    y = np.asarray(failed, dtype=bool).ravel()
    if not v.shape == n.shape == y.shape:
        raise ValueError(f"values, n_spans and failed differ in length: {v.shape}, {n.shape}, {y.shape}")
    keep = np.isfinite(v) & (v > 0) & (n > 0)
    v, n, y = v[keep], n[keep], y[keep]
    keys = (
        "coef_metric",
        "se_metric",
        "ci_low",
        "ci_high",
        "p_value",
        "coef_length",
        "p_value_length",
        "coef_metric_unadjusted",
        "p_value_unadjusted",
    )
    out: dict[str, float] = {"n": float(y.size), "n_failure": float(y.sum())} | {k: float("nan") for k in keys}
    if y.all() or not y.any() or y.size < 4:
        return out

    def z(x: np.ndarray) -> np.ndarray:
        lx = np.log(x)
        sd = lx.std()
        return (lx - lx.mean()) / sd if sd > 0 else lx - lx.mean()

    zm, zn = z(v), z(n)
    try:
        with warnings.catch_warnings():
            # perfect separation (tiny or planted samples) shows as non-convergence below and returns NaN
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", PerfectSeparationWarning)
            full = sm.Logit(y.astype(float), sm.add_constant(np.column_stack([zm, zn]), has_constant="add")).fit(
                disp=0, maxiter=200
            )
            plain = sm.Logit(y.astype(float), sm.add_constant(zm[:, None], has_constant="add")).fit(disp=0, maxiter=200)
    except (np.linalg.LinAlgError, ValueError) as e:
        logger.warning("length-adjusted logistic regression failed: %s", e)
        return out
    if not (full.mle_retvals.get("converged", False) and plain.mle_retvals.get("converged", False)):
        return out
    ci = full.conf_int()
    out.update(
        coef_metric=float(full.params[1]),
        se_metric=float(full.bse[1]),
        ci_low=float(ci[1, 0]),
        ci_high=float(ci[1, 1]),
        p_value=float(full.pvalues[1]),
        coef_length=float(full.params[2]),
        p_value_length=float(full.pvalues[2]),
        coef_metric_unadjusted=float(plain.params[1]),
        p_value_unadjusted=float(plain.pvalues[1]),
    )
    return out


def _adjust(pvalues: Sequence[float] | np.ndarray, method: str) -> list[float]:
    """``statsmodels.stats.multitest.multipletests`` over the finite p-values; NaN stays NaN."""
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method=method)[1]
    return [float(x) for x in out]


def bonferroni(pvalues: Sequence[float] | np.ndarray) -> list[float]:
    """Bonferroni-corrected p-values ``min(1, m * p)`` (statsmodels ``multipletests``, ``"bonferroni"``).

    ``m`` is the number of tests actually run: NaN p-values (a test that could
    not run, e.g. an empty group) neither count nor change, and stay NaN.
    """
    return _adjust(pvalues, "bonferroni")


def holm(pvalues: Sequence[float] | np.ndarray) -> list[float]:
    """Holm (step-down Bonferroni) adjusted p-values (statsmodels ``multipletests``, ``"holm"``).

    With the ``m`` finite p-values sorted ascending, the ``i``-th (from 0) becomes
    ``min(1, max_{j <= i} (m - j) p_(j))``: never above Bonferroni, and controlling
    the family-wise error rate just as it does. NaN p-values neither count nor
    change, and stay NaN.
    """
    return _adjust(pvalues, "holm")


def auc_by_progress(
    chains: Sequence[np.ndarray],
    labels: Sequence[bool] | np.ndarray,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    n_boot: int = 1000,
    seed: int = 0,
    *,
    level: float = 0.95,
    eps: float = EPS,
) -> dict[float, dict[str, float]]:
    """ROC AUC of prefix tortuosity predicting failure, per reasoning progress.

    For each fraction ``p``, every chain is cut to [`prefix`][metrics.trajectory.prefix] ``(chain, p)``
    and scored by its [`tortuosity`][metrics.trajectory.tortuosity]; the AUC treats failures as positives
    (higher tortuosity = predicted failure). Chains whose prefix tortuosity is
    undefined (fewer than 2 spans) are left out. The AUC is
    [`roc_auc`][metrics.trajectory.roc_auc]. The interval is a stratified
    percentile bootstrap ([`metrics.stats.two_sample_bootstrap_ci`][metrics.stats.two_sample_bootstrap_ci],
    ``scipy.stats.bootstrap`` with two independent samples): successes and failures are resampled
    separately, so every resample holds both classes in their observed numbers. Every fraction
    uses the same seed.

    Args:
        chains: Effect-vector chains ``(n_spans, D)`` (see [`effect_vectors`][metrics.trajectory.effect_vectors]).
        labels: True for a failed chain.
        fractions: Progress values in ``(0, 1]``.
        n_boot: Bootstrap resamples (0 skips the interval).
        seed: Resampling seed.
        level: Interval coverage.
        eps: See [`tortuosity`][metrics.trajectory.tortuosity].

    Returns:
        ``{fraction: {"auc", "ci_low", "ci_high", "n_success", "n_failure", "mean_prefix_spans"}}``
        (NaN where a class is empty). Where every prefix has 2 spans the
        tortuosities all equal 1 and the AUC is exactly 0.5: no information yet.

    Raises:
        ValueError: If ``chains`` and ``labels`` differ in length.
    """
    y = np.asarray(labels, dtype=bool).ravel()
    if len(chains) != y.size:
        raise ValueError(f"{len(chains)} chains but {y.size} labels")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    out: dict[float, dict[str, float]] = {}
    for frac in fractions:
        pre = [prefix(c, frac) for c in chains]
        t = np.array([tortuosity(q, eps=eps) for q in pre]) if pre else np.zeros(0)
        n_pre = np.array([q.shape[0] for q in pre], dtype=np.float64)
        keep = np.isfinite(t)
        pos, neg = t[keep & y], t[keep & ~y]
        auc = roc_auc(np.concatenate([pos, neg]), np.r_[np.ones(pos.size, bool), np.zeros(neg.size, bool)])
        lo = hi = float("nan")
        if n_boot > 0 and pos.size and neg.size:
            lo, hi = two_sample_bootstrap_ci(pos, neg, _auc_two_sample, n_boot=n_boot, level=level, seed=seed)
        out[float(frac)] = {
            "auc": auc,
            "ci_low": lo,
            "ci_high": hi,
            "n_success": float(neg.size),
            "n_failure": float(pos.size),
            "mean_prefix_spans": float(n_pre[keep].mean()) if keep.any() else float("nan"),
        }
    return out


def three_outcome(
    score_chains: Sequence[np.ndarray],
    outcomes: Sequence[str],
    *,
    top: int = 32,
    normalize: bool = True,
    eps: float = EPS,
) -> dict[str, Any]:
    """Fixation vs wandering: per-chain statistics by outcome, and pairwise tests.

    Per chain (raw scores ``(n, K)``): ``concentration`` (mean of
    [`concentration`][metrics.trajectory.concentration] over spans), ``concentration_sd`` (its standard
    deviation across spans: instability), ``persistence`` ([`persistence`][metrics.trajectory.persistence]),
    ``step_size`` (mean [`step_lengths`][metrics.trajectory.step_lengths] of the effect vectors),
    ``path_length`` and ``tortuosity``. Hallucinations are expected to
    *fixate* (high, steady concentration, high persistence, small steps) and
    reasoning errors to *wander* (low, unstable concentration, large steps).

    Args:
        score_chains: Per chain, raw scores ``(n_spans, K)``.
        outcomes: Per chain, ``"success"``, ``"reasoning_error"`` or
            ``"hallucination"``; other labels are ignored.
        top: See [`effect_vectors`][metrics.trajectory.effect_vectors].
        normalize: See [`effect_vectors`][metrics.trajectory.effect_vectors].
        eps: See [`tortuosity`][metrics.trajectory.tortuosity].

    Returns:
        ``{"by_outcome": {outcome: {"n", metric: {"median", "mean", "sem"}}},
        "tests": {"<a>_vs_<b>": {metric: {"median_a", "median_b", "u_statistic",
        "p_value", "p_value_bonferroni", "p_value_holm"}}}}``; Bonferroni and Holm
        each run over every test in the block (3 pairs x 6 metrics).

    Raises:
        ValueError: If the two sequences differ in length.
    """
    if len(score_chains) != len(outcomes):
        raise ValueError(f"{len(score_chains)} chains but {len(outcomes)} outcomes")
    names = ("concentration", "concentration_sd", "persistence", "step_size", "path_length", "tortuosity")
    per: dict[str, dict[str, list[float]]] = {o: {m: [] for m in names} for o in OUTCOMES}
    for s, o in zip(score_chains, outcomes, strict=True):
        if o not in per:
            continue
        c = concentration(s)
        cf = c[np.isfinite(c)]
        e = effect_vectors(s, top, normalize=normalize)
        st = step_lengths(e)
        vals = {
            "concentration": float(cf.mean()) if cf.size else float("nan"),
            "concentration_sd": float(cf.std()) if cf.size > 1 else float("nan"),
            "persistence": persistence(s),
            "step_size": float(st.mean()) if st.size else float("nan"),
            "path_length": path_length(e),
            "tortuosity": tortuosity(e, eps=eps),
        }
        for m in names:
            per[o][m].append(vals[m])
    by: dict[str, Any] = {}
    for o in OUTCOMES:
        entry: dict[str, Any] = {"n": len(per[o]["concentration"])}
        for m in names:
            x = _finite(per[o][m])
            entry[m] = {
                "median": float(np.median(x)) if x.size else float("nan"),
                "mean": float(x.mean()) if x.size else float("nan"),
                "sem": float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else float("nan"),
                "n": x.size,
            }
        by[o] = entry
    pairs = (("hallucination", "reasoning_error"), ("hallucination", "success"), ("reasoning_error", "success"))
    tests: dict[str, dict[str, dict[str, float]]] = {}
    flat: list[tuple[str, str]] = []
    pvals: list[float] = []
    for a, b in pairs:
        key = f"{a}_vs_{b}"
        tests[key] = {}
        for m in names:
            r = compare_outcomes(per[a][m], per[b][m])
            tests[key][m] = {
                "median_a": r["success_median"],
                "median_b": r["failure_median"],
                "n_a": r["n_success"],
                "n_b": r["n_failure"],
                "u_statistic": r["u_statistic"],
                "p_value": r["p_value"],
            }
            flat.append((key, m))
            pvals.append(r["p_value"])
    for (key, m), pb, ph in zip(flat, bonferroni(pvals), holm(pvals), strict=True):
        tests[key][m]["p_value_bonferroni"] = pb
        tests[key][m]["p_value_holm"] = ph
    return {"by_outcome": by, "tests": tests}


# ---------------------------------------------------------------------------- online statistics


class OnlineTrajectory:
    """A chain's trajectory statistics, updated one span at a time in O(K).

    Each span's raw region scores become an effect vector ([`effect_vectors`][metrics.trajectory.effect_vectors]
    with ``top`` and ``normalize``); after each span, [`update`][metrics.trajectory.OnlineTrajectory.update]
    returns the statistics of the chain so far, equal to the whole-chain functions applied to the prefix:
    ``path_length`` ([`path_length`][metrics.trajectory.path_length]), ``displacement``
    ([`net_displacement`][metrics.trajectory.net_displacement]), ``tortuosity``
    ([`tortuosity`][metrics.trajectory.tortuosity]; NaN before two spans) and this span's
    ``concentration`` ([`concentration`][metrics.trajectory.concentration], entropy-based, of the raw scores).

    Args:
        top: See [`effect_vectors`][metrics.trajectory.effect_vectors].
        normalize: See [`effect_vectors`][metrics.trajectory.effect_vectors].
        eps: See [`tortuosity`][metrics.trajectory.tortuosity].
    """

    def __init__(self, *, top: int = 32, normalize: bool = True, eps: float = EPS) -> None:
        self.top = top
        self.normalize = normalize
        self.eps = eps
        self.reset()

    def reset(self) -> None:
        """Start a new chain."""
        self.n_spans = 0
        self._first: list[float] | None = None  # effect vectors of the first and the latest span
        self._last: list[float] | None = None
        self._length = 0.0

    def update(self, score_vector: np.ndarray | list[float]) -> dict[str, float]:
        """Add one span's raw region scores ``(K,)`` (an array, or a list of floats as the stream passes them).

        Returns:
            ``n_spans``, ``path_length``, ``displacement``, ``tortuosity`` and ``concentration``.

        Raises:
            ValueError: If ``K`` changes within a chain, or a score is NaN or infinite.
        """
        # One short vector per span, on the streaming path: plain floats, no array per step (the same arithmetic
        # as effect_vectors, concentration, path_length and net_displacement on the prefix; tested equal).
        if type(score_vector) is list:  # the stream passes its scores as floats already
            v = score_vector
        else:
            v = np.asarray(score_vector, dtype=np.float64).reshape(-1).tolist()
        if not all(map(math.isfinite, v)):
            raise ValueError(f"scores hold {sum(not math.isfinite(x) for x in v)} NaN/inf values")
        k = len(v)
        if self._last is not None and k != len(self._last):
            raise ValueError(f"span has K = {k}, earlier spans of this chain had {len(self._last)}")
        if self.top < k:  # keep the top largest |score| (ties: lower index kept), as effect_vectors
            e = [0.0] * k
            for i in sorted(range(k), key=lambda j: -abs(v[j]))[: self.top]:
                e[i] = v[i]
        else:
            e = list(v)
        if self.normalize:
            size = math.hypot(*e)
            if size > 0:
                e = [x / size for x in e]
        if self._first is None:
            self._first = e
        else:
            assert self._last is not None
            self._length += math.dist(e, self._last)
        self._last = e
        self.n_spans += 1
        disp = math.dist(e, self._first)
        tort = _ratio(self._length, disp, self.eps) if self.n_spans >= 2 else float("nan")
        return {
            "n_spans": float(self.n_spans),
            "path_length": self._length,
            "displacement": disp,
            "tortuosity": tort,
            "concentration": _concentration_one(v),
        }


def _concentration_one(v: list[float]) -> float:
    """[`concentration`][metrics.trajectory.concentration] (entropy) of one span's scores, on plain floats."""
    a = [abs(x) for x in v]
    total = math.fsum(a)
    if not total > 0:
        return float("nan")
    if len(a) == 1:
        return 1.0
    h = -math.fsum(p * math.log(p) for p in (x / total for x in a) if p > 0)
    return min(1.0, max(0.0, 1.0 - h / math.log(len(a))))


# ---------------------------------------------------------------------------- online flagging
class TortuosityFlagger:
    """Online early-failure flag: raise when a chain's trajectory so far crosses a calibrated threshold.

    Two statistics of the prefix seen so far (from ``min_spans`` spans on):

    - ``"tortuosity"`` (the vSTREAM rule): flag when the prefix tortuosity rises *above* the threshold
      (the chain wanders);
    - ``"stillness"``: flag when the prefix's mean step size (path length over steps, on the effect
      vectors) falls *below* the threshold (the attribution barely moves; on the v2 benchmark, the mark
      of a hallucinating chain).

    Calibration ([`fit`][metrics.trajectory.TortuosityFlagger.fit]) runs every reference chain (successful chains)
    through the same online rule and records, per chain, its most extreme prefix value (the largest
    tortuosity, or the smallest mean step); the threshold is the quantile of those extremes that
    a fraction ``fpr`` of reference chains crosses. So about a fraction ``fpr`` of reference chains would
    be flagged at some point: ``fpr`` is a per-chain false-positive rate, not a per-span one.

    Online use: [`update`][metrics.trajectory.TortuosityFlagger.update] takes one span's raw region scores at a time,
    maps it to its effect vector ([`effect_vectors`][metrics.trajectory.effect_vectors] with the same ``top``
    and ``normalize``), and updates path length, first and last point in O(K).
    Once it flags, it stays flagged until [`reset`][metrics.trajectory.TortuosityFlagger.reset].

    Args:
        fpr: Target per-chain false-positive rate on the reference, in (0, 1).
        min_spans: Spans needed before a flag can be raised (>= 3; two points
            always have tortuosity 1).
        statistic: ``"tortuosity"`` (default) or ``"stillness"``.
        top: See [`effect_vectors`][metrics.trajectory.effect_vectors].
        normalize: See [`effect_vectors`][metrics.trajectory.effect_vectors].
        eps: See [`tortuosity`][metrics.trajectory.tortuosity].

    Attributes:
        threshold_: The calibrated threshold.
        n_reference_: Reference chains long enough to calibrate on.
        heldout_: The calibration's held-out figures (``fpr``, ``recall``, ``n_reference``, ``n_failure``),
            set by whoever measured them (``attrib trajectories``); ``None`` when unknown.
        flagged_at: Index (0-based) of the span whose arrival raised the flag, or ``None``.
        n_seen: Spans seen since the last reset.
        trajectory_: The chain's statistics after the last span
            ([`OnlineTrajectory.update`][metrics.trajectory.OnlineTrajectory.update]).
    """

    #: The statistics a flagger can watch, and the direction that raises the flag (+1: above, -1: below).
    STATISTICS: ClassVar[Mapping[str, int]] = MappingProxyType({"tortuosity": 1, "stillness": -1})

    def __init__(
        self,
        *,
        fpr: float = 0.1,
        min_spans: int = 3,
        top: int = 32,
        normalize: bool = True,
        eps: float = EPS,
        statistic: str = "tortuosity",
    ) -> None:
        if not 0 < fpr < 1:
            raise ValueError(f"fpr must be in (0, 1), got {fpr}")
        if statistic not in self.STATISTICS:
            raise ValueError(f"statistic must be one of {', '.join(self.STATISTICS)}, got {statistic!r}")
        self.statistic = statistic
        self._sign = self.STATISTICS[statistic]
        if min_spans < 3:
            raise ValueError(f"min_spans must be >= 3 (two points always have tortuosity 1), got {min_spans}")
        self.fpr = fpr
        self.min_spans = min_spans
        self.top = top
        self.normalize = normalize
        self.eps = eps
        self.heldout_: dict[str, float] | None = None
        self.reset()

    # -------------------------------------------------------------- calibration
    def max_prefix_tortuosity(self, scores: np.ndarray) -> float:
        """Largest prefix tortuosity of a whole chain from ``min_spans`` spans on (NaN if shorter)."""
        e = effect_vectors(scores, self.top, normalize=self.normalize)
        n = e.shape[0]
        if n < self.min_spans:
            return float("nan")
        cum = np.concatenate([[0.0], np.cumsum(step_lengths(e))])
        disp = np.linalg.norm(e - e[0], axis=1)
        m = np.arange(self.min_spans - 1, n)
        return max(_ratio(float(cum[i]), float(disp[i]), self.eps) for i in m)

    def prefix_values(self, scores: np.ndarray) -> np.ndarray:
        """The watched statistic after each span from ``min_spans`` on (empty if the chain is shorter):
        prefix tortuosity, or prefix mean step size (``"stillness"``)."""
        e = effect_vectors(scores, self.top, normalize=self.normalize)
        n = e.shape[0]
        if n < self.min_spans:
            return np.zeros(0)
        cum = np.concatenate([[0.0], np.cumsum(step_lengths(e))])
        m = np.arange(self.min_spans - 1, n)
        if self.statistic == "stillness":
            return cum[m] / m
        disp = np.linalg.norm(e - e[0], axis=1)
        return np.array([_ratio(float(cum[i]), float(disp[i]), self.eps) for i in m])

    def extreme_prefix_value(self, scores: np.ndarray) -> float:
        """The chain's most flag-ward prefix value (largest tortuosity, smallest mean step; NaN if shorter than
        ``min_spans``): the chain is flagged exactly when this crosses the threshold."""
        v = self.prefix_values(scores)
        if v.size == 0:
            return float("nan")
        return float(v.max() if self._sign > 0 else v.min())

    def rule(self) -> str:
        """What the flag watches, in words (for reports)."""
        if self.statistic == "stillness":
            return "prefix mean step size below threshold: the attribution barely moves"
        return "prefix tortuosity above threshold: the attribution wanders"

    def _crosses(self, value: float) -> bool:
        return bool(value > self.threshold_ if self._sign > 0 else value < self.threshold_)

    @property
    def current_value(self) -> float:
        """The watched statistic of the spans seen so far (NaN before 2 spans)."""
        if self.statistic == "stillness":
            n = self.n_seen
            return self.trajectory_.get("path_length", float("nan")) / (n - 1) if n >= 2 else float("nan")
        return self.current_tortuosity

    def fit(self, reference: Sequence[np.ndarray]) -> TortuosityFlagger:
        """Calibrate the threshold on reference (successful) chains of raw scores ``(n_spans, K)``.

        Returns:
            self

        Raises:
            ValueError: If no reference chain has at least ``min_spans`` spans.
        """
        vals = _finite([self.extreme_prefix_value(s) for s in reference])
        if vals.size == 0:
            raise ValueError(f"no reference chain has >= {self.min_spans} spans; cannot calibrate the flagger")
        self.threshold_ = float(np.quantile(vals, 1 - self.fpr if self._sign > 0 else self.fpr))
        self.n_reference_ = int(vals.size)
        if vals.size < 1 / self.fpr:
            logger.warning(
                "flagger calibrated on %d reference chains; the %.3g quantile is poorly determined",
                vals.size,
                1 - self.fpr,
            )
        self.reset()
        return self

    def _check(self) -> None:
        if not hasattr(self, "threshold_"):
            raise ValueError("TortuosityFlagger is not calibrated; call fit() or from_dict() first")

    # -------------------------------------------------------------- online
    def reset(self) -> None:
        """Start a new chain."""
        self.flagged_at: int | None = None
        self._path = OnlineTrajectory(top=self.top, normalize=self.normalize, eps=self.eps)
        self.trajectory_: dict[str, float] = {}

    @property
    def n_seen(self) -> int:
        """Spans seen since the last reset."""
        return self._path.n_spans

    @property
    def current_tortuosity(self) -> float:
        """Tortuosity of the spans seen so far (NaN before 2 spans)."""
        return self.trajectory_.get("tortuosity", float("nan"))

    def update(self, score_vector: np.ndarray) -> bool:
        """Add one span's raw region scores ``(K,)``; return whether the chain is flagged.

        Raises:
            ValueError: If not calibrated, or ``K`` changes within a chain.
        """
        self._check()
        self.trajectory_ = self._path.update(score_vector)
        if self.flagged_at is None and self.n_seen >= self.min_spans and self._crosses(self.current_value):
            self.flagged_at = self.n_seen - 1
        return self.flagged_at is not None

    def run(self, scores: np.ndarray) -> int | None:
        """Feed a whole chain ``(n_spans, K)`` from a fresh start; return ``flagged_at``.

        The state after the chain stays readable (``flagged_at``,
        [`current_tortuosity`][metrics.trajectory.TortuosityFlagger.current_tortuosity]) until the next
        [`reset`][metrics.trajectory.TortuosityFlagger.reset] or [`run`][metrics.trajectory.TortuosityFlagger.run].
        """
        self.reset()
        for row in _as_2d(scores, "scores"):
            self.update(row)
        return self.flagged_at

    # -------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready calibrated state (settings and threshold; not the current chain)."""
        self._check()
        d: dict[str, Any] = {
            "fpr": self.fpr,
            "min_spans": self.min_spans,
            "top": self.top,
            "normalize": self.normalize,
            "eps": self.eps,
            "statistic": self.statistic,
            "threshold": self.threshold_,
            "n_reference": self.n_reference_,
        }
        heldout = self.heldout_
        if heldout:
            d["heldout"] = dict(heldout)
        return d

    def heldout_figures(self) -> dict[str, float] | None:
        """The calibration's held-out figures, when recorded: ``fpr`` (successful chains flagged, by
        cross-fitting), ``recall`` (failed chains flagged; failures never enter calibration) and the counts."""
        h = self.heldout_
        return dict(h) if h else None

    def works(self, ratio: float = 2.0) -> bool:
        """Whether the flag is worth showing by default: held-out recall at least ``ratio`` times the
        false-positive rate (the larger of the target and the held-out one). ``False`` without figures."""
        h = self.heldout_figures()
        if not h or h.get("recall") is None or h.get("fpr") is None:
            return False
        recall, fpr = float(h["recall"]), max(float(h["fpr"]), self.fpr)
        return bool(np.isfinite(recall) and recall >= ratio * fpr)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TortuosityFlagger:
        """Inverse of [`to_dict`][metrics.trajectory.TortuosityFlagger.to_dict]."""
        f = cls(
            fpr=float(d["fpr"]),
            min_spans=int(d["min_spans"]),
            top=int(d["top"]),
            normalize=bool(d["normalize"]),
            eps=float(d["eps"]),
            statistic=str(d.get("statistic", "tortuosity")),  # files saved before stillness existed
        )
        f.threshold_ = float(d["threshold"])
        f.n_reference_ = int(d["n_reference"])
        if isinstance(d.get("heldout"), Mapping):
            f.heldout_ = {str(k): float(v) for k, v in d["heldout"].items()}
        return f
