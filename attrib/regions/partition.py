"""The region partition: K regions of an image, their visual tokens, and their heatmaps."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from attrib.io import atomic_write_text
from attrib.regions.geometry import GridSpec, TokenGrid, get_grid_spec

__all__ = ["RegionPartition", "TokenAssignment"]


@dataclass(frozen=True)
class TokenAssignment:
    """Region -> visual-token assignment for one model's token grid.

    Hard assignment: each token belongs to exactly one region, the region that
    covers most of the token's pixels (ties go to the lower region id). Every
    token is covered exactly once, so ``matrix.sum(0) == 1``; a region too small
    to win any token has an all-zero row (listed in
    [`empty_regions`][attrib.regions.partition.TokenAssignment.empty_regions]).

    Attributes:
        grid: The token grid.
        token_region: ``(N,)`` region id per token, row-major (the model's token order).
        k: Number of regions.
    """

    grid: TokenGrid
    token_region: np.ndarray
    k: int

    @property
    def matrix(self) -> np.ndarray:
        """``M`` in {0, 1}^{K x N}."""
        m = np.zeros((self.k, self.token_region.size), dtype=np.float32)
        m[self.token_region, np.arange(self.token_region.size)] = 1.0
        return m

    @property
    def empty_regions(self) -> list[int]:
        """Regions that received no token."""
        return sorted(set(range(self.k)) - set(self.token_region.tolist()))


@dataclass
class RegionPartition:
    """K regions over an image, as a per-pixel label map at the original resolution.

    Attributes:
        labels: ``(H, W)`` integer map with values in ``[0, K)``.
        method: Name of the method that produced it.
        meta: Free-form JSON-ready metadata (parameters, timings).
        n_regions: When given, the labels are kept as they are (region ``i`` stays ``i``) and
            K is ``n_regions``: regions without a pixel are allowed (user-given regions padded
            to a collection's K). Otherwise the labels are renumbered ``0..K-1`` in order of
            first appearance and K is the number of distinct labels.
    """

    labels: np.ndarray
    method: str = "custom"
    meta: dict[str, Any] = field(default_factory=dict)
    n_regions: int | None = None

    def __post_init__(self) -> None:
        lab = np.asarray(self.labels)
        if lab.ndim != 2 or lab.size == 0:
            raise ValueError(f"labels must be a non-empty 2-D array, got shape {lab.shape}")
        if not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"labels must be integers, got {lab.dtype}")
        if lab.min() < 0:
            raise ValueError("labels must be >= 0")
        if self.n_regions is not None:
            if int(lab.max()) >= self.n_regions:
                raise ValueError(f"labels reach {int(lab.max())}, outside the {self.n_regions} regions")
            self.labels = lab.astype(np.int32)
            return
        # Relabel to 0..K-1 in order of first appearance (row-major), so K = number of regions.
        _, first, inv = np.unique(lab.ravel(), return_index=True, return_inverse=True)
        order = np.argsort(np.argsort(first))
        self.labels = order[inv].reshape(lab.shape).astype(np.int32)

    @property
    def k(self) -> int:
        """Number of regions."""
        return int(self.n_regions) if self.n_regions is not None else int(self.labels.max()) + 1

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the image."""
        return int(self.labels.shape[1]), int(self.labels.shape[0])

    # ------------------------------------------------------------ tokens
    def assign_tokens(self, spec: GridSpec | str) -> TokenAssignment:
        """Assign every visual token of a model family to one region (majority of its pixels).

        Args:
            spec: A [`GridSpec`][attrib.regions.geometry.GridSpec] or a registered family name (``"qwen2_5_vl"``, ...).

        Returns:
            The assignment.

        Raises:
            ValueError: If K exceeds the number of visual tokens.
        """
        gs = get_grid_spec(spec) if isinstance(spec, str) else spec
        w, h = self.size
        grid = gs.token_grid(w, h)
        if self.k > grid.n_tokens:
            raise ValueError(
                f"K={self.k} regions exceed the {grid.n_tokens} visual tokens of {gs.family} "
                f"for a {w}x{h} image; use K <= {grid.n_tokens}"
            )
        # Sample each token's cell on an s x s lattice of original pixels (clamped into the image).
        s = 8
        frac = (np.arange(s) + 0.5) / s
        rr, cc = np.divmod(np.arange(grid.n_tokens), grid.cols)
        cw, ch = grid.cell / grid.scale_x, grid.cell / grid.scale_y
        xs = grid.offset_x + (cc[:, None] + frac[None, :]) * cw
        ys = grid.offset_y + (rr[:, None] + frac[None, :]) * ch
        xi = np.clip(np.floor(xs), 0, w - 1).astype(int)
        yi = np.clip(np.floor(ys), 0, h - 1).astype(int)
        samples = self.labels[yi[:, :, None], xi[:, None, :]].reshape(grid.n_tokens, -1)
        counts = np.zeros((grid.n_tokens, self.k), dtype=np.int32)
        np.add.at(counts, (np.repeat(np.arange(grid.n_tokens), samples.shape[1]), samples.ravel()), 1)
        return TokenAssignment(grid=grid, token_region=counts.argmax(1), k=self.k)

    # ------------------------------------------------------------ rendering
    def heatmap(self, scores: np.ndarray) -> np.ndarray:
        """Per-pixel map ``(H, W)`` of per-region ``scores`` (shape ``(K,)``).

        Raises:
            ValueError: If ``scores`` does not have K entries.
        """
        sc = np.asarray(scores, dtype=np.float64)
        if sc.shape != (self.k,):
            raise ValueError(f"scores must have shape ({self.k},), got {sc.shape}")
        return sc[self.labels]

    def overlay(self, image: Image.Image, scores: np.ndarray, *, alpha: float = 0.55) -> Image.Image:
        """Blend a red heatmap of ``scores`` (min-max scaled, negatives clipped) over ``image``."""
        hm = np.clip(self.heatmap(scores), 0, None)
        if hm.max() > 0:
            hm = hm / hm.max()
        base = np.asarray(image.convert("RGB").resize(self.size), dtype=np.float64)
        red = np.zeros_like(base)
        red[..., 0] = 255
        a = alpha * hm[..., None]
        out = (1 - a) * base + a * red
        return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), mode="RGB")

    def boundaries(self) -> np.ndarray:
        """Boolean ``(H, W)`` map of pixels on a region boundary."""
        lab = self.labels
        b = np.zeros(lab.shape, dtype=bool)
        b[:, 1:] |= lab[:, 1:] != lab[:, :-1]
        b[1:, :] |= lab[1:, :] != lab[:-1, :]
        return b

    # ------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write ``<path>.npz`` (label map) and ``<path>.json`` (method, K, meta)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp.npz")
        np.savez_compressed(tmp, labels=self.labels)
        tmp.replace(p.with_suffix(".npz"))
        atomic_write_text(
            p.with_suffix(".json"),
            json.dumps({"method": self.method, "k": self.k, "size": list(self.size), "meta": self.meta}) + "\n",
        )

    @classmethod
    def load(cls, path: str | Path) -> RegionPartition:
        """Inverse of [`save`][attrib.regions.partition.RegionPartition.save] (no pickle is ever loaded).

        Raises:
            FileNotFoundError: If either file is missing.
            ValueError: If the files disagree or are corrupt.
        """
        p = Path(path)
        npz, js = p.with_suffix(".npz"), p.with_suffix(".json")
        for f in (npz, js):
            if not f.is_file():
                raise FileNotFoundError(f"region partition file not found: {f}")
        try:
            meta = json.loads(js.read_text())
            with np.load(npz, allow_pickle=False) as z:
                labels = z["labels"]
        except (ValueError, KeyError, OSError) as e:
            raise ValueError(f"corrupt region partition {p}: {e}") from e
        part = cls(labels=labels, method=meta["method"], meta=meta.get("meta", {}))
        if part.k != meta["k"]:
            raise ValueError(f"region partition {p}: JSON says K={meta['k']}, label map has {part.k}")
        return part
