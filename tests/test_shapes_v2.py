"""Benchmark v2 (``shapes2:``): the generator, its ground truth, and the grounding metrics of ``attrib shapes eval``.

The ground truth is checked against the rendered pixels, not against the generator's own bookkeeping:
colours, sizes, positions and reading order are read back from the image, and every answer is
re-derived from the scene by an independent oracle.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pytest

from attrib.shapes.questions import Question, UnsuitableSceneError
from attrib.shapes.scene import GRID, POSITIONS, ShapeObject, position_name
from attrib.shapes.v2 import (
    CANVASES,
    FAMILIES,
    LONG_FAMILIES,
    MAX_SENTENCES,
    SENTENCE_KINDS,
    iter_split,
    make_example,
    preset,
)
from attrib.shapes.v2.dataset import Example2, sentence_kind
from attrib.shapes.v2.grounding import failure_kind, mentions, score_grounding, sentence_objects, summarise
from attrib.shapes.v2.scene import Scene2, backdrop, object_range, sample_scene

EXAMPLES = list(iter_split("test", 200))
_OBJ = re.compile(r"^A (small|large) (\w+) (circle|square|triangle) at the ([a-z ]+)\.$")


def _cell_box(size: str, r: int, c: int) -> tuple[int, int, int, int]:
    """The pixel box the generator gives an object whose top-left merged cell is ``(r, c)``."""
    span = (2 if size == "large" else 1) * GRID
    side = span - 6
    off = (span - side) // 2
    return c * GRID + off, r * GRID + off, c * GRID + off + side, r * GRID + off + side


def _scene(objs: list[tuple[str, str, str, int, int]], width: int = 224, height: int = 224) -> Scene2:
    """A hand-built scene: ``(size, colour, shape, row, col)`` per object, listed in reading order."""
    objects = [ShapeObject(shape=sh, colour=co, size=si, box=_cell_box(si, r, c)) for si, co, sh, r, c in objs]
    return Scene2(width=width, height=height, objects=objects, difficulty=preset("medium"), seed=0)


def _pixels(ex: Example2, i: int) -> dict[str, Any]:
    """What the rendered image says about object ``i``: colour, size, position word, top-left cell."""
    lab = ex.scene.label_map()
    ys, xs = np.nonzero(lab == i)
    img = ex.image_array()
    colours = Counter(map(tuple, img[ys, xs]))
    palette = {tuple(v): k for k, v in ex.scene.difficulty.palette().items()}
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    return {
        "colour": palette[colours.most_common(1)[0][0]],
        "size": "large" if x1 - x0 > 1.5 * GRID else "small",
        "position": position_name((x0 + x1) / 2, (y0 + y1) / 2, ex.scene.width, ex.scene.height),
        "cell": (int(y0) // GRID, int(x0) // GRID),
        "cells": (int(y0) // GRID, int(y1 - 1) // GRID, int(x0) // GRID, int(x1 - 1) // GRID),
        "centre": ((x0 + x1) / 2, (y0 + y1) / 2),
    }


def test_ground_truth_matches_the_rendered_image() -> None:
    for ex in EXAMPLES[:80]:
        seen = []
        for s in ex.question.sentences:
            m = _OBJ.match(s.text)
            if sentence_kind(s) != "object":
                assert m is None, s.text
                continue
            assert m is not None and len(s.objects) == 1, s.text
            (i,) = s.objects
            px = _pixels(ex, i)
            assert (m.group(1), m.group(2), m.group(4)) == (px["size"], px["colour"], px["position"]), s.text
            assert ex.scene.objects[i].shape == m.group(3)
            seen.append(i)
        if ex.family in LONG_FAMILIES:  # they scan every object, in reading order read from the pixels
            assert seen == list(range(len(ex.scene.objects)))
            cells = [_pixels(ex, i)["cell"] for i in seen]
            assert cells == sorted(cells) and len(set(cells)) == len(cells)


def _filter(phrase: str) -> tuple[str | None, str | None, str | None]:
    words = phrase.split()
    shape = {"circles": "circle", "squares": "square", "triangles": "triangle"}.get(words[-1])
    size = words[0] if words[0] in ("small", "large") else None
    colour = next((w for w in words[:-1] if w not in ("small", "large")), None)
    return size, colour, shape


def _members(ex: Example2, phrase: str) -> list[int]:
    size, colour, shape = _filter(phrase)
    return [
        i
        for i, o in enumerate(ex.scene.objects)
        if (size is None or o.size == size) and (colour is None or o.colour == colour) and (shape in (None, o.shape))
    ]


def _oracle(ex: Example2) -> str:
    """The answer, from the question and the rendered scene alone."""
    q = ex.question.text
    if m := re.fullmatch(r"How many (.+) are there\?", q):
        return str(len(_members(ex, m.group(1))))
    if m := re.fullmatch(r"Are there more (.+) than (.+)\?", q):
        return "yes" if len(_members(ex, m.group(1))) > len(_members(ex, m.group(2))) else "no"
    if m := re.fullmatch(r"Is there a (\w+) (\w+) (\w+)\?", q):
        return "yes" if any(o.describe() == " ".join(m.groups()) for o in ex.scene.objects) else "no"
    if m := re.fullmatch(r"Which (column|row) has the most (.+): .+\?", q):
        axis = 0 if m.group(1) == "column" else 1
        size = ex.scene.width if axis == 0 else ex.scene.height
        names = ("left", "middle", "right") if axis == 0 else ("top", "middle", "bottom")
        tally = Counter(names[min(2, int(3 * _pixels(ex, i)["centre"][axis] / size))] for i in _members(ex, m.group(2)))
        return tally.most_common(1)[0][0]
    if m := re.fullmatch(
        r"What (color|shape) is the nearest object (right of|left of|above|below) the (\w+) (.+)\?", q
    ):
        attr, direction, extreme, noun = m.groups()
        group = _members(ex, noun + "s")
        axis = 0 if extreme in ("leftmost", "rightmost") else 1
        sign = 1 if extreme in ("leftmost", "topmost") else -1
        anchor = min(group, key=lambda i: sign * _pixels(ex, i)["centre"][axis])
        r0, r1, c0, c1 = _pixels(ex, anchor)["cells"]
        best = None
        for i in range(len(ex.scene.objects)):
            if i == anchor:
                continue
            s0, s1, d0, d1 = _pixels(ex, i)["cells"]
            rows, cols = s0 <= r1 and r0 <= s1, d0 <= c1 and c0 <= d1
            gap = {"right of": d0 - c1 if rows else -1, "left of": c0 - d1 if rows else -1}.get(direction)
            if gap is None:
                gap = s0 - r1 if direction == "below" and cols else (r0 - s1 if direction == "above" and cols else -1)
            if gap > 0 and (best is None or gap < best[0]):
                best = (gap, i)
        assert best is not None
        o = ex.scene.objects[best[1]]
        return o.colour if attr == "color" else o.shape
    raise AssertionError(f"unrecognised question {q!r}")


@pytest.mark.parametrize("ex", EXAMPLES, ids=lambda e: e.uid)
def test_answer_right_by_construction(ex: Example2) -> None:
    assert ex.answer == _oracle(ex)


def test_chain_lengths_kinds_and_balance() -> None:
    lengths: dict[str, list[int]] = defaultdict(list)
    kinds: Counter[str] = Counter()
    for ex in EXAMPLES:
        sents = ex.question.sentences
        lengths[ex.family].append(len(sents))
        kinds.update(sentence_kind(s) for s in sents)
        assert 3 <= len(sents) <= MAX_SENTENCES
        assert sentence_kind(sents[0]) == "planning" and all(sentence_kind(s) in SENTENCE_KINDS for s in sents)
        assert all(s.text.endswith(".") and min(s.objects, default=0) >= 0 for s in sents)
        assert ex.target_text().endswith(f"</think> The answer is {ex.answer}.")
    for fam in LONG_FAMILIES:
        assert np.median(lengths[fam]) >= 10, fam
    assert max(max(v) for v in lengths.values()) <= MAX_SENTENCES
    assert set(lengths) == set(FAMILIES) and max(map(len, lengths.values())) - min(map(len, lengths.values())) <= 1
    total = sum(kinds.values())
    assert kinds["object"] / total >= 0.5 and kinds["planning"] / total <= 0.15 and kinds["relation"] > 0


def test_canvas_mix_and_object_counts() -> None:
    by_canvas: dict[tuple[int, int], list[int]] = defaultdict(list)
    for ex in EXAMPLES:
        by_canvas[(ex.scene.width, ex.scene.height)].append(len(ex.scene.objects))
        assert ex.image_array().shape == (ex.scene.height, ex.scene.width, 3)
    assert set(by_canvas) == set(CANVASES)
    assert np.mean(by_canvas[(448, 448)]) > np.mean(by_canvas[(224, 224)]) + 2
    assert max(max(v) for v in by_canvas.values()) > 10  # more objects than v1 ever draws
    assert object_range(preset("medium"), 224, 224) == (5, 10) and object_range(preset("medium"), 448, 448) == (9, 14)


def test_deterministic_and_distinct_from_v1() -> None:
    from attrib.shapes.dataset import make_example as make_v1

    a, b = make_example("test", 7), make_example("test", 7)
    assert a.to_dict() == b.to_dict() and np.array_equal(a.image_array(), b.image_array())
    assert a.to_dict()["benchmark"] == "shapes2" and {s["kind"] for s in a.to_dict()["sentences"]} <= set(
        SENTENCE_KINDS
    )
    assert make_example("test", 7, benchmark_seed=1).to_dict() != a.to_dict()
    assert make_example("validation", 7).to_dict() != a.to_dict()
    v1 = make_v1("test", 7)
    assert v1.image_array().shape == (224, 224, 3) and v1.question.text != a.question.text
    fixed = make_example("test", 7, canvas=(280, 448))
    assert (fixed.scene.width, fixed.scene.height) == (280, 448)


def test_backdrop_carries_position_and_blank_control() -> None:
    ex = make_example("test", 4)
    bg = backdrop(ex.scene.width, ex.scene.height)
    assert bg[0, 0, 0] < bg[0, -1, 0] and bg[0, 0, 1] > bg[-1, 0, 1]  # red rises to the right, green to the top
    blank = np.asarray(ex.blank_image())
    assert np.array_equal(blank, bg)
    img = ex.image_array()
    assert np.array_equal(img[ex.scene.label_map() < 0], bg[ex.scene.label_map() < 0])
    plain = make_example("test", 4, backdrop="plain")
    assert (np.asarray(plain.blank_image()) == 128).all()
    assert Scene2.from_dict(ex.scene.to_dict()).render().tobytes() == img.tobytes()
    hard = make_example("test", 4, difficulty=preset("hard"))
    assert np.asarray(hard.blank_image()).std() > bg.std()  # the texture is on the blank control too


def test_hand_built_count_trace() -> None:
    scene = _scene(
        [
            ("large", "red", "circle", 0, 0),
            ("small", "blue", "square", 0, 6),
            ("small", "red", "triangle", 4, 3),
            ("small", "green", "circle", 7, 7),
        ]
    )
    for seed in range(500):
        q = FAMILIES["count"](scene, np.random.default_rng(seed))
        if q.text == "How many red objects are there?":
            break
    else:
        raise AssertionError("no seed asked for the red objects")
    assert [s.text for s in q.sentences] == [
        "I need to count the red objects.",
        "A large red circle at the top left.",
        "Red objects: 1.",
        "A small blue square at the top right.",
        "A small red triangle at the center.",
        "Red objects: 2.",
        "A small green circle at the bottom right.",
        "So the count is 2.",
    ]
    kinds = ["planning", "object", "summary", "object", "object", "summary", "object", "summary"]
    assert [sentence_kind(s) for s in q.sentences] == kinds
    assert [s.objects for s in q.sentences][-1] == (0, 2) and q.answer == "2"


def _find_question(family: str, scene: Scene2, pattern: str) -> Question:
    for seed in range(2000):
        try:
            q = FAMILIES[family](scene, np.random.default_rng(seed))
        except UnsuitableSceneError:
            continue
        if re.fullmatch(pattern, q.text):
            return q
    raise AssertionError(f"no seed gives {pattern!r}")


def test_hand_built_hop_most_and_find() -> None:
    scene = _scene(
        [
            ("small", "red", "circle", 1, 1),  # top left
            ("small", "yellow", "triangle", 1, 4),  # top (middle column)
            ("large", "blue", "circle", 3, 6),  # right
            ("small", "green", "square", 4, 0),  # left
            ("small", "purple", "circle", 6, 2),  # bottom left
        ]
    )
    q = _find_question("hop", scene, r"What color is the nearest object right of the leftmost circle\?")
    assert [s.text for s in q.sentences] == [
        "First I find the leftmost circle.",
        "A small red circle at the top left.",
        "A large blue circle at the right.",
        "A small purple circle at the bottom left.",
        "The leftmost one is the small red circle.",
        "Now I look right of it.",
        "A small yellow triangle at the top.",
        "The nearest one is the small yellow triangle.",
    ]
    assert q.answer == "yellow" and [sentence_kind(s) for s in q.sentences][4:6] == ["relation", "planning"]
    q = _find_question("most", scene, r"Which column has the most circles: left, middle or right\?")
    assert q.answer == "left" and q.sentences[-1].text == "The left column has the most."
    assert [s.text for s in q.sentences if sentence_kind(s) == "summary"] == [
        "Left column: 1.",
        "Right column: 1.",
        "Left column: 2.",
        "The left column has the most.",
    ]
    q = _find_question("find", scene, r"Is there a large blue circle\?")
    assert [s.text for s in q.sentences][-2:] == [
        "A large blue circle at the right.",
        "Found it.",
    ] and q.answer == "yes"
    assert len(q.sentences) == 5
    q = _find_question("find", scene, r"Is there a small blue circle\?")
    assert q.answer == "no" and q.sentences[-1].text == "There is no small blue circle." and len(q.sentences) == 7


def test_grounding_on_hand_built_outputs() -> None:
    scene = _scene(
        [("large", "red", "circle", 0, 0), ("small", "blue", "square", 0, 6), ("small", "red", "triangle", 4, 3)]
    )
    assert [scene.position(i) for i in range(3)] == ["top left", "top right", "center"]
    out = (
        "<think> I need to count the red objects. A large red circle at the top left. Red objects: 1. "
        "A small blue square at the bottom left. A small red triangle at the center. Red objects: 2. "
        "So the count is 2.</think> The answer is 2."
    )
    g = score_grounding(out, scene)
    assert (g.mentions, g.real, g.positioned, g.position_right, g.sentences) == (3, 3, 3, 2, 7)
    assert not g.hallucinated and failure_kind(out, scene, correct=False) == "reasoning_error"
    assert failure_kind(out, scene, correct=True) is None
    bad = (
        "<think> I need to find a large green circle. A large green circle at the top left. There is no small "
        "red square. Found it. The nearest one is the small blue square.</think> The answer is yes."
    )
    ms = mentions(bad)
    assert [(m.description, m.position) for m in ms] == [
        ("large green circle", "top left"),
        ("small blue square", None),
    ]
    g = score_grounding(bad, scene)
    assert (g.mentions, g.real, g.positioned, g.sentences) == (2, 1, 0, 5) and g.hallucinated
    assert failure_kind(bad, scene, correct=False) == "hallucination"
    unclosed = "<think> A small red triangle at the center. A large red circle at the"
    assert score_grounding(unclosed, scene).sentences == 1
    assert sentence_objects("A small red triangle at the center.", scene) == [2]
    assert sentence_objects("A large green circle at the top.", scene) == []
    assert sentence_objects("Red objects: 2.", scene) is None
    s = summarise([score_grounding(out, scene), score_grounding(bad, scene), score_grounding(unclosed, scene)])
    assert s["object_accuracy"] == pytest.approx(5 / 6) and s["position_accuracy"] == pytest.approx(3 / 4)
    assert s["chain_length_median"] == 5 and s["object_mentions"] == 6 and s["positioned_mentions"] == 4
    assert summarise([])["position_accuracy"] is None
    assert {p for row in POSITIONS for p in row} >= {m.position for m in mentions(out) if m.position}


def test_sample_scene_refuses_impossible_settings() -> None:
    from attrib.shapes.scene import Difficulty

    with pytest.raises(ValueError, match="impossible difficulty"):
        sample_scene(np.random.default_rng(0), difficulty=Difficulty(min_objects=10, max_objects=10), max_tries=3)
    with pytest.raises(ValueError, match="unknown backdrop"):
        sample_scene(np.random.default_rng(0), backdrop="stars")
    with pytest.raises(ValueError, match="unknown question family"):
        make_example("test", 0, families=["exist"])
    with pytest.raises(ValueError, match="not a multiple of the 28-px"):
        make_example("test", 0, canvas=(300, 224))
    with pytest.raises(ValueError, match="unknown difficulty preset"):
        preset("insane")  # type: ignore[arg-type]


def _digest(examples: Any) -> str:
    import hashlib

    h = hashlib.sha256()
    for e in examples:
        h.update(e.to_json().encode())
        h.update(e.image_array().tobytes())
    return h.hexdigest()


def test_pinned_examples_of_both_versions() -> None:
    """v1 is unchanged by v2 (old collections rebuild the same examples); v2 changes only with its version.

    If the v2 digest changes on purpose, bump ``attrib.shapes.v2.dataset.BENCHMARK_VERSION`` and update it here.
    """
    from attrib.shapes.dataset import BENCHMARK_VERSION as V1_VERSION
    from attrib.shapes.dataset import iter_split as iter_v1
    from attrib.shapes.v2.dataset import BENCHMARK_VERSION

    assert (V1_VERSION, BENCHMARK_VERSION) == (3, 1)
    assert _digest(iter_v1("test", 20)) == "04161b8dd7bdb9ea59a4520d879ee36daf2ea9ccf2557b320cffe3c936676d17"
    assert _digest(iter_split("test", 20)) == "334835e53ca8e1ae62e3bdf80103175ee9769d8ba8c27f8bdbd1bf58a941333a"
