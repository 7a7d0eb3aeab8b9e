"""What counts as a hallucination on the shapes benchmark: a trace that asserts an object the scene lacks.

Registered with the ``shapes:`` dataset kind as its ``failure_kind``, so the
trajectory analysis ([`attrib.analysis.trajectories`][attrib.analysis.trajectories]) tells hallucinations
from reasoning errors without knowing the benchmark's words.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from attrib.shapes.dataset import make_example
from attrib.shapes.scene import COLOURS, SHAPES, SIZES, Scene

__all__ = ["failure_kind", "names_absent_object", "object_mentions", "scene_for"]

logger = logging.getLogger(__name__)
_UID = re.compile(r"^(train|validation|test)-(\d+)$")


_SIZE_WORDS = SIZES
_COLOUR_WORDS = tuple(COLOURS)
_SHAPE_WORDS = SHAPES
_ADJ = "|".join(_SIZE_WORDS + _COLOUR_WORDS)
# One singular shape noun with up to three size/colour words before it. Plural
# nouns ("red circles") name groups, not objects, and do not match.
_MENTION = re.compile(rf"\b((?:(?:{_ADJ})\s+){{0,3}})({'|'.join(_SHAPE_WORDS)})\b", re.IGNORECASE)
# Sentences that name an object without claiming it is there: the plan
# ("I need to find a red circle.") and negations ("There is no red circle.").
_NOT_ASSERTED = re.compile(r"^\s*i need to\b|\b(?:no|none|not|without)\b", re.IGNORECASE)
_SENTENCE = re.compile(r"[^.!?]+[.!?]?")


def _think_text(output: str) -> str:
    """The reasoning part of an output: inside ``<think>...</think>``, or after an unclosed ``<think>``."""
    start = output.find("<think>")
    body = output[start + len("<think>") :] if start >= 0 else output
    end = body.find("</think>")
    return body[:end] if end >= 0 else body


def object_mentions(output_text: str) -> list[dict[str, str | None]]:
    """The objects a trace *asserts*: singular shape nouns with their size and colour words.

    Only the reasoning part is read (``<think>...</think>``; the whole text
    when there is no think tag; the final answer line is ignored). Planning
    sentences (``I need to ...``) and negations (``no``, ``none``, ``not``,
    ``without``) assert nothing and are skipped; a trailing unfinished sentence
    is read too.

    Args:
        output_text: Decoded model output.

    Returns:
        Per mention ``{"size", "colour", "shape", "text"}``; ``size`` and
        ``colour`` are ``None`` when not said (a repeated word of one kind that
        disagrees, e.g. ``red blue circle``, gives ``"?"``).
    """
    out: list[dict[str, str | None]] = []
    for sent in _SENTENCE.findall(_think_text(output_text)):
        if not sent.strip() or _NOT_ASSERTED.search(sent):
            continue
        for m in _MENTION.finditer(sent):
            words = m.group(1).lower().split()
            sizes = {w for w in words if w in _SIZE_WORDS}
            colours = {w for w in words if w in _COLOUR_WORDS}
            out.append(
                {
                    "size": None if not sizes else (sizes.pop() if len(sizes) == 1 else "?"),
                    "colour": None if not colours else (colours.pop() if len(colours) == 1 else "?"),
                    "shape": m.group(2).lower(),
                    "text": m.group(0),
                }
            )
    return out


def names_absent_object(output_text: str, scene: Scene) -> bool:
    """Whether the trace asserts an object that the scene does not hold.

    A mention (see [`object_mentions`][attrib.shapes.hallucination.object_mentions]) is present when some object of
    the scene agrees with every attribute it states (shape always; size and
    colour when said). Positions are not checked: naming a present object at
    a wrong place is a localisation error, not an absent object.

    Args:
        output_text: Decoded model output (``<think> ... </think> The answer is X.``).
        scene: The example's scene ([`attrib.shapes.dataset.make_example`][attrib.shapes.dataset.make_example] rebuilds
            it).

    Returns:
        True when at least one asserted object matches no object of the scene.
    """
    for m in object_mentions(output_text):
        if not any(
            o.shape == m["shape"]
            and (m["colour"] is None or o.colour == m["colour"])
            and (m["size"] is None or o.size == m["size"])
            for o in scene.objects
        ):
            return True
    return False


def scene_for(uid: str, question: str | None = None, *, dataset: str | None = None) -> Scene | None:
    """Rebuild the scene of a benchmark example from its uid (``"test-17"``), or ``None``.

    Args:
        uid: Example uid.
        question: The collected question; when given and it differs from the
            rebuilt example's, the rebuild is refused (another benchmark seed
            or difficulty made the collection).
        dataset: The collection's dataset spec; only ``shapes:<split>`` (or
            ``None``) allows a rebuild.

    Returns:
        The scene, or ``None`` when the example is not a reproducible benchmark example.
    """
    if dataset is not None and not dataset.startswith("shapes:"):
        return None
    m = _UID.match(uid)
    if not m:
        return None
    ex = make_example(m.group(1), int(m.group(2)))
    if question is not None and ex.question.text != question:
        logger.warning("example %s: collected question differs from the benchmark's; scene not used", uid)
        return None
    return ex.scene


def failure_kind(record: Mapping[str, Any], dataset: str | None = None) -> str | None:
    """``"hallucination"`` or ``"reasoning_error"`` for a wrongly answered benchmark record (``None``: unknown).

    Args:
        record: A collected example (``uid``, ``question``, ``output``).
        dataset: The collection's dataset spec (only ``shapes:`` rebuilds scenes).
    """
    scene = scene_for(str(record.get("uid", "")), record.get("question"), dataset=dataset)
    if scene is None:
        return None
    return "hallucination" if names_absent_object(str(record.get("output", "")), scene) else "reasoning_error"
