"""Baseline attribution methods behind one interface: per span, one score per region.

Every method maps a collected example (a dict from
:meth:`attrib.collect.Collection.examples`) to an ``(n_spans, K)`` array.
Methods that need the model (gradients) receive a :class:`ModelContext`.

- ``raw_attention``: the span's attention mass on each region, mean over layers and heads.
- ``best_layer``: the same for the single layer chosen on the training split.
- ``input_x_gradient`` / ``integrated_gradients``: Captum's attributions of the
  span's summed log-prob to the image embeddings (vision output after the merger),
  summed over the embedding dimension and over each region's tokens.
- ``leave_one_out``: the exhaustive causal reference, Δ(S, {k}) itself.
- ``contextcite``: a per-example ContextCite-style surrogate: a Lasso, per span,
  from that example's own random removal sets to their drops.
- ``estimator``: the fitted :class:`~estimators.linear.LinearHeadEstimator`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "BASELINES",
    "ModelContext",
    "best_layer_index",
    "contextcite_scores",
    "gradient_scores",
    "raw_attention_scores",
    "register_baseline",
]

ScoreFn = Callable[..., np.ndarray]
BASELINES: dict[str, ScoreFn] = {}


def register_baseline(name: str) -> Callable[[ScoreFn], ScoreFn]:
    """Register a baseline under ``name``; duplicates are refused."""

    def deco(fn: ScoreFn) -> ScoreFn:
        if name in BASELINES:
            raise ValueError(f"baseline {name!r} is already registered")
        BASELINES[name] = fn
        return fn

    return deco


@register_baseline("raw_attention")
def raw_attention_scores(ex: dict[str, Any], **_: Any) -> np.ndarray:
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
def best_layer_scores(ex: dict[str, Any], *, layer: int = 0, **_: Any) -> np.ndarray:
    """Head-mean attention mass of one layer."""
    return np.asarray(ex["features"], dtype=np.float64)[:, :, layer, :].mean(-1)


@register_baseline("leave_one_out")
def loo_scores(ex: dict[str, Any], **_: Any) -> np.ndarray:
    """The leave-one-out drops themselves (needs a collection made with ``--loo``)."""
    if "loo_deltas" not in ex:
        raise ValueError("leave_one_out needs a collection made with --loo")
    return np.asarray(ex["loo_deltas"], dtype=np.float64)


@register_baseline("contextcite")
def contextcite_scores(
    ex: dict[str, Any], *, fit_subsets: slice = slice(None), alpha: float = 0.01, **_: Any
) -> np.ndarray:
    """Per-example Lasso surrogate (ContextCite-style) on the example's own removal sets.

    Args:
        ex: A collected example.
        fit_subsets: Which removal sets to fit on (keep the evaluation sets out).
        alpha: Lasso penalty, relative to the drops' scale.
    """
    from sklearn.linear_model import Lasso

    x = ex["subsets"][fit_subsets].astype(np.float64)
    out = np.zeros((ex["subset_deltas"].shape[0], x.shape[1]))
    for j, y in enumerate(np.asarray(ex["subset_deltas"], dtype=np.float64)[:, fit_subsets]):
        scale = float(np.std(y)) or 1.0
        out[j] = Lasso(alpha=alpha * scale, max_iter=5000).fit(x, y).coef_
    return out


@dataclass
class ModelContext:
    """What gradient baselines need: the model, the prompt inputs, the trace and the regions."""

    model: Any
    inputs: dict[str, Any]
    generated_ids: list[int]
    spans: list[tuple[int, int]]
    assignment: np.ndarray
    copy_sources: list[int] | None = None
    ablation_mode: str = "mask"


def gradient_scores(ctx: ModelContext, *, method: str = "integrated_gradients", n_steps: int = 16) -> np.ndarray:
    """Captum attributions of each span's summed log-prob to the image embeddings, per region.

    Args:
        ctx: Model context.
        method: ``"integrated_gradients"`` or ``"input_x_gradient"``.
        n_steps: IG steps (zero-embedding baseline).

    Returns:
        ``(n_spans, K)`` scores.
    """
    import torch
    from captum.attr import InputXGradient, IntegratedGradients

    if ctx.copy_sources is not None:
        raise ValueError(
            "gradient baselines are not implemented for point-and-copy models; "
            "leave input_x_gradient and integrated_gradients out of --methods"
        )

    from attrib.ablation import AblationRunner

    runner = AblationRunner(ctx.model, ctx.inputs, ctx.generated_ids, ctx.assignment)
    p = runner.prep
    inner = ctx.model.model
    with torch.no_grad():
        base = inner.get_input_embeddings()(p.full_ids).detach()
        feats = inner.get_image_features(
            ctx.inputs["pixel_values"], ctx.inputs.get("image_grid_thw"), return_dict=True
        ).pooler_output
        feats = (feats[0] if isinstance(feats, (list, tuple)) else feats).reshape(1, -1, base.shape[-1]).detach()
    gen = torch.tensor(ctx.generated_ids)
    t_prompt = p.prompt_len
    spans = ctx.spans

    def forward(img: torch.Tensor) -> torch.Tensor:
        b = img.shape[0]
        emb = base.expand(b, -1, -1).clone()
        emb[:, p.image_pos] = img.to(emb.dtype)
        pos = p.position_ids.expand(*p.position_ids.shape[:-2], b, p.position_ids.shape[-1])
        logits = ctx.model(inputs_embeds=emb, position_ids=pos, attention_mask=torch.ones(b, emb.shape[1])).logits
        lp = torch.log_softmax(logits[:, t_prompt - 1 : -1].float(), -1)
        tok = lp.gather(-1, gen.expand(b, -1)[..., None])[..., 0]
        return torch.stack([tok[:, s:e].sum(1) for s, e in spans], 1)

    algo: Any = IntegratedGradients(forward) if method == "integrated_gradients" else InputXGradient(forward)
    m = torch.from_numpy(np.asarray(ctx.assignment, dtype=np.float32))
    out = np.zeros((len(spans), m.shape[0]))
    for j in range(len(spans)):
        kw = {"n_steps": n_steps, "internal_batch_size": n_steps} if method == "integrated_gradients" else {}
        attr = algo.attribute(feats.clone().requires_grad_(True), target=j, **kw)
        per_token = attr[0].sum(-1).detach().float()
        out[j] = (m @ per_token).numpy()
    return out


@register_baseline("integrated_gradients")
def ig_scores(ex: dict[str, Any], *, ctx: ModelContext, **_: Any) -> np.ndarray:
    """Integrated gradients (Captum) on the image embeddings."""
    return gradient_scores(ctx, method="integrated_gradients")


@register_baseline("input_x_gradient")
def ixg_scores(ex: dict[str, Any], *, ctx: ModelContext, **_: Any) -> np.ndarray:
    """Input x gradient (Captum) on the image embeddings."""
    return gradient_scores(ctx, method="input_x_gradient")
