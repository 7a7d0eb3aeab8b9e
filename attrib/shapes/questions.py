"""Question families with ground-truth reasoning traces.

Each family turns a [`Scene`][attrib.shapes.scene.Scene] into a question, a
reasoning trace of 2-12 sentences and an answer that is right by construction.
Every sentence records which objects it refers to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from attrib.shapes.scene import COLOURS, SHAPES, Scene, ShapeObject

__all__ = [
    "AUX_FAMILIES",
    "FAMILIES",
    "Question",
    "Sentence",
    "UnsuitableSceneError",
    "make_question",
    "register_family",
]

MAX_SENTENCES = 12


@dataclass(frozen=True)
class Sentence:
    """One reasoning sentence and the objects it refers to.

    Attributes:
        text: The sentence, ending in a full stop.
        objects: Indices into the scene's objects that the sentence names or
            summarises (empty for planning sentences).
    """

    text: str
    objects: tuple[int, ...] = ()


@dataclass(frozen=True)
class Question:
    """A question with its ground-truth trace and answer."""

    family: str
    text: str
    sentences: tuple[Sentence, ...]
    answer: str


class UnsuitableSceneError(Exception):
    """Raised by a family when a scene cannot host one of its questions."""


FamilyFn = Callable[[Scene, np.random.Generator], Question]
#: The benchmark's question families (evaluation splits cycle through these).
FAMILIES: dict[str, FamilyFn] = {}
#: Auxiliary families used only as extra training data (dense grounding supervision).
AUX_FAMILIES: dict[str, FamilyFn] = {}


def register_family(name: str, *, auxiliary: bool = False) -> Callable[[FamilyFn], FamilyFn]:
    """Register a question family under ``name``; duplicates are refused.

    Args:
        name: Family name.
        auxiliary: Register as a training-only auxiliary family.

    Returns:
        A decorator that registers the function.
    """

    def deco(fn: FamilyFn) -> FamilyFn:
        if name in FAMILIES or name in AUX_FAMILIES:
            raise ValueError(f"question family {name!r} is already registered")
        (AUX_FAMILIES if auxiliary else FAMILIES)[name] = fn
        return fn

    return deco


def make_question(family: str, scene: Scene, rng: np.random.Generator) -> Question:
    """Make a question of ``family`` about ``scene``.

    Raises:
        ValueError: For an unknown family (the message lists the known ones).
        UnsuitableSceneError: When this scene cannot host the family's question.
    """
    fn = FAMILIES.get(family) or AUX_FAMILIES.get(family)
    if fn is None:
        raise ValueError(f"unknown question family {family!r}; choose one of {sorted(FAMILIES)}")
    q = fn(scene, rng)
    if not 2 <= len(q.sentences) <= MAX_SENTENCES:
        raise UnsuitableSceneError(f"{len(q.sentences)} sentences")
    return q


_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}


def _phrase(colour: str | None, shape: str | None) -> str:
    if colour and shape:
        return f"{colour} {_PLURAL[shape]}"
    if shape:
        return _PLURAL[shape]
    return f"{colour} objects"


def _match(o: ShapeObject, colour: str | None, shape: str | None) -> bool:
    return (colour is None or o.colour == colour) and (shape is None or o.shape == shape)


def _there_is(scene: Scene, i: int) -> Sentence:
    return Sentence(f"There is a {scene.objects[i].describe()} at the {scene.position(i)}.", (i,))


def _pick_filter(scene: Scene, rng: np.random.Generator, kind: str) -> tuple[str | None, str | None]:
    """Pick a colour and/or shape filter, biased towards attributes present in the scene."""
    o = scene.objects[int(rng.integers(len(scene.objects)))]
    present = rng.random() < 0.8
    colour = o.colour if present else list(COLOURS)[int(rng.integers(len(COLOURS)))]
    shape = o.shape if present else SHAPES[int(rng.integers(len(SHAPES)))]
    if kind == "colour":
        return colour, None
    if kind == "shape":
        return None, shape
    return colour, shape


@register_family("count")
def _count(scene: Scene, rng: np.random.Generator) -> Question:
    kind = ("colour", "shape", "both")[int(rng.integers(3))]
    colour, shape = _pick_filter(scene, rng, kind)
    phrase = _phrase(colour, shape)
    idx = [i for i, o in enumerate(scene.objects) if _match(o, colour, shape)]
    sents = [Sentence(f"I need to count the {phrase}.")]
    sents += [_there_is(scene, i) for i in idx]
    if not idx:
        sents.append(Sentence(f"I see no {phrase}."))
    sents.append(Sentence(f"So the count is {len(idx)}.", tuple(idx)))
    return Question("count", f"How many {phrase} are there?", tuple(sents), str(len(idx)))


_DIRECTIONS = {
    "leftmost": (0, 1.0),
    "rightmost": (0, -1.0),
    "topmost": (1, 1.0),
    "bottommost": (1, -1.0),
}


@register_family("relation")
def _relation(scene: Scene, rng: np.random.Generator) -> Question:
    direction = list(_DIRECTIONS)[int(rng.integers(len(_DIRECTIONS)))]
    axis, sign = _DIRECTIONS[direction]
    by_shape = rng.random() < 0.5
    o = scene.objects[int(rng.integers(len(scene.objects)))]
    colour, shape = (None, o.shape) if by_shape else (o.colour, None)
    idx = [i for i, ob in enumerate(scene.objects) if _match(ob, colour, shape)]
    if len(idx) > 8:
        raise UnsuitableSceneError("too many candidates")
    keys = sorted((sign * scene.objects[i].center[axis], i) for i in idx)
    if len(keys) > 1 and keys[1][0] - keys[0][0] < 6:
        raise UnsuitableSceneError("ambiguous extreme")
    best = keys[0][1]
    noun = shape if by_shape else f"{colour} object"
    attr = "color" if by_shape else "shape"
    sents = [Sentence(f"I need to find the {direction} {noun}.")]
    sents += [_there_is(scene, i) for i in idx]
    sents.append(Sentence(f"The {direction} one is the {scene.objects[best].describe()}.", (best,)))
    answer = scene.objects[best].colour if by_shape else scene.objects[best].shape
    return Question("relation", f"What {attr} is the {direction} {noun}?", tuple(sents), answer)


def _two_groups(scene: Scene, rng: np.random.Generator) -> tuple[tuple[str | None, str | None], ...]:
    if rng.random() < 0.5:
        a, b = rng.choice(len(COLOURS), size=2, replace=False)
        return (list(COLOURS)[int(a)], None), (list(COLOURS)[int(b)], None)
    a, b = rng.choice(len(SHAPES), size=2, replace=False)
    return (None, SHAPES[int(a)]), (None, SHAPES[int(b)])


@register_family("compare")
def _compare(scene: Scene, rng: np.random.Generator) -> Question:
    ga, gb = _two_groups(scene, rng)
    pa, pb = _phrase(*ga), _phrase(*gb)
    ia = [i for i, o in enumerate(scene.objects) if _match(o, *ga)]
    ib = [i for i, o in enumerate(scene.objects) if _match(o, *gb)]
    if len(ia) + len(ib) > 8:
        raise UnsuitableSceneError("too many objects to list")
    more = len(ia) > len(ib)
    sents = [Sentence(f"I need to compare the {pa} and the {pb}.")]
    sents += [_there_is(scene, i) for i in ia]
    sents.append(Sentence(f"The count of {pa} is {len(ia)}.", tuple(ia)))
    sents += [_there_is(scene, i) for i in ib]
    sents.append(Sentence(f"The count of {pb} is {len(ib)}.", tuple(ib)))
    rel = "is more than" if more else "is not more than"
    sents.append(Sentence(f"{len(ia)} {rel} {len(ib)}.", tuple(ia + ib)))
    return Question("compare", f"Are there more {pa} than {pb}?", tuple(sents), "yes" if more else "no")


@register_family("subtract")
def _subtract(scene: Scene, rng: np.random.Generator) -> Question:
    kind = ("colour", "shape")[int(rng.integers(2))]
    colour, shape = _pick_filter(scene, rng, kind)
    phrase = _phrase(colour, shape)
    idx = [i for i, o in enumerate(scene.objects) if _match(o, colour, shape)]
    if len(idx) > 8:
        raise UnsuitableSceneError("too many objects to list")
    n = len(scene.objects)
    rest = tuple(i for i in range(n) if i not in idx)
    sents = [Sentence(f"I need to remove the {phrase}."), Sentence(f"There are {n} objects in total.", tuple(range(n)))]
    sents += [_there_is(scene, i) for i in idx]
    sents.append(Sentence(f"That removes {len(idx)} objects.", tuple(idx)))
    sents.append(Sentence(f"{n} minus {len(idx)} is {n - len(idx)}.", rest))
    return Question(
        "subtract",
        f"Subtract all {phrase}. How many objects are left?",
        tuple(sents),
        str(n - len(idx)),
    )


@register_family("exist")
def _exist(scene: Scene, rng: np.random.Generator) -> Question:
    if rng.random() < 0.5:
        o = scene.objects[int(rng.integers(len(scene.objects)))]
        colour, shape = o.colour, o.shape
    else:
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
    idx = [i for i, o in enumerate(scene.objects) if _match(o, colour, shape)]
    sents = [Sentence(f"I need to find a {colour} {shape}.")]
    if idx:
        sents += [_there_is(scene, i) for i in idx]
        sents.append(Sentence("So yes, there is one.", tuple(idx)))
    else:
        sents.append(Sentence(f"There is no {colour} {shape}."))
        sents.append(Sentence("So no, there is none."))
    return Question("exist", f"Is there a {colour} {shape}?", tuple(sents), "yes" if idx else "no")


@register_family("inventory", auxiliary=True)
def _inventory(scene: Scene, rng: np.random.Generator) -> Question:
    """List every object in canonical order, then count them (training-only)."""
    n = len(scene.objects)
    sents = [Sentence("I need to list every object.")]
    sents += [_there_is(scene, i) for i in range(n)]
    sents.append(Sentence(f"So the count is {n}.", tuple(range(n))))
    return Question("inventory", "How many objects are there?", tuple(sents), str(n))
