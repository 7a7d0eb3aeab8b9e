"""Invariants of the attrib.shapes generator."""

from __future__ import annotations

import re

import numpy as np
import pytest

from attrib.shapes import FAMILIES, Difficulty, example_seed, iter_split, make_example
from attrib.shapes.questions import MAX_SENTENCES
from attrib.shapes.scene import BACKGROUND, check_image_size, sample_scene

EXAMPLES = list(iter_split("test", 150)) + list(iter_split("train", 50, difficulty=Difficulty.preset("hard")))


def _objs(ex, colour=None, shape=None):  # type: ignore[no-untyped-def]
    return [
        o for o in ex.scene.objects if (colour is None or o.colour == colour) and (shape is None or o.shape == shape)
    ]


_SING = {"circles": "circle", "squares": "square", "triangles": "triangle"}


def _filter(phrase: str) -> tuple[str | None, str | None]:
    words = phrase.split()
    if words[-1] == "objects":
        return words[0], None
    if len(words) == 2:
        return words[0], _SING[words[1]]
    return None, _SING[words[0]]


def _oracle(ex) -> str:  # type: ignore[no-untyped-def]
    """Answer the question from the scene alone, independently of the trace code."""
    q = ex.question.text
    if m := re.fullmatch(r"How many (.+) are there\?", q):
        return str(len(_objs(ex, *_filter(m.group(1)))))
    if m := re.fullmatch(r"Are there more (.+) than (.+)\?", q):
        return "yes" if len(_objs(ex, *_filter(m.group(1)))) > len(_objs(ex, *_filter(m.group(2)))) else "no"
    if m := re.fullmatch(r"Subtract all (.+)\. How many objects are left\?", q):
        return str(len(ex.scene.objects) - len(_objs(ex, *_filter(m.group(1)))))
    if m := re.fullmatch(r"Is there a (\w+) (\w+)\?", q):
        return "yes" if _objs(ex, m.group(1), m.group(2)) else "no"
    if m := re.fullmatch(r"What (color|shape) is the (\w+)most (.+)\?", q):
        noun = m.group(3)
        cands = _objs(ex, noun.split()[0], None) if noun.endswith("object") else _objs(ex, None, noun)
        key = {
            "left": lambda o: o.center[0],
            "right": lambda o: -o.center[0],
            "top": lambda o: o.center[1],
            "bottom": lambda o: -o.center[1],
        }[m.group(2)]
        best = min(cands, key=key)
        return best.colour if m.group(1) == "color" else best.shape
    raise AssertionError(f"unrecognised question {q!r}")


@pytest.mark.parametrize("ex", EXAMPLES, ids=lambda e: e.uid + e.scene.difficulty.texture * "-hard")
def test_answer_right_by_construction(ex) -> None:  # type: ignore[no-untyped-def]
    assert ex.answer == _oracle(ex)


def test_masks_match_rendered_objects() -> None:
    for ex in EXAMPLES[:60]:
        img = ex.image_array().astype(int)
        palette = ex.scene.difficulty.palette()
        union = np.zeros(img.shape[:2], dtype=bool)
        for i, o in enumerate(ex.scene.objects):
            m = ex.scene.mask(i)
            assert m.sum() > 0.3 * (o.box[2] - o.box[0]) ** 2
            assert (img[m] == palette[o.colour]).all()
            x0, y0, x1, y1 = o.box
            assert not m[:y0].any() and not m[y1:].any() and not m[:, :x0].any() and not m[:, x1:].any()
            assert not (union & m).any(), "objects overlap"
            union |= m
        if not ex.scene.difficulty.texture:
            assert (img[~union] == BACKGROUND).all()
        lab = ex.scene.label_map()
        assert ((lab >= 0) == union).all()


def test_traces_well_formed() -> None:
    for ex in EXAMPLES:
        sents = ex.question.sentences
        assert 2 <= len(sents) <= MAX_SENTENCES
        for s in sents:
            assert s.text.endswith(".")
            assert all(0 <= i < len(ex.scene.objects) for i in s.objects)
            for i in s.objects:
                if s.text.startswith("There is a "):
                    assert ex.scene.objects[i].describe() in s.text
        text = ex.target_text()
        assert text.startswith("<think> ") and f"</think> The answer is {ex.answer}." in text


def test_every_family_appears_and_is_balanced() -> None:
    fams = [e.family for e in iter_split("test", 50)]
    assert set(fams) == set(FAMILIES) and len(FAMILIES) >= 5
    assert max(fams.count(f) for f in FAMILIES) - min(fams.count(f) for f in FAMILIES) <= 1


def test_determinism_and_seed_sensitivity() -> None:
    a, b = make_example("test", 7), make_example("test", 7)
    assert a.to_dict() == b.to_dict()
    assert np.array_equal(a.image_array(), b.image_array())
    c = make_example("test", 7, benchmark_seed=1)
    assert not np.array_equal(a.image_array(), c.image_array())
    d = make_example("test", 8)
    assert not np.array_equal(a.image_array(), d.image_array())


def test_splits_disjoint_by_seed() -> None:
    seeds = {s: {example_seed(s, i) for i in range(1000)} for s in ("train", "validation", "test")}
    assert not seeds["train"] & seeds["test"] and not seeds["train"] & seeds["validation"]
    assert not seeds["validation"] & seeds["test"]
    tr = make_example("train", 5).image_array()
    te = make_example("test", 5).image_array()
    assert not np.array_equal(tr, te)


def test_difficulty_knob_changes_scenes() -> None:
    hard = [len(e.scene.objects) for e in iter_split("test", 40, difficulty=Difficulty.preset("hard"))]
    easy = [len(e.scene.objects) for e in iter_split("test", 40, difficulty=Difficulty.preset("easy"))]
    assert min(hard) >= 5 and max(easy) <= 5 and np.mean(hard) > np.mean(easy)
    sim = Difficulty(colour_similarity=0.6).palette()
    base = Difficulty().palette()
    spread = lambda p: np.ptp(np.array(list(p.values())), axis=0).sum()  # noqa: E731
    assert spread(sim) < spread(base)


@pytest.mark.parametrize(("w", "h"), [(224, 224), (448, 336), (336, 224)])
def test_larger_and_nonsquare_sizes(w: int, h: int) -> None:
    ex = make_example("test", 3, width=w, height=h)
    assert ex.image_array().shape == (h, w, 3)
    assert ex.answer == _oracle(ex)


def test_bad_input_errors() -> None:
    with pytest.raises(ValueError, match="unknown question family 'colour_math'"):
        make_example("test", 0, families=["colour_math"])
    with pytest.raises(ValueError, match="impossible difficulty"):
        Difficulty(min_objects=6, max_objects=3)
    with pytest.raises(ValueError, match="impossible difficulty"):
        Difficulty(max_objects=30)
    with pytest.raises(ValueError, match="impossible difficulty"):
        Difficulty(colour_similarity=1.0)
    with pytest.raises(ValueError, match="impossible difficulty: could not place"):
        sample_scene(np.random.default_rng(0), difficulty=Difficulty(min_objects=5, max_objects=5), max_tries=1)
    with pytest.raises(ValueError, match="not a multiple of the 28-px"):
        check_image_size(230, 224)
    with pytest.raises(ValueError, match="not a multiple of the 28-px"):
        make_example("test", 0, width=300)
    with pytest.raises(ValueError, match="unknown split"):
        make_example("dev", 0)
    with pytest.raises(ValueError, match="unknown difficulty preset"):
        Difficulty.preset("insane")  # type: ignore[arg-type]


def test_scene_and_difficulty_roundtrip() -> None:
    from attrib.shapes.scene import Scene

    ex = make_example("validation", 11, difficulty=Difficulty.preset("hard"))
    s2 = Scene.from_dict(ex.scene.to_dict())
    assert np.array_equal(s2.render(), ex.image_array())
    masks = ex.sentence_masks()
    assert len(masks) == len(ex.question.sentences)
    for s, m in zip(ex.question.sentences, masks, strict=True):
        assert m.any() == bool(s.objects)
