"""Deterministic splits of benchmark v2 (the ``shapes2:<split>`` dataset kind).

Examples are a pure function of ``(benchmark_seed, split, index)``, like v1's, and use the same disjoint
seed ranges per split; the random stream is tagged with the benchmark version, so a v2 example never
repeats the v1 example of the same index. v1 (``shapes:<split>``, [`attrib.shapes.dataset`][attrib.shapes.dataset])
is unchanged and stays loadable for old collections.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from attrib.shapes.dataset import Example, example_seed
from attrib.shapes.questions import UnsuitableSceneError
from attrib.shapes.scene import Difficulty, check_image_size, render_blank
from attrib.shapes.v2.families import FAMILIES, KindSentence, make_question
from attrib.shapes.v2.scene import Scene2, draw_canvas, sample_scene

__all__ = [
    "BENCHMARK",
    "BENCHMARK_VERSION",
    "Example2",
    "benchmark_words",
    "iter_split",
    "make_example",
    "sentence_kind",
]

BENCHMARK = "shapes2"
"""The dataset prefix of benchmark v2 (``shapes2:test``)."""
BENCHMARK_VERSION = 1
"""Bumped whenever a change to v2 scenes, questions or traces changes what a seed produces."""
_STREAM_TAG = 2  # the v2 random stream: default_rng([benchmark_seed, seed, 2])


@dataclass(kw_only=True)
class Example2(Example):
    """A v2 example: a v1 [`Example`][attrib.shapes.dataset.Example] whose sentences carry their kind."""

    def blank_image(self) -> Image.Image:
        """An image of the same size and backdrop with no objects (the blank-image control)."""
        scene = self.scene
        blank = scene.blank() if isinstance(scene, Scene2) else render_blank(scene.width, scene.height)
        return Image.fromarray(blank, mode="RGB")

    def sentence_records(self) -> list[dict[str, Any]]:
        """Per ground-truth sentence: ``text``, ``objects`` (scene indices) and ``kind``."""
        return [
            {"text": s.text, "objects": list(s.objects), "kind": getattr(s, "kind", "object")}
            for s in self.question.sentences
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (image excluded; re-render from the scene), sentence kinds included."""
        d = super().to_dict()
        d["benchmark"] = BENCHMARK
        d["sentences"] = self.sentence_records()
        return d


def make_example(
    split: str,
    index: int,
    *,
    benchmark_seed: int = 0,
    difficulty: Difficulty | None = None,
    canvas: tuple[int, int] | None = None,
    families: Sequence[str] | None = None,
    backdrop: str = "gradient",
) -> Example2:
    """Build example ``index`` of ``split`` of benchmark v2 deterministically.

    The family cycles through ``families`` (all v2 families by default), so splits are balanced. The
    canvas is drawn from the v2 mix by the example's own random stream unless ``canvas`` is given.

    Args:
        split: ``train``, ``validation`` or ``test``.
        index: Index within the split.
        benchmark_seed: Global seed; a different one gives a different benchmark.
        difficulty: Difficulty knob (the v2 ``medium`` preset by default; object counts are those of a
            224x224 canvas, see [`object_range`][attrib.shapes.v2.scene.object_range]).
        canvas: ``(width, height)``, multiples of 28; the v2 mix when ``None``.
        families: Restrict to these v2 families.
        backdrop: ``gradient`` (the benchmark's) or ``plain`` (see [`backdrop`][attrib.shapes.v2.scene.backdrop]).

    Returns:
        The example.

    Raises:
        ValueError: For an unknown split or family, an impossible difficulty or a canvas off the 28-px grid.
    """
    fams = list(families) if families is not None else list(FAMILIES)
    if not fams:
        raise ValueError("families must not be empty")
    for f in fams:
        if f not in FAMILIES:
            raise ValueError(f"unknown question family {f!r}; choose one of {sorted(FAMILIES)}")
    if canvas is not None:
        check_image_size(*canvas)
    seed = example_seed(split, index)
    family = fams[index % len(fams)]
    rng = np.random.default_rng([benchmark_seed, seed, _STREAM_TAG])
    width, height = canvas if canvas is not None else draw_canvas(rng)
    for _ in range(300):
        scene = sample_scene(rng, width=width, height=height, difficulty=difficulty, seed=seed, backdrop=backdrop)
        try:
            q = make_question(family, scene, rng)
        except UnsuitableSceneError:
            continue
        return Example2(uid=f"{split}-{index}", split=split, index=index, seed=seed, scene=scene, question=q)
    raise ValueError(f"could not build a {family!r} question at this difficulty after 300 scenes")


def iter_split(
    split: str,
    n: int,
    *,
    start: int = 0,
    benchmark_seed: int = 0,
    difficulty: Difficulty | None = None,
    canvas: tuple[int, int] | None = None,
    families: Sequence[str] | None = None,
    backdrop: str = "gradient",
) -> Iterator[Example2]:
    """Yield v2 examples ``start .. start+n-1`` of ``split``.

    See [`make_example`][attrib.shapes.v2.dataset.make_example] for the arguments.
    """
    for i in range(start, start + n):
        yield make_example(
            split,
            i,
            benchmark_seed=benchmark_seed,
            difficulty=difficulty,
            canvas=canvas,
            families=families,
            backdrop=backdrop,
        )


def sentence_kind(sentence: Any) -> str:
    """The kind of a ground-truth sentence (``object`` for v1 sentences, which carry none)."""
    return sentence.kind if isinstance(sentence, KindSentence) else "object"


def benchmark_words(n_examples: int = 2000) -> list[str]:
    """All words and punctuation marks v2 traces and questions can hold, sorted.

    Collected from ``n_examples`` generated examples per difficulty preset, plus explicit attribute,
    position, band and number lists (with their capitalised forms), so rare words are never missed.
    """
    import re

    from attrib.shapes.scene import COLOURS, POSITIONS, SHAPES, SIZES
    from attrib.shapes.v2.scene import preset

    word = re.compile(r"\w+|[^\w\s]")
    words: set[str] = set(word.findall("The answer is . , ? : color shape user assistant"))
    base = {*COLOURS, *SHAPES, *SIZES, "objects", "circles", "squares", "triangles", "column", "row", "middle"}
    for row in POSITIONS:
        for p in row:
            base |= set(p.split())
    words |= base | {w[0].upper() + w[1:] for w in base} | {str(i) for i in range(31)}
    for name in ("easy", "medium", "hard"):
        for ex in iter_split("train", n_examples, difficulty=preset(name)):  # type: ignore[arg-type]
            words |= set(word.findall(ex.question.text))
            words |= set(word.findall(ex.target_text().replace("<think>", "").replace("</think>", "")))
    return sorted(words)
