"""The benchmark's closed word vocabulary."""

from __future__ import annotations

import re

from attrib.shapes.scene import COLOURS, POSITIONS, SHAPES, SIZES, Difficulty

__all__ = ["benchmark_words"]

_WORD = re.compile(r"\w+|[^\w\s]")


def benchmark_words(n_examples: int = 3000) -> list[str]:
    """All words and punctuation marks the benchmark can emit, sorted.

    Collected from ``n_examples`` generated examples per difficulty preset, plus
    explicit attribute, position and number lists, so rare words are never missed.
    """
    from attrib.shapes.dataset import iter_split

    words: set[str] = set(_WORD.findall("The answer is . , ? color shape user assistant"))
    words |= set(COLOURS) | set(SHAPES) | set(SIZES) | {str(i) for i in range(21)}
    for row in POSITIONS:
        for p in row:
            words |= set(p.split())
    from attrib.shapes.questions import AUX_FAMILIES

    for preset in ("easy", "medium", "hard"):
        diff = Difficulty.preset(preset)  # type: ignore[arg-type]
        exs = list(iter_split("train", n_examples, difficulty=diff))
        exs += list(iter_split("train", 50, difficulty=diff, families=sorted(AUX_FAMILIES)))
        for ex in exs:
            words |= set(_WORD.findall(ex.question.text))
            words |= set(_WORD.findall(ex.target_text().replace("<think>", "").replace("</think>", "")))
    return sorted(words)
