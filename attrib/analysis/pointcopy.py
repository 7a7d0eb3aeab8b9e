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

Every function takes collections (see [`attrib.collect`][attrib.collect]), captures or arrays
and returns JSON-ready dicts; nothing prints. Captures come through the model's
variant ([`attrib.variants`][attrib.variants]), so nothing here imports the variant itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import mannwhitneyu

from metrics.stats import bootstrap_ci, two_sample_bootstrap_ci

__all__ = [
    "attention_by_position",
    "cliffs_delta",
    "compare_decay",
    "copy_attention",
    "copy_share_by_position",
    "copy_vs_source_by_layer",
    "gt_share",
    "late_chain_attribution",
    "run_analysis",
]

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
        (the two models' spans resampled independently, see
        [`metrics.stats.two_sample_bootstrap_ci`][metrics.stats.two_sample_bootstrap_ci]),
        Cliff's delta, Mann–Whitney U and its two-sided p-value.

    Raises:
        ValueError: Unless exactly two models are given.
    """
    if len(groups) != 2:
        raise ValueError(f"late_chain_attribution compares two models, got {len(groups)}")
    names = list(groups)
    ref = reference or names[0]
    other = names[1] if ref == names[0] else names[0]
    shares: dict[str, list[tuple[int, float]]] = {n: [] for n in names}
    for name, exs in groups.items():
        for ex in exs:
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
                        shares[name].append((n, v))
    rows = []
    for lo, hi in buckets:
        a = np.array([v for n, v in shares[ref] if lo <= n <= hi])
        b = np.array([v for n, v in shares[other] if lo <= n <= hi])
        row: dict[str, Any] = {
            "chain_len": [lo, hi],
            ref: {"n": int(a.size), "mean": float(a.mean()) if a.size else float("nan")},
            other: {"n": int(b.size), "mean": float(b.mean()) if b.size else float("nan")},
        }
        if a.size >= 2 and b.size >= 2:
            res = mannwhitneyu(b, a, alternative="two-sided")
            lo_ci, hi_ci = two_sample_bootstrap_ci(a, b, _mean_difference, n_boot=1000, seed=0)
            row["comparison"] = {
                "difference": float(b.mean() - a.mean()),
                "ci_low": lo_ci,
                "ci_high": hi_ci,
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
) -> dict[str, Any]:
    """All three analyses from collections (and the v1 model for the per-layer copy attention).

    Args:
        base_test: Collection of the base model (held-out split, ground truth per span).
        v1_test: Collection of the v1 model on the same examples.
        base_estimator: Estimator of the base model (late-chain attribution; raw
            attention mass is used without one).
        v1_estimator: Estimator of the v1 model.
        v1_model: The v1 model (bundled name or directory) for the per-layer copy attention.
        n_copy: Examples to capture for the per-layer copy attention.
        figures: Directory for ``decay.png`` and ``copy_attention.png``.
        dataset: Where those examples come from.

    Returns:
        ``decay``; ``late_chain_attention`` and ``late_chain`` (raw attention, estimator
        scores) with their ``*_no_own_copies`` variants; ``copy_share`` (the v1 spans'
        via-copy share by position); ``copy_attention`` with a model.
    """
    from pathlib import Path

    from attrib.collect.store import Collection

    base = list(Collection.open(base_test).examples())
    v1 = list(Collection.open(v1_test).examples())
    out: dict[str, Any] = {"decay": compare_decay({"base": base, "v1": v1})}

    def attention(ex: dict[str, Any]) -> np.ndarray:
        return np.asarray(ex["features"], dtype=np.float64).mean(axis=(2, 3))

    out["late_chain_attention"] = late_chain_attribution({"base": base, "v1": v1}, attention)
    out["late_chain_attention_no_own_copies"] = late_chain_attribution(
        {"base": base, "v1": v1}, attention, skip_own_copies=True
    )
    out["copy_share"] = copy_share_by_position(v1)
    if base_estimator and v1_estimator:
        from estimators.linear import LinearHeadEstimator

        eb, ev = LinearHeadEstimator.load(base_estimator), LinearHeadEstimator.load(v1_estimator)
        by_name = {"base": eb, "v1": ev}
        tagged = {"base": [dict(e, _m="base") for e in base], "v1": [dict(e, _m="v1") for e in v1]}

        def estimated(ex: dict[str, Any]) -> np.ndarray:
            return np.asarray(by_name[ex["_m"]].region_scores(np.asarray(ex["features"])))

        out["late_chain"] = late_chain_attribution(tagged, estimated)
        out["late_chain_no_own_copies"] = late_chain_attribution(tagged, estimated, skip_own_copies=True)
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


def copy_attention(model: str, *, dataset: str = "shapes:test", n: int = 30) -> dict[str, Any]:
    """Per layer, attention to copy tokens vs their source image tokens, on ``n`` examples of ``dataset``.

    Each example is captured through the model's variant with one region per
    image token (``K = N_image``) and per-token features, then passed to
    [`copy_vs_source_by_layer`][attrib.analysis.pointcopy.copy_vs_source_by_layer].

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
    return copy_vs_source_by_layer(caps, srcs)
