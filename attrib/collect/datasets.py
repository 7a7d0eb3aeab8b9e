"""Datasets a collection (and the demo, the live view, the analyses) can read, behind one registry.

A dataset spec is one of:

- ``"<prefix>:<rest>"`` for a registered [`DatasetKind`][attrib.collect.datasets.DatasetKind]
  (the benchmark registers ``shapes:<split>``);
- the path of a JSONL file with one example per line: ``image`` (a path relative to
  the file), ``question``, optional ``answer``, ``id`` and ``regions`` (the example's
  own regions: ``{"labels": "map.png"}``, a label-map PNG relative to the file, or
  ``{"boxes": [[x0, y0, x1, y1], ...]}`` in pixels; used by ``--regions given``);
- ``folder:DIR`` (or the directory itself): a folder of images with a questions file,
  ``questions.jsonl`` (rows as above, images relative to the folder) or
  ``question.txt`` (one question asked of every image in the folder);
- ``hf:DIR`` for a Hugging Face ``datasets`` dataset saved to disk with
  ``save_to_disk``; columns are named with a query, ``hf:DIR?image=img&question=q&answer=a&id=uid&split=test``
  (defaults: ``image``, ``question``, ``answer``, ``id``, ``regions``; the split ``test``, else the first);
  a ``regions`` column holds boxes (a list of ``[x0, y0, x1, y1]``) or a label-map image.

A row that cannot be used (not JSON, no image, an image that cannot be decoded) is
never dropped silently and never stops a run: it becomes an example whose
:attr:`CollectItem.error` says why, which the collection records as a failure.

A dataset kind knows how to list its examples ([`CollectItem`][attrib.collect.datasets.CollectItem]), how to
judge an output (parse the final answer, compare it with the reference), where
an example's image comes from when a record holds no path, and, when it can
tell, what kind of failure a wrong answer is (``hallucination`` or
``reasoning_error``) for the trajectory analysis, and what a generated span is
([`SpanInfo`][attrib.collect.datasets.SpanInfo]: its kind, and the one object it names by its
description) for the span populations and the pointing game of ``attrib evaluate``.
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
    "SpanInfo",
    "dataset_budget",
    "generic_judge",
    "open_dataset",
    "register_dataset",
]


@dataclass(frozen=True)
class SpanInfo:
    """What a dataset knows of one generated span.

    Attributes:
        kind: The span's kind (the benchmark: ``planning``, ``object``, ``summary``), ``None`` when unknown.
        object_mask: ``(H, W)`` boolean pixel mask of the *one* object the span names, matched by the
            object's description in the span's text; ``None`` when it names none, several, or a
            description that fits no object or several objects of the image.
    """

    kind: str | None = None
    object_mask: np.ndarray | None = None


#: ``span_info(span_text) -> SpanInfo`` for one example.
SpanDescriber = Callable[[str], SpanInfo]


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
        regions: The example's own regions (``{"labels": ...}`` or ``{"boxes": ...}``), for
            ``--regions given``.
        error: Why the row cannot be used (its image is then never loaded; collections record the
            reason as a failure).
        span_info: ``span_info(span_text) -> SpanInfo``: the span's kind and the one object it names
            (collections record them as ``span_kinds`` and ``span_object_regions``); ``None`` when the
            dataset cannot tell.
    """

    uid: str
    question: str
    answer: str | None
    image_path: str | None = None
    image: Image.Image | None = None
    truth: Callable[[str], np.ndarray | None] | None = None
    reference: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    regions: dict[str, Any] | None = None
    error: str | None = None
    span_info: SpanDescriber | None = None

    def load_image(self) -> Image.Image:
        """The example's image (loaded from ``image_path`` when not in memory).

        Raises:
            FileNotFoundError: For a missing file.
            ValueError: For an unreadable one, or a bad row (its ``error``).
        """
        if self.error is not None:
            raise ValueError(self.error)
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
        image_in: ``image_in(rest, uid) -> Image``, the same for kinds whose images live in the dataset
            the spec names (a saved ``datasets`` dataset).
        failure_kind: ``failure_kind(record) -> "hallucination" | "reasoning_error" | None``
            for a wrongly answered collected example (``None``: cannot tell).
        description: One line for messages.
        check: ``check(rest)`` refuses a bad spec before any work (raises ``ValueError`` or
            ``FileNotFoundError``).
        span_info: ``span_info(record) -> SpanDescriber | None`` for a collected record (rebuilds what
            [`CollectItem.span_info`][attrib.collect.datasets.CollectItem] gives, for collections made
            before records stored it).
        max_new_tokens: The generation budget its traces need (``attrib collect`` uses it when
            ``--max-new-tokens`` is not given); ``None``: the command's default.
    """

    prefix: str
    items: Callable[[str, int, int], Iterator[CollectItem]]
    judge: Judge = generic_judge
    image: Callable[[str], Image.Image] | None = None
    image_in: Callable[[str, str], Image.Image] | None = None
    failure_kind: Callable[[Mapping[str, Any]], str | None] | None = None
    description: str = ""
    check: Callable[[str], None] | None = None
    span_info: Callable[[Mapping[str, Any]], SpanDescriber | None] | None = None
    max_new_tokens: int | None = None


DATASETS: dict[str, DatasetKind] = {}


def dataset_budget(spec: str) -> int | None:
    """The generation budget of a registered dataset kind's spec (``shapes2:test`` -> 256), ``None`` otherwise
    (a file, a folder, an unknown kind, or a kind that sets none)."""
    head, sep, _ = spec.partition(":")
    if not sep or Path(spec).exists() or len(head) <= 1:
        return None
    if head not in DATASETS:
        load_plugins()
    kind = DATASETS.get(head)
    return kind.max_new_tokens if kind is not None else None


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
        if self.kind is not None and self.kind.image_in is not None:
            return self.kind.image_in(self.rest, str(record["uid"]))
        raise ValueError(f"record {record.get('uid')} stores no image path and {self.spec} cannot rebuild it")

    def failure_kind(self, record: Mapping[str, Any]) -> str | None:
        """What kind of failure a wrong answer is (``None``: the dataset cannot tell)."""
        if self.kind is None or self.kind.failure_kind is None:
            return None
        return self.kind.failure_kind(record)

    def span_info(self, record: Mapping[str, Any]) -> SpanDescriber | None:
        """``span_info(span_text) -> SpanInfo`` for a collected record (``None``: the dataset cannot tell)."""
        if self.kind is None or self.kind.span_info is None:
            return None
        return self.kind.span_info(record)


def open_dataset(spec: str) -> Dataset:
    """Open a dataset spec (see the module docstring); problems with the spec itself are found here, before any work.

    Raises:
        ValueError: For an unknown prefix, or a folder without a questions file.
        FileNotFoundError: For a missing file or folder.
    """
    head, sep, rest = spec.partition(":")
    if sep and not Path(spec).exists() and len(head) > 1:
        if head not in DATASETS:
            load_plugins()
        if head not in DATASETS:
            raise ValueError(
                f"unknown dataset kind {head!r} in {spec!r}; known: {sorted(DATASETS)}, a JSONL file or a folder"
            )
        kind = DATASETS[head]
        if kind.check is not None:
            kind.check(rest)
        return Dataset(spec, kind, rest)
    path = Path(spec)
    if path.is_dir():
        FolderDataset(path)  # a folder without a questions file fails here
        return Dataset(spec, DATASETS["folder"], str(path))
    if not path.is_file():
        raise FileNotFoundError(f"dataset not found: {path} (a JSONL file, a folder, hf:DIR or shapes:<split>)")
    return Dataset(spec, None, str(path))


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _row_item(rec: Any, i: int, base: Path, where: str) -> CollectItem:
    """One example from a JSON row (a bad row becomes an item with its ``error``)."""
    if not isinstance(rec, dict):
        return CollectItem(uid=str(i), question="", answer=None, error=f"{where}: not a JSON object")
    uid = str(rec.get("id", i))
    question = rec.get("question")
    if not isinstance(question, str) or not question.strip():
        return CollectItem(uid=uid, question="", answer=None, error=f"{where}: no question")
    if not rec.get("image"):
        return CollectItem(uid=uid, question=question, answer=rec.get("answer"), error=f"{where}: no image")
    regions = rec.get("regions")
    if isinstance(regions, dict) and isinstance(regions.get("labels"), str):
        regions = {**regions, "labels": str(base / regions["labels"])}
    answer = rec.get("answer")
    return CollectItem(
        uid=uid,
        question=question,
        answer=None if answer is None else str(answer),
        image_path=str(base / str(rec["image"])),
        regions=regions if isinstance(regions, dict) else None,
    )


class JsonlDataset:
    """A JSONL file: ``image`` (relative to the file), ``question``, optional ``answer``, ``id`` and ``regions``.

    Args:
        path: The file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def items(self, n: int = 0, start: int = 0) -> Iterator[CollectItem]:
        """Lines ``start .. start + n - 1`` (``n = 0``: to the end); blank lines are skipped.

        A line that is not JSON, or lacks an image or a question, becomes an item whose
        ``error`` names the file and the line.
        """
        with self.path.open() as f:
            for i, line in enumerate(f):
                if i < start:
                    continue
                if n and i >= start + n:
                    break
                if not line.strip():
                    continue
                where = f"{self.path} line {i + 1}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    yield CollectItem(uid=f"line-{i + 1}", question="", answer=None, error=f"{where}: not JSON ({e})")
                    continue
                yield _row_item(rec, i, self.path.parent, where)


class FolderDataset:
    """A folder of images with ``questions.jsonl`` (rows as in a JSONL dataset) or ``question.txt`` (one question
    asked of every image, in file-name order).

    Args:
        path: The folder.

    Raises:
        ValueError: If it holds neither questions file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.jsonl = path / "questions.jsonl"
        self.question_file = path / "question.txt"
        if not self.jsonl.is_file() and not self.question_file.is_file():
            raise ValueError(f"folder {path} holds no questions.jsonl or question.txt")

    def items(self, n: int = 0, start: int = 0) -> Iterator[CollectItem]:
        """The folder's examples ``start .. start + n - 1`` (``n = 0``: all)."""
        if self.jsonl.is_file():
            yield from JsonlDataset(self.jsonl).items(n, start)
            return
        question = self.question_file.read_text().strip()
        images = sorted(p for p in self.path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        for i, img in enumerate(images):
            if i < start:
                continue
            if n and i >= start + n:
                break
            yield CollectItem(uid=img.stem, question=question, answer=None, image_path=str(img))


def _hf_spec(rest: str) -> tuple[Path, dict[str, str]]:
    from urllib.parse import parse_qsl

    path, _, query = rest.partition("?")
    opts = {"image": "image", "question": "question", "answer": "answer", "id": "id", "regions": "regions"}
    opts |= dict(parse_qsl(query))
    return Path(path), opts


def _hf_check(rest: str) -> None:
    path, _ = _hf_spec(rest)
    if not path.is_dir():
        raise FileNotFoundError(f"no saved datasets dataset at {path} (write one with Dataset.save_to_disk)")
    try:
        import datasets  # noqa: F401
    except ImportError as e:
        raise ValueError("hf: datasets need the datasets package: pip install 'attrib[datasets]'") from e


def _hf_open(rest: str) -> tuple[Any, Path, dict[str, str]]:
    import datasets

    path, opts = _hf_spec(rest)
    ds: Any = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        split = opts.get("split") or ("test" if "test" in ds else next(iter(ds)))
        if split not in ds:
            raise ValueError(f"{path} has no split {split!r}; splits: {sorted(ds)}")
        ds = ds[split]
    for col in (opts["image"], opts["question"]):
        if col not in ds.column_names:
            raise ValueError(f"{path} has no column {col!r}; columns: {ds.column_names} (name them in the spec)")
    if opts["image"] in ds.features and isinstance(ds.features[opts["image"]], datasets.Image):
        ds = ds.cast_column(opts["image"], datasets.Image(decode=False))  # decode here, one row at a time
    return ds, path, opts


def _hf_items(rest: str, n: int, start: int) -> Iterator[CollectItem]:
    """Examples of a Hugging Face ``datasets`` dataset saved to disk (see the module docstring)."""
    ds, path, opts = _hf_open(rest)
    end = len(ds) if not n else min(len(ds), start + n)
    for i in range(start, end):
        yield _hf_item(ds[i], i, path, opts)


def _hf_image(rest: str, uid: str) -> Image.Image:
    """The image of the example ``uid`` of a saved dataset (the row with that id, else that index)."""
    ds, path, opts = _hf_open(rest)
    if opts["id"] in ds.column_names:
        ids = [str(v) for v in ds[opts["id"]]]
        if uid not in ids:
            raise ValueError(f"{path} has no row with {opts['id']} {uid!r}")
        i = ids.index(uid)
    else:
        i = int(uid)
    item = _hf_item(ds[i], i, path, opts)
    return item.load_image()


def _hf_item(row: Mapping[str, Any], i: int, path: Path, opts: Mapping[str, str]) -> CollectItem:
    """One saved-dataset row as an example (a bad row gets its ``error``)."""
    import io

    where = f"{path} row {i}"
    uid = str(row[opts["id"]]) if opts["id"] in row else str(i)
    question = row.get(opts["question"])
    answer = row.get(opts["answer"]) if opts["answer"] in row else None
    raw = row.get(opts["image"])
    if not isinstance(question, str) or not question.strip():
        return CollectItem(uid=uid, question="", answer=None, error=f"{where}: no question")
    item = CollectItem(uid=uid, question=question, answer=None if answer is None else str(answer))
    given = row.get(opts["regions"]) if opts["regions"] in row else None
    if isinstance(given, dict):
        item.regions = {k: v for k, v in given.items() if v is not None}
    elif isinstance(given, list):
        item.regions = {"boxes": given}
    elif isinstance(given, Image.Image):
        item.regions = {"labels": np.asarray(given)}
    try:
        if raw is None:
            raise ValueError("no image")
        if isinstance(raw, Image.Image):
            item.image = raw.convert("RGB")
        elif isinstance(raw, dict) and raw.get("bytes"):
            with Image.open(io.BytesIO(raw["bytes"])) as im:
                im.load()
                item.image = im.convert("RGB")
        elif isinstance(raw, dict) and raw.get("path"):
            item.image_path = str(raw["path"])
        elif isinstance(raw, str):
            item.image_path = raw if Path(raw).is_absolute() else str(path / raw)
        else:
            raise ValueError("no image")
    except (OSError, ValueError, SyntaxError) as e:
        item.error = f"{where}: {e if str(e) == 'no image' else f'the image cannot be decoded ({e})'}"
    return item


def _folder_items(rest: str, n: int, start: int) -> Iterator[CollectItem]:
    return FolderDataset(Path(rest)).items(n, start)


def _folder_check(rest: str) -> None:
    if not Path(rest).is_dir():
        raise FileNotFoundError(f"no folder {rest}")
    FolderDataset(Path(rest))


register_dataset(
    DatasetKind(
        "folder",
        _folder_items,
        description="folder:DIR: images with questions.jsonl or question.txt",
        check=_folder_check,
    )
)
register_dataset(
    DatasetKind(
        "hf",
        _hf_items,
        image_in=_hf_image,
        description="hf:DIR[?image=..&question=..&answer=..&id=..&split=..]: a saved datasets dataset",
        check=_hf_check,
    )
)
