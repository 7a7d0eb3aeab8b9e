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
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from attrib.io import to_rgb
from attrib.plugins import load_plugins
from attrib.regions.partition import RegionPartition

__all__ = [
    "REGION_METHODS",
    "DinoV3Features",
    "Segmenter",
    "check_region_method",
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


# ---------------------------------------------------------------------------- given by the user
@register_region_method("given")
def given_regions(
    image: Image.Image, k: int | None, *, seed: int = 0, labels: Any = None, boxes: Any = None
) -> RegionPartition:
    """Regions the user supplies per example: a label map, or boxes.

    Args:
        image: The image (its size checks the label map's).
        k: The collection's K: the given regions are kept in their order and padded with empty
            regions up to K (``None``: as many as given).
        seed: Unused.
        labels: ``(H, W)`` integer map (values ``0..K-1``), an array or a path to a PNG.
        boxes: ``[[x0, y0, x1, y1], ...]`` in pixels; box ``i`` is region ``i`` (an earlier box
            wins where boxes overlap), and the pixels in no box form one more region.

    Raises:
        ValueError: Without labels or boxes, for a label map of another size, a box outside the
            image, or more regions than K.
    """
    w, h = image.size
    if labels is not None:
        if isinstance(labels, (str, Path)):
            with Image.open(labels) as im:
                lab = np.asarray(im).astype(np.int64)
        else:
            lab = np.asarray(labels).astype(np.int64)
        if lab.shape != (h, w):
            raise ValueError(f"the label map is {lab.shape[1]}x{lab.shape[0]}, the image {w}x{h}")
    elif boxes:
        lab = np.full((h, w), len(boxes), dtype=np.int64)
        for i, b in reversed(list(enumerate(boxes))):
            x0, y0, x1, y1 = (round(float(v)) for v in b)
            if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
                raise ValueError(f"box {i} {list(b)} is not inside the {w}x{h} image")
            lab[y0:y1, x0:x1] = i
        if int(lab.max()) < len(boxes):  # the boxes cover the image: no background region
            lab = np.minimum(lab, len(boxes) - 1)
    else:
        raise ValueError("given regions need a label map or boxes")
    if lab.size and int(lab.min()) < 0:
        raise ValueError("the label map has negative labels; regions are numbered 0..K-1")
    n = int(lab.max()) + 1
    if k is not None and n > k:
        raise ValueError(f"the example gives {n} regions, more than K={k}")
    return RegionPartition(lab, method="given", n_regions=k or n)


def check_region_method(method: str, *, dinov3: Any = None) -> None:
    """Refuse region settings that cannot work, before any model loads.

    Raises:
        ValueError: For an unknown method, or ``dinov3`` regions without a DINOv3 model.
    """
    if method not in REGION_METHODS:
        load_plugins()  # a plugin's method registers on first use
    if method not in REGION_METHODS:
        raise ValueError(f"unknown region method {method!r}; choose one of {sorted(REGION_METHODS)}")
    if method == "dinov3" and dinov3 is None:
        raise ValueError(
            "dinov3 regions need a DINOv3 model: pass --dinov3 PATH_OR_ID (a DINOv3ViTModel directory or hub id)"
        )
    if dinov3 is not None and isinstance(dinov3, (str, Path)):
        p = Path(dinov3)
        if (p.is_absolute() or str(dinov3).startswith(".") or p.exists()) and not (p / "config.json").is_file():
            raise ValueError(f"--dinov3 {dinov3} is not a model directory (no config.json)")


class Segmenter:
    """A region method with its options bound, heavy models loaded once: called per image.

    Args:
        method: A key of ``REGION_METHODS``.
        k: Regions per image (``None``: automatic, for the clustering methods).
        dinov3: The DINOv3 model (local directory or hub id) of ``method="dinov3"``; loaded
            here, once, and reused for every image.
        device: Where the DINOv3 model runs (default CPU; pass the VLM's device).
        **options: Further method options.

    Raises:
        ValueError: For an unknown method, or ``dinov3`` regions without a DINOv3 model (before any work).
    """

    def __init__(
        self, method: str = "color", k: int | None = 32, *, dinov3: Any = None, device: Any = None, **options: Any
    ) -> None:
        if k is not None and k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.method = method
        self.k = k
        self.options = dict(options)
        has_features = self.options.get("features") is not None or self.options.get("model") is not None
        check_region_method(method, dinov3=dinov3 if not has_features else self.options.get("model", "features"))
        if method == "dinov3" and not has_features:
            self.options["features"] = DinoV3Features(dinov3, device=str(device) if device is not None else "cpu")

    def given(self, image: Image.Image, given: dict[str, Any]) -> RegionPartition:
        """The caller's own regions of ``image`` (``{"labels": ...}`` or ``{"boxes": ...}``), as many as given."""
        return segment(image, None, method="given", **given)

    def __call__(self, image: Image.Image, *, seed: int = 0, given: dict[str, Any] | None = None) -> RegionPartition:
        """The regions of ``image`` (``given``: the example's own regions, for ``method="given"``).

        Raises:
            ValueError: For ``given`` regions missing from the example, or a method's own refusal.
        """
        if self.method == "given":
            if not given:
                raise ValueError("region method 'given' needs regions (a label map or boxes) in the example")
            return segment(image, self.k, method="given", **given)
        return segment(image, self.k, method=self.method, seed=seed, **self.options)


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
