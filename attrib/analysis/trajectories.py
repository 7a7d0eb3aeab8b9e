"""Reasoning trajectories in attribution space on a collected dataset.

Each collected example becomes a [`Chain`][attrib.analysis.trajectories.Chain]: its per-span region scores
(from the fitted estimator, or the leave-one-out drops when no estimator is
given) and an outcome label:

- ``success``: the answer is right;
- ``hallucination``: the answer is wrong and the trace names an object that is
  not in the image;
- ``reasoning_error``: the answer is wrong and every object the trace names
  is in the image;
- ``failure``: the answer is wrong, and the dataset cannot tell which kind
  (its kind has no ``failure_kind``, see [`attrib.collect.datasets`][attrib.collect.datasets]);
- ``unknown``: correctness is unknown (no reference answer); left out.

The kind of failure is the dataset's to judge: the benchmark registers how it
tells a hallucination
([`attrib.shapes.hallucination.names_absent_object`][attrib.shapes.hallucination.names_absent_object]),
so this module knows no shape or colour words.

[`analyse_chains`][attrib.analysis.trajectories.analyse_chains] compares path length, tortuosity and concentration of
successes and failures, scores early failure prediction by reasoning progress,
contrasts fixation (hallucination) with wandering (reasoning error), and
calibrates an online [`TortuosityFlagger`][metrics.trajectory.TortuosityFlagger]. The
metrics themselves live in [`metrics.trajectory`][metrics.trajectory]; the figures are
[`attrib.plots.trajectory_plots`][attrib.plots.trajectory_plots].
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from attrib.collect.datasets import open_dataset
from attrib.io import jsonable
from metrics.trajectory import (
    DEFAULT_FRACTIONS,
    EPS,
    TortuosityFlagger,
    TrajectoryPCA,
    auc_by_progress,
    bonferroni,
    compare_outcomes,
    concentration,
    effect_vectors,
    holm,
    length_adjusted,
    mann_whitney_power,
    path_length,
    progress_curve,
    three_outcome,
    tortuosity,
)

__all__ = [
    "FAILURES",
    "Chain",
    "ExampleSource",
    "RegionScorer",
    "analyse",
    "analyse_chains",
    "check_flagger",
    "load_chains",
    "outcome_of",
]

logger = logging.getLogger(__name__)

#: The outcome labels of wrong answers.
FAILURES = ("failure", "reasoning_error", "hallucination")
#: ``failure_kind(record) -> "hallucination" | "reasoning_error" | None``.
FailureKind = Callable[[Mapping[str, Any]], "str | None"]


class RegionScorer(Protocol):
    """Anything with the estimator's ``region_scores`` (e.g.
    [`estimators.linear.LinearHeadEstimator`][estimators.linear.LinearHeadEstimator])."""

    def region_scores(self, features: np.ndarray) -> np.ndarray:
        """``(n_spans, K, L, H)`` features -> ``(n_spans, K)`` scores."""
        ...


class ExampleSource(Protocol):
    """Anything with [`attrib.collect.store.Collection.examples`][attrib.collect.store.Collection.examples]."""

    def examples(self) -> Iterator[dict[str, Any]]:
        """Yield example records (see [`attrib.collect.store.Collection`][attrib.collect.store.Collection])."""
        ...


# ---------------------------------------------------------------------------- chains
@dataclass(frozen=True)
class Chain:
    """One reasoning chain in attribution space.

    Attributes:
        uid: Example uid.
        scores: ``(n_spans, K)`` raw per-span region scores.
        outcome: ``success``, ``reasoning_error``, ``hallucination``, ``failure`` or ``unknown``.
    """

    uid: str
    scores: np.ndarray
    outcome: str

    @property
    def n_spans(self) -> int:
        """Number of spans (points)."""
        return int(self.scores.shape[0])

    @property
    def failed(self) -> bool:
        """Whether the answer was wrong."""
        return self.outcome in FAILURES

    def effect_vectors(self, top: int = 32, *, normalize: bool = True) -> np.ndarray:
        """[`metrics.trajectory.effect_vectors`][metrics.trajectory.effect_vectors] of the scores."""
        return effect_vectors(self.scores, top, normalize=normalize)


def outcome_of(ex: Mapping[str, Any], failure_kind: FailureKind | None = None) -> str:
    """The outcome label of one collected example (see the module docstring).

    Args:
        ex: A collected example (``correct``, ``output``, ``uid``, ...).
        failure_kind: Tells a wrong answer's kind (``None``, or it returns ``None``: ``"failure"``).
    """
    correct = ex.get("correct")
    if correct is None:
        return "unknown"
    if correct:
        return "success"
    kind = failure_kind(ex) if failure_kind is not None else None
    if kind not in (None, "hallucination", "reasoning_error"):
        raise ValueError(f"failure_kind returned {kind!r}; expected 'hallucination', 'reasoning_error' or None")
    return kind or "failure"


def load_chains(
    collection: ExampleSource,
    estimator: RegionScorer | None = None,
    *,
    limit: int | None = None,
    failure_kind: FailureKind | None = None,
) -> list[Chain]:
    """Chains of a collection, with outcome labels.

    Args:
        collection: An opened [`attrib.collect.store.Collection`][attrib.collect.store.Collection] (or anything
            with ``examples()``; a ``manifest`` with ``config.dataset`` names the
            dataset that tells the kind of a failure).
        estimator: Scores spans with ``region_scores(features)``; when ``None``,
            the leave-one-out drops ``loo_deltas`` are the scores.
        limit: Read at most this many examples.
        failure_kind: Overrides the dataset's ``failure_kind``.

    Returns:
        The chains, in collection order (examples without spans are skipped).

    Raises:
        ValueError: Without an estimator, for an example that has no
            ``loo_deltas`` (collect with ``--loo`` or pass an estimator).
    """
    manifest = getattr(collection, "manifest", None) or {}
    spec = manifest.get("config", {}).get("dataset")
    if failure_kind is None and spec:
        try:
            failure_kind = open_dataset(str(spec)).failure_kind
        except (ValueError, OSError) as e:
            logger.warning("dataset %s of the collection is not available (%s); failures are left untyped", spec, e)
    chains: list[Chain] = []
    for i, ex in enumerate(collection.examples()):
        if limit is not None and i >= limit:
            break
        if estimator is not None:
            scores = np.asarray(estimator.region_scores(ex["features"]), dtype=np.float64)
        else:
            if "loo_deltas" not in ex:
                raise ValueError(
                    f"example {ex.get('uid')} has no leave-one-out drops; pass an estimator "
                    "or use a collection made with --loo"
                )
            scores = np.asarray(ex["loo_deltas"], dtype=np.float64)
        if scores.ndim != 2 or scores.shape[0] == 0:
            logger.info("example %s has no spans; skipped", ex.get("uid"))
            continue
        uid = str(ex.get("uid", i))
        chains.append(Chain(uid=uid, scores=scores, outcome=outcome_of(ex, failure_kind)))
    return chains


# ---------------------------------------------------------------------------- analysis
def _mean_conc(scores: np.ndarray) -> float:
    c = concentration(scores)
    c = c[np.isfinite(c)]
    return float(c.mean()) if c.size else float("nan")


def _flag_rates(rows: Sequence[tuple[Chain, int | None]]) -> dict[str, Any]:
    """Flag rates of ``(chain, flagged_at)`` pairs: ``fpr`` over successes, ``recall`` over failures and per
    failure kind, each with its count, and ``median_flag_progress`` ((flagged_at + 1) / n_spans) over flagged
    failures. NaN where a group is empty."""

    def rate(kinds: Iterable[str]) -> tuple[float, int]:
        hits = [f is not None for c, f in rows if c.outcome in kinds]
        return (float(np.mean(hits)) if hits else float("nan")), len(hits)

    out: dict[str, Any] = {}
    for key, count, kinds in (
        ("fpr", "n_success", ["success"]),
        ("recall", "n_failure", FAILURES),
        ("recall_reasoning_error", "n_reasoning_error", ["reasoning_error"]),
        ("recall_hallucination", "n_hallucination", ["hallucination"]),
    ):
        out[key], out[count] = rate(kinds)
    prog = [(f + 1) / c.n_spans for c, f in rows if c.failed and f is not None]
    out["median_flag_progress"] = float(np.median(prog)) if prog else float("nan")
    return out


def _flagger_block(
    chains: Sequence[Chain],
    *,
    fpr: float,
    min_spans: int,
    top: int,
    normalize: bool,
    eps: float,
    seed: int,
    statistic: str = "tortuosity",
) -> tuple[dict[str, Any], list[int | None]]:
    """Calibrate on all successes; held-out FPR by 2-fold cross-fitting; flag rates on failures."""
    flagged: list[int | None] = [None] * len(chains)
    succ = [i for i, c in enumerate(chains) if c.outcome == "success" and c.n_spans >= min_spans]
    out: dict[str, Any] = {"statistic": statistic, "fpr_target": fpr, "min_spans": min_spans, "n_reference": len(succ)}
    if len(succ) < 2:
        out["error"] = f"need >= 2 successful chains with >= {min_spans} spans to calibrate; got {len(succ)}"
        return out, flagged
    fl = TortuosityFlagger(fpr=fpr, min_spans=min_spans, top=top, normalize=normalize, eps=eps, statistic=statistic)
    fl.fit([chains[i].scores for i in succ])
    for i, c in enumerate(chains):
        if c.n_spans >= min_spans and c.outcome != "unknown":
            flagged[i] = fl.run(c.scores)
    # 2-fold cross-fitting: a threshold fit on one half of the successes, false positives counted on the other.
    perm = np.random.default_rng(seed).permutation(len(succ))
    folds = [[succ[j] for j in perm[: len(succ) // 2]], [succ[j] for j in perm[len(succ) // 2 :]]]
    held = []
    for a, b in ((0, 1), (1, 0)):
        fa = TortuosityFlagger(fpr=fpr, min_spans=min_spans, top=top, normalize=normalize, eps=eps, statistic=statistic)
        fa.fit([chains[i].scores for i in folds[a]])
        held += [fa.run(chains[i].scores) is not None for i in folds[b]]

    r = _flag_rates([(c, f) for c, f in zip(chains, flagged, strict=True) if c.n_spans >= min_spans])
    fl.heldout_ = {
        "fpr": float(np.mean(held)),
        "recall": r["recall"],
        "n_reference": float(len(succ)),
        "n_failure": float(r["n_failure"]),
    }
    out.update(
        {
            "threshold": fl.threshold_,
            "fpr_reference": r["fpr"],
            "fpr_heldout": float(np.mean(held)),
            "flagged_rate_failure": r["recall"],
            "n_failure": r["n_failure"],
            "flagged_rate_reasoning_error": r["recall_reasoning_error"],
            "flagged_rate_hallucination": r["recall_hallucination"],
            "median_flag_progress": r["median_flag_progress"],
            "state": fl.to_dict(),
        }
    )
    return out, flagged


def check_flagger(chains: Sequence[Chain], flagger: TortuosityFlagger) -> dict[str, Any]:
    """A calibrated flagger applied, unchanged, to other chains (e.g. a split it was not calibrated on).

    Args:
        chains: Labelled chains; ``unknown`` outcomes and chains shorter than the flagger's ``min_spans`` are
            left out.
        flagger: A calibrated flagger.

    Returns:
        ``statistic``, ``threshold``, ``fpr`` (successful chains flagged) with ``n_success``, ``recall`` (failed
        chains flagged) with ``n_failure``, ``recall_reasoning_error`` / ``recall_hallucination`` with their
        counts, and ``median_flag_progress`` over flagged failures. NaN where a group is empty.
    """
    rows = [(c, flagger.run(c.scores)) for c in chains if c.outcome != "unknown" and c.n_spans >= flagger.min_spans]
    out: dict[str, Any] = {"statistic": flagger.statistic, "threshold": flagger.threshold_, **_flag_rates(rows)}
    return dict(jsonable(out))


def analyse_chains(
    chains: Sequence[Chain],
    *,
    fpr: float = 0.1,
    top: int = 32,
    normalize: bool = True,
    min_spans: int = 3,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    n_boot: int = 1000,
    seed: int = 0,
    n_bins: int = 10,
    n_components: int = 3,
    eps: float = EPS,
    power_auc: float = 0.6,
    power_alpha: float = 1e-3,
    n_sim: int = 2000,
    flag_statistic: str = "tortuosity",
) -> dict[str, Any]:
    """The trajectory analysis of labelled chains, as a JSON-ready dict.

    Args:
        chains: From [`load_chains`][attrib.analysis.trajectories.load_chains]; ``unknown`` outcomes are left out.
        fpr: Target false-positive rate of the flagger.
        top: Effect-vector entries kept per span
            ([`metrics.trajectory.effect_vectors`][metrics.trajectory.effect_vectors]).
        normalize: L2-normalise effect vectors.
        min_spans: Spans before the flagger may raise.
        fractions: Reasoning progress values for the AUC curve.
        n_boot: Bootstrap resamples of the AUC intervals.
        seed: Seed of the bootstrap and of the flagger's cross-fitting split.
        n_bins: Progress bins of the concentration curves.
        n_components: PCA components stored for the pictures.
        eps: See [`metrics.trajectory.tortuosity`][metrics.trajectory.tortuosity].
        power_auc: The AUC whose detection probability ``power`` reports
            ([`metrics.trajectory.mann_whitney_power`][metrics.trajectory.mann_whitney_power]).
        power_alpha: The two-sided significance level of that power.
        n_sim: Simulated samples of the power.
        flag_statistic: The statistic of the flagger in ``flagger`` (and of ``chains[].flagged_at``):
            ``tortuosity`` or ``stillness``; ``flaggers`` holds both.

    Returns:
        See ``docs/trajectories.md`` for the schema. NaN is written as ``null``.
    """
    if flag_statistic not in TortuosityFlagger.STATISTICS:
        raise ValueError(
            f"flag_statistic must be one of {', '.join(TortuosityFlagger.STATISTICS)}, got {flag_statistic!r}"
        )
    known = [c for c in chains if c.outcome != "unknown"]
    evs = [c.effect_vectors(top, normalize=normalize) for c in known]
    failed = np.array([c.failed for c in known], dtype=bool)
    pl = np.array([path_length(e) for e in evs])
    tt = np.array([tortuosity(e, eps=eps) for e in evs])
    conc = np.array([_mean_conc(c.scores) for c in known])
    comps = {name: compare_outcomes(v[~failed], v[failed]) for name, v in (("path_length", pl), ("tortuosity", tt))}
    comps["concentration"] = compare_outcomes(conc[~failed], conc[failed])
    pvals = [comps[n]["p_value"] for n in comps]
    for name, pb, ph in zip(comps, bonferroni(pvals), holm(pvals), strict=True):
        comps[name]["p_value_bonferroni"] = pb
        comps[name]["p_value_holm"] = ph
    groups = {
        "success": [c for c in known if c.outcome == "success"],
        "failure": [c for c in known if c.failed],
        "reasoning_error": [c for c in known if c.outcome == "reasoning_error"],
        "hallucination": [c for c in known if c.outcome == "hallucination"],
    }
    curves = {g: progress_curve([concentration(c.scores) for c in cs], n_bins) for g, cs in groups.items()}
    progress = curves["success"]["progress"]
    for cv in curves.values():
        cv.pop("progress")
    n_spans = np.array([c.n_spans for c in known])
    outcomes = np.array([c.outcome for c in known])
    kinds = {
        "failure": failed,
        "reasoning_error": outcomes == "reasoning_error",
        "hallucination": outcomes == "hallucination",
    }
    success = outcomes == "success"
    power = {
        k: mann_whitney_power(int(success.sum()), int(m.sum()), power_auc, alpha=power_alpha, n_sim=n_sim, seed=seed)
        for k, m in kinds.items()
        if m.any() and success.any()
    }
    adjusted = {
        metric: {k: length_adjusted(v[success | m], n_spans[success | m], m[success | m]) for k, m in kinds.items()}
        for metric, v in (("tortuosity", tt), ("path_length", pl))
    }
    blocks = {
        st: _flagger_block(
            known, fpr=fpr, min_spans=min_spans, top=top, normalize=normalize, eps=eps, seed=seed, statistic=st
        )
        for st in TortuosityFlagger.STATISTICS
    }
    flag, flagged_at = blocks[flag_statistic]
    result: dict[str, Any] = {
        "config": {
            "top": top,
            "normalize": normalize,
            "fpr": fpr,
            "min_spans": min_spans,
            "n_boot": n_boot,
            "seed": seed,
            "eps": eps,
            "concentration": "1 - H(|s|/sum|s|) / log K",
            "power_auc": power_auc,
            "power_alpha": power_alpha,
        },
        "n_chains": len(chains),
        "n_unknown": len(chains) - len(known),
        "n_success": len(groups["success"]),
        "n_failure": len(groups["failure"]),
        "n_reasoning_error": len(groups["reasoning_error"]),
        "n_hallucination": len(groups["hallucination"]),
        "n_failure_untyped": sum(c.outcome == "failure" for c in known),
        "path_length": comps["path_length"],
        "tortuosity": comps["tortuosity"],
        "concentration": {"progress": progress, "by_outcome": curves, "comparison": comps["concentration"]},
        "auc_by_progress": auc_by_progress(evs, failed, fractions, n_boot=n_boot, seed=seed, eps=eps),
        "three_outcome": three_outcome(
            [c.scores for c in known], [c.outcome for c in known], top=top, normalize=normalize, eps=eps
        ),
        "power": power,
        "length_adjusted": adjusted,
        "flagger": flag,
        "flaggers": {st: b[0] for st, b in blocks.items()},
        "chains": [
            {
                "uid": c.uid,
                "outcome": c.outcome,
                "n_spans": c.n_spans,
                "path_length": pl[i],
                "tortuosity": tt[i],
                "concentration": conc[i],
                "flagged_at": flagged_at[i],
            }
            for i, c in enumerate(known)
        ],
    }
    if evs:
        result["pca"] = TrajectoryPCA(n_components).fit(evs).to_dict()
    return dict(jsonable(result))


def analyse(
    collection: ExampleSource,
    estimator: RegionScorer | None = None,
    *,
    limit: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """[`load_chains`][attrib.analysis.trajectories.load_chains], then
    [`analyse_chains`][attrib.analysis.trajectories.analyse_chains] (keyword arguments go to the latter)."""
    return analyse_chains(load_chains(collection, estimator, limit=limit), **kwargs)
