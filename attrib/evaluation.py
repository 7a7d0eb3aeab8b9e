"""Fit the estimator on a collected train split and score every method on a held-out split.

``fit_estimator`` builds the design rows (summed removed-region features per
span and removal set) from correctly answered training examples and fits a
[`LinearHeadEstimator`][estimators.linear.LinearHeadEstimator]. ``evaluate_methods`` computes,
for the estimator and every baseline, LDS on held-out removal sets, R² against
leave-one-out, pointing accuracy against the benchmark's ground truth, the
top-K drop (with real ablation forwards of each method's top-K regions) and the
seconds per generated token each method costs.

The held-out split must be collected with ``--loo`` and an even number of
removal sets (64 by default here): the ContextCite surrogate fits on the first
half of each example's sets and every method is scored on the second half, so
no method sees the sets it is scored on.

Every method is dispatched through ``estimators.baselines.BASELINES`` with
one [`MethodContext`][estimators.baselines.MethodContext] per example; methods that need
the model get a differentiable forward from the model variant's ablator, so a
new baseline is one registered function (see docs/architecture.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from attrib.ablation import Ablator
from attrib.collect.datasets import open_dataset
from attrib.collect.store import Collection
from attrib.models.loading import LoadedModel
from attrib.regions.partition import RegionPartition
from attrib.variants.registry import AblationRequest, get_variant
from estimators.baselines import BASELINES, MethodContext
from estimators.linear import LinearHeadEstimator, subset_design
from metrics.faithfulness import lds, pointing_accuracy, r2, topk_drop, topk_sets

__all__ = [
    "DEFAULT_METHODS",
    "ExampleModel",
    "data_efficiency",
    "design_matrix",
    "evaluate_methods",
    "fit_estimator",
    "region_comparison",
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
    "leave_one_out",
)


def design_matrix(
    examples: Sequence[dict[str, Any]], *, only_correct: bool = True, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Design rows, targets and span groups from collected examples.

    Args:
        examples: Collected examples.
        only_correct: Keep correctly answered examples only (the paper's choice).
        limit: Use at most this many examples (after filtering), in order.

    Returns:
        ``(X, y, groups, n_examples_used)``.

    Raises:
        ValueError: If no example is left, or an example has NaN targets (named).
    """
    xs, ys, gs = [], [], []
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
        g += n_spans
        used += 1
    if bad:
        shown = ", ".join(bad[:20]) + (f" and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise ValueError(f"{len(bad)} training example(s) have unusable targets: {shown}")
    if not xs:
        raise ValueError("no training examples left (all failed, or none answered correctly)")
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(gs), used


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
    x, y, groups, used = design_matrix(exs, only_correct=only_correct, limit=limit)
    shape = tuple(exs[0]["features"].shape[2:])
    est = LinearHeadEstimator(loss=loss, layer_head_shape=shape, **params)  # type: ignore[arg-type]
    est.fit(x, y, groups=groups)
    return est, used


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
) -> dict[str, Any]:
    """Score every method on a held-out collection.

    Each example's removal sets are split in two: methods that fit on the example's own ablations
    (``contextcite``) see only ``fit_subsets``, and every method is scored (LDS) on ``score_subsets``.

    Args:
        test: Held-out collection (made with ``--loo`` and an even number of removal sets).
        estimator: The fitted estimator.
        loaded: The model the collection was made with (needed for top-K drops and
            gradient baselines; without it only the feature- and target-based metrics run).
        methods: Registered methods to score (``estimators.baselines.BASELINES``).
        best_layer: Layer of the ``best_layer`` baseline (chosen on training data).
        topk: K of the top-K drop.
        limit: Evaluate at most this many examples.
        on_progress: Called as ``on_progress(done, total)``.
        fit_subsets: Removal sets a method may fit on (default: the first half).
        score_subsets: Removal sets every method is scored on (default: the second half).

    Returns:
        ``{"methods": {name: {"lds", "top5_drop", "top5_drop_normalized", "r2", "pointing",
        "seconds_per_token", ... with intervals}}, "n_examples", "n_spans"}``.

    Raises:
        ValueError: For an unknown method, a collection without leave-one-out targets, a method that needs
            the model when none is given, or fit and scored removal sets that overlap (scores would leak).
    """
    unknown = [m for m in methods if m not in BASELINES]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; registered: {sorted(BASELINES)}")
    if loaded is None:
        needy = [m for m in methods if BASELINES[m].needs_model]
        if needy:
            raise ValueError(f"{', '.join(needy)} need(s) the model")
    exs = list(test.examples())[:limit]
    if not exs:
        raise ValueError("the test collection holds no example")
    if "loo_deltas" not in exs[0]:
        raise ValueError("the test collection was made without --loo; leave-one-out targets are required")
    cfg = test.config
    m_total = exs[0]["subsets"].shape[0]
    half = m_total // 2
    fit_sl = fit_subsets if fit_subsets is not None else slice(0, half)
    eval_sl = score_subsets if score_subsets is not None else slice(half, m_total)
    fit_idx, eval_idx = set(range(m_total)[fit_sl]), set(range(m_total)[eval_sl])
    if not eval_idx:
        raise ValueError(f"no removal sets left to score on (score_subsets={eval_sl} of {m_total})")
    if fit_idx & eval_idx:
        raise ValueError(
            f"fit and scored removal sets overlap ({len(fit_idx & eval_idx)} sets): a method fit on the sets it is "
            "scored on would be credited for memorising them"
        )
    rows: dict[str, dict[str, list[Any]]] = {
        name: {"act": [], "pred": [], "scores": [], "loo": [], "gt": [], "seconds": [], "tokens": []}
        for name in methods
    }
    drops: dict[str, list[float]] = {name: [] for name in [*methods, "oracle"]}
    for i, ex in enumerate(exs):
        n_tokens = max(1, ex["spans"][-1]["end"]) if ex["spans"] else 1
        em = (
            ExampleModel(
                loaded, ex, str(cfg.get("dataset", "")), str(cfg.get("ablation_mode", "mask")), cfg.get("system")
            )
            if loaded is not None
            else None
        )
        ctx = MethodContext(
            estimator=estimator,
            layer=best_layer or 0,
            fit_subsets=fit_sl,
            embedding_forward=em.embedding_forward if em is not None else None,
            assignment=em.assignment if em is not None else None,
        )
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
            sub = ex["subsets"][eval_sl].astype(np.float64)
            r["act"].append(np.asarray(ex["subset_deltas"])[:, eval_sl])
            r["pred"].append(s @ sub.T)
            r["scores"].append(s)
            r["loo"].append(np.asarray(ex["loo_deltas"]))
            r["gt"].extend(ex.get("span_gt_regions") or [None] * s.shape[0])
            r["seconds"].append(dt)
            r["tokens"].append(n_tokens)
        if em is not None:
            _topk_drops(em, scores_by, np.asarray(ex["loo_deltas"]), topk, drops)
        if on_progress:
            on_progress(i + 1, len(exs))
    out: dict[str, Any] = {"methods": {}, "n_examples": len(exs), "n_spans": int(sum(len(e["spans"]) for e in exs))}
    for name, r in rows.items():
        act, pred = np.concatenate(r["act"]), np.concatenate(r["pred"])
        sc, loo = np.concatenate(r["scores"]), np.concatenate(r["loo"])
        res: dict[str, Any] = {
            "lds": lds(act, pred).to_dict(),
            "r2": r2(sc, loo).to_dict(),
            "seconds_per_token": float(np.sum(r["seconds"]) / np.sum(r["tokens"])),
        }
        if any(r["gt"]):
            res["pointing"] = pointing_accuracy(sc, r["gt"]).to_dict()
        if drops[name]:
            td = topk_drop(np.asarray(drops[name]), np.asarray(drops["oracle"]))
            res[f"top{topk}_drop"] = td["raw"].to_dict()
            res[f"top{topk}_drop_normalized"] = td["normalized"].to_dict()
        out["methods"][name] = res
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
) -> list[dict[str, Any]]:
    """LDS and top-K drop of estimators fit on the first ``n`` correct training examples, per ``n``.

    Args:
        train: The train collection(s).
        test: Held-out collection (``--loo``).
        sizes: Training-set sizes; a size above the number of usable examples is
            reported with ``"skipped"`` and the number available.
        loaded: The model (for the top-K drop's ablation forwards; without it only LDS is reported).
        loss: Estimator loss.
        topk: K of the top-K drop.
        limit: Evaluate on at most this many test examples.
        on_progress: Called as ``on_progress(done, total)`` over sizes.

    Returns:
        One dict per size: ``n_train``, ``lds``, ``top{K}_drop``, ``top{K}_drop_normalized`` (with intervals).
    """
    exs = train_examples(train)
    available = sum(1 for e in exs if e.get("correct") is not False)
    out: list[dict[str, Any]] = []
    for i, n in enumerate(sizes):
        if n > available:
            out.append({"n_train": int(n), "skipped": f"only {available} usable training examples"})
            continue
        shape = tuple(exs[0]["features"].shape[2:])
        x, y, groups, used = design_matrix(exs, limit=n)
        est = LinearHeadEstimator(loss=loss, layer_head_shape=shape)  # type: ignore[arg-type]
        est.fit(x, y, groups=groups)
        out.append({"n_train": int(used), **_estimator_scores(test, est, loaded, topk, limit)})
        if on_progress:
            on_progress(i + 1, len(sizes))
    return out


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
    res = evaluate_methods(test, est, loaded=loaded, methods=("estimator",), topk=topk, limit=limit)
    row = dict(res["methods"]["estimator"])
    row.pop("seconds_per_token", None)
    return row
