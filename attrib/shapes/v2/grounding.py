"""Grounding of generated traces: are the objects a trace names there, and are their position words right?

Reads both benchmark versions' sentences (v1 ``There is a large red circle at the top left.``, v2 ``A large
red circle at the top left.``, and mentions without a position such as ``The topmost one is the small
red circle.``). Only sentences that *assert* an object count: plans (``I need to ...``, ``First I ...``,
``Now I ...``) and negations (``no``, ``none``, ``not``, ``without``) are skipped.

- **object accuracy**: the share of asserted object descriptions (size, colour and shape) that some object
  of the scene has;
- **position accuracy**: among asserted descriptions of real objects that carry a position word, the
  share whose position word is the object's own (its centre's cell of the 3x3 grid);
- **chain length**: the number of sentences of the think block;
- a trace that asserts an object the scene lacks is a **hallucination**; a wrong answer without one is a
  **reasoning error** ([`failure_kind`][attrib.shapes.v2.grounding.failure_kind]).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from attrib.shapes.parse import split_sentences
from attrib.shapes.scene import COLOURS, POSITIONS, SHAPES, SIZES, Scene

__all__ = [
    "GroundingScore",
    "Mention",
    "failure_kind",
    "mentions",
    "record_failure_kind",
    "score_grounding",
    "sentence_objects",
    "summarise",
    "think_sentences",
]

_POSITION_WORDS = sorted((p for row in POSITIONS for p in row), key=len, reverse=True)
_MENTION = re.compile(
    rf"\b({'|'.join(SIZES)})\s+({'|'.join(COLOURS)})\s+({'|'.join(SHAPES)})\b"
    rf"(?:\s+at\s+the\s+({'|'.join(_POSITION_WORDS)})\b)?",
    re.IGNORECASE,
)
_NOT_ASSERTED = re.compile(r"^\s*(?:i need to|first i|now i)\b|\b(?:no|none|not|without)\b", re.IGNORECASE)


def think_sentences(output: str) -> list[str]:
    """The sentences of the reasoning part of an output (inside ``<think>...</think>``, or after an unclosed
    ``<think>``; the whole text when there is no tag), a trailing unfinished sentence dropped."""
    start = output.find("<think>")
    body = output[start + len("<think>") :] if start >= 0 else output
    end = body.find("</think>")
    return split_sentences(body[:end] if end >= 0 else body)


@dataclass(frozen=True)
class Mention:
    """One asserted object description.

    Attributes:
        sentence: Index of its sentence in the think block.
        size: Size word.
        colour: Colour word.
        shape: Shape word.
        position: Position word, or ``None`` when the sentence gives none.
    """

    sentence: int
    size: str
    colour: str
    shape: str
    position: str | None

    @property
    def description(self) -> str:
        """``"large red circle"``."""
        return f"{self.size} {self.colour} {self.shape}"


def mentions(output: str) -> list[Mention]:
    """The object descriptions a trace asserts, in order (see the module docstring)."""
    out = []
    for k, sent in enumerate(think_sentences(output)):
        if _NOT_ASSERTED.search(sent):
            continue
        for m in _MENTION.finditer(sent):
            pos = m.group(4).lower() if m.group(4) else None
            out.append(Mention(k, m.group(1).lower(), m.group(2).lower(), m.group(3).lower(), pos))
    return out


@dataclass(frozen=True)
class GroundingScore:
    """Grounding of one generated trace.

    Attributes:
        mentions: Asserted object descriptions.
        real: Those that some object of the scene has.
        positioned: Real ones that carry a position word.
        position_right: Those whose position word is the object's.
        sentences: Sentences of the think block (the chain length).
    """

    mentions: int
    real: int
    positioned: int
    position_right: int
    sentences: int

    @property
    def hallucinated(self) -> bool:
        """Whether the trace asserts an object the scene lacks."""
        return self.real < self.mentions


def score_grounding(output: str, scene: Scene) -> GroundingScore:
    """Score one generated trace against its scene (see the module docstring)."""
    index = {o.describe(): i for i, o in enumerate(scene.objects)}
    ms = mentions(output)
    real = positioned = right = 0
    for m in ms:
        i = index.get(m.description)
        if i is None:
            continue
        real += 1
        if m.position is not None:
            positioned += 1
            right += int(m.position == scene.position(i))
    return GroundingScore(len(ms), real, positioned, right, len(think_sentences(output)))


def sentence_objects(text: str, scene: Scene) -> list[int] | None:
    """The objects of ``scene`` that one generated sentence names by their description.

    Returns:
        Their indices (every description in the sentence that some object has), or ``None`` when the
        sentence names no object by description (a tally, a plan, a conclusion: ask the reference trace).
    """
    index = {o.describe(): i for i, o in enumerate(scene.objects)}
    found = [index.get(f"{m.group(1)} {m.group(2)} {m.group(3)}".lower()) for m in _MENTION.finditer(text)]
    if not found:
        return None
    return sorted({i for i in found if i is not None})


def failure_kind(output: str, scene: Scene, correct: bool) -> str | None:
    """``None`` for a right answer; ``"hallucination"`` when the trace asserts an absent object; else
    ``"reasoning_error"`` (every object it names is there, the answer is still wrong)."""
    if correct:
        return None
    return "hallucination" if score_grounding(output, scene).hallucinated else "reasoning_error"


def summarise(scores: Sequence[GroundingScore]) -> dict[str, Any]:
    """``object_accuracy``, ``position_accuracy`` (``None`` without any mention) and ``chain_length_median``
    of a set of traces, with the counts they come from."""
    n_m = sum(s.mentions for s in scores)
    n_r = sum(s.real for s in scores)
    n_p = sum(s.positioned for s in scores)
    n_pr = sum(s.position_right for s in scores)
    return {
        "object_accuracy": n_r / n_m if n_m else None,
        "position_accuracy": n_pr / n_p if n_p else None,
        "chain_length_median": float(np.median([s.sentences for s in scores])) if scores else None,
        "object_mentions": n_m,
        "positioned_mentions": n_p,
    }


def record_failure_kind(record: Mapping[str, Any], scene: Scene) -> str:
    """[`failure_kind`][attrib.shapes.v2.grounding.failure_kind] of a wrongly answered collected record."""
    return failure_kind(str(record.get("output", "")), scene, False) or "reasoning_error"
