"""Region methods behind one registry: semantic (DINOv3, colour) and geometric baselines.

Every method is called as ``method(image, k, *, seed=0, **options)`` and returns
a [`RegionPartition`][attrib.regions.partition.RegionPartition] at the image's resolution.

- ``dinov3``: DINOv3 patch features (transformers ``DINOv3ViTModel``), clustered
  with Ward linkage under 4-neighbour spatial connectivity (scikit-learn).
- ``color`` (the offline default): per-cell mean colour plus position, same Ward
  clustering. Needs no weights; on the shapes benchmark it follows objects.
- ``blocks``: random rectangular blocks (recursive random splits).
- ``voronoi``: Voronoi cells of K uniformly random seeds.
- ``grid``: a regular rows x cols grid with rows * cols = K.

Automatic K (``k=None``, clustering methods only): the full Ward tree is built,
and K in ``[k_min, k_max]`` (default [16, 128]) is the cut with the largest
relative jump in merge cost, ``d(K -> K-1) / d(K+1 -> K)``: the point where
merging two more clusters first costs much more than the merges before it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from PIL import Image

from attrib.io import to_rgb
from attrib.regions.partition import RegionPartition

__all__ = [
    "REGION_METHODS",
    "DinoV3Features",
    "cluster_features",
    "register_region_method",
    "segment",
]

logger = logging.getLogger(__name__)


#: A region method: ``method(image, k, *, seed=0, **options) -> RegionPartition``.
RegionMethod = Callable[..., RegionPartition]


REGION_METHODS: dict[str, RegionMethod] = {}


def register_region_method(name: str) -> Callable[[RegionMethod], RegionMethod]:
    """Register a region method under ``name``; duplicates are refused."""

    def deco(fn: RegionMethod) -> RegionMethod:
        if name in REGION_METHODS:
            raise ValueError(f"region method {name!r} is already registered")
        REGION_METHODS[name] = fn
        return fn

    return deco


def segment(
    image: Image.Image, k: int | None = 32, *, method: str = "color", seed: int = 0, **options: Any
) -> RegionPartition:
    """Cut ``image`` into regions with a registered method.

    Args:
        image: Any PIL image (grayscale, palette, RGBA and CMYK are converted to RGB).
        k: Number of regions, or ``None`` for automatic K (clustering methods).
        method: A key of ``REGION_METHODS``.
        seed: Seed for randomised methods.
        **options: Method options.

    Returns:
        The partition; ``meta["seconds"]`` holds the wall time.

    Raises:
        ValueError: For an unknown method, or K outside what the image supports.
    """
    if method not in REGION_METHODS:
        raise ValueError(f"unknown region method {method!r}; choose one of {sorted(REGION_METHODS)}")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    t0 = time.perf_counter()
    part = REGION_METHODS[method](to_rgb(image), k, seed=seed, **options)
    part.meta.setdefault("seconds", time.perf_counter() - t0)
    return part


# ---------------------------------------------------------------------------- clustering
def _grid_graph(h: int, w: int) -> Any:
    from sklearn.feature_extraction.image import grid_to_graph

    return grid_to_graph(h, w)


def cluster_features(
    features: np.ndarray,
    k: int | None,
    *,
    clusterer: Literal["ward", "kmeans"] = "ward",
    k_range: tuple[int, int] = (16, 128),
    seed: int = 0,
) -> np.ndarray:
    """Cluster an ``(h, w, D)`` feature map into a ``(h, w)`` label map.

    Args:
        features: Feature grid.
        k: Clusters, or ``None`` for automatic K (Ward only; see the module docstring).
        clusterer: ``"ward"`` (spatially connected agglomerative clustering) or
            ``"kmeans"`` (faiss k-means; regions need not be connected).
        k_range: Bounds of the automatic K.
        seed: k-means seed.

    Returns:
        Integer labels.

    Raises:
        ValueError: If K exceeds the number of cells, or faiss is asked for but missing.
    """
    h, w, d = features.shape
    x = np.ascontiguousarray(features.reshape(h * w, d), dtype=np.float32)
    n = h * w
    if k is not None and k > n:
        raise ValueError(f"K={k} exceeds the {n} feature cells of this image")
    if clusterer == "kmeans":
        if k is None:
            raise ValueError("automatic K needs clusterer='ward'")
        try:
            import faiss
        except ImportError as e:
            raise ValueError("clusterer='kmeans' needs faiss: pip install faiss-cpu (or faiss-gpu)") from e
        gpu = bool(getattr(faiss, "get_num_gpus", lambda: 0)())
        km = faiss.Kmeans(d, k, niter=25, seed=seed, verbose=False, min_points_per_centroid=1, gpu=gpu)
        km.train(x)
        _, idx = km.index.search(x, 1)
        return np.asarray(idx[:, 0], dtype=np.int64).reshape(h, w)
    if clusterer != "ward":
        raise ValueError(f"unknown clusterer {clusterer!r}; choose 'ward' or 'kmeans'")
    from sklearn.cluster import AgglomerativeClustering

    conn = _grid_graph(h, w)
    if k is None:
        lo, hi = max(2, k_range[0]), min(k_range[1], n - 1)
        if lo > hi:
            raise ValueError(f"automatic K needs more than {k_range[0]} cells, image has {n}")
        tree = AgglomerativeClustering(
            n_clusters=None, distance_threshold=0.0, linkage="ward", connectivity=conn, compute_full_tree=True
        ).fit(x)
        dist = np.maximum.accumulate(np.asarray(tree.distances_, dtype=np.float64))
        ks = np.arange(lo, hi + 1)
        ratio = (dist[n - ks] + 1e-12) / (dist[n - ks - 1] + 1e-12)
        k = int(ks[int(np.argmax(ratio))])
    model = AgglomerativeClustering(n_clusters=k, linkage="ward", connectivity=conn)
    return np.asarray(model.fit_predict(x), dtype=np.int64).reshape(h, w)


def _upsample(cell_labels: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = cell_labels.shape
    yi = np.minimum(np.arange(height) * h // height, h - 1)
    xi = np.minimum(np.arange(width) * w // width, w - 1)
    return cell_labels[yi[:, None], xi[None, :]]


# ---------------------------------------------------------------------------- colour (offline default)
@register_region_method("color")
def color_regions(
    image: Image.Image,
    k: int | None,
    *,
    seed: int = 0,
    cell: int | None = None,
    position_weight: float = 0.5,
    clusterer: Literal["ward", "kmeans"] = "ward",
    k_range: tuple[int, int] = (16, 128),
) -> RegionPartition:
    """Offline default: Ward clustering of per-cell mean colour plus position.

    Args:
        image: RGB image.
        k: Regions, or ``None`` for automatic K.
        seed: k-means seed.
        cell: Cell side in pixels; by default the smallest that keeps at most 4,096 cells.
        position_weight: Weight of the normalised (x, y) position against colour in [0, 1].
        clusterer: ``"ward"`` or ``"kmeans"``.
        k_range: Bounds of automatic K.
    """
    arr = np.asarray(image, dtype=np.float32) / 255.0
    hgt, wid = arr.shape[:2]
    c = cell or max(1, math.ceil(math.sqrt(hgt * wid / 4096)))
    h, w = max(1, hgt // c), max(1, wid // c)
    crop = arr[: h * c, : w * c]
    feats = crop.reshape(h, c, w, c, 3).mean(axis=(1, 3))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    pos = np.stack([xx / max(1, w - 1), yy / max(1, h - 1)], axis=-1) * position_weight
    labels = cluster_features(np.concatenate([feats, pos], -1), k, clusterer=clusterer, k_range=k_range, seed=seed)
    return RegionPartition(_upsample(labels, wid, hgt), method="color", meta={"cell": c, "grid": [h, w]})


# ---------------------------------------------------------------------------- DINOv3
class DinoV3Features:
    """Patch features from a DINOv3 ViT (local path or hub id), with ImageNet preprocessing.

    DINOv3's own image processor needs torchvision; a ``ViTImageProcessor`` with
    ImageNet mean/std and a resize to multiples of the patch size is an exact
    stand-in.

    Args:
        model: A loaded ``DINOv3ViTModel``, a local directory, or a hub id.
        max_patches: Largest patch grid; the image is resized (aspect kept) to fit.
        device: Torch device.
    """

    def __init__(self, model: Any, *, max_patches: int = 1024, device: str = "cpu") -> None:
        from transformers import DINOv3ViTModel

        if isinstance(model, str):
            model = DINOv3ViTModel.from_pretrained(model)
        self.model = model.to(device).eval()
        self.device = device
        self.max_patches = max_patches
        ps = model.config.patch_size
        self.patch = int(ps if isinstance(ps, int) else ps[0])

    def grid_for(self, width: int, height: int) -> tuple[int, int]:
        """Patch grid ``(rows, cols)`` used for an image of this size."""
        scale = math.sqrt(self.max_patches * self.patch**2 / (width * height))
        rows = max(1, math.floor(height * scale / self.patch))
        cols = max(1, math.floor(width * scale / self.patch))
        return rows, cols

    def __call__(self, image: Image.Image) -> np.ndarray:
        """``(rows, cols, D)`` L2-normalised patch features."""
        import torch
        from transformers import ViTImageProcessor

        rows, cols = self.grid_for(*image.size)
        proc = ViTImageProcessor(
            do_resize=True,
            size={"height": rows * self.patch, "width": cols * self.patch},
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        )
        pv = proc(images=[to_rgb(image)], return_tensors="pt")["pixel_values"].to(self.device)
        with torch.inference_mode():
            hs = self.model(pixel_values=pv).last_hidden_state[0]
        n_prefix = 1 + int(getattr(self.model.config, "num_register_tokens", 0))
        feats = hs[n_prefix:].float().cpu().numpy().reshape(rows, cols, -1)
        return feats / (np.linalg.norm(feats, axis=-1, keepdims=True) + 1e-8)


_DINO_CACHE: dict[int, DinoV3Features] = {}


@register_region_method("dinov3")
def dinov3_regions(
    image: Image.Image,
    k: int | None,
    *,
    seed: int = 0,
    model: Any = None,
    features: DinoV3Features | None = None,
    max_patches: int = 1024,
    position_weight: float = 0.0,
    clusterer: Literal["ward", "kmeans"] = "ward",
    k_range: tuple[int, int] = (16, 128),
) -> RegionPartition:
    """DINOv3 patch features + Ward clustering with spatial connectivity.

    Args:
        image: RGB image.
        k: Regions, or ``None`` for automatic K.
        seed: k-means seed.
        model: ``DINOv3ViTModel``, local path or hub id (e.g.
            ``facebook/dinov3-vits16-pretrain-lvd1689m``); ignored when ``features`` is given.
        features: A ready [`DinoV3Features`][attrib.regions.methods.DinoV3Features] extractor (reuse it across images).
        max_patches: Patch budget of the feature grid.
        position_weight: Weight of normalised position appended to the features.
        clusterer: ``"ward"`` or ``"kmeans"`` (faiss).
        k_range: Bounds of automatic K.

    Raises:
        ValueError: If neither ``model`` nor ``features`` is given.
    """
    if features is None:
        if model is None:
            raise ValueError("dinov3 regions need model= (a DINOv3ViTModel, local path or hub id) or features=")
        features = DinoV3Features(model, max_patches=max_patches)
    f = features(image)
    h, w = f.shape[:2]
    if position_weight:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        f = np.concatenate([f, np.stack([xx / max(1, w - 1), yy / max(1, h - 1)], -1) * position_weight], -1)
    labels = cluster_features(f, k, clusterer=clusterer, k_range=k_range, seed=seed)
    wid, hgt = image.size
    return RegionPartition(_upsample(labels, wid, hgt), method="dinov3", meta={"grid": [h, w]})


# ---------------------------------------------------------------------------- baselines
def _need_k(k: int | None, name: str) -> int:
    if k is None:
        raise ValueError(f"region method {name!r} needs an explicit K")
    return k


@register_region_method("grid")
def grid_regions(image: Image.Image, k: int | None, *, seed: int = 0) -> RegionPartition:
    """A regular rows x cols grid with rows * cols = K, the factor pair closest to the aspect ratio."""
    kk = _need_k(k, "grid")
    wid, hgt = image.size
    if kk > wid * hgt:
        raise ValueError(f"K={kk} exceeds the {wid * hgt} pixels of the image")
    pairs = [(r, kk // r) for r in range(1, kk + 1) if kk % r == 0]
    rows, cols = min(pairs, key=lambda rc: abs(math.log((rc[1] / rc[0]) / (wid / hgt))))
    yi = np.minimum(np.arange(hgt) * rows // hgt, rows - 1)
    xi = np.minimum(np.arange(wid) * cols // wid, cols - 1)
    return RegionPartition(yi[:, None] * cols + xi[None, :], method="grid", meta={"rows": rows, "cols": cols})


@register_region_method("voronoi")
def voronoi_regions(image: Image.Image, k: int | None, *, seed: int = 0) -> RegionPartition:
    """Voronoi cells of K uniformly random seed points."""
    kk = _need_k(k, "voronoi")
    wid, hgt = image.size
    rng = np.random.default_rng(seed)
    pts = rng.uniform([0, 0], [wid, hgt], size=(kk, 2))
    yy, xx = np.mgrid[0:hgt, 0:wid]
    best = np.zeros((hgt, wid), dtype=np.int64)
    bd = np.full((hgt, wid), np.inf)
    for i, (px, py) in enumerate(pts):
        d = (xx + 0.5 - px) ** 2 + (yy + 0.5 - py) ** 2
        m = d < bd
        best[m] = i
        bd[m] = d[m]
    return RegionPartition(best, method="voronoi")


def _cut(rng: np.random.Generator, a: int, b: int) -> int:
    """A random cut in the middle half of [a, b] (so blocks stay chunky)."""
    q = max(1, (b - a) // 4)
    return int(rng.integers(a + q, max(a + q, b - q) + 1))


@register_region_method("blocks")
def block_regions(image: Image.Image, k: int | None, *, seed: int = 0) -> RegionPartition:
    """Random rectangular blocks: split the largest block along its longer side at a random point, K-1 times."""
    kk = _need_k(k, "blocks")
    wid, hgt = image.size
    if kk > wid * hgt:
        raise ValueError(f"K={kk} exceeds the {wid * hgt} pixels of the image")
    rng = np.random.default_rng(seed)
    blocks = [(0, 0, wid, hgt)]
    while len(blocks) < kk:
        i = max(range(len(blocks)), key=lambda j: (blocks[j][2] - blocks[j][0]) * (blocks[j][3] - blocks[j][1]))
        x0, y0, x1, y1 = blocks.pop(i)
        if x1 - x0 >= y1 - y0:
            cut = _cut(rng, x0, x1)
            blocks += [(x0, y0, cut, y1), (cut, y0, x1, y1)]
        else:
            cut = _cut(rng, y0, y1)
            blocks += [(x0, y0, x1, cut), (x0, cut, x1, y1)]
    labels = np.zeros((hgt, wid), dtype=np.int64)
    for i, (x0, y0, x1, y1) in enumerate(blocks):
        labels[y0:y1, x0:x1] = i
    return RegionPartition(labels, method="blocks")
