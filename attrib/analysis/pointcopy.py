"""Analyses of the v1 point-and-copy variant against the base model trained on the same data.

Three questions (the v1 paper and its referee; docs/pointcopy.md):

1. [`attention_by_position`][attrib.analysis.pointcopy.attention_by_position] /
[`compare_decay`][attrib.analysis.pointcopy.compare_decay]: does attention to the
   image, and to the span's ground-truth region, decay along the chain (v1 Fig. 3)?
   Per span, the image mass is the attention mass on all image tokens (copies
   aliased to their source, see [`attrib.variants.pointcopy.attribution`][attrib.variants.pointcopy.attribution]),
   summed over
   regions and averaged over layers and heads; the ground-truth mass is the part
   on the regions inside the objects the span names.
2. [`copy_vs_source_by_layer`][attrib.analysis.pointcopy.copy_vs_source_by_layer]: per layer, attention to copy tokens
vs to the
   original image tokens they copy (v1 Fig. 5).
3. [`late_chain_attribution`][attrib.analysis.pointcopy.late_chain_attribution]: with chains bucketed by length, is the
correct
   region's attribution late in the chain higher for v1 than for the base model?
   Per late span (the last third of its chain), the ground-truth share is the part
   of the positive attribution on ground-truth regions; the groups are compared
   with a two-sided Mann–Whitney U test, Cliff's delta and the difference of
   means with a bootstrap interval.
4. The direct-only control ([`direct_features`][attrib.analysis.pointcopy.direct_features],
   [`total_and_direct`][attrib.analysis.pointcopy.total_and_direct]): attention to a copy
   token counts for its source cell's regions, and copies land on the ground truth, so
   pointing, LDS and the late-chain figures are also computed on the direct part alone
   (``features`` minus the stored via-copy part: attention that reaches a region's own
   image tokens, not through a copy).

Every function takes collections (see [`attrib.collect`][attrib.collect]), captures or arrays
and returns JSON-ready dicts; nothing prints. Captures come through the model's
variant ([`attrib.variants`][attrib.variants]), so nothing here imports the variant itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import mannwhitneyu, spearmanr

from metrics.faithfulness import lds, pointing_accuracy, r2
from metrics.stats import bootstrap_ci, paired_bootstrap_ci, paired_bootstrap_difference, two_sample_bootstrap_ci

if TYPE_CHECKING:
    from estimators.linear import LinearHeadEstimator

__all__ = [
    "Scorer",
    "attention_by_position",
    "cliffs_delta",
    "clustered_difference",
    "compare_decay",
    "copy_attention",
    "copy_share_by_position",
    "copy_vs_source_by_layer",
    "direct_features",
    "faithfulness",
    "gt_share",
    "late_chain_attribution",
    "run_analysis",
    "total_and_direct",
    "with_direct_features",
]

#: Features ``(n_spans, K, L, H)`` -> region scores ``(n_spans, K)``.
Scorer = Callable[[np.ndarray], np.ndarray]

logger = logging.getLogger(__name__)


def cliffs_delta(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Cliff's delta ``P(a > b) - P(a < b)`` (NaN when a group is empty)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not x.size or not y.size:
        return float("nan")
    d = np.sign(x[:, None] - y[None, :])
    return float(d.mean())


def gt_share(scores: np.ndarray, gt: Sequence[int]) -> float:
    """Share of a span's positive attribution on its ground-truth regions (NaN without positive mass)."""
    s = np.clip(np.asarray(scores, dtype=np.float64), 0, None)
    total = s.sum()
    if total <= 0 or not len(gt):
        return float("nan")
    return float(s[list(gt)].sum() / total)


def attention_by_position(examples: Iterable[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per span: chain length, position, image mass and ground-truth mass.

    Args:
        examples: Collection examples (``features`` ``(n_spans, K, L, H)``, optional
            ``span_gt_regions``).

    Returns:
        ``chain_len``, ``position`` (0-based), ``relative`` (position / (len - 1), 0 for
        one-span chains), ``image_mass`` and ``gt_mass`` (NaN where the span has no
        matched ground truth), as arrays over all spans.
    """
    cols: dict[str, list[float]] = {k: [] for k in ("chain_len", "position", "relative", "image_mass", "gt_mass")}
    for ex in examples:
        f = np.asarray(ex["features"], dtype=np.float64)
        n = f.shape[0]
        gts = ex.get("span_gt_regions") or [None] * n
        per_region = f.mean(axis=(2, 3))  # (n, K)
        for i in range(n):
            cols["chain_len"].append(n)
            cols["position"].append(i)
            cols["relative"].append(i / (n - 1) if n > 1 else 0.0)
            cols["image_mass"].append(float(per_region[i].sum()))
            g = gts[i] if i < len(gts) else None
            cols["gt_mass"].append(float(per_region[i, list(g)].sum()) if g else float("nan"))
    return {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}


def _fit_slope(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.polyfit(x, y, 1)[0]) if np.ptp(x) > 0 else 0.0


def _slope(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3 or np.ptp(x) == 0:
        return {"slope": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": float(x.size)}
    slope = float(np.polyfit(x, y, 1)[0])
    idx = np.arange(x.size)
    lo, hi = bootstrap_ci(idx, lambda i: _fit_slope(x[i.astype(int)], y[i.astype(int)]), n_boot=500)
    return {"slope": slope, "ci_low": lo, "ci_high": hi, "n": float(x.size)}


def compare_decay(groups: Mapping[str, Iterable[dict[str, Any]]], *, max_position: int = 8) -> dict[str, Any]:
    """Image and ground-truth attention mass against span position, per model.

    Args:
        groups: ``{model name: collection examples}``.
        max_position: Positions beyond this are pooled into the last bin.

    Returns:
        Per model: ``by_position`` (mean and bootstrap CI of both masses per position
        bin) and the slopes of both masses against the relative position.
    """
    out: dict[str, Any] = {}
    for name, exs in groups.items():
        a = attention_by_position(exs)
        pos = np.minimum(a["position"], max_position)
        rows = []
        for p in range(max_position + 1):
            sel = pos == p
            if not sel.any():
                continue
            row: dict[str, float] = {"position": p, "n": int(sel.sum())}
            for key in ("image_mass", "gt_mass"):
                v = a[key][sel]
                v = v[np.isfinite(v)]
                if v.size:
                    lo, hi = bootstrap_ci(v, n_boot=500)
                    row.update({key: float(v.mean()), f"{key}_ci_low": lo, f"{key}_ci_high": hi})
            rows.append(row)
        out[name] = {
            "by_position": rows,
            "image_mass_slope": _slope(a["relative"], a["image_mass"]),
            "gt_mass_slope": _slope(a["relative"], a["gt_mass"]),
            "n_spans": int(a["position"].size),
        }
    return out


def copy_vs_source_by_layer(captures: Iterable[Any], copy_sources: Iterable[Sequence[int]]) -> dict[str, Any]:
    """Per layer, attention to copy tokens vs to the image tokens they copy.

    Each capture must have been taken with a one-region-per-image-token
    assignment (``K = N_image``, identity) and ``per_token=True`` through
    the point-and-copy variant, so that per-token
    ``per_token`` minus the via-copy part is the mass on each image token. Only
    generated tokens that come after at least one copy count.

    Args:
        captures: [`CaptureResult`][attrib.capture.sdpa.CaptureResult] objects.
        copy_sources: Per capture, the copied image token of every generated token (``-1`` for text).

    Returns:
        ``copy_mass`` and ``source_mass``: ``(L,)`` means over those tokens (and heads), and ``n_tokens``.
    """
    copy_rows: list[np.ndarray] = []
    src_rows: list[np.ndarray] = []
    for cap, srcs in zip(captures, copy_sources, strict=True):
        if cap.per_token is None:
            raise ValueError("copy_vs_source_by_layer needs captures taken with per_token=True")
        srcs = list(srcs)
        seen: list[int] = []
        for t in range(cap.per_token.shape[0]):
            if seen:
                total = cap.per_token[t]  # (K, L, H): direct + via
                via = _via_per_token(cap, t)
                direct = total - via
                uniq = sorted(set(seen))
                copy_rows.append(via[uniq].sum(axis=0).mean(axis=-1))
                src_rows.append(direct[uniq].sum(axis=0).mean(axis=-1))
            if t < len(srcs) and srcs[t] >= 0:
                seen.append(srcs[t])
    if not copy_rows:
        return {"copy_mass": [], "source_mass": [], "n_tokens": 0}
    return {
        "copy_mass": np.mean(copy_rows, axis=0).tolist(),
        "source_mass": np.mean(src_rows, axis=0).tolist(),
        "n_tokens": len(copy_rows),
    }


def _via_per_token(cap: Any, t: int) -> np.ndarray:
    pt = getattr(cap, "per_token_copy", None)
    if pt is None:
        raise ValueError("the capture has no per-token via-copy features (take it from a point-and-copy model)")
    return np.asarray(pt[t])


def late_chain_attribution(
    groups: Mapping[str, Iterable[dict[str, Any]]],
    score: Callable[[dict[str, Any]], np.ndarray],
    *,
    buckets: Sequence[tuple[int, int]] = ((2, 3), (4, 5), (6, 100)),
    late_fraction: float = 1 / 3,
    reference: str | None = None,
    skip_own_copies: bool = False,
) -> dict[str, Any]:
    """Is the correct region's attribution late in long chains higher for one model than another?

    Args:
        groups: ``{model name: collection examples}`` (two models).
        score: Example -> ``(n_spans, K)`` attribution scores (e.g. an estimator's).
        buckets: Inclusive chain-length ranges.
        late_fraction: Spans in the last ``late_fraction`` of their chain count as late.
        reference: The model the other is compared against (default: the first).
        skip_own_copies: Leave out spans that hold copy tokens themselves (a span that
            copies its object's cells attends to those copies, which alias the
            ground-truth regions); what remains measures grounding carried forward
            from earlier copies and direct attention. Needs ``spans`` and
            ``copy_sources`` in the examples (models without copies keep every span).

    Returns:
        Per bucket: per model the late-span ground-truth shares' mean and n, and the
        comparison (other vs reference): difference of means with a percentile-bootstrap 95 % CI
        (``ci_low``, ``ci_high``: the two models' spans resampled independently, see
        [`metrics.stats.two_sample_bootstrap_ci`][metrics.stats.two_sample_bootstrap_ci]) and one
        that resamples examples (``examples_ci_low``, ``examples_ci_high``, ``n_examples``: both
        models' late spans of each drawn example together, see
        [`clustered_difference`][attrib.analysis.pointcopy.clustered_difference]; an example is
        its ``uid``, or its index in the list without one), Cliff's delta, Mann–Whitney U and
        its two-sided p-value (both of which treat spans as independent).

    Raises:
        ValueError: Unless exactly two models are given.
    """
    if len(groups) != 2:
        raise ValueError(f"late_chain_attribution compares two models, got {len(groups)}")
    names = list(groups)
    ref = reference or names[0]
    other = names[1] if ref == names[0] else names[0]
    shares: dict[str, list[tuple[int, float, str]]] = {n: [] for n in names}
    for name, exs in groups.items():
        for j, ex in enumerate(exs):
            uid = str(ex.get("uid", f"#{j}"))
            s = np.asarray(score(ex), dtype=np.float64)
            n = s.shape[0]
            gts = ex.get("span_gt_regions") or [None] * n
            first_late = int(np.floor(n * (1 - late_fraction)))
            own = _spans_with_copies(ex) if skip_own_copies else set()
            for i in range(min(first_late, n - 1), n):
                if i in own:
                    continue
                g = gts[i] if i < len(gts) else None
                if g:
                    v = gt_share(s[i], g)
                    if np.isfinite(v):
                        shares[name].append((n, v, uid))
    rows = []
    for lo, hi in buckets:
        a = np.array([v for n, v, _ in shares[ref] if lo <= n <= hi])
        b = np.array([v for n, v, _ in shares[other] if lo <= n <= hi])
        ua = [u for n, _, u in shares[ref] if lo <= n <= hi]
        ub = [u for n, _, u in shares[other] if lo <= n <= hi]
        row: dict[str, Any] = {
            "chain_len": [lo, hi],
            ref: {"n": int(a.size), "mean": float(a.mean()) if a.size else float("nan")},
            other: {"n": int(b.size), "mean": float(b.mean()) if b.size else float("nan")},
        }
        if a.size >= 2 and b.size >= 2:
            res = mannwhitneyu(b, a, alternative="two-sided")
            lo_ci, hi_ci = two_sample_bootstrap_ci(a, b, _mean_difference, n_boot=1000, seed=0)
            cl = clustered_difference(a, ua, b, ub)
            row["comparison"] = {
                "difference": float(b.mean() - a.mean()),
                "ci_low": lo_ci,
                "ci_high": hi_ci,
                "examples_ci_low": cl["ci_low"],
                "examples_ci_high": cl["ci_high"],
                "n_examples": cl["n_examples"],
                "cliffs_delta": cliffs_delta(b, a),
                "u_statistic": float(res.statistic),
                "p_value": float(res.pvalue),
            }
        rows.append(row)
    return {
        "reference": ref,
        "other": other,
        "late_fraction": late_fraction,
        "skip_own_copies": skip_own_copies,
        "buckets": rows,
    }


def clustered_difference(
    a: Sequence[float] | np.ndarray,
    groups_a: Sequence[Any],
    b: Sequence[float] | np.ndarray,
    groups_b: Sequence[Any],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, float | int]:
    """``mean(b) - mean(a)`` with a bootstrap interval that resamples examples, not spans.

    The two samples come from two models run on the same examples (each writes its own
    chain, so their spans differ in number). Each resample draws examples (the labels in
    ``groups_a`` and ``groups_b``) with replacement and pools both models' values of the
    drawn examples ([`metrics.stats.paired_bootstrap_ci`][metrics.stats.paired_bootstrap_ci]
    with ``groups=``), so spans of one example move together.

    Args:
        a: Values of the reference model.
        groups_a: The example of each value of ``a``.
        b: Values of the other model.
        groups_b: The example of each value of ``b``.
        n_boot: Bootstrap resamples.
        seed: Resampling seed.

    Returns:
        ``difference``, ``ci_low``, ``ci_high`` (NaN where a resample leaves a model without
        values, or either sample is empty), ``n_a``, ``n_b`` and ``n_examples``.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(groups_a) != x.size or len(groups_b) != y.size:
        raise ValueError("clustered_difference needs one example label per value")
    labels = [str(g) for g in groups_a] + [str(g) for g in groups_b]
    nan = float("nan")
    out: dict[str, float | int] = {
        "difference": float(y.mean() - x.mean()) if x.size and y.size else nan,
        "ci_low": nan,
        "ci_high": nan,
        "n_a": int(x.size),
        "n_b": int(y.size),
        "n_examples": len(set(labels)),
    }
    if not x.size or not y.size:
        return out
    values = np.concatenate([x, y])
    is_b = np.concatenate([np.zeros(x.size), np.ones(y.size)])

    def diff(v: np.ndarray, m: np.ndarray) -> float:
        sel = m > 0.5
        if sel.all() or not sel.any():
            return nan
        return float(v[sel].mean() - v[~sel].mean())

    try:
        lo, hi = paired_bootstrap_ci((values, is_b), diff, groups=np.asarray(labels), n_boot=n_boot, seed=seed)
    except ValueError:  # some resample drew examples of one model only
        return out
    out.update({"ci_low": lo, "ci_high": hi})
    return out


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """``mean(b) - mean(a)``, vectorised along ``axis`` for the bootstrap."""
    return np.asarray(np.mean(b, axis=axis) - np.mean(a, axis=axis))


def _spans_with_copies(ex: Mapping[str, Any]) -> set[int]:
    """Indices of the spans whose generated tokens include a copy token."""
    src = ex.get("copy_sources")
    if src is None:
        return set()
    copies = [t for t, s in enumerate(src) if s >= 0]
    return {i for i, sp in enumerate(ex.get("spans") or []) if any(sp["start"] <= t < sp["end"] for t in copies)}


def copy_share_by_position(examples: Iterable[dict[str, Any]], *, max_position: int = 8) -> dict[str, Any]:
    """Mean via-copy share of each span's image attention (``span_copy_share``) by span position."""
    by: dict[int, list[float]] = {}
    for ex in examples:
        for i, v in enumerate(ex.get("span_copy_share") or []):
            by.setdefault(min(i, max_position), []).append(float(v))
    allv = [v for vs in by.values() for v in vs]
    return {
        "overall": float(np.mean(allv)) if allv else float("nan"),
        "n_spans": len(allv),
        "by_position": [{"position": p, "n": len(by[p]), "mean": float(np.mean(by[p]))} for p in sorted(by)],
    }


def direct_features(ex: Mapping[str, Any], *, part: str = "via_copy") -> np.ndarray:
    """The direct part of an example's features: ``features`` minus its via-copy part.

    Attention to a copy token counts for the regions of the image token it copies
    (see [`attrib.variants.pointcopy.attribution`][attrib.variants.pointcopy.attribution]);
    collections of a point-and-copy model store that part (``parts["via_copy"]``). What is
    left is the attention that reaches a region's own image tokens.

    Args:
        ex: A collection example.
        part: The alias key part to take away.

    Returns:
        ``(n_spans, K, L, H)`` float64. An example without copy tokens (a plain model's), or one
        already made direct by [`with_direct_features`][attrib.analysis.pointcopy.with_direct_features],
        keeps its features.

    Raises:
        ValueError: If the part's shape differs from the features', or the example holds copy
            tokens but its collection stored no such part (collected before key parts were
            stored: collect it again).
    """
    f = np.asarray(ex["features"], dtype=np.float64)
    if ex.get("direct_only"):
        return f
    parts = ex.get("parts") or {}
    if part in parts:
        p = np.asarray(parts[part], dtype=np.float64)
        if p.shape != f.shape:
            raise ValueError(f"example {ex.get('uid', '?')}: part {part!r} has shape {p.shape}, features {f.shape}")
        return f - p
    src = ex.get("copy_sources")
    if src is not None and any(int(v) >= 0 for v in src):
        raise ValueError(
            f"example {ex.get('uid', '?')} holds copy tokens but its collection stored no {part!r} part "
            "(collected before key parts were stored); collect it again"
        )
    return f


def with_direct_features(examples: Iterable[dict[str, Any]], *, part: str = "via_copy") -> list[dict[str, Any]]:
    """The examples with ``features`` replaced by their direct part (marked ``direct_only``, ``parts`` emptied).

    Raises:
        ValueError: As [`direct_features`][attrib.analysis.pointcopy.direct_features].
    """
    return [dict(ex, features=direct_features(ex, part=part), parts={}, direct_only=True) for ex in examples]


@dataclass
class _Units:
    """Per-unit values of one scoring of one collection (what the metrics and their differences average)."""

    scores: np.ndarray  # (n_spans, K)
    gt: list[Any]  # per span, its ground-truth regions (or None)
    span_groups: np.ndarray  # per span, its example
    act: np.ndarray | None  # (n_spans, M_eval) measured drops of the held-out removal sets
    pred: np.ndarray | None  # (n_spans, M_eval) predicted drops
    loo: np.ndarray | None  # (n_spans, K) leave-one-out drops

    @property
    def pointed(self) -> np.ndarray:
        """The spans with ground truth."""
        return np.array([bool(g) for g in self.gt], dtype=bool)

    @property
    def hits(self) -> np.ndarray:
        """Per span with ground truth: 1 if its top region is a ground-truth region."""
        sel = np.flatnonzero(self.pointed)
        return np.array([float(int(np.argmax(self.scores[i])) in set(self.gt[i])) for i in sel])

    @property
    def rhos(self) -> np.ndarray:
        """Per span: Spearman ρ of measured vs predicted drops (NaN where either side is constant)."""
        if self.act is None or self.pred is None:
            return np.full(self.scores.shape[0], np.nan)
        out = np.full(self.act.shape[0], np.nan)
        for i, (ra, rp) in enumerate(zip(self.act, self.pred, strict=True)):
            if np.ptp(ra) > 0 and np.ptp(rp) > 0:
                out[i] = float(spearmanr(ra, rp).statistic)
        return out


def _units(examples: Sequence[dict[str, Any]], scorer: Scorer, *, direct: bool, part: str) -> _Units:
    """Score every example (on its total or its direct features) and gather the metrics' units."""
    scores, gts, groups, acts, preds, loos = [], [], [], [], [], []
    ldsable = bool(examples) and all(
        np.asarray(e["subsets"]).shape[0] - np.asarray(e["subsets"]).shape[0] // 2 >= 3 for e in examples
    )
    has_loo = bool(examples) and all("loo_deltas" in e for e in examples)
    for j, ex in enumerate(examples):
        f = direct_features(ex, part=part) if direct else np.asarray(ex["features"], dtype=np.float64)
        s = np.asarray(scorer(f), dtype=np.float64)
        n = s.shape[0]
        scores.append(s)
        g = ex.get("span_gt_regions") or [None] * n
        gts.extend(list(g)[:n] + [None] * (n - len(g)))
        groups.extend([str(ex.get("uid", f"#{j}"))] * n)
        if ldsable:
            sub = np.asarray(ex["subsets"], dtype=np.float64)
            half = sub.shape[0] // 2  # as attrib.evaluation: the second half of the removal sets is held out
            acts.append(np.asarray(ex["subset_deltas"], dtype=np.float64)[:, half:])
            preds.append(s @ sub[half:].T)
        if has_loo:
            loos.append(np.asarray(ex["loo_deltas"], dtype=np.float64))
    k = scores[0].shape[1] if scores else 0
    return _Units(
        np.concatenate(scores) if scores else np.zeros((0, k)),
        gts,
        np.asarray(groups),
        np.concatenate(acts) if ldsable else None,
        np.concatenate(preds) if ldsable else None,
        np.concatenate(loos) if has_loo else None,
    )


def _metrics(u: _Units, n_boot: int) -> dict[str, Any]:
    """Pointing, LDS and R² (where the collection allows each) with intervals that resample examples."""
    out: dict[str, Any] = {}
    if u.pointed.any():
        out["pointing"] = pointing_accuracy(u.scores, u.gt, groups=u.span_groups, n_boot=n_boot).to_dict()
    if u.act is not None and u.pred is not None:
        if np.isfinite(u.rhos).any():
            out["lds"] = lds(u.act, u.pred, groups=u.span_groups, n_boot=n_boot).to_dict()
        else:  # every span's drops or predictions are constant: Spearman is undefined everywhere
            nan = float("nan")
            out["lds"] = {"value": nan, "ci_low": nan, "ci_high": nan, "n": 0, "n_skipped": int(u.act.shape[0])}
    if u.loo is not None:
        out["r2"] = r2(u.scores, u.loo, groups=u.span_groups, n_boot=n_boot).to_dict()
    return out


def faithfulness(
    examples: Sequence[dict[str, Any]],
    scorers: Mapping[str, Scorer],
    *,
    direct: bool = False,
    part: str = "via_copy",
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Pointing, LDS and R² of each scorer on a collection, with intervals that resample examples.

    LDS is computed as in [`attrib.evaluation.evaluate_methods`][attrib.evaluation.evaluate_methods]
    (the second half of each example's removal sets is held out; needs at least 6 sets), R²
    against leave-one-out where the collection has it, pointing where spans have ground truth.

    Args:
        examples: Collection examples.
        scorers: ``{method: features -> region scores}``.
        direct: Score the direct features ([`direct_features`][attrib.analysis.pointcopy.direct_features]).
        part: The alias key part that ``direct`` takes away.
        n_boot: Bootstrap resamples (of examples).

    Returns:
        ``n_examples``, ``n_spans`` and per method its ``pointing``, ``lds`` and ``r2``
        (``value``, ``ci_low``, ``ci_high``, ``n``, ``n_skipped``), each where available.
    """
    exs = list(examples)
    methods = {name: _metrics(_units(exs, sc, direct=direct, part=part), n_boot) for name, sc in scorers.items()}
    return {
        "n_examples": len(exs),
        "n_spans": int(sum(np.asarray(e["features"]).shape[0] for e in exs)),
        "methods": methods,
    }


def _paired(a: np.ndarray, b: np.ndarray, groups: np.ndarray, n_boot: int) -> dict[str, float | int]:
    """``mean(b) - mean(a)`` over the units where both are defined, resampling whole examples."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 1:
        nan = float("nan")
        return {"difference": nan, "ci_low": nan, "ci_high": nan, "n": 0, "n_groups": 0}
    return paired_bootstrap_difference(a[ok], b[ok], groups=groups[ok], n_boot=n_boot)


def _total_and_direct_units(
    examples: Sequence[dict[str, Any]], methods: Mapping[str, tuple[Scorer, Scorer]], part: str, n_boot: int
) -> tuple[dict[str, Any], dict[str, dict[str, _Units]]]:
    exs = list(examples)
    res: dict[str, Any] = {}
    units: dict[str, dict[str, _Units]] = {}
    for name, (on_total, on_direct) in methods.items():
        ut = _units(exs, on_total, direct=False, part=part)
        ud = _units(exs, on_direct, direct=True, part=part)
        units[name] = {"total": ut, "direct_only": ud}
        diff: dict[str, Any] = {}
        if ut.pointed.any():
            diff["pointing"] = _paired(ut.hits, ud.hits, ut.span_groups[ut.pointed], n_boot)
        if ut.act is not None:
            diff["lds"] = _paired(ut.rhos, ud.rhos, ut.span_groups, n_boot)
        res[name] = {"total": _metrics(ut, n_boot), "direct_only": _metrics(ud, n_boot), "direct_minus_total": diff}
    via = sum(float(np.sum(e["features"]) - np.sum(direct_features(e, part=part))) for e in exs)
    tot = sum(float(np.sum(e["features"])) for e in exs)
    out = {
        "part": part,
        "n_examples": len(exs),
        "n_spans": int(sum(np.asarray(e["features"]).shape[0] for e in exs)),
        "via_share": via / tot if tot > 0 else float("nan"),
        "methods": res,
    }
    return out, units


def total_and_direct(
    examples: Sequence[dict[str, Any]],
    methods: Mapping[str, tuple[Scorer, Scorer]],
    *,
    part: str = "via_copy",
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Each method scored on the total features and on their direct part, side by side, on the same spans.

    Args:
        examples: Collection examples of a point-and-copy model (with their stored via-copy part).
        methods: ``{method: (scorer on total features, scorer on direct features)}``: the same
            function twice (raw attention, an estimator with fixed weights), or two (an
            estimator refit on direct features).
        part: The alias key part taken away.
        n_boot: Bootstrap resamples (of examples).

    Returns:
        ``part``, ``n_examples``, ``n_spans``, ``via_share`` (the part's share of all region
        attention mass) and per method ``total`` and ``direct_only`` (as
        [`faithfulness`][attrib.analysis.pointcopy.faithfulness]) and ``direct_minus_total``:
        the paired difference (same spans; examples resampled; ``metrics.stats.paired_bootstrap_difference``)
        of pointing hits and of per-span LDS, where available.
    """
    return _total_and_direct_units(examples, methods, part, n_boot)[0]


def _versus(ref: _Units, other: _Units, n_boot: int) -> dict[str, Any]:
    """``other - ref`` for two models' scorings of the same examples (different spans): examples resampled."""
    out: dict[str, Any] = {}
    if ref.pointed.any() and other.pointed.any():
        out["pointing"] = clustered_difference(
            ref.hits, ref.span_groups[ref.pointed], other.hits, other.span_groups[other.pointed], n_boot=n_boot
        )
    if ref.act is not None and other.act is not None:
        ra, rb = ref.rhos, other.rhos
        oka, okb = np.isfinite(ra), np.isfinite(rb)
        out["lds"] = clustered_difference(ra[oka], ref.span_groups[oka], rb[okb], other.span_groups[okb], n_boot=n_boot)
    return out


def _late_chain(
    base: list[dict[str, Any]],
    v1: list[dict[str, Any]],
    base_scorer: Scorer,
    v1_scorer: Scorer,
    **kw: Any,
) -> dict[str, Any]:
    """[`late_chain_attribution`][attrib.analysis.pointcopy.late_chain_attribution] with one scorer per model."""
    scorers = {"base": base_scorer, "v1": v1_scorer}
    tagged = {"base": [dict(e, _m="base") for e in base], "v1": [dict(e, _m="v1") for e in v1]}
    return late_chain_attribution(tagged, lambda ex: scorers[ex["_m"]](np.asarray(ex["features"])), **kw)


def _attention(features: np.ndarray) -> np.ndarray:
    """Raw attention: mean over layers and heads of each region's mass."""
    return np.asarray(features, dtype=np.float64).mean(axis=(2, 3))


def run_analysis(
    *,
    base_test: str,
    v1_test: str,
    base_estimator: str | None = None,
    v1_estimator: str | None = None,
    v1_model: str | None = None,
    n_copy: int = 30,
    figures: str | None = None,
    dataset: str = "shapes:test",
    v1_refit: Mapping[str, LinearHeadEstimator] | None = None,
    refit_info: Mapping[str, Any] | None = None,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """All the analyses from collections (and the v1 model for the per-layer copy attention).

    Args:
        base_test: Collection of the base model (held-out split, ground truth per span).
        v1_test: Collection of the v1 model on the same examples (with its via-copy part
            for the direct-only control).
        base_estimator: Estimator of the base model (late-chain attribution; raw
            attention mass is used without one).
        v1_estimator: Estimator of the v1 model (fit on total features; applied with the
            same weights to the direct features too).
        v1_model: The v1 model (bundled name or directory) for the per-layer copy attention.
        n_copy: Examples to capture for the per-layer copy attention.
        figures: Directory for ``decay.png`` and ``copy_attention.png``.
        dataset: Where those examples come from.
        v1_refit: Estimators of the v1 model refit on one train collection, on its total
            features (``"total"``) and on its direct features (``"direct_only"``).
        refit_info: Recorded beside them (e.g. the train collections and the examples used).
        n_boot: Bootstrap resamples of the faithfulness figures.

    Returns:
        ``decay``; ``late_chain_attention`` and ``late_chain`` (raw attention, estimator
        scores) with their ``*_no_own_copies`` variants, and ``late_chain_refit`` with
        ``v1_refit``; ``copy_share`` (the v1 spans' via-copy share by position);
        ``copy_attention`` with a model; ``direct_only``: the same late-chain analyses on the
        v1 model's direct features (the base model has no copies: its features are all
        direct); ``faithfulness``: pointing, LDS and R² of the base model (``base``), of the
        v1 model on total and direct features (``v1``, see
        [`total_and_direct`][attrib.analysis.pointcopy.total_and_direct]) and the v1 − base
        differences (``v1_minus_base``, examples resampled).

    Raises:
        ValueError: If the v1 collection holds copy tokens but no via-copy part.
    """
    from pathlib import Path

    from attrib.collect.store import Collection

    base = list(Collection.open(base_test).examples())
    v1 = list(Collection.open(v1_test).examples())
    v1_direct = with_direct_features(v1)
    out: dict[str, Any] = {"decay": compare_decay({"base": base, "v1": v1})}

    out["late_chain_attention"] = _late_chain(base, v1, _attention, _attention)
    out["late_chain_attention_no_own_copies"] = _late_chain(base, v1, _attention, _attention, skip_own_copies=True)
    out["copy_share"] = copy_share_by_position(v1)
    direct: dict[str, Any] = {
        "part": "via_copy",
        "late_chain_attention": _late_chain(base, v1_direct, _attention, _attention),
        "late_chain_attention_no_own_copies": _late_chain(
            base, v1_direct, _attention, _attention, skip_own_copies=True
        ),
    }
    base_scorers: dict[str, Scorer] = {"raw_attention": _attention}
    v1_methods: dict[str, tuple[Scorer, Scorer]] = {"raw_attention": (_attention, _attention)}
    if base_estimator and v1_estimator:
        from estimators.linear import LinearHeadEstimator

        eb, ev = LinearHeadEstimator.load(base_estimator), LinearHeadEstimator.load(v1_estimator)
        out["late_chain"] = _late_chain(base, v1, eb.region_scores, ev.region_scores)
        out["late_chain_no_own_copies"] = _late_chain(
            base, v1, eb.region_scores, ev.region_scores, skip_own_copies=True
        )
        direct["late_chain"] = _late_chain(base, v1_direct, eb.region_scores, ev.region_scores)
        direct["late_chain_no_own_copies"] = _late_chain(
            base, v1_direct, eb.region_scores, ev.region_scores, skip_own_copies=True
        )
        base_scorers["estimator"] = eb.region_scores
        v1_methods["estimator"] = (ev.region_scores, ev.region_scores)
        if v1_refit:
            rt, rd = v1_refit["total"], v1_refit["direct_only"]
            out["late_chain_refit"] = _late_chain(base, v1, eb.region_scores, rt.region_scores)
            direct["late_chain_refit"] = _late_chain(base, v1_direct, eb.region_scores, rd.region_scores)
            v1_methods["estimator_refit"] = (rt.region_scores, rd.region_scores)
    out["direct_only"] = direct
    out["faithfulness"] = _faithfulness_comparison(base, v1, base_scorers, v1_methods, n_boot)
    if v1_refit and refit_info:
        out["faithfulness"]["refit"] = dict(refit_info)
    if v1_model:
        out["copy_attention"] = copy_attention(v1_model, dataset=dataset, n=n_copy)
    if figures:
        from attrib.plots import copy_attention_plot, decay_plot

        d = Path(figures)
        d.mkdir(parents=True, exist_ok=True)
        decay_plot(out["decay"], d / "decay.png")
        if "copy_attention" in out and out["copy_attention"]["n_tokens"]:
            copy_attention_plot(out["copy_attention"], d / "copy_attention.png")
    return out


def _faithfulness_comparison(
    base: list[dict[str, Any]],
    v1: list[dict[str, Any]],
    base_scorers: Mapping[str, Scorer],
    v1_methods: Mapping[str, tuple[Scorer, Scorer]],
    n_boot: int,
) -> dict[str, Any]:
    """Base figures, v1 total and direct-only figures, and v1 − base for each (a refit v1 estimator
    against the base's estimator)."""
    base_units = {name: _units(base, sc, direct=False, part="via_copy") for name, sc in base_scorers.items()}
    base_res = {
        "n_examples": len(base),
        "n_spans": int(sum(np.asarray(e["features"]).shape[0] for e in base)),
        "direct_equals_total": not any(e.get("parts") for e in base),  # a plain model has no copy tokens
        "methods": {name: _metrics(u, n_boot) for name, u in base_units.items()},
    }
    v1_res, v1_units = _total_and_direct_units(v1, v1_methods, "via_copy", n_boot)
    versus: dict[str, Any] = {}
    for name, kinds in v1_units.items():
        ref = base_units.get(name) or base_units.get("estimator")
        if ref is None:
            continue
        versus[name] = {kind: _versus(ref, u, n_boot) for kind, u in kinds.items()}
        versus[name]["base_method"] = name if name in base_units else "estimator"
    return {"base": base_res, "v1": v1_res, "v1_minus_base": versus}


def copy_attention(model: str, *, dataset: str = "shapes:test", n: int = 30) -> dict[str, Any]:
    """Per layer, attention to copy tokens vs their source image tokens, on ``n`` examples of ``dataset``.

    Each example is captured through the model's variant with one region per
    image token (``K = N_image``) and per-token features, then passed to
    [`copy_vs_source_by_layer`][attrib.analysis.pointcopy.copy_vs_source_by_layer],
    whose result is returned with the examples it came from (``dataset``, ``n_examples``).

    Raises:
        ValueError: If the model has no copy tokens.
    """
    from attrib.collect.datasets import open_dataset
    from attrib.models.loading import load
    from attrib.variants.registry import CaptureRequest, get_variant

    loaded = load(model)
    variant = get_variant(loaded.variant)
    if "via_copy" not in variant.parts:
        raise ValueError(f"{model} is not a point-and-copy model: it has no copy tokens to analyse")
    image_token = loaded.adapter.image_token_id(loaded.hf_model)
    caps, srcs = [], []
    for item in open_dataset(dataset).items(n, 0):
        x = loaded.build(item.load_image(), item.question)
        n_img = int((x["input_ids"][0] == image_token).sum())
        request = CaptureRequest(x, np.eye(n_img, dtype=np.float32), max_new_tokens=256, per_token=True)
        res = variant.capture(loaded, request)
        caps.append(res)
        srcs.append(res.token_sources or [])
    return {**copy_vs_source_by_layer(caps, srcs), "dataset": dataset, "n_examples": len(caps)}
