"""Point-and-copy traces for ``attrib.shapes``, and scoring where a model points.

Trace format (v1 variant). In every sentence that introduces one object
(benchmark v1: ``There is a <size> <colour> <shape> at the <place>.``; benchmark v2's object
sentences: ``A <size> <colour> <shape> at the <place>.``), the object phrase is
followed by a region block that copies the merged image cells the object covers:

```text
There is a large red triangle<region><|copy|><|copy|></region> at the top right.
A large red triangle<region><|copy|><|copy|></region> at the top right.
```

Cells are numbered in raster order over the canvas's grid of merged cells (``H/28`` rows of ``W/28``),
which is the order of the image's visual tokens, so non-square v2 canvases work as square ones.

The copied cells are the object's *target cells*: merged cells (``patch_size x
merge_size`` pixels, 28 px for Qwen2/2.5-VL) ranked by the share of the cell the
object's mask covers; every cell covered at least ``min_cover`` is kept (at most
``max_cells``, the best-covered first, then put in raster order), and at least
the single best-covered cell. Sentences that summarise several objects (counts)
carry no region block: they refer to sets, not to one object.

Pointing accuracy counts a copied cell as a hit when it lies inside the object
the sentence names: when the object's mask covers at least ``hit_cover`` (25 %)
of the cell, or the cell is one of that object's target cells (small objects may
cover no cell by a quarter). When the generated description matches several
objects of the scene, any of them counts; when it matches none, the copies of
that block are misses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from attrib.shapes.dataset import Example, trace_text
from attrib.shapes.scene import Scene
from attrib.variants.pointcopy.model import COPY, REGION_CLOSE, REGION_OPEN

__all__ = ["PointingScore", "cell_cover", "pointing_trace", "score_pointing", "strip_pointing", "target_cells"]

_INTRO = re.compile(r"^(?:There is an?|An?) ")
_BLOCK = re.compile(re.escape(REGION_OPEN) + r"(.*?)" + re.escape(REGION_CLOSE))
_PHRASE = re.compile(r"(?:^|There is )[Aa]n? ([a-z]+ [a-z]+ [a-z]+)\s*$")


def cell_cover(scene: Scene, obj: int, cell: int = 28) -> np.ndarray:
    """Share of each merged cell covered by object ``obj``, raster order, ``(H/cell * W/cell,)``.

    Raises:
        ValueError: If the canvas is not a multiple of ``cell``.
    """
    if scene.height % cell or scene.width % cell:
        raise ValueError(f"canvas {scene.width}x{scene.height} is not a multiple of the {cell}-px cell")
    m = scene.mask(obj).astype(np.float32)
    gh, gw = scene.height // cell, scene.width // cell
    return m.reshape(gh, cell, gw, cell).mean(axis=(1, 3)).ravel()


def target_cells(scene: Scene, obj: int, *, cell: int = 28, max_cells: int = 4, min_cover: float = 0.5) -> list[int]:
    """The cells a trace copies for object ``obj`` (see the module docstring)."""
    cover = cell_cover(scene, obj, cell)
    order = np.argsort(-cover, kind="stable")
    keep = [int(i) for i in order[:max_cells] if cover[i] >= min_cover]
    if not keep:
        keep = [int(order[0])]
    return sorted(keep)


def pointing_trace(example: Example, *, cell: int = 28, max_cells: int = 4) -> tuple[str, list[int]]:
    """The v1 assistant output of ``example`` and the copied cell of every ``<|copy|>`` in order.

    Returns:
        ``(text, sources)``.
    """
    texts: list[str] = []
    sources: list[int] = []
    for s in example.question.sentences:
        t = s.text
        intro = getattr(s, "kind", "object") == "object"  # a v2 sentence says its kind; a v1 one does not
        if intro and len(s.objects) == 1 and _INTRO.match(t) and " at the " in t:
            cells = target_cells(example.scene, s.objects[0], cell=cell, max_cells=max_cells)
            block = REGION_OPEN + COPY * len(cells) + REGION_CLOSE
            head, tail = t.split(" at the ", 1)
            t = f"{head}{block} at the {tail}"
            sources.extend(cells)
        texts.append(t)
    return trace_text(texts, example.question.answer), sources


def strip_pointing(text: str) -> str:
    """Remove region blocks (the base model's trace format remains)."""
    return _BLOCK.sub("", text)


@dataclass(frozen=True)
class PointingScore:
    """Pointing of one generated trace.

    Attributes:
        hits: Copies inside the named object.
        copies: Copies made inside region blocks.
        blocks: Region blocks.
    """

    hits: int
    copies: int
    blocks: int


def score_pointing(example: Example, text: str, copy_sources: list[int], *, cell: int = 28) -> PointingScore:
    """Score where a generated trace points.

    Args:
        example: The example (its scene is the ground truth).
        text: Generated text, special tokens kept (``<region>``, ``<|copy|>``...).
        copy_sources: Copied cell of every ``<|copy|>`` in ``text``, in order.
        cell: Merged-cell side in pixels.

    Raises:
        ValueError: If ``copy_sources`` and the ``<|copy|>`` count of ``text`` disagree.
    """
    if text.count(COPY) != len(copy_sources):
        raise ValueError(f"text holds {text.count(COPY)} copy tokens but {len(copy_sources)} sources were given")
    descs = [o.describe() for o in example.scene.objects]
    covers: dict[int, np.ndarray] = {}
    hits = copies = blocks = 0
    for m in _BLOCK.finditer(text):
        before = text[: m.start()]
        first = before.count(COPY)
        n = m.group(1).count(COPY)
        blocks += 1
        copies += n
        sentence = re.split(r"[.!?>]\s*", before)[-1]
        pm = _PHRASE.search(sentence)
        objs = [i for i, d in enumerate(descs) if pm and d == pm.group(1)]
        for k in range(first, first + n):
            j = copy_sources[k]
            for i in objs:
                if i not in covers:
                    covers[i] = cell_cover(example.scene, i, cell)
                if covers[i][j] >= 0.25 or j in target_cells(example.scene, i, cell=cell):
                    hits += 1
                    break
    return PointingScore(hits=hits, copies=copies, blocks=blocks)
