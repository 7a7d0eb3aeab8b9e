"""How each model family turns an image into a grid of visual tokens, described as data.

A [`GridSpec`][attrib.regions.geometry.GridSpec] states a family's patch size, spatial merge, and resize rule.
[`GridSpec.token_grid`][attrib.regions.geometry.GridSpec.token_grid] gives, for an original image size, the grid of
language-model visual tokens (rows x cols, row-major, the order in which the
model's image tokens appear) and the affine map from the processed canvas back
to original pixels. Region partitions use it to assign tokens to regions.

Resize rules:

- ``smart`` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, GLM-4.1V): both sides rounded to
  multiples of ``patch_size * merge_size``, area brought inside
  ``[min_pixels, max_pixels]``, aspect ratio kept (transformers' ``smart_resize``).
  The whole image is kept; tiny images are enlarged, huge ones shrunk.
- ``shortest_edge_crop`` (LLaVA-1.5's CLIP processor): shortest edge resized to
  ``crop_size``, then a centred ``crop_size`` square crop. Pixels outside the crop
  reach no token.
- ``pad_square`` (LLaVA with ``do_pad``): padded to a square, then resized to
  ``crop_size``. Tokens over the padding are assigned to the nearest image pixel.
- ``stretch`` (Gemma 3, InternVL with one tile): the whole image resized to a
  ``crop_size`` square, aspect ratio not kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["GRID_SPECS", "GridSpec", "TokenGrid", "get_grid_spec", "register_grid_spec"]

ResizeRule = Literal["smart", "shortest_edge_crop", "pad_square", "stretch"]


@dataclass(frozen=True)
class TokenGrid:
    """The visual-token grid of one image.

    Attributes:
        rows: Token rows.
        cols: Token columns.
        cell: Canvas pixels per token side (``patch_size * merge_size``).
        scale_x: Canvas pixels per original pixel, horizontally.
        scale_y: Canvas pixels per original pixel, vertically.
        offset_x: Original-pixel x of canvas x = 0 (negative for padding, positive for crops).
        offset_y: Original-pixel y of canvas y = 0.
        width: Original image width.
        height: Original image height.
    """

    rows: int
    cols: int
    cell: int
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    width: int
    height: int

    @property
    def n_tokens(self) -> int:
        """Number of visual tokens (``rows * cols``)."""
        return self.rows * self.cols

    def token_box(self, index: int) -> tuple[float, float, float, float]:
        """Original-pixel box ``(x0, y0, x1, y1)`` of token ``index`` (row-major), before clipping."""
        r, c = divmod(index, self.cols)
        x0 = self.offset_x + c * self.cell / self.scale_x
        y0 = self.offset_y + r * self.cell / self.scale_y
        return x0, y0, x0 + self.cell / self.scale_x, y0 + self.cell / self.scale_y


@dataclass(frozen=True)
class GridSpec:
    """A model family's visual tokenisation.

    Attributes:
        family: Family name, e.g. ``"qwen2_5_vl"``.
        patch_size: Vision patch side in pixels.
        merge_size: Spatial merge (2 for 2x2 merges, 1 for none).
        resize: The resize rule (module docstring).
        min_pixels: Smallest canvas area (``smart``).
        max_pixels: Largest canvas area (``smart``).
        crop_size: Square canvas side (``shortest_edge_crop``, ``pad_square``, ``stretch``).
        temporal_factor: Frames per temporal patch, used by GLM's area rule.
    """

    family: str
    patch_size: int
    merge_size: int
    resize: ResizeRule
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    crop_size: int = 336
    temporal_factor: int = 1

    @property
    def cell(self) -> int:
        """Canvas pixels per language-model visual token."""
        return self.patch_size * self.merge_size

    def token_grid(self, width: int, height: int) -> TokenGrid:
        """The token grid for an original image of ``width`` x ``height`` pixels.

        Raises:
            ValueError: For a non-positive size, or an aspect ratio above 200
                (which the Qwen/GLM processors refuse too).
        """
        if width < 1 or height < 1:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        if self.resize == "smart":
            h, w = self._smart(height, width)
            return TokenGrid(h // self.cell, w // self.cell, self.cell, w / width, h / height, 0.0, 0.0, width, height)
        s = self.crop_size
        if self.resize == "stretch":
            return TokenGrid(s // self.cell, s // self.cell, self.cell, s / width, s / height, 0.0, 0.0, width, height)
        if self.resize == "shortest_edge_crop":
            scale = s / min(width, height)
            rw, rh = width * scale, height * scale
            off_x = (rw - s) / 2 / scale
            off_y = (rh - s) / 2 / scale
            return TokenGrid(s // self.cell, s // self.cell, self.cell, scale, scale, off_x, off_y, width, height)
        side = max(width, height)
        scale = s / side
        return TokenGrid(
            s // self.cell,
            s // self.cell,
            self.cell,
            scale,
            scale,
            -(side - width) / 2,
            -(side - height) / 2,
            width,
            height,
        )

    def _smart(self, height: int, width: int) -> tuple[int, int]:
        factor = self.cell
        if max(height, width) / min(height, width) > 200:
            raise ValueError(f"image aspect ratio {max(height, width) / min(height, width):.0f} exceeds 200")
        if self.temporal_factor > 1 and (height < factor or width < factor):
            scale = max(factor / height, factor / width)
            height, width = int(height * scale), int(width * scale)
        t = self.temporal_factor
        h_bar = round(height / factor) * factor
        w_bar = round(width / factor) * factor
        if t * h_bar * w_bar > self.max_pixels:
            beta = math.sqrt(t * height * width / self.max_pixels)
            h_bar = max(factor, math.floor(height / beta / factor) * factor)
            w_bar = max(factor, math.floor(width / beta / factor) * factor)
        elif t * h_bar * w_bar < self.min_pixels:
            beta = math.sqrt(self.min_pixels / (t * height * width))
            h_bar = math.ceil(height * beta / factor) * factor
            w_bar = math.ceil(width * beta / factor) * factor
        return h_bar, w_bar


GRID_SPECS: dict[str, GridSpec] = {}


def register_grid_spec(spec: GridSpec) -> GridSpec:
    """Register a family's grid; a second spec for the same family is refused."""
    if spec.family in GRID_SPECS:
        raise ValueError(f"grid spec for family {spec.family!r} is already registered")
    GRID_SPECS[spec.family] = spec
    return spec


def get_grid_spec(family: str) -> GridSpec:
    """The grid spec of ``family``.

    Raises:
        ValueError: For an unknown family (the message lists the known ones).
    """
    if family not in GRID_SPECS:
        raise ValueError(f"no visual-token grid for model family {family!r}; supported: {sorted(GRID_SPECS)}")
    return GRID_SPECS[family]


register_grid_spec(GridSpec("qwen2_vl", 14, 2, "smart", min_pixels=56 * 56, max_pixels=28 * 28 * 1280))
register_grid_spec(GridSpec("qwen2_5_vl", 14, 2, "smart", min_pixels=56 * 56, max_pixels=28 * 28 * 1280))
register_grid_spec(GridSpec("qwen3_vl", 16, 2, "smart", min_pixels=65536, max_pixels=16777216))
register_grid_spec(
    GridSpec("glm4v", 14, 2, "smart", min_pixels=112 * 112, max_pixels=28 * 28 * 15000, temporal_factor=2)
)
register_grid_spec(GridSpec("llava", 14, 1, "shortest_edge_crop", crop_size=336))
register_grid_spec(GridSpec("llava_pad", 14, 1, "pad_square", crop_size=336))
#: The bundled model: Qwen2.5-VL geometry with its processor's pixel budget.
register_grid_spec(GridSpec("shapes_qwen25vl", 14, 2, "smart", min_pixels=112 * 112, max_pixels=448 * 448))
