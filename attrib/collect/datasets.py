"""Datasets a collection (and the demo, the live view, the analyses) can read, behind one registry.

A dataset spec is either ``"<prefix>:<rest>"`` for a registered
[`DatasetKind`][attrib.collect.datasets.DatasetKind] (the benchmark registers ``shapes:<split>``), or the path
of a JSONL file with one example per line: ``image`` (a path relative to the
file), ``question``, optional ``answer`` and ``id``.

A dataset kind knows how to list its examples ([`CollectItem`][attrib.collect.datasets.CollectItem]), how to
judge an output (parse the final answer, compare it with the reference), where
an example's image comes from when a record holds no path, and, when it can
tell, what kind of failure a wrong answer is (``hallucination`` or
``reasoning_error``) for the trajectory analysis.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from attrib.io import load_image
from attrib.models.loading import answer_after_think
from attrib.plugins import load_plugins

__all__ = [
    "DATASETS",
    "CollectItem",
    "Dataset",
    "DatasetKind",
    "JsonlDataset",
    "generic_judge",
    "open_dataset",
    "register_dataset",
]


@dataclass
class CollectItem:
    """One input example.

    Attributes:
        uid: Example id.
        question: The prompt.
        answer: The reference answer, when known.
        image_path: The image file (JSONL datasets).
        image: The image itself (generated datasets).
        truth: ``truth(span_text) -> mask``: the ``(H, W)`` boolean pixel mask of the
            objects a span names, or ``None`` when the dataset cannot tell (ground
            truth for pointing; ``None`` for datasets without any).
        reference: A reference reasoning trace (teacher-forced by ``attrib norms``).
        meta: Anything else the dataset knows (the benchmark: ``family``).
    """

    uid: str
    question: str
    answer: str | None
    image_path: str | None = None
    image: Image.Image | None = None
    truth: Callable[[str], np.ndarray | None] | None = None
    reference: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def load_image(self) -> Image.Image:
        """The example's image (loaded from ``image_path`` when not in memory).

        Raises:
            FileNotFoundError: For a missing file.
            ValueError: For an unreadable one.
        """
        if self.image is not None:
            return self.image
        if self.image_path is None:
            raise ValueError(f"example {self.uid} has no image")
        return load_image(self.image_path)


#: ``judge(output, reference) -> (predicted answer, correct or None)``.
Judge = Callable[[str, str | None], tuple[str | None, bool | None]]


def generic_judge(output: str, reference: str | None) -> tuple[str | None, bool | None]:
    """The final answer after ``</think>``, compared with the reference case- and space-insensitively."""
    pred = answer_after_think(output)
    if reference is None:
        return pred, None
    norm = re.compile(r"\s+")
    return pred, pred is not None and norm.sub(" ", pred.strip().lower()) == norm.sub(" ", reference.strip().lower())


@dataclass(frozen=True)
class DatasetKind:
    """A family of datasets named ``<prefix>:<rest>``.

    Attributes:
        prefix: The spec prefix (``"shapes"``).
        items: ``items(rest, n, start) -> iterator of CollectItem`` (``n = 0``: all).
        judge: How outputs are scored (default [`generic_judge`][attrib.collect.datasets.generic_judge]).
        image: ``image(uid) -> Image`` for records that store no image path.
        failure_kind: ``failure_kind(record) -> "hallucination" | "reasoning_error" | None``
            for a wrongly answered collected example (``None``: cannot tell).
        description: One line for messages.
    """

    prefix: str
    items: Callable[[str, int, int], Iterator[CollectItem]]
    judge: Judge = generic_judge
    image: Callable[[str], Image.Image] | None = None
    failure_kind: Callable[[Mapping[str, Any]], str | None] | None = None
    description: str = ""


DATASETS: dict[str, DatasetKind] = {}


def register_dataset(kind: DatasetKind) -> DatasetKind:
    """Register a dataset kind under its prefix; duplicates are refused."""
    if kind.prefix in DATASETS:
        raise ValueError(f"dataset kind {kind.prefix!r} is already registered")
    DATASETS[kind.prefix] = kind
    return kind


@dataclass(frozen=True)
class Dataset:
    """An opened dataset spec.

    Attributes:
        spec: The spec as given.
        kind: Its registered kind (``None`` for a JSONL file).
        rest: The part after the prefix (the JSONL path for files).
    """

    spec: str
    kind: DatasetKind | None
    rest: str

    def items(self, n: int = 0, start: int = 0) -> Iterator[CollectItem]:
        """Examples ``start .. start + n - 1`` (``n = 0``: all the file holds; a generated dataset needs ``n``)."""
        if self.kind is not None:
            return self.kind.items(self.rest, n, start)
        return JsonlDataset(Path(self.rest)).items(n, start)

    def judge(self, output: str, reference: str | None) -> tuple[str | None, bool | None]:
        """``(predicted answer, correct or None)`` of one output."""
        return (self.kind.judge if self.kind is not None else generic_judge)(output, reference)

    def image_for(self, record: Mapping[str, Any]) -> Image.Image:
        """The image of a collected record (its stored path, or the dataset rebuilds it).

        Raises:
            ValueError: When neither works.
        """
        if record.get("image"):
            return load_image(str(record["image"]))
        if self.kind is not None and self.kind.image is not None:
            return self.kind.image(str(record["uid"]))
        raise ValueError(f"record {record.get('uid')} stores no image path and {self.spec} cannot rebuild it")

    def failure_kind(self, record: Mapping[str, Any]) -> str | None:
        """What kind of failure a wrong answer is (``None``: the dataset cannot tell)."""
        if self.kind is None or self.kind.failure_kind is None:
            return None
        return self.kind.failure_kind(record)


def open_dataset(spec: str) -> Dataset:
    """Open a dataset spec (see the module docstring).

    Raises:
        ValueError: For an unknown prefix.
        FileNotFoundError: For a missing JSONL file.
    """
    head, sep, rest = spec.partition(":")
    if sep and not Path(spec).exists() and len(head) > 1:
        if head not in DATASETS:
            load_plugins()
        if head not in DATASETS:
            raise ValueError(f"unknown dataset kind {head!r} in {spec!r}; known: {sorted(DATASETS)} or a JSONL path")
        return Dataset(spec, DATASETS[head], rest)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path} (or use a registered kind such as shapes:<split>)")
    return Dataset(spec, None, str(path))


class JsonlDataset:
    """A JSONL file: ``image`` (relative to the file), ``question``, optional ``answer`` and ``id`` per line.

    Args:
        path: The file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def items(self, n: int = 0, start: int = 0) -> Iterator[CollectItem]:
        """Lines ``start .. start + n - 1`` (``n = 0``: to the end); blank lines are skipped.

        Raises:
            ValueError: For a line that is not JSON or lacks ``image``/``question`` (naming file and line).
        """
        with self.path.open() as f:
            for i, line in enumerate(f):
                if i < start:
                    continue
                if n and i >= start + n:
                    break
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    img = str(self.path.parent / rec["image"])
                    question = rec["question"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"{self.path} line {i + 1}: not a usable example ({type(e).__name__}: {e})") from e
                yield CollectItem(
                    uid=str(rec.get("id", i)), question=question, answer=rec.get("answer"), image_path=img
                )
