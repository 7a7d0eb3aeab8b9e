"""Deterministic benchmark splits built from scenes and question families."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image

from attrib.shapes.questions import AUX_FAMILIES, FAMILIES, Question, Sentence, UnsuitableSceneError, make_question
from attrib.shapes.scene import Difficulty, Scene, render_blank, sample_scene

__all__ = ["BENCHMARK_VERSION", "SPLITS", "Example", "example_seed", "iter_split", "make_example", "trace_text"]

Split = Literal["train", "validation", "test"]
#: Bumped whenever a change to scenes, questions or traces changes what a seed produces.
BENCHMARK_VERSION = 3
#: Each split draws example seeds from its own disjoint range.
SPLITS: dict[str, int] = {"train": 0, "validation": 1_000_000_000, "test": 2_000_000_000}
_SPLIT_SIZE = 1_000_000_000


def example_seed(split: str, index: int) -> int:
    """Seed of example ``index`` of ``split``; ranges of different splits never meet.

    Raises:
        ValueError: For an unknown split or an index out of range.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
    if not 0 <= index < _SPLIT_SIZE:
        raise ValueError(f"example index {index} out of range [0, {_SPLIT_SIZE})")
    return SPLITS[split] + index


def trace_text(sentences: Sequence[Sentence] | Sequence[str], answer: str) -> str:
    """The assistant's full output: ``<think> s1 s2 ...</think> The answer is X.``"""
    texts = [s.text if isinstance(s, Sentence) else s for s in sentences]
    return f"<think> {' '.join(texts)}</think> The answer is {answer}."


@dataclass(kw_only=True)
class Example:
    """One benchmark example with full ground truth.

    Attributes:
        uid: ``"{split}-{index}"``.
        split: ``train``, ``validation`` or ``test``.
        index: Position in the split.
        seed: The example seed (see [`example_seed`][attrib.shapes.dataset.example_seed]).
        scene: The scene, with exact object masks.
        question: Question text, trace sentences with referenced objects, answer.
    """

    uid: str
    split: str
    index: int
    seed: int
    scene: Scene
    question: Question
    _image: np.ndarray | None = field(default=None, repr=False)

    @property
    def family(self) -> str:
        """The question family."""
        return self.question.family

    @property
    def answer(self) -> str:
        """The ground-truth answer."""
        return self.question.answer

    def image_array(self) -> np.ndarray:
        """The rendered image as ``(H, W, 3)`` ``uint8`` (cached)."""
        if self._image is None:
            self._image = self.scene.render()
        return self._image

    def image(self) -> Image.Image:
        """The rendered image as a PIL RGB image."""
        return Image.fromarray(self.image_array(), mode="RGB")

    def blank_image(self) -> Image.Image:
        """An image of the same size with no objects (the blank-image control)."""
        return Image.fromarray(render_blank(self.scene.width, self.scene.height), mode="RGB")

    def target_text(self) -> str:
        """The ground-truth assistant output (trace and answer)."""
        return trace_text(self.question.sentences, self.question.answer)

    def sentence_masks(self) -> list[np.ndarray]:
        """Per sentence, the union of the pixel masks of the objects it names."""
        out = []
        for s in self.question.sentences:
            m = np.zeros((self.scene.height, self.scene.width), dtype=bool)
            for i in s.objects:
                m |= self.scene.mask(i)
            out.append(m)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (image excluded; re-render from the scene)."""
        return {
            "uid": self.uid,
            "split": self.split,
            "index": self.index,
            "seed": self.seed,
            "family": self.family,
            "question": self.question.text,
            "answer": self.answer,
            "sentences": [{"text": s.text, "objects": list(s.objects)} for s in self.question.sentences],
            "scene": self.scene.to_dict(),
        }

    def to_json(self) -> str:
        """[`to_dict`][attrib.shapes.dataset.Example.to_dict] as one JSON line."""
        return json.dumps(self.to_dict())


def make_example(
    split: str,
    index: int,
    *,
    benchmark_seed: int = 0,
    difficulty: Difficulty | None = None,
    width: int = 224,
    height: int = 224,
    families: Sequence[str] | None = None,
) -> Example:
    """Build example ``index`` of ``split`` deterministically.

    The family cycles through ``families`` (all registered ones by default), so
    splits are balanced across families.

    Args:
        split: ``train``, ``validation`` or ``test``.
        index: Index within the split.
        benchmark_seed: Global seed; a different one gives a different benchmark.
        difficulty: Difficulty knob (the ``medium`` preset by default).
        width: Image width, a multiple of 28.
        height: Image height, a multiple of 28.
        families: Restrict to these question families.

    Returns:
        The example.

    Raises:
        ValueError: For an unknown split or family, an impossible difficulty or
            an image size off the 28-px grid.
    """
    fams = list(families) if families is not None else sorted(FAMILIES)
    if not fams:
        raise ValueError("families must not be empty")
    for f in fams:
        if f not in FAMILIES and f not in AUX_FAMILIES:
            raise ValueError(f"unknown question family {f!r}; choose one of {sorted(FAMILIES)}")
    seed = example_seed(split, index)
    family = fams[index % len(fams)]
    rng = np.random.default_rng([benchmark_seed, seed])
    for _ in range(200):
        scene = sample_scene(rng, width=width, height=height, difficulty=difficulty, seed=seed)
        try:
            q = make_question(family, scene, rng)
        except UnsuitableSceneError:
            continue
        return Example(uid=f"{split}-{index}", split=split, index=index, seed=seed, scene=scene, question=q)
    raise ValueError(f"could not build a {family!r} question at this difficulty after 200 scenes")


def iter_split(
    split: str,
    n: int,
    *,
    start: int = 0,
    benchmark_seed: int = 0,
    difficulty: Difficulty | None = None,
    width: int = 224,
    height: int = 224,
    families: Sequence[str] | None = None,
) -> Iterator[Example]:
    """Yield examples ``start .. start+n-1`` of ``split`` (see [`make_example`][attrib.shapes.dataset.make_example])."""
    for i in range(start, start + n):
        yield make_example(
            split,
            i,
            benchmark_seed=benchmark_seed,
            difficulty=difficulty,
            width=width,
            height=height,
            families=families,
        )
