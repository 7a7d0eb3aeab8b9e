"""Plots. matplotlib is imported lazily, and every function returns the figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["weight_heatmap"]


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
