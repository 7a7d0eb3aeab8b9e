"""Scenes of benchmark v2: larger and non-square canvases, more objects, objects in reading order.

A v2 scene is an ordinary [`Scene`][attrib.shapes.scene.Scene] (same shapes, colours, sizes, masks and
rendering as v1), sampled differently:

- the canvas is drawn from a mix of sizes ([`CANVASES`][attrib.shapes.v2.scene.CANVASES]), square and not;
- larger canvases hold more objects ([`object_range`][attrib.shapes.v2.scene.object_range]);
- the objects are stored in *reading order*: by the row of their top merged cell, then by the column of
  their left one ([`reading_key`][attrib.shapes.v2.scene.reading_key]). Every v2 trace scans the objects in
  this order, so what comes next in a trace depends on where the objects are, and the position words
  must be read from the image;
- the background is lit by a gentle gradient ([`backdrop`][attrib.shapes.v2.scene.backdrop]): its red
  channel rises from left to right and its green channel from bottom to top, by 48 levels each. Real
  photographs carry such absolute cues (sky above, floor below); the Qwen2.5-VL vision tower has only
  relative (rotary) positions, so without one a small model cannot tell where on the canvas an object is
  (the v1 model, on a plain background, gets the first position word right 30 % of the time under teacher
  forcing). ``backdrop="plain"`` gives v1's flat grey instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from attrib.shapes.scene import (
    BACKGROUND,
    COLOURS,
    GRID,
    SHAPES,
    SIZES,
    Difficulty,
    Scene,
    ShapeObject,
    check_image_size,
)

__all__ = [
    "BACKDROPS",
    "CANVASES",
    "CANVAS_WEIGHTS",
    "MAX_OBJECTS",
    "Scene2",
    "backdrop",
    "band_of",
    "draw_canvas",
    "object_range",
    "preset",
    "reading_key",
    "sample_scene",
]

CANVASES: tuple[tuple[int, int], ...] = ((224, 224), (448, 280), (280, 448), (448, 448))
"""Canvas sizes ``(width, height)`` of the v2 mix: 8x8, 16x10, 10x16 and 16x16 merged 28-px cells.

None has a multiple of 3 cells on a side, so no object centre falls on a boundary of the 3x3 position grid.
"""
CANVAS_WEIGHTS: tuple[float, ...] = (0.4, 0.2, 0.2, 0.2)
"""How often each canvas of [`CANVASES`][attrib.shapes.v2.scene.CANVASES] is drawn."""
MAX_OBJECTS = 16
"""Most objects in any v2 scene."""
_CELLS = {"small": 1, "large": 2}
_INSET = 3
BACKDROPS: tuple[str, ...] = ("gradient", "plain")
"""Background styles: ``gradient`` (the default of v2) or ``plain`` (v1's flat grey)."""
_RAMP = 24  # levels either side of the mid grey


def backdrop(width: int, height: int, style: str = "gradient") -> np.ndarray:
    """The ``(H, W, 3)`` ``uint8`` background of a v2 canvas.

    ``gradient``: red ``128 - 24 .. 128 + 24`` from the left edge to the right one, green
    ``128 + 24 .. 128 - 24`` from top to bottom, blue 128. ``plain``: v1's flat grey.

    Raises:
        ValueError: For an unknown style.
    """
    if style not in BACKDROPS:
        raise ValueError(f"unknown backdrop {style!r}; choose one of {BACKDROPS}")
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    if style == "gradient":
        u = (np.arange(width, dtype=np.float64) + 0.5) / width * 2 - 1
        v = (np.arange(height, dtype=np.float64) + 0.5) / height * 2 - 1
        img[:, :, 0] = np.rint(BACKGROUND[0] + _RAMP * u)[None, :].astype(np.uint8)
        img[:, :, 1] = np.rint(BACKGROUND[1] - _RAMP * v)[:, None].astype(np.uint8)
    return img


@dataclass(kw_only=True)
class Scene2(Scene):
    """A v2 scene: a v1 [`Scene`][attrib.shapes.scene.Scene] drawn on a [`backdrop`][attrib.shapes.v2.scene.backdrop].

    Attributes:
        backdrop: ``gradient`` or ``plain``.
    """

    backdrop: str = "gradient"

    def blank(self) -> np.ndarray:
        """The canvas without objects (the blank-image control), with the same backdrop and texture."""
        img = backdrop(self.width, self.height, self.backdrop)
        if self.difficulty.texture:
            rng = np.random.default_rng(self.seed + 7919)
            yy, xx = np.mgrid[0 : self.height, 0 : self.width]
            period = rng.uniform(6, 14)
            angle = rng.uniform(0, math.pi)
            stripes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
            noise = rng.normal(0, 6, size=(self.height, self.width))
            tex = 18 * stripes + noise
            img = np.clip(img.astype(np.float64) + tex[..., None], 0, 255).astype(np.uint8)
        return img

    def render(self) -> np.ndarray:
        """Render to an ``(H, W, 3)`` ``uint8`` array (deterministic per seed)."""
        img = self.blank()
        palette = self.difficulty.palette()
        for o in self.objects:
            x0, y0, x1, y1 = o.box
            sub = img[y0:y1, x0:x1]
            sub[o.local_mask()] = palette[o.colour]
        return img

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (masks are re-derived from the boxes)."""
        return {**super().to_dict(), "backdrop": self.backdrop}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene2:
        """Inverse of [`to_dict`][attrib.shapes.v2.scene.Scene2.to_dict]."""
        base = Scene.from_dict(d)
        return cls(
            width=base.width,
            height=base.height,
            objects=base.objects,
            difficulty=base.difficulty,
            seed=base.seed,
            backdrop=d.get("backdrop", "gradient"),
        )


def preset(name: Literal["easy", "medium", "hard"] = "medium") -> Difficulty:
    """The v2 difficulty presets (object counts are those of a 224x224 canvas; see
    [`object_range`][attrib.shapes.v2.scene.object_range]).

    Args:
        name: ``"easy"``, ``"medium"`` (the default of every v2 split) or ``"hard"``.

    Raises:
        ValueError: For an unknown name.
    """
    presets = {
        "easy": Difficulty(min_objects=3, max_objects=7, size_scale=1.2),
        "medium": Difficulty(min_objects=5, max_objects=10),
        "hard": Difficulty(min_objects=6, max_objects=10, size_scale=0.8, colour_similarity=0.35, texture=True),
    }
    if name not in presets:
        raise ValueError(f"unknown difficulty preset {name!r}; choose one of {sorted(presets)}")
    return presets[name]


def object_range(difficulty: Difficulty, width: int, height: int) -> tuple[int, int]:
    """Fewest and most objects of a scene on a ``width`` x ``height`` canvas.

    ``difficulty.min_objects .. max_objects`` on a 224x224 canvas (64 merged cells); larger canvases add
    ``round(4 * (cells - 64) / 192)`` objects to both (2 on 448x280, 4 on 448x448), at most
    [`MAX_OBJECTS`][attrib.shapes.v2.scene.MAX_OBJECTS] in all.
    """
    cells = (width // GRID) * (height // GRID)
    extra = max(0, round(4 * (cells - 64) / 192))
    return min(MAX_OBJECTS, difficulty.min_objects + extra), min(MAX_OBJECTS, difficulty.max_objects + extra)


def reading_key(o: ShapeObject) -> tuple[int, int]:
    """Reading order of an object: ``(row, column)`` of its top-left merged cell."""
    return o.box[1] // GRID, o.box[0] // GRID


def band_of(o: ShapeObject, axis: Literal["column", "row"], width: int, height: int) -> str:
    """The third of the canvas an object's centre lies in: ``left``, ``middle``, ``right`` (``top`` ... by row).

    It agrees with the object's position word (e.g. ``top right`` is in the right column and the top row).
    """
    cx, cy = o.center
    if axis == "column":
        return ("left", "middle", "right")[min(2, int(3 * cx / width))]
    return ("top", "middle", "bottom")[min(2, int(3 * cy / height))]


def draw_canvas(rng: np.random.Generator) -> tuple[int, int]:
    """A canvas of the v2 mix, drawn with [`CANVAS_WEIGHTS`][attrib.shapes.v2.scene.CANVAS_WEIGHTS]."""
    return CANVASES[int(rng.choice(len(CANVASES), p=np.asarray(CANVAS_WEIGHTS)))]


def sample_scene(
    rng: np.random.Generator,
    *,
    width: int = 224,
    height: int = 224,
    difficulty: Difficulty | None = None,
    seed: int = 0,
    backdrop: str = "gradient",
    max_tries: int = 4000,
) -> Scene2:
    """Sample a v2 scene: non-overlapping objects on the merged-cell grid, in reading order.

    As in v1, a small object fills one merged cell and a large one a 2x2 block (inset by a few pixels,
    scaled by ``difficulty.size_scale``), no two objects share a cell, and no two share a description.

    Args:
        rng: Source of randomness.
        width: Canvas width (a multiple of 28).
        height: Canvas height (a multiple of 28).
        difficulty: Difficulty (the v2 ``medium`` preset when ``None``).
        seed: Recorded in the scene (also seeds the texture).
        backdrop: ``gradient`` or ``plain`` (see [`backdrop`][attrib.shapes.v2.scene.backdrop]).
        max_tries: Placement attempts before giving up.

    Returns:
        The scene, objects in reading order.

    Raises:
        ValueError: If the size is invalid or the objects cannot be placed.
    """
    check_image_size(width, height)
    if backdrop not in BACKDROPS:
        raise ValueError(f"unknown backdrop {backdrop!r}; choose one of {BACKDROPS}")
    diff = difficulty or preset("medium")
    lo, hi = object_range(diff, width, height)
    n = int(rng.integers(lo, hi + 1))
    rows, cols = height // GRID, width // GRID
    occupied = np.zeros((rows, cols), dtype=bool)
    placed: list[ShapeObject] = []
    descriptions: set[str] = set()
    colours = list(COLOURS)
    for _ in range(max_tries):
        if len(placed) == n:
            break
        size = SIZES[int(rng.integers(len(SIZES)))]
        cells = _CELLS[size]
        r = int(rng.integers(0, rows - cells + 1))
        c = int(rng.integers(0, cols - cells + 1))
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = colours[int(rng.integers(len(colours)))]
        if occupied[r : r + cells, c : c + cells].any() or f"{size} {colour} {shape}" in descriptions:
            continue
        span = cells * GRID
        side = min(span - 2, max(8, round((span - 2 * _INSET) * diff.size_scale)))
        off = (span - side) // 2
        x0, y0 = c * GRID + off, r * GRID + off
        occupied[r : r + cells, c : c + cells] = True
        descriptions.add(f"{size} {colour} {shape}")
        placed.append(ShapeObject(shape=shape, colour=colour, size=size, box=(x0, y0, x0 + side, y0 + side)))
    if len(placed) < n:
        raise ValueError(
            f"impossible difficulty: could not place {n} objects at size_scale={diff.size_scale} "
            f"on a {width}x{height} canvas"
        )
    placed.sort(key=reading_key)
    return Scene2(width=width, height=height, objects=placed, difficulty=diff, seed=seed, backdrop=backdrop)
