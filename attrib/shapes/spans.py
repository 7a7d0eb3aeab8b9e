"""What a generated span of a benchmark trace is: its kind, and the one object it names.

Used by ``attrib evaluate`` (through the dataset registry) for the span populations and the pointing
game:

- **kind**, from the span's own text (the benchmark's trace grammar): ``planning`` for a sentence
  that restates the task (``I need to ...``, copied from the question), ``object`` for one that
  introduces an object (``There is a <size> <colour> <shape> at the <place>.``), ``summary`` for the
  rest (counts, comparisons, conclusions: derivable from earlier text);
- **the one object it names**: the span is read for object descriptions (``<size> <colour> <shape>``,
  the scene's own vocabulary); when it holds exactly one, and exactly one object of the scene fits
  it, that object's pixel mask. A span that names no object, several, or a description that fits no
  object or several (a hallucinated or ambiguous one) gets none, and the pointing game skips it.

Matching descriptions rather than whole sentences keeps the spans where the model's sentence departs
from the reference trace (another position word, say) but still names an object of the image.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from attrib.collect.datasets import SpanInfo
from attrib.shapes.scene import COLOURS, SHAPES, SIZES, Scene

__all__ = [
    "KINDS",
    "KINDS2",
    "describe_span",
    "describe_span2",
    "record_span_info",
    "record_span_info2",
    "span_describer",
    "span_describer2",
    "span_kind",
    "span_kind2",
]

#: The span kinds of the benchmark, in the order they are reported.
KINDS: tuple[str, ...] = ("planning", "object", "summary")

_DESC = re.compile(rf"\b({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b")
_INTRO = re.compile(r"^There is an? [a-z]+ [a-z]+ [a-z]+ at the [a-z ]+\.$")


def _clean(text: str) -> str:
    from attrib.shapes.pointing import strip_pointing

    return " ".join(strip_pointing(text).split())


def span_kind(text: str) -> str:
    """``planning``, ``object`` or ``summary`` (see the module docstring)."""
    t = _clean(text)
    if t.startswith("I need to"):
        return "planning"
    if _INTRO.match(t):
        return "object"
    return "summary"


def describe_span(text: str, scene: Scene) -> SpanInfo:
    """The span's kind and the mask of the one object it names by its description (see the module docstring)."""
    t = _clean(text)
    descs = {" ".join(m.groups()) for m in _DESC.finditer(t)}
    mask = None
    if len(descs) == 1:
        (d,) = descs
        fits = [i for i, o in enumerate(scene.objects) if o.describe() == d]
        if len(fits) == 1:
            mask = scene.mask(fits[0])
    return SpanInfo(kind=span_kind(t), object_mask=mask)


def span_describer(scene: Scene) -> Callable[[str], SpanInfo]:
    """``span_info(text)`` for one example's scene."""

    def info(text: str) -> SpanInfo:
        return describe_span(text, scene)

    return info


def _record_scene(record: Mapping[str, Any], make_example: Callable[[str, int], Any]) -> Scene | None:
    """The scene of a collected record, rebuilt from its uid; ``None`` when the uid names no example or the
    record's question is not the rebuilt one's (the collection was made from another benchmark version)."""
    try:
        split, idx = str(record.get("uid", "")).rsplit("-", 1)
        ex = make_example(split, int(idx))
    except ValueError:
        return None
    if record.get("question") is not None and ex.question.text != record["question"]:
        return None
    return ex.scene  # type: ignore[no-any-return]


def record_span_info(record: Mapping[str, Any]) -> Callable[[str], SpanInfo] | None:
    """``span_info(text)`` for a collected ``shapes:<split>`` record (its scene rebuilt from its uid).

    ``None`` when the uid names no benchmark example, or the record's question is not the rebuilt one's
    (the collection was made from another benchmark version).
    """
    from attrib.shapes.dataset import make_example

    scene = _record_scene(record, make_example)
    return None if scene is None else span_describer(scene)


# ---------------------------------------------------------------------------- benchmark v2
#: The span kinds of benchmark v2, in the order they are reported (its reference sentences' kinds).
KINDS2: tuple[str, ...] = ("planning", "object", "relation", "summary")

_INTRO2 = re.compile(rf"^An? ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) at the [a-z ]+\.$")
_PLANNING2 = ("I need", "First I find", "Now I look")
_RELATION2 = re.compile(r"^(The [a-z]+ one is the .+|Found it)\.$")


def span_kind2(text: str) -> str:
    """A benchmark v2 span's kind from its text, by the v2 trace grammar.

    ``planning`` (``I need ...``, ``First I find ...``, ``Now I look ...``: the task restated), ``object``
    (``A <size> <colour> <shape> at the <place>.``: one object read from the image), ``relation``
    (``The nearest one is the ...``, ``The leftmost one is the ...``, ``Found it.``: an object picked by a
    relation) and ``summary`` for the rest (counts, tallies, comparisons, conclusions).
    """
    t = _clean(text)
    if t.startswith(_PLANNING2):
        return "planning"
    if _INTRO2.match(t):
        return "object"
    if _RELATION2.match(t):
        return "relation"
    return "summary"


def describe_span2(text: str, scene: Scene) -> SpanInfo:
    """[`describe_span`][attrib.shapes.spans.describe_span] with the v2 kinds
    ([`span_kind2`][attrib.shapes.spans.span_kind2])."""
    info = describe_span(text, scene)
    return SpanInfo(kind=span_kind2(text), object_mask=info.object_mask)


def span_describer2(scene: Scene) -> Callable[[str], SpanInfo]:
    """``span_info(text)`` for one benchmark v2 example's scene (the v2 kinds)."""

    def info(text: str) -> SpanInfo:
        return describe_span2(text, scene)

    return info


def record_span_info2(record: Mapping[str, Any]) -> Callable[[str], SpanInfo] | None:
    """``span_info(text)`` for a collected ``shapes2:<split>`` record (see
    [`record_span_info`][attrib.shapes.spans.record_span_info])."""
    from attrib.shapes.v2.dataset import make_example

    scene = _record_scene(record, make_example)
    if scene is None:
        return None

    def info(text: str) -> SpanInfo:
        return describe_span2(text, scene)

    return info
