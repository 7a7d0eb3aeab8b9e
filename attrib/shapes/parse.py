"""Parse a generated output into think sentences and a final answer."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["ParsedTrace", "parse_output", "split_sentences"]

_THINK = re.compile(r"<think>(.*?)</think>(.*)", re.S)
_ANSWER = re.compile(r"^\s*The answer is ([A-Za-z0-9]+)\.\s*$")
_SENT = re.compile(r"[^.!?]*[.!?]")


def split_sentences(text: str) -> list[str]:
    """Split text into sentences ending in ``.``, ``!`` or ``?``; a trailing fragment is dropped."""
    return [s.strip() for s in _SENT.findall(text) if s.strip()]


@dataclass
class ParsedTrace:
    """Result of [`parse_output`][attrib.shapes.parse.parse_output].

    Attributes:
        ok: True when there is a think block with at least one sentence and an answer.
        sentences: Sentences of the think block.
        answer: The final answer word, or ``None``.
        error: Why parsing failed, or ``""``.
    """

    ok: bool
    sentences: list[str] = field(default_factory=list)
    answer: str | None = None
    error: str = ""


def parse_output(text: str) -> ParsedTrace:
    """Parse ``<think> ... </think> The answer is X.``.

    Args:
        text: Decoded model output (special tokens other than the think tags removed).

    Returns:
        The parsed trace; ``ok`` is False with an ``error`` when the format is broken.
    """
    m = _THINK.search(text)
    if not m:
        return ParsedTrace(ok=False, error="no <think>...</think> block")
    sents = split_sentences(m.group(1))
    am = _ANSWER.match(m.group(2))
    if not sents:
        return ParsedTrace(ok=False, answer=am.group(1) if am else None, error="empty think block")
    if not am:
        return ParsedTrace(ok=False, sentences=sents, error="no final answer")
    return ParsedTrace(ok=True, sentences=sents, answer=am.group(1))
