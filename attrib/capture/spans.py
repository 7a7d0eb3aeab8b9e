"""Reasoning spans: the generated trace cut into sentences as tokens arrive."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Span", "SpanSegmenter"]


@dataclass(frozen=True)
class Span:
    """A completed reasoning span.

    Attributes:
        index: Span number.
        text: Decoded text (stripped).
        start: First generated-token index (inclusive).
        end: Last generated-token index (exclusive).
    """

    index: int
    text: str
    start: int
    end: int


class SpanSegmenter:
    """Splits generated tokens into sentence spans on the fly.

    A span closes on a token whose decoded text contains a terminator
    (``pattern``, default ``[.!?]``) once the span has non-empty text. With
    ``think_only`` (default), spans are taken inside the thinking block: tokens
    up to and including ``<think>`` are skipped and generation after
    ``</think>`` (the answer) yields no span. When no think tag is ever
    produced, every sentence counts. A trailing incomplete sentence is dropped.

    Args:
        decode: Maps a list of token ids to text (special tokens kept).
        pattern: Regex that ends a sentence when found in a token's text.
        think_open: Tag opening the thinking block.
        think_close: Tag closing it.
        think_only: Restrict spans to the thinking block.
    """

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        *,
        pattern: str = r"[.!?]",
        think_open: str = "<think>",
        think_close: str = "</think>",
        think_only: bool = True,
    ) -> None:
        self.decode = decode
        self.pattern = re.compile(pattern)
        self.think_open = think_open
        self.think_close = think_close
        self.think_only = think_only
        self._pieces: dict[int, str] = {}  # token id -> its text (decoding one token depends on its id only)
        self.reset()

    def reset(self) -> None:
        """Forget all tokens."""
        self._ids: list[int] = []
        self._start = 0
        self._closed = False
        self._n = 0

    def push(self, token_id: int) -> Span | None:
        """Add one generated token; return the span it completes, if any."""
        i = len(self._ids)
        self._ids.append(int(token_id))
        if self._closed:
            return None
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._pieces[token_id] = self.decode([int(token_id)])
        if self.think_open in piece:
            self._start = i + 1
            return None
        if self.think_close in piece:
            self._closed = self.think_only
            self._start = i + 1
            return None
        if not self.pattern.search(piece):
            return None
        text = self.decode(self._ids[self._start : i + 1]).strip()
        if not text or not self.pattern.search(text):
            return None
        span = Span(self._n, text, self._start, i + 1)
        self._n += 1
        self._start = i + 1
        return span

    @property
    def open_start(self) -> int:
        """Token index where the currently open span starts."""
        return self._start

    @property
    def closed(self) -> bool:
        """Whether no further span can complete (the thinking block has ended, with ``think_only``)."""
        return self._closed
