"""Question families of benchmark v2: long traces that scan the image, with a kind for every sentence.

Every family scans objects in reading order (see [`attrib.shapes.v2.scene`][attrib.shapes.v2.scene]) and
names each one it looks at with its size, colour, shape and position: ``A large red circle at the top
left.`` What the trace says next therefore depends on where the objects are, and its words on what they
look like. Each sentence records the objects it names and its kind:

- ``planning``: restates the task or the next step (``I need to count the red objects.``);
- ``object``: names one object, read from the image (``A small blue square at the top right.``);
- ``relation``: relates named objects to each other or to the question (``The topmost one is the small
  red circle.``, ``Found it.``);
- ``summary``: a tally or a conclusion that follows from earlier sentences (``Red objects: 2.``,
  ``So the count is 3.``).

| family | question | trace |
|---|---|---|
| `count` | How many red objects are there? | every object; a tally after each match; the count |
| `compare` | Are there more circles than squares? | every object; a tally per group; the comparison |
| `most` | Which column has the most red objects: left, middle or right? | every object; a tally per band |
| `hop` | What color is the nearest object right of the topmost circle? | the group; the anchor; beyond it |
| `find` | Is there a small green triangle? | objects until the one asked for, or all of them |
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from attrib.shapes.questions import Question, Sentence, UnsuitableSceneError
from attrib.shapes.scene import COLOURS, GRID, SHAPES, SIZES, Scene, ShapeObject
from attrib.shapes.v2.scene import band_of

__all__ = [
    "FAMILIES",
    "LONG_FAMILIES",
    "MAX_SENTENCES",
    "SENTENCE_KINDS",
    "KindSentence",
    "make_question",
    "object_sentence",
]

MAX_SENTENCES = 25
"""Most sentences in a v2 trace."""
SENTENCE_KINDS: tuple[str, ...] = ("planning", "object", "relation", "summary")
"""The kinds of sentence, in the order the docs list them."""
LONG_FAMILIES: tuple[str, ...] = ("count", "compare", "most")
"""The families whose traces scan every object (median of 10 sentences or more at the default difficulty)."""


@dataclass(frozen=True)
class KindSentence(Sentence):
    """A v1 [`Sentence`][attrib.shapes.questions.Sentence] with its kind.

    Attributes:
        kind: One of [`SENTENCE_KINDS`][attrib.shapes.v2.families.SENTENCE_KINDS].
    """

    kind: str = "object"

    def __post_init__(self) -> None:
        if self.kind not in SENTENCE_KINDS:
            raise ValueError(f"unknown sentence kind {self.kind!r}; choose one of {SENTENCE_KINDS}")


FamilyFn = Callable[[Scene, np.random.Generator], Question]
FAMILIES: dict[str, FamilyFn] = {}
"""The v2 families, in the order examples cycle through them."""


def _family(name: str) -> Callable[[FamilyFn], FamilyFn]:
    def deco(fn: FamilyFn) -> FamilyFn:
        FAMILIES[name] = fn
        return fn

    return deco


def make_question(family: str, scene: Scene, rng: np.random.Generator) -> Question:
    """A question of ``family`` about ``scene``, with its trace.

    Raises:
        ValueError: For an unknown family (the message lists the known ones).
        UnsuitableSceneError: When the scene cannot host the question (ambiguous, or a trace over
            [`MAX_SENTENCES`][attrib.shapes.v2.families.MAX_SENTENCES]).
    """
    fn = FAMILIES.get(family)
    if fn is None:
        raise ValueError(f"unknown question family {family!r}; choose one of {sorted(FAMILIES)}")
    q = fn(scene, rng)
    if not 3 <= len(q.sentences) <= MAX_SENTENCES:
        raise UnsuitableSceneError(f"{len(q.sentences)} sentences")
    return q


def object_sentence(scene: Scene, i: int) -> KindSentence:
    """``A large red circle at the top left.``: object ``i`` with its position word."""
    return KindSentence(f"A {scene.objects[i].describe()} at the {scene.position(i)}.", (i,), "object")


def _s(text: str, objects: Sequence[int] = (), kind: str = "summary") -> KindSentence:
    return KindSentence(text, tuple(objects), kind)


_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}
# A filter is (size, colour, shape); None matches anything.
Filter = tuple[str | None, str | None, str | None]


def _phrase(f: Filter) -> str:
    size, colour, shape = f
    words = [w for w in (size, colour) if w]
    return " ".join([*words, _PLURAL[shape] if shape else "objects"])


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _match(o: ShapeObject, f: Filter) -> bool:
    size, colour, shape = f
    return (
        (size is None or o.size == size)
        and (colour is None or o.colour == colour)
        and (shape is None or o.shape == shape)
    )


def _pick_filter(scene: Scene, rng: np.random.Generator, kinds: Sequence[str]) -> Filter:
    """A filter of one of ``kinds`` (``size``, ``colour``, ``shape``, ``colour_shape``, ``size_shape``), biased
    towards attributes present in the scene."""
    kind = kinds[int(rng.integers(len(kinds)))]
    o = scene.objects[int(rng.integers(len(scene.objects)))]
    present = rng.random() < 0.8
    size = o.size if present else SIZES[int(rng.integers(len(SIZES)))]
    colour = o.colour if present else list(COLOURS)[int(rng.integers(len(COLOURS)))]
    shape = o.shape if present else SHAPES[int(rng.integers(len(SHAPES)))]
    return (
        size if "size" in kind else None,
        colour if "colour" in kind else None,
        shape if "shape" in kind else None,
    )


@_family("count")
def _count(scene: Scene, rng: np.random.Generator) -> Question:
    f = _pick_filter(scene, rng, ("colour", "shape", "size", "colour_shape", "size_shape"))
    phrase = _phrase(f)
    sents = [_s(f"I need to count the {phrase}.", kind="planning")]
    matched: list[int] = []
    for i, o in enumerate(scene.objects):
        sents.append(object_sentence(scene, i))
        if _match(o, f):
            matched.append(i)
            sents.append(_s(f"{_cap(phrase)}: {len(matched)}.", (i,)))
    sents.append(_s(f"So the count is {len(matched)}.", matched))
    return Question("count", f"How many {phrase} are there?", tuple(sents), str(len(matched)))


def _two_groups(rng: np.random.Generator) -> tuple[Filter, Filter]:
    kind = int(rng.integers(3))
    if kind == 0:
        a, b = rng.choice(len(COLOURS), size=2, replace=False)
        return (None, list(COLOURS)[int(a)], None), (None, list(COLOURS)[int(b)], None)
    if kind == 1:
        a, b = rng.choice(len(SHAPES), size=2, replace=False)
        return (None, None, SHAPES[int(a)]), (None, None, SHAPES[int(b)])
    a, b = rng.permutation(len(SIZES))
    return (SIZES[int(a)], None, None), (SIZES[int(b)], None, None)


@_family("compare")
def _compare(scene: Scene, rng: np.random.Generator) -> Question:
    fa, fb = _two_groups(rng)
    pa, pb = _phrase(fa), _phrase(fb)
    ia = [i for i, o in enumerate(scene.objects) if _match(o, fa)]
    ib = [i for i, o in enumerate(scene.objects) if _match(o, fb)]
    if len(ia) == len(ib):
        raise UnsuitableSceneError("a tie (answers are balanced without ties)")
    sents = [_s(f"I need to compare the {pa} and the {pb}.", kind="planning")]
    na = nb = 0
    for i, o in enumerate(scene.objects):
        sents.append(object_sentence(scene, i))
        if _match(o, fa):
            na += 1
            sents.append(_s(f"{_cap(pa)}: {na}.", (i,)))
        elif _match(o, fb):
            nb += 1
            sents.append(_s(f"{_cap(pb)}: {nb}.", (i,)))
    more = na > nb
    sents.append(_s(f"{na} is {'more' if more else 'not more'} than {nb}.", ia + ib))
    return Question("compare", f"Are there more {pa} than {pb}?", tuple(sents), "yes" if more else "no")


_BANDS = {"column": ("left", "middle", "right"), "row": ("top", "middle", "bottom")}


@_family("most")
def _most(scene: Scene, rng: np.random.Generator) -> Question:
    axis = ("column", "row")[int(rng.integers(2))]
    f = _pick_filter(scene, rng, ("colour", "shape", "size"))
    phrase = _phrase(f)
    bands = _BANDS[axis]
    tally = dict.fromkeys(bands, 0)
    sents = [_s(f"I need the {axis} with the most {phrase}.", kind="planning")]
    members: dict[str, list[int]] = {b: [] for b in bands}
    for i, o in enumerate(scene.objects):
        sents.append(object_sentence(scene, i))
        if _match(o, f):
            band = band_of(o, axis, scene.width, scene.height)  # type: ignore[arg-type]
            tally[band] += 1
            members[band].append(i)
            sents.append(_s(f"{_cap(band)} {axis}: {tally[band]}.", (i,)))
    ranked = sorted(bands, key=lambda b: -tally[b])
    if tally[ranked[0]] < 2 or tally[ranked[0]] == tally[ranked[1]]:
        raise UnsuitableSceneError("no single band with the most")
    best = ranked[0]
    sents.append(_s(f"The {best} {axis} has the most.", members[best]))
    options = ", ".join(bands[:2]) + f" or {bands[2]}"
    return Question("most", f"Which {axis} has the most {phrase}: {options}?", tuple(sents), best)


_EXTREMES = {"leftmost": (0, 1.0), "rightmost": (0, -1.0), "topmost": (1, 1.0), "bottommost": (1, -1.0)}
_DIRECTIONS = ("right of", "left of", "above", "below")


def _cells(o: ShapeObject) -> tuple[int, int, int, int]:
    """``(col0, row0, col1, row1)`` of the merged cells an object occupies, end-exclusive."""
    c0, r0 = o.box[0] // GRID, o.box[1] // GRID
    n = 2 if o.size == "large" else 1
    return c0, r0, c0 + n, r0 + n


def _beyond(scene: Scene, anchor: int, direction: str) -> list[tuple[int, int]]:
    """``(gap in cells, index)`` of the objects in ``direction`` of ``anchor`` within its row (column) band."""
    a = _cells(scene.objects[anchor])
    out = []
    for i, o in enumerate(scene.objects):
        if i == anchor:
            continue
        b = _cells(o)
        rows_meet = b[1] < a[3] and a[1] < b[3]
        cols_meet = b[0] < a[2] and a[0] < b[2]
        gap = {
            "right of": b[0] - a[2] if rows_meet else -1,
            "left of": a[0] - b[2] if rows_meet else -1,
            "below": b[1] - a[3] if cols_meet else -1,
            "above": a[1] - b[3] if cols_meet else -1,
        }[direction]
        if gap >= 0:
            out.append((gap, i))
    return sorted(out)


@_family("hop")
def _hop(scene: Scene, rng: np.random.Generator) -> Question:
    extreme = list(_EXTREMES)[int(rng.integers(len(_EXTREMES)))]
    axis, sign = _EXTREMES[extreme]
    by_shape = rng.random() < 0.5
    o = scene.objects[int(rng.integers(len(scene.objects)))]
    f: Filter = (None, None, o.shape) if by_shape else (None, o.colour, None)
    noun = o.shape if by_shape else f"{o.colour} object"
    group = [i for i, ob in enumerate(scene.objects) if _match(ob, f)]
    keys = sorted((sign * scene.objects[i].center[axis], i) for i in group)
    if len(keys) > 1 and keys[1][0] - keys[0][0] < GRID / 2:
        raise UnsuitableSceneError("ambiguous extreme")
    anchor = keys[0][1]
    direction = _DIRECTIONS[int(rng.integers(len(_DIRECTIONS)))]
    beyond = _beyond(scene, anchor, direction)
    if not beyond or (len(beyond) > 1 and beyond[0][0] == beyond[1][0]):
        raise UnsuitableSceneError("no single nearest object")
    target = beyond[0][1]
    attr = ("color", "shape")[int(rng.integers(2))]
    answer = scene.objects[target].colour if attr == "color" else scene.objects[target].shape
    sents = [_s(f"First I find the {extreme} {noun}.", kind="planning")]
    sents += [object_sentence(scene, i) for i in group]
    sents.append(_s(f"The {extreme} one is the {scene.objects[anchor].describe()}.", (anchor,), "relation"))
    sents.append(_s(f"Now I look {direction} it.", (anchor,), "planning"))
    sents += [object_sentence(scene, i) for i in sorted(i for _, i in beyond)]
    sents.append(_s(f"The nearest one is the {scene.objects[target].describe()}.", (target,), "relation"))
    question = f"What {attr} is the nearest object {direction} the {extreme} {noun}?"
    return Question("hop", question, tuple(sents), answer)


@_family("find")
def _find(scene: Scene, rng: np.random.Generator) -> Question:
    o = scene.objects[int(rng.integers(len(scene.objects)))]
    want = o.describe()
    if rng.random() < 0.5:  # a near miss: one attribute changed, so that no object fits
        present = {ob.describe() for ob in scene.objects}
        misses = [
            d
            for d in (
                *(f"{s} {o.colour} {o.shape}" for s in SIZES),
                *(f"{o.size} {c} {o.shape}" for c in COLOURS),
                *(f"{o.size} {o.colour} {s}" for s in SHAPES),
            )
            if d not in present
        ]
        if not misses:
            raise UnsuitableSceneError("no near miss")
        want = misses[int(rng.integers(len(misses)))]
    sents = [_s(f"I need to find a {want}.", kind="planning")]
    found = False
    for i, ob in enumerate(scene.objects):
        sents.append(object_sentence(scene, i))
        if ob.describe() == want:
            sents.append(_s("Found it.", (i,), "relation"))
            found = True
            break
    if not found:
        sents.append(_s(f"There is no {want}.", ()))
    return Question("find", f"Is there a {want}?", tuple(sents), "yes" if found else "no")
