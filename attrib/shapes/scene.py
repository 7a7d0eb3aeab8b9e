"""Procedural scenes for the ``attrib.shapes`` benchmark.

A scene is a set of non-overlapping coloured shapes on a plain (optionally
textured) background. Every object carries an exact pixel mask and a box, so
that every reasoning sentence that names an object has pixel-level ground
truth.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "COLOURS",
    "GRID",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Difficulty",
    "Scene",
    "ShapeObject",
    "attribute_key",
    "check_image_size",
    "position_name",
    "render_blank",
    "sample_scene",
]

#: Pixels per merged visual token of Qwen2-VL / Qwen2.5-VL (14-px patches, 2x2 merge).
GRID = 28

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
#: Base RGB values of the palette; ``Difficulty.colour_similarity`` pulls them together.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
#: Coarse 3x3 position names, indexed ``[row][col]``.
POSITIONS: tuple[tuple[str, str, str], ...] = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
BACKGROUND: tuple[int, int, int] = (128, 128, 128)

# Objects sit on the 28-px merged-token grid: a small object fills one cell, a
# large one a 2x2 block of cells, each inset by a few pixels.
_CELLS = {"small": 1, "large": 2}
_INSET = 3


def check_image_size(width: int, height: int) -> None:
    """Refuse canvas sizes that do not fit the 28-px merged token grid.

    The benchmark renders images whose merged visual-token grid covers them
    exactly, so that object masks map onto tokens without resampling. Arbitrary
    user images are resized by the processor instead (see
    [`ShapesProcessor`][attrib.shapes.processor.ShapesProcessor]).

    Args:
        width: Canvas width in pixels.
        height: Canvas height in pixels.

    Raises:
        ValueError: If a side is not a positive multiple of 28, or is below 112.
    """
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"image {name} must be a positive integer, got {v!r}")
        if v % GRID != 0:
            lo, hi = (v // GRID) * GRID, (v // GRID + 1) * GRID
            raise ValueError(
                f"image {name}={v} is not a multiple of the {GRID}-px merged token grid "
                f"of Qwen2/2.5-VL; use {max(lo, 4 * GRID)} or {hi}"
            )
        if v < 4 * GRID:
            raise ValueError(f"image {name}={v} is below the minimum of {4 * GRID} px (4 merged cells)")


@dataclass(frozen=True, kw_only=True)
class Difficulty:
    """The benchmark's difficulty knob.

    Attributes:
        min_objects: Fewest objects in a scene (>= 1).
        max_objects: Most objects in a scene (<= 10 by the benchmark's definition).
        size_scale: Multiplies object side lengths; smaller objects are harder.
        colour_similarity: In [0, 0.8]; pulls palette colours towards their mean.
        texture: Draw a distractor texture on the background.
    """

    min_objects: int = 3
    max_objects: int = 8
    size_scale: float = 1.0
    colour_similarity: float = 0.0
    texture: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"impossible difficulty: need 1 <= min_objects <= max_objects, got "
                f"min_objects={self.min_objects}, max_objects={self.max_objects}"
            )
        if self.max_objects > 10:
            raise ValueError(f"impossible difficulty: max_objects={self.max_objects} exceeds 10")
        if not 0.4 <= self.size_scale <= 2.0:
            raise ValueError(f"impossible difficulty: size_scale={self.size_scale} outside [0.4, 2.0]")
        if not 0.0 <= self.colour_similarity <= 0.8:
            raise ValueError(
                f"impossible difficulty: colour_similarity={self.colour_similarity} outside [0, 0.8] "
                "(at 1.0 all colours would be identical)"
            )

    @classmethod
    def preset(cls, name: Literal["easy", "medium", "hard"]) -> Difficulty:
        """Return a named preset.

        Args:
            name: ``"easy"``, ``"medium"`` (the default of every split) or ``"hard"``.

        Returns:
            The preset.

        Raises:
            ValueError: For an unknown name.
        """
        presets = {
            "easy": cls(min_objects=2, max_objects=5, size_scale=1.2),
            "medium": cls(),
            "hard": cls(min_objects=5, max_objects=10, size_scale=0.8, colour_similarity=0.35, texture=True),
        }
        if name not in presets:
            raise ValueError(f"unknown difficulty preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Difficulty:
        """Inverse of [`to_dict`][attrib.shapes.scene.Difficulty.to_dict]."""
        return cls(**d)

    def palette(self) -> dict[str, tuple[int, int, int]]:
        """Return the palette after applying ``colour_similarity``."""
        base = np.array(list(COLOURS.values()), dtype=np.float64)
        mean = base.mean(axis=0)
        s = self.colour_similarity
        mixed = np.rint((1 - s) * base + s * mean).astype(int)
        return {name: (int(c[0]), int(c[1]), int(c[2])) for name, c in zip(COLOURS, mixed, strict=True)}


@dataclass(frozen=True, kw_only=True)
class ShapeObject:
    """One object of a scene.

    Attributes:
        shape: One of ``SHAPES``.
        colour: One of the keys of ``COLOURS``.
        size: ``"small"`` or ``"large"``.
        box: ``(x0, y0, x1, y1)`` pixel box, end-exclusive.
    """

    shape: str
    colour: str
    size: str
    box: tuple[int, int, int, int]

    @property
    def center(self) -> tuple[float, float]:
        """``(cx, cy)`` of the box in pixels."""
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2

    def describe(self) -> str:
        """``"large red circle"``."""
        return f"{self.size} {self.colour} {self.shape}"

    def local_mask(self) -> np.ndarray:
        """Boolean mask of the shape inside its box, shape ``(y1-y0, x1-x0)``."""
        x0, y0, x1, y1 = self.box
        h, w = y1 - y0, x1 - x0
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
        if self.shape == "square":
            return np.ones((h, w), dtype=bool)
        if self.shape == "circle":
            r = min(h, w) / 2
            return bool_arr((xx - w / 2) ** 2 + (yy - h / 2) ** 2 <= r * r)
        if self.shape == "triangle":
            # Apex at top centre, base along the bottom edge.
            return bool_arr((yy >= 0) & (np.abs(xx - w / 2) <= (yy / h) * (w / 2)))
        raise ValueError(f"unknown shape {self.shape!r}; choose one of {SHAPES}")


def bool_arr(a: np.ndarray) -> np.ndarray:
    """Return ``a`` as a boolean ndarray."""
    return np.asarray(a, dtype=bool)


def position_name(cx: float, cy: float, width: int, height: int) -> str:
    """Coarse 3x3 position word of a point, e.g. ``"top left"``."""
    col = min(2, int(3 * cx / width))
    row = min(2, int(3 * cy / height))
    return POSITIONS[row][col]


@dataclass(kw_only=True)
class Scene:
    """A rendered scene with exact per-object ground truth.

    Attributes:
        width: Canvas width in pixels.
        height: Canvas height in pixels.
        objects: The objects, in canonical attribute order (colour, shape, size; see
            [`attribute_key`][attrib.shapes.scene.attribute_key]).
        difficulty: The difficulty it was sampled at.
        seed: The seed it was sampled from.
    """

    width: int
    height: int
    objects: list[ShapeObject]
    difficulty: Difficulty = field(default_factory=Difficulty)
    seed: int = 0

    def position(self, i: int) -> str:
        """Coarse position word of object ``i``."""
        cx, cy = self.objects[i].center
        return position_name(cx, cy, self.width, self.height)

    def mask(self, i: int) -> np.ndarray:
        """Full-canvas boolean pixel mask of object ``i``."""
        out = np.zeros((self.height, self.width), dtype=bool)
        x0, y0, x1, y1 = self.objects[i].box
        out[y0:y1, x0:x1] = self.objects[i].local_mask()
        return out

    def label_map(self) -> np.ndarray:
        """``int16`` map: -1 for background, else the object index."""
        out = np.full((self.height, self.width), -1, dtype=np.int16)
        for i, o in enumerate(self.objects):
            x0, y0, x1, y1 = o.box
            sub = out[y0:y1, x0:x1]
            sub[o.local_mask()] = i
        return out

    def render(self) -> np.ndarray:
        """Render to an ``(H, W, 3)`` ``uint8`` array (deterministic per seed)."""
        img = np.empty((self.height, self.width, 3), dtype=np.uint8)
        img[:] = BACKGROUND
        if self.difficulty.texture:
            rng = np.random.default_rng(self.seed + 7919)
            yy, xx = np.mgrid[0 : self.height, 0 : self.width]
            period = rng.uniform(6, 14)
            angle = rng.uniform(0, math.pi)
            stripes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
            noise = rng.normal(0, 6, size=(self.height, self.width))
            tex = np.clip(128 + 18 * stripes + noise, 0, 255).astype(np.uint8)
            img[:] = tex[..., None]
        palette = self.difficulty.palette()
        for o in self.objects:
            x0, y0, x1, y1 = o.box
            sub = img[y0:y1, x0:x1]
            sub[o.local_mask()] = palette[o.colour]
        return img

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (masks are re-derived from the boxes)."""
        return {
            "width": self.width,
            "height": self.height,
            "seed": self.seed,
            "difficulty": self.difficulty.to_dict(),
            "objects": [asdict(o) for o in self.objects],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        """Inverse of [`to_dict`][attrib.shapes.scene.Scene.to_dict]."""
        objs = [ShapeObject(**{**o, "box": tuple(o["box"])}) for o in d["objects"]]
        return cls(
            width=d["width"],
            height=d["height"],
            objects=objs,
            difficulty=Difficulty.from_dict(d["difficulty"]),
            seed=d["seed"],
        )


def attribute_key(o: ShapeObject) -> tuple[int, int, int]:
    """Canonical order of objects in traces: colour (palette order), then shape, then size.

    Traces list objects in this order, so that deciding what to say next needs
    only *which* attribute combinations are in the image, not where they are.
    """
    return (list(COLOURS).index(o.colour), SHAPES.index(o.shape), SIZES.index(o.size))


def sample_scene(
    rng: np.random.Generator,
    *,
    width: int = 224,
    height: int = 224,
    difficulty: Difficulty | None = None,
    seed: int = 0,
    max_tries: int = 2000,
) -> Scene:
    """Sample a scene of non-overlapping objects.

    No two objects share a (size, colour, shape) description, so that every
    description used in a trace picks out exactly one object.

    Args:
        rng: Source of randomness.
        width: Canvas width (a multiple of 28).
        height: Canvas height (a multiple of 28).
        difficulty: Difficulty; the ``medium`` preset when ``None``.
        seed: Recorded in the scene (also seeds the texture).
        max_tries: Placement attempts before giving up.

    Returns:
        The scene, objects in canonical attribute order.

    Raises:
        ValueError: If the size is invalid or the objects cannot be placed.
    """
    check_image_size(width, height)
    diff = difficulty or Difficulty()
    n = int(rng.integers(diff.min_objects, diff.max_objects + 1))
    rows, cols = height // GRID, width // GRID
    occupied = np.zeros((rows, cols), dtype=bool)
    placed: list[ShapeObject] = []
    tries = 0
    while len(placed) < n:
        tries += 1
        if tries > max_tries:
            raise ValueError(
                f"impossible difficulty: could not place {n} objects at size_scale={diff.size_scale} "
                f"on a {width}x{height} canvas"
            )
        size = SIZES[int(rng.integers(len(SIZES)))]
        cells = _CELLS[size]
        if cells > min(rows, cols):
            continue
        r = int(rng.integers(0, rows - cells + 1))
        c = int(rng.integers(0, cols - cells + 1))
        if occupied[r : r + cells, c : c + cells].any():
            continue
        span = cells * GRID
        side = min(span - 2, max(8, round((span - 2 * _INSET) * diff.size_scale)))
        off = (span - side) // 2
        x0, y0 = c * GRID + off, r * GRID + off
        cand = ShapeObject(
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            colour=list(COLOURS)[int(rng.integers(len(COLOURS)))],
            size=size,
            box=(x0, y0, x0 + side, y0 + side),
        )
        if any(p.describe() == cand.describe() for p in placed):
            continue
        occupied[r : r + cells, c : c + cells] = True
        placed.append(cand)
    placed.sort(key=attribute_key)
    return Scene(width=width, height=height, objects=placed, difficulty=diff, seed=seed)


def render_blank(width: int = 224, height: int = 224) -> np.ndarray:
    """A blank canvas of the background colour (the blank-image control)."""
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    return img
