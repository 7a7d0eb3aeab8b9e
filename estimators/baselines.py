"""Attribution methods behind one registry: per span, one score per region.

Every method is called the same way, ``fn(example, ctx) -> (n_spans, K)``: the
example is a collected example (a dict with ``features``, ``subsets``,
``subset_deltas`` and, from a ``--loo`` collection, ``loo_deltas``), and the
[`MethodContext`][estimators.baselines.MethodContext] carries what a method may need beyond it. Nothing here
imports ``attrib``: methods that need the model (gradients) receive a
differentiable forward through the context.

- ``estimator``: the fitted L x H estimator, ``<w, f_{S,k}>``.
- ``raw_attention``: the span's attention mass on each region, mean over layers and heads.
- ``best_layer``: the same for the single layer chosen on the training split.
- ``input_x_gradient`` / ``integrated_gradients``: Captum's attributions of the
  span's summed log-prob to the image embeddings (vision output after the merger),
  summed over the embedding dimension and over each region's tokens.
- ``leave_one_out``: the exhaustive causal reference, Δ(S, {k}) itself.
- ``contextcite`` / ``contextcite_64``: a per-example ContextCite-style surrogate: a Lasso, per span,
  from 32 (64) of that example's own random removal sets to their drops (the collection's fit sets,
  topped up with fresh ablations through ``ctx.extra_fit_sets`` when it holds fewer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "BASELINES",
    "Baseline",
    "MethodContext",
    "best_layer_index",
    "best_layer_scores",
    "contextcite_fit",
    "contextcite_pool",
    "contextcite_scores",
    "estimator_scores",
    "gradient_scores",
    "loo_scores",
    "raw_attention_scores",
    "register_baseline",
]

#: ``fn(example, ctx) -> (n_spans, K)`` scores.
ScoreFn = Callable[..., np.ndarray]
#: ``forward(image_embeddings (B, N, d)) -> (B, n_spans)`` summed span log-probs.
Forward = Callable[[Any], Any]


@dataclass
class MethodContext:
    """What a method may use beside the example.

    Attributes:
        estimator: A fitted estimator with ``region_scores(features)`` (``estimator``).
        layer: The layer of ``best_layer``.
        fit_subsets: The removal sets ``contextcite`` fits on (the scored ones stay out).
        alpha: ``contextcite``'s Lasso penalty, relative to the drops' scale.
        alphas: Per ablation budget (32, 64), a penalty that overrides ``alpha`` (chosen on validation data).
        extra_fit_sets: ``extra_fit_sets(n) -> (sets (n, K), drops (n_spans, n))``: ``n`` fresh random
            ablations of the example, none of them a scored set, for a budget beyond the fit sets the
            collection holds (``None``: the collection's fit sets are all there is).
        embedding_forward: Builds ``(forward, image_embeddings)`` for gradient methods
            (called only by the methods that need it).
        assignment: ``(K, N)`` region -> image-token matrix (gradient methods).
    """

    estimator: Any = None
    layer: int = 0
    fit_subsets: slice = field(default_factory=lambda: slice(None))
    alpha: float = 0.01
    alphas: dict[int, float] = field(default_factory=dict)
    extra_fit_sets: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None
    embedding_forward: Callable[[], tuple[Forward, Any]] | None = None
    assignment: np.ndarray | None = None


@dataclass(frozen=True)
class Baseline:
    """A registered attribution method.

    Attributes:
        name: Registry key.
        fn: ``fn(example, ctx) -> (n_spans, K)``.
        needs_model: Needs ``ctx.embedding_forward`` (a model forward pass per example).
        ablations: Forward passes the method pays per example beyond the generation
            (``ablations(example, ctx)``; counted in its seconds per token), or ``None``.
    """

    name: str
    fn: ScoreFn
    needs_model: bool = False
    ablations: Callable[[dict[str, Any], MethodContext], int] | None = None

    def __call__(self, ex: dict[str, Any], ctx: MethodContext | None = None) -> np.ndarray:
        """Score one example."""
        return self.fn(ex, ctx or MethodContext())


BASELINES: dict[str, Baseline] = {}


def register_baseline(
    name: str,
    *,
    needs_model: bool = False,
    ablations: Callable[[dict[str, Any], MethodContext], int] | None = None,
) -> Callable[[ScoreFn], ScoreFn]:
    """Register ``fn(example, ctx)`` under ``name``; duplicates are refused."""

    def deco(fn: ScoreFn) -> ScoreFn:
        if name in BASELINES:
            raise ValueError(f"baseline {name!r} is already registered")
        BASELINES[name] = Baseline(name, fn, needs_model, ablations)
        return fn

    return deco


@register_baseline("estimator")
def estimator_scores(ex: dict[str, Any], ctx: MethodContext) -> np.ndarray:
    """The fitted estimator's ``region_scores`` of the example's features."""
    if ctx.estimator is None:
        raise ValueError("the estimator method needs a fitted estimator (MethodContext.estimator)")
    return np.asarray(ctx.estimator.region_scores(ex["features"]), dtype=np.float64)


@register_baseline("raw_attention")
def raw_attention_scores(ex: dict[str, Any], ctx: MethodContext | None = None) -> np.ndarray:
    """Mean over layers and heads of the span's attention mass per region."""
    return np.asarray(ex["features"], dtype=np.float64).mean(axis=(2, 3))


def best_layer_index(examples: Sequence[dict[str, Any]]) -> int:
    """The layer whose head-mean attention best predicts the training drops (mean Spearman over spans)."""
    from scipy.stats import spearmanr

    n_layers = int(examples[0]["features"].shape[2])
    best, best_rho = 0, -np.inf
    for layer in range(n_layers):
        rhos = []
        for ex in examples:
            s = np.asarray(ex["features"])[:, :, layer, :].mean(-1)
            pred = ex["subsets"].astype(np.float64) @ s.T  # (M, n_spans)
            for j in range(s.shape[0]):
                a, p = ex["subset_deltas"][j], pred[:, j]
                if np.ptp(a) > 0 and np.ptp(p) > 0:
                    rhos.append(spearmanr(a, p).statistic)
        rho = float(np.mean(rhos)) if rhos else -np.inf
        if rho > best_rho:
            best, best_rho = layer, rho
    return best


@register_baseline("best_layer")
def best_layer_scores(ex: dict[str, Any], ctx: MethodContext | None = None) -> np.ndarray:
    """Head-mean attention mass of one layer (``ctx.layer``)."""
    layer = ctx.layer if ctx is not None else 0
    return np.asarray(ex["features"], dtype=np.float64)[:, :, layer, :].mean(-1)


def _loo_forwards(ex: dict[str, Any], ctx: MethodContext) -> int:
    return int(np.asarray(ex["loo_deltas"]).shape[1])


@register_baseline("leave_one_out", ablations=_loo_forwards)
def loo_scores(ex: dict[str, Any], ctx: MethodContext | None = None) -> np.ndarray:
    """The leave-one-out drops themselves (needs a collection made with ``--loo``)."""
    if "loo_deltas" not in ex:
        raise ValueError("leave_one_out needs a collection made with --loo")
    return np.asarray(ex["loo_deltas"], dtype=np.float64)


def contextcite_fit(sets: np.ndarray, drops: np.ndarray, *, alpha: float = 0.01) -> np.ndarray:
    """Per span, a Lasso from removal sets to their drops; its coefficients are the region scores.

    Args:
        sets: ``(M, K)`` removal sets (1 = removed).
        drops: ``(n_spans, M)`` their measured drops.
        alpha: Lasso penalty, relative to each span's drop scale (standard deviation).

    Returns:
        ``(n_spans, K)`` scores.
    """
    from sklearn.linear_model import Lasso

    x = np.asarray(sets, dtype=np.float64)
    d = np.asarray(drops, dtype=np.float64)
    out = np.zeros((d.shape[0], x.shape[1]))
    for j, y in enumerate(d):
        scale = float(np.std(y)) or 1.0
        out[j] = Lasso(alpha=alpha * scale, max_iter=5000).fit(x, y).coef_
    return out


def contextcite_scores(ex: dict[str, Any], *, fit_subsets: slice = slice(None), alpha: float = 0.01) -> np.ndarray:
    """Per-example Lasso surrogate (ContextCite-style) on the example's own removal sets.

    Args:
        ex: A collected example.
        fit_subsets: Which removal sets to fit on (keep the evaluation sets out).
        alpha: Lasso penalty, relative to the drops' scale.
    """
    return contextcite_fit(ex["subsets"][fit_subsets], np.asarray(ex["subset_deltas"])[:, fit_subsets], alpha=alpha)


def contextcite_pool(ex: dict[str, Any], ctx: MethodContext, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``budget`` ablations a ContextCite surrogate fits on: the collection's fit sets first, then
    fresh ones from ``ctx.extra_fit_sets`` (a small collection without them gives what it holds).

    Raises:
        ValueError: If ``budget`` exceeds the fit sets the collection holds and no fresh ablations can be made
            (for the 64-ablation surrogate; the 32-ablation one uses what there is, as it always has).
    """
    sets = np.asarray(ex["subsets"])[ctx.fit_subsets][:budget]
    drops = np.asarray(ex["subset_deltas"])[:, ctx.fit_subsets][:, :budget]
    missing = budget - sets.shape[0]
    if missing > 0 and ctx.extra_fit_sets is not None:
        extra_sets, extra_drops = ctx.extra_fit_sets(missing)
        sets = np.concatenate([sets, np.asarray(extra_sets, dtype=bool)])
        drops = np.concatenate([drops, np.asarray(extra_drops)], axis=1)
    elif missing > 0 and budget > 32:
        raise ValueError(
            f"contextcite with {budget} ablations: the collection holds {sets.shape[0]} fit sets per example and "
            "no model was given to ablate the rest"
        )
    return sets, drops


def _cc(budget: int) -> ScoreFn:
    def fn(ex: dict[str, Any], ctx: MethodContext) -> np.ndarray:
        sets, drops = contextcite_pool(ex, ctx, budget)
        return contextcite_fit(sets, drops, alpha=ctx.alphas.get(budget, ctx.alpha))

    fn.__name__ = f"contextcite_{budget}_scores"
    fn.__doc__ = f"ContextCite-style Lasso on {budget} of the example's own ablations (none of them scored)."
    return fn


def _cc_forwards(budget: int) -> Callable[[dict[str, Any], MethodContext], int]:
    def n(ex: dict[str, Any], ctx: MethodContext) -> int:
        held = int(np.asarray(ex["subsets"])[ctx.fit_subsets].shape[0])
        return budget if ctx.extra_fit_sets is not None else min(budget, held)

    return n


register_baseline("contextcite", ablations=_cc_forwards(32))(_cc(32))
register_baseline("contextcite_64", ablations=_cc_forwards(64))(_cc(64))


def gradient_scores(
    forward: Forward,
    image_embeddings: Any,
    assignment: np.ndarray,
    n_spans: int,
    *,
    method: str = "integrated_gradients",
    n_steps: int = 16,
) -> np.ndarray:
    """Captum attributions of each span's summed log-prob to the image embeddings, per region.

    Args:
        forward: ``forward(img (B, N, d)) -> (B, n_spans)`` summed span log-probs.
        image_embeddings: ``(1, N, d)`` unablated image embeddings (a torch tensor).
        assignment: ``(K, N)`` region -> image-token matrix.
        n_spans: Number of spans (outputs of ``forward``).
        method: ``"integrated_gradients"`` or ``"input_x_gradient"``.
        n_steps: IG steps (zero-embedding baseline).

    Returns:
        ``(n_spans, K)`` scores.

    Raises:
        ValueError: For an unknown method.
    """
    import torch
    from captum.attr import InputXGradient, IntegratedGradients

    if method not in ("integrated_gradients", "input_x_gradient"):
        raise ValueError(f"unknown gradient method {method!r}")
    algo: Any = IntegratedGradients(forward) if method == "integrated_gradients" else InputXGradient(forward)
    m = torch.from_numpy(np.asarray(assignment, dtype=np.float32))
    out = np.zeros((n_spans, m.shape[0]))
    for j in range(n_spans):
        kw = {"n_steps": n_steps, "internal_batch_size": n_steps} if method == "integrated_gradients" else {}
        attr = algo.attribute(image_embeddings.clone().requires_grad_(True), target=j, **kw)
        per_token = attr[0].sum(-1).detach().float().cpu()
        out[j] = (m @ per_token).numpy()
    return out


def _gradient(method: str) -> ScoreFn:
    def fn(ex: dict[str, Any], ctx: MethodContext) -> np.ndarray:
        if ctx.embedding_forward is None or ctx.assignment is None:
            raise ValueError(f"{method} needs the model (MethodContext.embedding_forward and assignment)")
        forward, embeds = ctx.embedding_forward()
        return gradient_scores(forward, embeds, ctx.assignment, len(ex["spans"]), method=method)

    fn.__name__ = f"{method}_scores"
    fn.__doc__ = f"{method.replace('_', ' ').capitalize()} (Captum) on the image embeddings."
    return fn


register_baseline("integrated_gradients", needs_model=True)(_gradient("integrated_gradients"))
register_baseline("input_x_gradient", needs_model=True)(_gradient("input_x_gradient"))
