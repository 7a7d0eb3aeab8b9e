"""Fit the estimator on a collected train split and score every method on a held-out split.

``fit_estimator`` builds the design rows (summed removed-region features per
span and removal set) from correctly answered training examples and fits a
[`LinearHeadEstimator`][estimators.linear.LinearHeadEstimator]. ``evaluate_methods`` computes,
for the estimator and every baseline, LDS on held-out removal sets, R² against
leave-one-out, pointing accuracy against the objects the spans name, the top-K drop
and the insertion and deletion curves (with real ablation forwards of each method's
regions) and the seconds per generated token each method costs — overall, per span
population (``image_dependent`` by a rule fixed in advance, and each span kind the
dataset records), and as paired differences between the estimator and every other
method on the same spans. Every interval resamples examples.

The held-out split must be collected with ``--loo``; its last ``min(32, M/2)`` removal
sets are scored and the rest may be fit on (ContextCite: 32 or 64 of the example's own
ablations, topped up with fresh ones when the collection holds fewer), so no method sees
the sets it is scored on. ``estimator_seeds`` refits the estimator with several seeds and
``data_efficiency`` resamples the training set at each size.

Every method is dispatched through ``estimators.baselines.BASELINES`` with
one [`MethodContext`][estimators.baselines.MethodContext] per example; methods that need
the model get a differentiable forward from the model variant's ablator, so a
new baseline is one registered function (see docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from sklearn.utils import resample

from attrib.ablation import Ablator, random_subsets
from attrib.collect.datasets import Dataset, open_dataset
from attrib.collect.pipeline import mask_regions
from attrib.collect.store import Collection
from attrib.models.loading import LoadedModel
from attrib.models.signature import same_model
from attrib.regions.partition import RegionPartition
from attrib.variants.registry import AblationRequest, get_variant
from estimators.baselines import BASELINES, MethodContext, contextcite_fit
from estimators.linear import LinearHeadEstimator, subset_design
from metrics.faithfulness import (
    MetricResult,
    curve_auc,
    lds_rows,
    mean_metric,
    paired_metric_difference,
    pointing_accuracy,
    r2,
    r2_value,
    topk_drop,
    topk_sets,
)

__all__ = [
    "DEFAULT_METHODS",
    "IMAGE_DEPENDENT_MIN",
    "IMAGE_DEPENDENT_RULES",
    "Design",
    "ExampleModel",
    "choose_contextcite_alpha",
    "data_efficiency",
    "default_subset_split",
    "design_matrix",
    "design_rows",
    "estimator_seeds",
    "evaluate_methods",
    "fit_estimator",
    "region_comparison",
    "span_metadata",
    "train_examples",
]

logger = logging.getLogger(__name__)

DEFAULT_METHODS: tuple[str, ...] = (
    "estimator",
    "raw_attention",
    "best_layer",
    "input_x_gradient",
    "integrated_gradients",
    "contextcite",
    "contextcite_64",
    "leave_one_out",
)
#: Rules that pick the ``image_dependent`` population (neither reads a scored removal set).
IMAGE_DEPENDENT_RULES: tuple[str, ...] = ("fit_std", "fit_max", "all_regions")
#: Default threshold of the ``image_dependent`` rule, in nats (fixed before any figure was looked at).
IMAGE_DEPENDENT_MIN = 0.1
#: Pointing scores a span only if its all-regions drop exceeds this (nats): "non-zero" above float32 noise.
POINTING_MIN_DROP = 1e-6
_KIND_ORDER = ("planning", "object", "summary")
#: Ablations the ContextCite surrogates fit on.
_CC_BUDGETS = {"contextcite": 32, "contextcite_64": 64}


class Design(NamedTuple):
    """Training rows of the estimator (see [`design_rows`][attrib.evaluation.design_rows])."""

    x: np.ndarray
    """``(n_rows, L*H)``: per (span, removal set), the summed features of the removed regions."""
    y: np.ndarray
    """``(n_rows,)`` measured drops."""
    groups: np.ndarray
    """``(n_rows,)`` span ids."""
    n_examples: int
    """Examples used."""
    span_mass: np.ndarray
    """``(n_rows, L*H)``: per row, its span's features summed over every region (the scale head's input)."""


def design_rows(examples: Sequence[dict[str, Any]], *, only_correct: bool = True, limit: int | None = None) -> Design:
    """Design rows, targets, span groups and span masses from collected examples.

    Args:
        examples: Collected examples.
        only_correct: Keep correctly answered examples only (the paper's choice).
        limit: Use at most this many examples (after filtering), in order.

    Raises:
        ValueError: If no example is left, or an example has NaN targets (named).
    """
    xs, ys, gs, ms = [], [], [], []
    used = 0
    g = 0
    bad: list[str] = []
    for ex in examples:
        if only_correct and ex.get("correct") is False:
            continue
        if limit is not None and used >= limit:
            break
        d = np.asarray(ex["subset_deltas"], dtype=np.float64)
        if d.size == 0:
            bad.append(f"{ex['uid']} (empty targets)")
            continue
        if not np.isfinite(d).all():
            bad.append(f"{ex['uid']} (NaN/inf targets)")
            continue
        design = subset_design(ex["features"], ex["subsets"])  # (n_spans, M, F)
        n_spans, m, f = design.shape
        xs.append(design.reshape(-1, f))
        ys.append(d.reshape(-1))
        gs.append(np.repeat(np.arange(g, g + n_spans), m))
        mass = np.asarray(ex["features"], dtype=np.float64).reshape(n_spans, -1, f).sum(axis=1)
        ms.append(np.repeat(mass, m, axis=0))
        g += n_spans
        used += 1
    if bad:
        shown = ", ".join(bad[:20]) + (f" and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise ValueError(f"{len(bad)} training example(s) have unusable targets: {shown}")
    if not xs:
        raise ValueError("no training examples left (all failed, or none answered correctly)")
    return Design(np.concatenate(xs), np.concatenate(ys), np.concatenate(gs), used, np.concatenate(ms))


def design_matrix(
    examples: Sequence[dict[str, Any]], *, only_correct: bool = True, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Design rows, targets and span groups from collected examples
    ([`design_rows`][attrib.evaluation.design_rows] without the span masses).

    Returns:
        ``(X, y, groups, n_examples_used)``.

    Raises:
        ValueError: If no example is left, or an example has NaN targets (named).
    """
    d = design_rows(examples, only_correct=only_correct, limit=limit)
    return d.x, d.y, d.groups, d.n_examples


def fit_estimator(
    train: Collection | Sequence[Collection],
    *,
    loss: str = "pearson",
    only_correct: bool = True,
    limit: int | None = None,
    **params: Any,
) -> tuple[LinearHeadEstimator, int]:
    """Fit the L x H estimator on a collected train split.

    Args:
        train: One collected train split, or several (their examples are concatenated, in order).
        loss: ``"pearson"`` (the paper's) or ``"ridge"``.
        only_correct: Fit on correctly answered examples only.
        limit: Use at most this many examples.
        **params: Further [`LinearHeadEstimator`][estimators.linear.LinearHeadEstimator] hyper-parameters.

    Returns:
        ``(estimator, n_examples_used)``.

    Raises:
        ValueError: If no usable example is left, or some have empty or NaN targets (named).
    """
    exs = train_examples(train)
    d = design_rows(exs, only_correct=only_correct, limit=limit)
    shape = tuple(exs[0]["features"].shape[2:])
    est = LinearHeadEstimator(loss=loss, layer_head_shape=shape, **params)  # type: ignore[arg-type]
    est.fit(d.x, d.y, groups=d.groups, span_mass=d.span_mass)
    return est, d.n_examples


def train_examples(train: Collection | Sequence[Collection]) -> list[dict[str, Any]]:
    """The examples of one or several train collections; several must share model, regions and ablation.

    Raises:
        ValueError: If the collections disagree on model, region method, K or ablation mode.
    """
    colls = [train] if isinstance(train, Collection) else list(train)
    keys = ("model", "region_method", "k", "ablation_mode")
    ref = {k: colls[0].manifest["config"].get(k) for k in keys}
    for c in colls[1:]:
        other = {k: c.manifest["config"].get(k) for k in keys}
        if other != ref:
            raise ValueError(f"train collections disagree: {colls[0].path} has {ref}, {c.path} has {other}")
    return [ex for c in colls for ex in c.examples()]


class ExampleModel:
    """The model side of one held-out example: its inputs, region assignment and (lazily) its ablator.

    Args:
        loaded: The model the collection was made with.
        ex: A collected example.
        dataset: The collection's dataset spec (rebuilds the image when the record stores no path).
        mode: The collection's ablation mode.
        system: The collection's system prompt, if any.
    """

    def __init__(
        self, loaded: LoadedModel, ex: dict[str, Any], dataset: str, mode: str, system: str | None = None
    ) -> None:
        self.loaded = loaded
        self.ex = ex
        image = open_dataset(dataset).image_for(ex)
        self.inputs = loaded.build(image, ex["question"], system=system)
        part = RegionPartition(np.asarray(ex["regions"], dtype=np.int64))
        self.assignment = part.assign_tokens(loaded.grid_spec).matrix
        self.spans = [(s["start"], s["end"]) for s in ex["spans"]]
        self.mode = mode
        self._runner: Ablator | None = None

    @property
    def runner(self) -> Ablator:
        """The variant's ablator for this example's trace (built on first use)."""
        if self._runner is None:
            request = AblationRequest(
                self.inputs, list(self.ex["generated_ids"]), self.assignment, record=self.ex, mode=self.mode
            )
            self._runner = get_variant(self.loaded.variant).ablator(self.loaded, request)
        return self._runner

    def embedding_forward(self) -> tuple[Any, Any]:
        """The ablator's differentiable forward from image embeddings to span log-probs (gradient baselines)."""
        return self.runner.embedding_forward(self.spans)

    def ablation_seconds(self, n_forwards: int) -> float:
        """Wall time of ``n_forwards`` ablation forwards (what a causal method pays per example)."""
        sets = np.zeros((n_forwards, self.assignment.shape[0]), dtype=bool)
        runner = self.runner
        t0 = time.perf_counter()
        runner.logprobs(sets)
        return time.perf_counter() - t0


def default_subset_split(m_total: int) -> tuple[slice, slice]:
    """The default ``(fit, scored)`` split of an example's ``m_total`` removal sets.

    The last ``min(32, m_total // 2)`` sets are scored; every set before them may be fit on (a
    collection made with ``--subsets 64`` splits in halves, as it always has; one with ``--subsets 96``
    gives ``contextcite_64`` its 64 fit sets without fresh ablations).
    """
    n_score = min(32, m_total // 2)
    return slice(0, m_total - n_score), slice(m_total - n_score, m_total)


def _example_meta(
    ex: dict[str, Any], em: ExampleModel | None, dataset: Dataset | None, notes: set[str]
) -> dict[str, Any]:
    """What the protocol needs of an example beyond its targets: its all-regions drops, span kinds and
    the regions of the one object each span names (from the record, else derived, else ``None``)."""
    n_spans = len(ex["spans"])
    all_d: np.ndarray | None = None
    if "all_deltas" in ex:
        all_d = np.asarray(ex["all_deltas"], dtype=np.float64)
    elif em is not None:
        all_d = em.runner.deltas(np.ones((1, em.assignment.shape[0]), dtype=bool), em.spans)[0].astype(np.float64)
        notes.add("all-regions drops recomputed with the model (the collection predates them)")
    kinds = ex.get("span_kinds")
    objects = ex.get("span_object_regions")
    if kinds is None or objects is None:
        describe = dataset.span_info(ex) if dataset is not None else None
        if describe is not None:
            infos = [describe(str(s["text"])) for s in ex["spans"]]
            kinds = [i.kind for i in infos]
            k = int(np.asarray(ex["features"]).shape[1])
            objects = [
                None if i.object_mask is None else mask_regions(i.object_mask, np.asarray(ex["regions"]), k)
                for i in infos
            ]
            notes.add("span kinds and named objects derived from the dataset (the collection does not record them)")
    return {
        "all_deltas": all_d,
        "kinds": list(kinds) if kinds is not None else [None] * n_spans,
        "objects": list(objects) if objects is not None else None,
    }


def span_metadata(
    test: Collection, *, loaded: LoadedModel | None = None, limit: int | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Per held-out example, what the populations and the pointing game need (see
    [`evaluate_methods`][attrib.evaluation.evaluate_methods]); compute it once and pass it to several calls.

    Returns:
        ``(per-example metadata, notes)``.
    """
    cfg = test.config
    dataset = _dataset_or_none(str(cfg.get("dataset", "")))
    notes: set[str] = set()
    out = []
    for ex in list(test.examples())[:limit]:
        em = None
        if loaded is not None and "all_deltas" not in ex:
            em = ExampleModel(
                loaded, ex, str(cfg.get("dataset", "")), str(cfg.get("ablation_mode", "mask")), cfg.get("system")
            )
        out.append(_example_meta(ex, em, dataset, notes))
    return out, sorted(notes)


def _dataset_or_none(spec: str) -> Dataset | None:
    if not spec:
        return None
    try:
        return open_dataset(spec)
    except (ValueError, FileNotFoundError):
        return None


def evaluate_methods(
    test: Collection,
    estimator: LinearHeadEstimator,
    *,
    loaded: LoadedModel | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    best_layer: int | None = None,
    topk: int = 5,
    limit: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    fit_subsets: slice | None = None,
    score_subsets: slice | None = None,
    image_dependent: str = "fit_std",
    image_dependent_min: float = IMAGE_DEPENDENT_MIN,
    auc_steps: int = 8,
    contextcite_alpha: float | dict[int, float] | None = None,
    span_meta: Sequence[dict[str, Any]] | None = None,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Score every method on a held-out collection: overall, per span population, and paired against the estimator.

    Each example's removal sets are split in two (default: the last ``min(32, M/2)`` are scored, the
    rest may be fit on; see [`default_subset_split`][attrib.evaluation.default_subset_split]): methods that fit
    on the example's own ablations (``contextcite``, ``contextcite_64``) see only ``fit_subsets`` (topped up
    with fresh ablations when the model is given and a budget needs more), and every method is scored on
    ``score_subsets`` and on the same spans (a method whose prediction is constant on a span scores ρ = 0
    there; spans whose measured drops are constant are left out for every method).

    Populations (``populations.<name>``): ``all``; ``image_dependent``, the spans whose drops vary across
    the *fit* removal sets by at least ``image_dependent_min`` nats (standard deviation; rule ``"fit_std"``; or
    ``"fit_max"``, their largest drop over the fit sets; or ``"all_regions"``, the drop when every region is
    removed) — a rule fixed in advance that reads no scored set; and one population per span kind the dataset
    records (the benchmark: ``planning``,
    ``object``, ``summary``). Every interval resamples examples. ``paired.<population>.<method>`` holds
    the estimator's LDS minus the method's on the same spans (``value``, ``ci_low``, ``ci_high``, ``n``) and
    the same difference for the other metrics.

    Args:
        test: Held-out collection (made with ``--loo``).
        estimator: The fitted estimator.
        loaded: The model the collection was made with (needed for top-K drops, insertion/deletion curves,
            fresh ablations, the all-regions drops of older collections and gradient baselines; without it
            only the feature- and target-based metrics run).
        methods: Registered methods to score (``estimators.baselines.BASELINES``).
        best_layer: Layer of the ``best_layer`` baseline (chosen on training data).
        topk: K of the top-K drop.
        limit: Evaluate at most this many examples.
        on_progress: Called as ``on_progress(done, total)``.
        fit_subsets: Removal sets a method may fit on.
        score_subsets: Removal sets every method is scored on.
        image_dependent: ``"fit_std"``, ``"fit_max"`` or ``"all_regions"`` (``all_regions`` falls back to
            ``fit_std``, with a note, when the drops are neither stored nor computable).
        image_dependent_min: The rule's threshold, in nats.
        auc_steps: Points of the insertion and deletion curves beyond 0 (0: no curves).
        contextcite_alpha: ContextCite's Lasso penalty, one for every budget or per budget (``{32: a, 64: b}``).
        span_meta: Precomputed [`span_metadata`][attrib.evaluation.span_metadata] (first element).
        n_boot: Bootstrap resamples of every interval.

    Returns:
        ``{"methods": {name: {"lds", "r2", "pointing", "top5_drop", "top5_drop_normalized", "deletion_auc",
        "insertion_auc", "seconds_per_token", ...}}, "populations": {pop: {"methods", "n_examples", "n_spans"}},
        "paired": {pop: {method: ...}}, "protocol": {...}, "n_examples", "n_spans", "interval_unit"}``;
        every metric is ``value``, ``ci_low``, ``ci_high``, ``n``, ``n_skipped``.

    Raises:
        ValueError: For an unknown method or rule, a collection without leave-one-out targets, a method that
            needs the model when none is given, a model that is not the collection's (by its recorded
            signature), or fit and scored removal sets that overlap (scores would leak).
    """
    unknown = [m for m in methods if m not in BASELINES]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; registered: {sorted(BASELINES)}")
    if image_dependent not in IMAGE_DEPENDENT_RULES:
        raise ValueError(f"image_dependent must be one of {IMAGE_DEPENDENT_RULES}, got {image_dependent!r}")
    if loaded is None:
        needy = [m for m in methods if BASELINES[m].needs_model]
        if needy:
            raise ValueError(f"{', '.join(needy)} need(s) the model")
    recorded = (getattr(test, "manifest", None) or {}).get("model_signature")
    if loaded is not None and recorded:
        diff = same_model(recorded, loaded.model, loaded.path)
        if diff:
            made = (getattr(test, "config", None) or {}).get("model", "?")
            raise ValueError(
                f"the model given ({loaded.name}) is not the one the test collection was made with ({made}; "
                f"differs in {', '.join(diff)}): ablations and gradients would score another model's spans"
            )
    exs = list(test.examples())[:limit]
    if not exs:
        raise ValueError("the test collection holds no example")
    if "loo_deltas" not in exs[0]:
        raise ValueError("the test collection was made without --loo; leave-one-out targets are required")
    if span_meta is not None and len(span_meta) != len(exs):
        raise ValueError(f"span_meta holds {len(span_meta)} examples, the collection {len(exs)}")
    cfg = test.config
    m_total = exs[0]["subsets"].shape[0]
    d_fit, d_eval = default_subset_split(m_total)
    fit_sl = fit_subsets if fit_subsets is not None else d_fit
    eval_sl = score_subsets if score_subsets is not None else d_eval
    fit_idx, eval_idx = set(range(m_total)[fit_sl]), set(range(m_total)[eval_sl])
    if not eval_idx:
        raise ValueError(f"no removal sets left to score on (score_subsets={eval_sl} of {m_total})")
    if fit_idx & eval_idx:
        raise ValueError(
            f"fit and scored removal sets overlap ({len(fit_idx & eval_idx)} sets): a method fit on the sets it is "
            "scored on would be credited for memorising them"
        )
    alphas = (
        dict(contextcite_alpha)
        if isinstance(contextcite_alpha, dict)
        else ({32: float(contextcite_alpha), 64: float(contextcite_alpha)} if contextcite_alpha is not None else {})
    )
    dataset = _dataset_or_none(str(cfg.get("dataset", "")))
    notes: set[str] = set()
    rows: dict[str, dict[str, list[Any]]] = {
        name: {"pred": [], "scores": [], "seconds": [], "tokens": [], "del": [], "ins": []} for name in methods
    }
    act_l: list[np.ndarray] = []
    loo_l: list[np.ndarray] = []
    ex_l: list[int] = []
    gt_l: list[Any] = []
    fitmax_l: list[np.ndarray] = []
    metas: list[dict[str, Any]] = []
    drops: dict[str, list[float]] = {name: [] for name in [*methods, "oracle"]}
    for i, ex in enumerate(exs):
        n_spans = len(ex["spans"])
        n_tokens = max(1, ex["spans"][-1]["end"]) if ex["spans"] else 1
        em = (
            ExampleModel(
                loaded, ex, str(cfg.get("dataset", "")), str(cfg.get("ablation_mode", "mask")), cfg.get("system")
            )
            if loaded is not None
            else None
        )
        meta = span_meta[i] if span_meta is not None else _example_meta(ex, em, dataset, notes)
        metas.append(meta)
        ctx = MethodContext(
            estimator=estimator,
            layer=best_layer or 0,
            fit_subsets=fit_sl,
            alphas=alphas,
            extra_fit_sets=_fresh_ablations(em, ex, eval_sl) if em is not None else None,
            embedding_forward=em.embedding_forward if em is not None else None,
            assignment=em.assignment if em is not None else None,
        )
        budget = max((_CC_BUDGETS.get(m, 0) for m in methods), default=0)
        held = int(np.asarray(ex["subsets"])[fit_sl].shape[0])
        if ctx.extra_fit_sets is not None and budget > held:
            # made before any method is timed: a method's time then counts its ablations once, through
            # ``Baseline.ablations`` like every causal method's
            ctx.extra_fit_sets(budget - held)
        sub = ex["subsets"][eval_sl].astype(np.float64)
        act_l.append(np.asarray(ex["subset_deltas"], dtype=np.float64)[:, eval_sl])
        loo_l.append(np.asarray(ex["loo_deltas"], dtype=np.float64))
        fit_d = np.asarray(ex["subset_deltas"], dtype=np.float64)[:, fit_sl]
        fitmax_l.append(
            np.stack([fit_d.std(axis=1), fit_d.max(axis=1)], axis=1)
            if fit_d.shape[1] > 1
            else np.full((n_spans, 2), np.nan)
        )
        ex_l.extend([i] * n_spans)
        gt_l.extend(ex.get("span_gt_regions") or [None] * n_spans)
        scores_by: dict[str, np.ndarray] = {}
        for name in methods:
            method = BASELINES[name]
            t0 = time.perf_counter()
            s = method(ex, ctx)
            dt = time.perf_counter() - t0
            if method.ablations is not None and em is not None:
                dt += em.ablation_seconds(method.ablations(ex, ctx))
            scores_by[name] = s
            r = rows[name]
            r["pred"].append(s @ sub.T)
            r["scores"].append(s)
            r["seconds"].append(dt)
            r["tokens"].append(n_tokens)
        if em is not None:
            _topk_drops(em, scores_by, np.asarray(ex["loo_deltas"]), topk, drops)
            if auc_steps > 0 and meta["all_deltas"] is not None:
                for name, (dc, ic) in _curves(em, scores_by, meta["all_deltas"], auc_steps).items():
                    rows[name]["del"].append(dc)
                    rows[name]["ins"].append(ic)
        if on_progress:
            on_progress(i + 1, len(exs))
    groups = np.asarray(ex_l)
    act, loo = np.concatenate(act_l), np.concatenate(loo_l)
    n_regions = int(loo.shape[1])
    pops, pop_rules = _populations(metas, np.concatenate(fitmax_l), image_dependent, image_dependent_min, notes)
    point_gt, point_rule = _pointing_truth(metas, gt_l, notes)
    per: dict[str, dict[str, Any]] = {}
    curves_ok = all(sum(c.shape[0] for c in r["del"]) == len(ex_l) for r in rows.values())
    if auc_steps > 0 and loaded is not None and not curves_ok:
        notes.add("insertion/deletion curves left out: some examples have no all-regions drop")
    for name, r in rows.items():
        pred = np.concatenate(r["pred"])
        rho, scored = lds_rows(act, pred, constant_prediction="zero")
        per[name] = {
            "rho": rho,
            "scored": scored,
            "const": np.ptp(pred, axis=1) == 0,
            "scores": np.concatenate(r["scores"]),
            "seconds_per_token": float(np.sum(r["seconds"]) / np.sum(r["tokens"])),
            "drops": np.asarray(drops[name]) if drops[name] else None,
            "del": _auc(r["del"], n_regions, auc_steps) if curves_ok else None,
            "ins": _auc(r["ins"], n_regions, auc_steps) if curves_ok else None,
        }
    oracle = np.asarray(drops["oracle"]) if drops["oracle"] else None
    legacy_gt = gt_l if point_rule != "sentence text match" and any(gt_l) else None
    everyone = np.ones(len(ex_l), dtype=bool)
    populations: dict[str, Any] = {}
    paired: dict[str, Any] = {}
    for pop, mask in {"all": everyone, **pops}.items():
        if not mask.any():
            populations[pop] = {"rule": pop_rules.get(pop, "every span"), "n_spans": 0, "n_examples": 0, "methods": {}}
            continue
        ms = {
            name: _method_metrics(
                d, mask, groups, loo, point_gt, legacy_gt, oracle, topk, n_boot, include_time=pop == "all"
            )
            for name, d in per.items()
        }
        populations[pop] = {
            "rule": pop_rules.get(pop, "every span"),
            "n_spans": int(mask.sum()),
            "n_examples": len(np.unique(groups[mask])),
            "methods": ms,
        }
        if "estimator" in per:
            paired[pop] = {
                name: _paired(per["estimator"], d, mask, groups, loo, point_gt, oracle, topk, n_boot)
                for name, d in per.items()
                if name != "estimator"
            }
    out: dict[str, Any] = {
        "methods": populations["all"]["methods"],
        "n_examples": len(exs),
        "n_spans": int(sum(len(e["spans"]) for e in exs)),
        # Every interval resamples examples (a span's scores are not independent of its example's other spans).
        "interval_unit": "example",
        "populations": populations,
        "paired": paired,
        "protocol": {
            "fit_subsets": [min(fit_idx), max(fit_idx) + 1] if fit_idx else [],
            "score_subsets": [min(eval_idx), max(eval_idx) + 1],
            "n_score_subsets": len(eval_idx),
            "image_dependent": pop_rules.get("image_dependent"),
            "pointing": point_rule,
            "contextcite_alpha": {str(b): alphas.get(b, MethodContext().alpha) for b in (32, 64)},
            "auc_steps": int(auc_steps),
            "lds_constant_prediction": "scored 0 (every method is scored on the same spans)",
            "n_boot": int(n_boot),
            "notes": sorted(notes),
        },
    }
    return out


def _fresh_ablations(
    em: ExampleModel, ex: dict[str, Any], eval_sl: slice
) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    """``extra(n)``: ``n`` fresh random removal sets of the example (seeded by its uid; never a scored set) and their
    measured drops, computed once and reused by every budget that needs them."""
    cache: dict[str, np.ndarray] = {}
    scored = {r.tobytes() for r in np.asarray(ex["subsets"], dtype=bool)[eval_sl]}
    k = int(em.assignment.shape[0])

    def extra(n: int) -> tuple[np.ndarray, np.ndarray]:
        if "sets" not in cache or cache["sets"].shape[0] < n:
            seed = int.from_bytes(hashlib.sha256(f"fresh:{ex['uid']}".encode()).digest()[:4], "little")
            cand = random_subsets(k, 4 * n + 8, seed=seed)
            keep = [r for r in cand if r.tobytes() not in scored][:n]
            sets = np.asarray(keep, dtype=bool)
            cache["sets"] = sets
            cache["drops"] = em.runner.deltas(sets, em.spans).T
        return cache["sets"][:n], cache["drops"][:, :n]

    return extra


def _curves(
    em: ExampleModel, scores_by: dict[str, np.ndarray], all_d: np.ndarray, steps: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per method, the deletion and insertion curves of every span: ``(n_spans, steps + 1)`` log-prob changes
    (nats) when the top ``round(i K / steps)`` regions by the method's score are removed, or kept alone."""
    names = list(scores_by)
    n_spans, k = scores_by[names[0]].shape
    ks = _curve_counts(k, steps)
    inner = ks[1:-1]
    sets = []
    for name in names:
        order = np.argsort(-scores_by[name], axis=1, kind="stable")
        for j in range(n_spans):
            for kk in inner:
                top = np.zeros(k, dtype=bool)
                top[order[j, :kk]] = True
                sets.extend([top, ~top])
    d = em.runner.deltas(np.asarray(sets, dtype=bool), em.spans) if sets else np.zeros((0, n_spans))
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    row = 0
    for name in names:
        dele = np.zeros((n_spans, len(ks)))
        ins = np.zeros((n_spans, len(ks)))
        dele[:, -1] = all_d
        ins[:, 0] = all_d
        for j in range(n_spans):
            for c in range(1, len(ks) - 1):
                dele[j, c] = d[row, j]
                ins[j, c] = d[row + 1, j]
                row += 2
        out[name] = (-dele, -ins)  # log-prob change: minus the drop
    return out


def _curve_counts(k: int, steps: int) -> np.ndarray:
    """The numbers of regions removed (deletion) or kept (insertion) along the curves: 0 .. K in ``steps`` steps."""
    return np.unique(np.round(np.linspace(0, k, steps + 1)).astype(int))


def _auc(curves: list[np.ndarray], k: int, steps: int) -> np.ndarray | None:
    if not curves:
        return None
    return curve_auc(np.concatenate(curves), _curve_counts(k, steps) / k)


def _populations(
    metas: list[dict[str, Any]], fit_stats: np.ndarray, rule: str, threshold: float, notes: set[str]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The span populations beside ``all`` (boolean masks over the concatenated spans) and their rules.

    ``fit_stats`` is ``(n_spans, 2)``: per span, the standard deviation and the maximum of its drops over the fit
    removal sets (NaN without at least two fit sets).
    """
    have_all = all(m["all_deltas"] is not None for m in metas)
    have_fit = bool(np.isfinite(fit_stats).all()) and fit_stats.size > 0
    if rule == "all_regions" and not have_all:
        notes.add("all-regions drops unavailable (no model, older collection): image_dependent uses fit_std")
        rule = "fit_std"
    if rule != "all_regions" and not have_fit:
        if not have_all:
            raise ValueError("image_dependent: fewer than 2 fit removal sets and no all-regions drops; no rule applies")
        notes.add("fewer than 2 fit removal sets: image_dependent uses all_regions")
        rule = "all_regions"
    if rule == "all_regions":
        value = np.concatenate([m["all_deltas"] for m in metas])
        text = f"drop when every region is removed >= {threshold:g} nats (all_regions)"
    elif rule == "fit_max":
        value = fit_stats[:, 1]
        text = f"largest drop over the fit removal sets >= {threshold:g} nats (fit_max)"
    else:
        value = fit_stats[:, 0]
        text = f"standard deviation of the drops over the fit removal sets >= {threshold:g} nats (fit_std)"
    pops = {"image_dependent": value >= threshold}
    rules = {"image_dependent": text}
    kinds = [k for m in metas for k in m["kinds"]]
    order = {k: n for n, k in enumerate(_KIND_ORDER)}
    for kind in sorted({k for k in kinds if k is not None}, key=lambda k: (order.get(k, len(order)), k)):
        pops[kind] = np.asarray([k == kind for k in kinds])
        rules[kind] = f"span kind {kind!r} (as the dataset records it)"
    return pops, rules


def _pointing_truth(
    metas: list[dict[str, Any]], legacy: list[Any], notes: set[str]
) -> tuple[list[list[int] | None], str]:
    """Per span, the regions a top-scoring region must hit (``None``: not scored), and the rule used."""
    if all(m["objects"] is not None for m in metas):
        out: list[list[int] | None] = []
        have_all = all(m["all_deltas"] is not None for m in metas)
        if not have_all:
            notes.add("pointing: all-regions drops unavailable, spans are scored without the non-zero-drop condition")
        for m in metas:
            alld = m["all_deltas"] if m["all_deltas"] is not None else np.full(len(m["objects"]), np.inf)
            for objs, a in zip(m["objects"], alld, strict=True):
                out.append(list(objs) if objs and abs(float(a)) > POINTING_MIN_DROP else None)
        rule = "the span names exactly one object (matched by its description) and its all-regions drop is non-zero"
        return out, rule
    notes.add(
        "pointing: the dataset gives no named objects; spans scored where their text matches a ground-truth sentence"
    )
    return list(legacy), "sentence text match"


def _method_metrics(
    d: dict[str, Any],
    mask: np.ndarray,
    groups: np.ndarray,
    loo: np.ndarray,
    point_gt: list[list[int] | None],
    legacy_gt: list[Any] | None,
    oracle: np.ndarray | None,
    topk: int,
    n_boot: int,
    *,
    include_time: bool,
) -> dict[str, Any]:
    """One method's metrics on one population (every interval resamples examples)."""
    res: dict[str, Any] = {}
    g = groups[mask]
    sc = d["scored"][mask]
    if sc.any():
        m = mean_metric(d["rho"][mask][sc], groups=g[sc], n_skipped=int((~sc).sum()), n_boot=n_boot)
        n_const = int((d["const"][mask] & sc).sum())
        res["lds"] = MetricResult(m.value, m.ci_low, m.ci_high, m.n, m.n_skipped, n_const).to_dict()
    res["r2"] = r2(d["scores"][mask], loo[mask], groups=g, n_boot=n_boot).to_dict()
    idx = np.nonzero(mask)[0]
    gt = [point_gt[i] for i in idx]
    if any(gt):
        res["pointing"] = pointing_accuracy(d["scores"][mask], gt, groups=g, n_boot=n_boot).to_dict()
    if legacy_gt is not None:
        lg = [legacy_gt[i] for i in idx]
        if any(lg):
            res["pointing_text_match"] = pointing_accuracy(d["scores"][mask], lg, groups=g, n_boot=n_boot).to_dict()
    if d["drops"] is not None and oracle is not None:
        td = topk_drop(d["drops"][mask], oracle[mask], groups=g, n_boot=n_boot)
        res[f"top{topk}_drop"] = td["raw"].to_dict()
        res[f"top{topk}_drop_normalized"] = td["normalized"].to_dict()
    for key in ("del", "ins"):
        if d[key] is not None:
            res["deletion_auc" if key == "del" else "insertion_auc"] = mean_metric(
                d[key][mask], groups=g, n_boot=n_boot
            ).to_dict()
    if include_time:
        res["seconds_per_token"] = d["seconds_per_token"]
    return res


def _paired(
    e: dict[str, Any],
    o: dict[str, Any],
    mask: np.ndarray,
    groups: np.ndarray,
    loo: np.ndarray,
    point_gt: list[list[int] | None],
    oracle: np.ndarray | None,
    topk: int,
    n_boot: int,
) -> dict[str, Any]:
    """The estimator minus another method on the same spans of one population (paired, resampling examples):
    LDS at the top level (``value``, ``ci_low``, ``ci_high``, ``n``), the other metrics under their names."""
    out: dict[str, Any] = {"metric": "lds"}
    g = groups[mask]
    both = e["scored"][mask] & o["scored"][mask]
    if both.any():
        d = paired_metric_difference(
            np.mean, [e["rho"][mask][both]], [o["rho"][mask][both]], groups=g[both], n_boot=n_boot
        )
        out.update({"value": d.value, "ci_low": d.ci_low, "ci_high": d.ci_high, "n": d.n})
    out["r2"] = paired_metric_difference(
        r2_value, [e["scores"][mask], loo[mask]], [o["scores"][mask], loo[mask]], groups=g, n_boot=n_boot
    ).to_dict()
    idx = np.nonzero(mask)[0]
    keep = [j for j, i in enumerate(idx) if point_gt[i]]
    if keep:
        gts = [set(point_gt[idx[j]] or []) for j in keep]
        top_e, top_o = np.argmax(e["scores"][mask], axis=1), np.argmax(o["scores"][mask], axis=1)
        he = np.asarray([float(int(top_e[j]) in s) for j, s in zip(keep, gts, strict=True)])
        ho = np.asarray([float(int(top_o[j]) in s) for j, s in zip(keep, gts, strict=True)])
        out["pointing"] = paired_metric_difference(np.mean, [he], [ho], groups=g[keep], n_boot=n_boot).to_dict()
    if e["drops"] is not None and o["drops"] is not None and oracle is not None and oracle[mask].mean() > 0:

        def ratio(dd: np.ndarray, oo: np.ndarray) -> float:
            return float(np.mean(dd) / max(float(np.mean(oo)), 1e-12))

        out[f"top{topk}_drop_normalized"] = paired_metric_difference(
            ratio, [e["drops"][mask], oracle[mask]], [o["drops"][mask], oracle[mask]], groups=g, n_boot=n_boot
        ).to_dict()
    for key, name in (("del", "deletion_auc"), ("ins", "insertion_auc")):
        if e[key] is not None and o[key] is not None:
            out[name] = paired_metric_difference(
                np.mean, [e[key][mask]], [o[key][mask]], groups=g, n_boot=n_boot
            ).to_dict()
    return out


def _topk_drops(
    em: ExampleModel, scores_by: dict[str, np.ndarray], loo: np.ndarray, topk: int, drops: dict[str, list[float]]
) -> None:
    names = [*scores_by, "oracle"]
    sets = [topk_sets(scores_by[n] if n != "oracle" else loo, topk) for n in names]  # each (n_spans, K)
    n_spans = loo.shape[0]
    d = em.runner.deltas(np.concatenate(sets), em.spans)  # (n_names * n_spans, n_spans)
    for i, n in enumerate(names):
        block = d[i * n_spans : (i + 1) * n_spans]
        drops[n].extend(np.diag(block).tolist())


def data_efficiency(
    train: Collection | Sequence[Collection],
    test: Collection,
    sizes: Sequence[int] = (100, 500, 1000, 2000),
    *,
    loaded: LoadedModel | None = None,
    loss: str = "pearson",
    topk: int = 5,
    limit: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    resamples: int = 3,
    span_meta: Sequence[dict[str, Any]] | None = None,
    n_boot: int = 1000,
    **params: Any,
) -> list[dict[str, Any]]:
    """LDS and top-K drop of estimators fit on ``n`` correct training examples, per ``n``, over resamples.

    For each size, ``resamples`` training sets of ``n`` examples are drawn without replacement from the usable
    ones (seeded; the first draw is the first ``n`` examples in order, as a single fit always used; a size that
    takes every usable example is fit once). Each resample's estimator is scored on the same held-out spans.

    Args:
        train: The train collection(s).
        test: Held-out collection (``--loo``).
        sizes: Training-set sizes; a size above the number of usable examples is
            reported with ``"skipped"`` and the number available.
        loaded: The model (for the top-K drop's ablation forwards; without it only LDS and R² are reported).
        loss: Estimator loss.
        topk: K of the top-K drop.
        limit: Evaluate on at most this many test examples.
        on_progress: Called as ``on_progress(done, total)`` over sizes.
        resamples: Training sets drawn per size.
        span_meta: Precomputed [`span_metadata`][attrib.evaluation.span_metadata] of ``test`` (first element).
        n_boot: Bootstrap resamples of every interval.
        **params: Further estimator hyper-parameters.

    Returns:
        One dict per size: ``n_train``, ``n_resamples``, ``resamples`` (each draw's metrics) and, averaged over
        the draws, every metric of the estimator's row (``lds``, ``r2``, ``pointing``, ``top{K}_drop``,
        ``top{K}_drop_normalized``, ...) and ``lds_image_dependent``: ``value`` (mean over draws),
        ``ci_low``/``ci_high`` (mean of the draws' intervals, which resample held-out examples), ``sd_resamples``
        (the spread the training draw causes) and ``n``.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    exs = train_examples(train)
    usable = [e for e in exs if e.get("correct") is not False]
    out: list[dict[str, Any]] = []
    shape = tuple(exs[0]["features"].shape[2:])
    for i, n in enumerate(sizes):
        if n > len(usable):
            out.append({"n_train": int(n), "skipped": f"only {len(usable)} usable training examples"})
            continue
        draws = 1 if n == len(usable) else resamples
        rows = []
        for r in range(draws):
            # Draw r > 0: another n training examples, without replacement (a subsample, not a bootstrap).
            everything = np.arange(len(usable))
            idx = everything[:n] if r == 0 else resample(everything, replace=False, n_samples=n, random_state=r)
            pick = [usable[j] for j in sorted(idx)]
            d = design_rows(pick, only_correct=False)
            est = LinearHeadEstimator(loss=loss, layer_head_shape=shape, **params)  # type: ignore[arg-type]
            est.fit(d.x, d.y, groups=d.groups, span_mass=d.span_mass)
            res = evaluate_methods(
                test,
                est,
                loaded=loaded,
                methods=("estimator",),
                topk=topk,
                limit=limit,
                auc_steps=0,
                span_meta=span_meta,
                n_boot=n_boot,
            )
            row = dict(res["methods"]["estimator"])
            row.pop("seconds_per_token", None)
            dep = res["populations"].get("image_dependent", {}).get("methods", {}).get("estimator", {})
            if "lds" in dep:
                row["lds_image_dependent"] = dep["lds"]
            rows.append(row)
        summary: dict[str, Any] = {"n_train": int(n), "n_resamples": len(rows)}
        for key in [k for k, v in rows[0].items() if isinstance(v, dict) and "value" in v]:
            vals = [rw[key] for rw in rows if key in rw]
            if not vals:
                continue
            summary[key] = {
                "value": float(np.mean([v["value"] for v in vals])),
                "ci_low": float(np.mean([v["ci_low"] for v in vals])),
                "ci_high": float(np.mean([v["ci_high"] for v in vals])),
                "sd_resamples": float(np.std([v["value"] for v in vals], ddof=1)) if len(vals) > 1 else 0.0,
                "n": int(vals[0]["n"]),
            }
        summary["resamples"] = [
            {k: float(v["value"]) for k, v in rw.items() if isinstance(v, dict) and "value" in v} for rw in rows
        ]
        out.append(summary)
        if on_progress:
            on_progress(i + 1, len(sizes))
    return out


def estimator_seeds(
    train: Collection | Sequence[Collection],
    test: Collection,
    estimator: LinearHeadEstimator,
    seeds: int = 3,
    *,
    limit: int | None = None,
    only_correct: bool = True,
    span_meta: Sequence[dict[str, Any]] | None = None,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Refit the estimator with ``seeds`` initialisation seeds (its other hyper-parameters kept) and score each
    on the same held-out spans, per population (feature-based metrics: LDS, R², pointing; no forwards).

    Returns:
        ``{"seeds": [...], "n_train": n, "populations": {pop: {metric: {"mean", "sd", "values"}}}}``.

    Raises:
        ValueError: If ``seeds`` < 1.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    exs = train_examples(train)
    d = design_rows(exs, only_correct=only_correct)
    used = d.n_examples
    shape = tuple(exs[0]["features"].shape[2:])
    params = {**estimator.get_params(), "layer_head_shape": shape}
    per: dict[str, dict[str, list[float]]] = {}
    for seed in range(seeds):
        est = LinearHeadEstimator(**{**params, "random_state": seed}).fit(
            d.x, d.y, groups=d.groups, span_mass=d.span_mass
        )
        res = evaluate_methods(
            test, est, methods=("estimator",), limit=limit, auc_steps=0, span_meta=span_meta, n_boot=n_boot
        )
        for pop, body in res["populations"].items():
            for metric, v in body["methods"].get("estimator", {}).items():
                if isinstance(v, dict) and "value" in v:
                    per.setdefault(pop, {}).setdefault(metric, []).append(float(v["value"]))
    return {
        "seeds": list(range(seeds)),
        "n_train": int(used),
        "populations": {
            pop: {
                m: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "values": v}
                for m, v in ms.items()
            }
            for pop, ms in per.items()
        },
    }


def choose_contextcite_alpha(
    validation: Collection,
    *,
    grid: Sequence[float] = (0.001, 0.003, 0.01, 0.03, 0.1),
    budgets: Sequence[int] = (32, 64),
    limit: int | None = None,
) -> dict[str, Any]:
    """ContextCite's Lasso penalty per ablation budget, chosen on a validation collection.

    For each budget b, every validation example's surrogate is fit on its first b removal sets and scored
    (LDS, constant predictions scored 0) on the rest; the penalty with the highest mean LDS wins. A budget
    the collection cannot serve (fewer than b + 3 sets) takes the largest budget's penalty that it can.

    Returns:
        ``{"alphas": {b: alpha}, "grid", "lds": {b: {alpha: lds}}, "n_examples", "n_subsets", "budget_used": {b: b'}}``.

    Raises:
        ValueError: If the collection has fewer than 8 removal sets per example (no budget can be served).
    """
    exs = list(validation.examples())[:limit]
    if not exs:
        raise ValueError("the validation collection holds no example")
    m = int(exs[0]["subsets"].shape[0])
    served = [b for b in budgets if m >= b + 3]
    if not served:
        b0 = m - max(3, m // 4)
        if b0 < 5:
            raise ValueError(f"the validation collection has {m} removal sets per example; choosing alpha needs >= 8")
        served = [b0]
    table: dict[int, dict[float, float]] = {}
    for b in served:
        table[b] = {}
        for a in grid:
            rhos = []
            for ex in exs:
                sets, d = np.asarray(ex["subsets"], dtype=bool), np.asarray(ex["subset_deltas"], dtype=np.float64)
                s = contextcite_fit(sets[:b], d[:, :b], alpha=a)
                rho, ok = lds_rows(d[:, b:], s @ sets[b:].T.astype(np.float64), constant_prediction="zero")
                rhos.extend(rho[ok].tolist())
            table[b][float(a)] = float(np.mean(rhos)) if rhos else float("nan")
    best = {b: max(t, key=lambda a: -np.inf if np.isnan(t[a]) else t[a]) for b, t in table.items()}
    alphas: dict[int, float] = {}
    used: dict[int, int] = {}
    for b in budgets:
        src = b if b in best else max(best)
        alphas[int(b)], used[int(b)] = best[src], int(src)
    return {
        "alphas": alphas,
        "grid": [float(a) for a in grid],
        "lds": {str(b): {str(a): v for a, v in t.items()} for b, t in table.items()},
        "budget_used": {str(b): v for b, v in used.items()},
        "n_examples": len(exs),
        "n_subsets": m,
    }


def region_comparison(
    pairs: Sequence[tuple[Collection | Sequence[Collection], Collection]],
    *,
    loaded: LoadedModel | None = None,
    loss: str = "pearson",
    topk: int = 5,
    limit: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Fit and score one estimator per region configuration.

    Args:
        pairs: ``(train, test)`` collections per configuration (same examples, other regions).
        loaded: The model (for the top-K drop).
        loss: Estimator loss.
        topk: K of the top-K drop.
        limit: Evaluate on at most this many test examples.
        on_progress: Called as ``on_progress(done, total)`` over configurations.

    Returns:
        One dict per configuration: ``region_method``, ``k``, ``n_train``, ``lds``, ``r2``,
        ``pointing``, ``top{K}_drop`` and ``top{K}_drop_normalized``.

    Raises:
        ValueError: If a pair's train and test collections use different regions.
    """
    rows = []
    for i, (train, test) in enumerate(pairs):
        est, used = fit_estimator(train, loss=loss)
        tc = (train if isinstance(train, Collection) else train[0]).manifest["config"]
        cfg = test.manifest["config"]
        if (tc["region_method"], tc["k"]) != (cfg["region_method"], cfg["k"]):
            raise ValueError(
                f"train uses {tc['region_method']} K={tc['k']} but test uses {cfg['region_method']} K={cfg['k']}"
            )
        row = {"region_method": cfg["region_method"], "k": int(cfg["k"]), "n_train": int(used)}
        rows.append({**row, **_estimator_scores(test, est, loaded, topk, limit)})
        if on_progress:
            on_progress(i + 1, len(pairs))
    return rows


def _estimator_scores(
    test: Collection, est: LinearHeadEstimator, loaded: LoadedModel | None, topk: int, limit: int | None
) -> dict[str, Any]:
    """The estimator's faithfulness row on ``test`` (without its timing, which these tables do not compare)."""
    res = evaluate_methods(test, est, loaded=loaded, methods=("estimator",), topk=topk, limit=limit, auc_steps=0)
    row = dict(res["methods"]["estimator"])
    row.pop("seconds_per_token", None)
    return row
