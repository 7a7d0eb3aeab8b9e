"""Region quality against ground-truth masks."""

from __future__ import annotations

import numpy as np

__all__ = ["object_recall", "region_purity"]


def _contingency(regions: np.ndarray, truth: np.ndarray) -> np.ndarray:
    r = np.asarray(regions).ravel()
    t = np.asarray(truth).ravel()
    if r.shape != t.shape:
        raise ValueError(f"regions and truth differ in shape: {np.shape(regions)} vs {np.shape(truth)}")
    _, ri = np.unique(r, return_inverse=True)
    _, ti = np.unique(t, return_inverse=True)
    table = np.zeros((ri.max() + 1, ti.max() + 1), dtype=np.int64)
    np.add.at(table, (ri, ti), 1)
    return table


def region_purity(regions: np.ndarray, truth: np.ndarray) -> float:
    """Pixel-weighted purity: the share of pixels whose region's majority class is their own class.

    ``purity = sum_k max_c |R_k ∩ C_c| / N``. Background is a class like any
    object (give it its own label, e.g. -1). One region per pixel scores 1; a
    single region over an image with several classes scores the largest class's share.

    Args:
        regions: ``(H, W)`` region labels.
        truth: ``(H, W)`` ground-truth class labels.
    """
    table = _contingency(regions, truth)
    return float(table.max(axis=1).sum() / table.sum())


def object_recall(regions: np.ndarray, truth: np.ndarray, *, background: int = -1) -> float:
    """Mean over objects of the share of the object's pixels that lie in regions it dominates.

    An object split over several regions that it dominates still scores 1; an
    object swallowed by a background-dominated region scores 0.

    Args:
        regions: ``(H, W)`` region labels.
        truth: ``(H, W)`` ground-truth labels, ``background`` for no object.
        background: The background label.

    Raises:
        ValueError: If there is no object.
    """
    t = np.asarray(truth).ravel()
    r = np.asarray(regions).ravel()
    objs = [o for o in np.unique(t) if o != background]
    if not objs:
        raise ValueError("object_recall needs at least one object in truth")
    _, ri = np.unique(r, return_inverse=True)
    cls, ti = np.unique(t, return_inverse=True)
    table = np.zeros((ri.max() + 1, cls.size), dtype=np.int64)
    np.add.at(table, (ri, ti), 1)
    major = table.argmax(axis=1)
    scores = []
    for o in objs:
        c = int(np.searchsorted(cls, o))
        scores.append(table[major == c, c].sum() / table[:, c].sum())
    return float(np.mean(scores))
