"""Benchmark v2 span kinds and named objects, read from a generated span's text."""

from __future__ import annotations

from collections import Counter

import numpy as np

from attrib.collect.datasets import open_dataset
from attrib.shapes.spans import KINDS2, describe_span2, span_kind2
from attrib.shapes.v2 import iter_split


def test_every_reference_sentence_gets_its_recorded_kind() -> None:
    seen: Counter[str] = Counter()
    for ex in iter_split("test", 150):
        for s in ex.sentence_records():
            assert span_kind2(s["text"]) == s["kind"], s["text"]
            seen[s["kind"]] += 1
    assert set(seen) == set(KINDS2)  # every kind occurs, so each rule was exercised


def test_hand_written_kinds() -> None:
    assert span_kind2("I need to count the red squares.") == "planning"
    assert span_kind2("Now I look above it.") == "planning"
    assert span_kind2("A small red circle at the top left.") == "object"
    assert span_kind2("A large blue triangle at the center.") == "object"
    assert span_kind2("The nearest one is the small red circle.") == "relation"
    assert span_kind2("Found it.") == "relation"
    assert span_kind2("Red squares: 2.") == "summary"
    assert span_kind2("So the count is 2.") == "summary"
    assert span_kind2("A tiny red circle at the top left.") == "summary"  # not the grammar's sizes


def test_a_named_object_gets_its_mask_and_a_hallucinated_one_none() -> None:
    ex = next(e for e in iter_split("test", 50) if len({o.describe() for o in e.scene.objects}) == len(e.scene.objects))
    o = ex.scene.objects[0]
    info = describe_span2(f"A {o.describe()} at the top left.", ex.scene)
    assert info.kind == "object" and info.object_mask is not None
    np.testing.assert_array_equal(info.object_mask, ex.scene.mask(0))
    absent = next(
        f"{s} {c} {sh}"
        for s in ("small", "large")
        for c in ("red", "green", "blue")
        for sh in ("circle", "square", "triangle")
        if f"{s} {c} {sh}" not in {x.describe() for x in ex.scene.objects}
    )
    assert describe_span2(f"A {absent} at the top left.", ex.scene).object_mask is None


def test_a_collected_record_is_described_through_the_dataset_registry() -> None:
    ds = open_dataset("shapes2:test")
    ex = next(iter(iter_split("test", 1)))
    describe = ds.span_info({"uid": "test-0", "question": ex.question.text})
    assert describe is not None
    first = ex.sentence_records()[0]
    assert describe(first["text"]).kind == first["kind"]
    assert ds.span_info({"uid": "test-0", "question": "another question?"}) is None  # another benchmark version


def test_collect_items_carry_the_span_describer() -> None:
    """shapes2 items describe spans at collection time, so collections record span kinds and named objects."""
    from attrib.shapes.plugin import shapes2_items

    item = next(iter(shapes2_items("test", 1, 0)))
    ex = next(iter(iter_split("test", 1)))
    assert item.span_info is not None
    for s in ex.sentence_records():
        got = item.span_info(s["text"])
        want = describe_span2(s["text"], ex.scene)
        assert got.kind == want.kind == s["kind"]
        assert (got.object_mask is None) == (want.object_mask is None)
