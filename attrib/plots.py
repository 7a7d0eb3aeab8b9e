"""Plots. matplotlib is imported lazily, and every function returns the figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "copy_attention_plot",
    "data_efficiency_plot",
    "decay_plot",
    "region_comparison_plot",
    "weight_heatmap",
]


def weight_heatmap(coef: np.ndarray, path: str | Path | None = None, *, ax: Any = None) -> Any:
    """Heatmap of an estimator's L x H weights (layers down, heads across).

    Args:
        coef: ``(L, H)`` weights.
        path: Save the figure here when given (PNG, SVG, ...).
        ax: Draw into this matplotlib axes.

    Returns:
        The matplotlib figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = np.asarray(coef, dtype=np.float64)
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.2 + 0.35 * c.shape[1], 1.0 + 0.3 * c.shape[0]))
    else:
        fig = ax.figure
    lim = float(np.abs(c).max()) or 1.0
    im = ax.imshow(c, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("estimator weights w (L x H)")
    fig.colorbar(im, ax=ax)
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def data_efficiency_plot(rows: list[dict[str, Any]], path: str | Path | None = None, *, topk: int = 5) -> Any:
    """LDS and normalised top-K drop against the number of training examples, with 95 % intervals.

    Args:
        rows: Output of :func:`attrib.faithfulness.data_efficiency` (skipped sizes are left out).
        path: Save the figure here when given.
        topk: K of the top-K drop in ``rows``.

    Returns:
        The matplotlib figure.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    done = [r for r in rows if "lds" in r]
    n = np.array([r["n_train"] for r in done], dtype=float)
    for key, label in (("lds", "LDS"), (f"top{topk}_drop_normalized", f"top-{topk} drop / LOO")):
        have = [r for r in done if key in r]
        if not have:
            continue
        x = np.array([r["n_train"] for r in have], dtype=float)
        v = np.array([r[key]["value"] for r in have])
        lo = np.array([r[key]["ci_low"] for r in have])
        hi = np.array([r[key]["ci_high"] for r in have])
        ax.errorbar(x, v, yerr=[v - lo, hi - v], marker="o", capsize=3, label=label)
    if n.size:
        ax.set_xscale("log")
        ax.set_xticks(n, [str(int(v)) for v in n])
    ax.set_xlabel("training examples (correct only)")
    ax.set_ylabel("score")
    ax.set_title("estimator data efficiency")
    ax.grid(alpha=0.3)
    ax.legend()
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def region_comparison_plot(rows: list[dict[str, Any]], path: str | Path | None = None, *, topk: int = 5) -> Any:
    """Grouped bars of estimator LDS and normalised top-K drop per region method and K.

    Args:
        rows: Output of :func:`attrib.faithfulness.region_comparison`.
        path: Save the figure here when given.
        topk: K of the top-K drop in ``rows``.

    Returns:
        The matplotlib figure.
    """
    plt = _plt()
    methods = sorted({r["region_method"] for r in rows})
    ks = sorted({int(r["k"]) for r in rows})
    keys = [("lds", "LDS"), (f"top{topk}_drop_normalized", f"top-{topk} drop / LOO")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    width = 0.8 / max(1, len(methods))
    for ax, (key, label) in zip(axes[0], keys, strict=True):
        for j, m in enumerate(methods):
            xs, vs, errs = [], [], []
            for i, k in enumerate(ks):
                r = next((r for r in rows if r["region_method"] == m and int(r["k"]) == k and key in r), None)
                if r is None:
                    continue
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                vs.append(r[key]["value"])
                errs.append([r[key]["value"] - r[key]["ci_low"], r[key]["ci_high"] - r[key]["value"]])
            if xs:
                ax.bar(xs, vs, width, yerr=np.array(errs).T, capsize=2, label=m)
        ax.set_xticks(range(len(ks)), [f"K={k}" for k in ks])
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def decay_plot(res: dict[str, Any], path: str | Path | None = None) -> Any:
    """Image and ground-truth attention mass against span position, one line per model (v1 Fig. 3).

    Args:
        res: Output of :func:`attrib.v1analysis.compare_decay`.
        path: Save the figure here when given.

    Returns:
        The matplotlib figure.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4))
    for ax, key, title in zip(
        axes, ("image_mass", "gt_mass"), ("all image tokens", "span's ground-truth region"), strict=True
    ):
        for name, r in res.items():
            rows = [row for row in r["by_position"] if key in row]
            x = np.array([row["position"] for row in rows], dtype=float)
            v = np.array([row[key] for row in rows])
            lo = np.array([row[f"{key}_ci_low"] for row in rows])
            hi = np.array([row[f"{key}_ci_high"] for row in rows])
            ax.errorbar(x, v, yerr=[v - lo, hi - v], marker="o", capsize=3, label=name)
        ax.set_xlabel("span position in the chain")
        ax.set_ylabel("attention mass")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def copy_attention_plot(res: dict[str, Any], path: str | Path | None = None) -> Any:
    """Per-layer attention to copy tokens vs to their source image tokens (v1 Fig. 5).

    Args:
        res: Output of :func:`attrib.v1analysis.copy_vs_source_by_layer`.
        path: Save the figure here when given.

    Returns:
        The matplotlib figure.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    layers = np.arange(len(res["copy_mass"]))
    ax.plot(layers, res["copy_mass"], marker="o", label="copy tokens")
    ax.plot(layers, res["source_mass"], marker="s", label="their source image tokens")
    ax.set_xlabel("layer")
    ax.set_xticks(list(layers))
    ax.set_ylabel("attention mass (mean over heads)")
    ax.set_title(f"attention after a copy (n={res['n_tokens']} tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig
