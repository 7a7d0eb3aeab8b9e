"""The benchmark's registrations with the core: its processor, its bundled models and its dataset.

Called through the ``attrib.plugins`` entry point (see [`attrib.plugins`][attrib.plugins]);
the core never imports [`attrib.shapes`][attrib.shapes].
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["judge", "parse_answer", "register", "shapes2_items", "shapes_items"]


def parse_answer(text: str) -> str | None:
    """The final answer of a benchmark trace (region and latent blocks of the variants ignored)."""
    from attrib.shapes.latent_train import strip_latent
    from attrib.shapes.parse import parse_output
    from attrib.shapes.pointing import strip_pointing

    return parse_output(strip_latent(strip_pointing(text))).answer


def judge(output: str, reference: str | None) -> tuple[str | None, bool | None]:
    """``(predicted, correct)``: the benchmark's strict format, ``<think>...</think> The answer is X.``."""
    from attrib.shapes.parse import parse_output
    from attrib.shapes.pointing import strip_pointing

    p = parse_output(strip_pointing(output))
    return p.answer, None if reference is None else bool(p.ok and p.answer == reference)


def shapes_items(split: str, n: int, start: int) -> Iterator[Any]:
    """Examples ``start .. start + n - 1`` of a benchmark split as
    [`attrib.collect.datasets.CollectItem`][attrib.collect.datasets.CollectItem].

    Each carries its ground truth: per generated span, the pixel mask of the
    objects of the ground-truth sentence with the same text (region blocks of
    v1 traces removed), the span's kind and the one object it names by its description
    ([`attrib.shapes.spans`][attrib.shapes.spans]), and the reference trace.

    Raises:
        ValueError: For an unknown split, or ``n`` < 1 (a generated split has no end).
    """
    from attrib.collect.datasets import CollectItem
    from attrib.shapes.dataset import iter_split
    from attrib.shapes.pointing import strip_pointing
    from attrib.shapes.spans import span_describer

    if n < 1:
        raise ValueError(f"shapes:{split} is generated: give the number of examples (n >= 1), got {n}")
    for ex in iter_split(split, n, start=start):
        by_text = {s.text: list(s.objects) for s in ex.question.sentences}
        scene = ex.scene

        def truth(span_text: str, by_text: Mapping[str, list[int]] = by_text, scene: Any = scene) -> np.ndarray | None:
            objs = by_text.get(strip_pointing(span_text))
            if objs is None:
                return None
            mask = np.zeros((scene.height, scene.width), dtype=bool)
            for o in objs:
                mask |= scene.mask(o)
            return mask

        yield CollectItem(
            uid=ex.uid,
            question=ex.question.text,
            answer=ex.answer,
            image=ex.image(),
            truth=truth,
            reference=ex.target_text(),
            meta={"family": ex.question.family},
            span_info=span_describer(scene),
        )


def shapes2_items(split: str, n: int, start: int) -> Iterator[Any]:
    """Examples ``start .. start + n - 1`` of a benchmark v2 split (``shapes2:<split>``) as
    [`attrib.collect.datasets.CollectItem`][attrib.collect.datasets.CollectItem].

    Each carries its ground truth. ``truth(span_text)`` is the pixel mask of the objects a generated span
    names: read from the object descriptions it holds (so it works when the model's trace departs from the
    reference), otherwise from the reference sentence with the same text (an empty mask for one that names
    no object); ``None`` when neither tells, or when the span describes only objects the scene lacks.
    ``meta`` holds the family, the canvas and, per reference sentence, its text, objects and kind
    (``planning``, ``object``, ``relation``, ``summary``).

    Raises:
        ValueError: For an unknown split, or ``n`` < 1 (a generated split has no end).
    """
    from attrib.collect.datasets import CollectItem
    from attrib.shapes.pointing import strip_pointing
    from attrib.shapes.spans import span_describer2
    from attrib.shapes.v2.dataset import BENCHMARK, iter_split
    from attrib.shapes.v2.grounding import sentence_objects

    if n < 1:
        raise ValueError(f"shapes2:{split} is generated: give the number of examples (n >= 1), got {n}")
    for ex in iter_split(split, n, start=start):
        by_text = {s.text: list(s.objects) for s in ex.question.sentences}
        scene = ex.scene

        def truth(span_text: str, by_text: Mapping[str, list[int]] = by_text, scene: Any = scene) -> np.ndarray | None:
            text = strip_pointing(span_text).strip()
            objs = sentence_objects(text, scene)
            if objs == []:
                return None  # it describes only objects the scene lacks
            if objs is None:
                objs = by_text.get(text)
            if objs is None:
                return None
            mask = np.zeros((scene.height, scene.width), dtype=bool)
            for o in objs:
                mask |= scene.mask(o)
            return mask

        yield CollectItem(
            uid=ex.uid,
            question=ex.question.text,
            answer=ex.answer,
            image=ex.image(),
            truth=truth,
            reference=ex.target_text(),
            meta={
                "family": ex.question.family,
                "benchmark": BENCHMARK,
                "canvas": [scene.width, scene.height],
                "sentences": ex.sentence_records(),
            },
            span_info=span_describer2(scene),
        )


def _image(uid: str) -> Image.Image:
    from attrib.shapes.dataset import make_example

    split, idx = uid.rsplit("-", 1)
    return make_example(split, int(idx)).image()


def _failure_kind(record: Mapping[str, Any]) -> str | None:
    from attrib.shapes.hallucination import failure_kind

    return failure_kind(record)


def _span_info(record: Mapping[str, Any]) -> Any:
    from attrib.shapes.spans import record_span_info

    return record_span_info(record)


def _span_info2(record: Mapping[str, Any]) -> Any:
    from attrib.shapes.spans import record_span_info2

    return record_span_info2(record)


def _example2(uid: str) -> Any:
    from attrib.shapes.v2.dataset import make_example

    split, idx = uid.rsplit("-", 1)
    return make_example(split, int(idx))


def _image2(uid: str) -> Image.Image:
    return _example2(uid).image()  # type: ignore[no-any-return]


def _failure_kind2(record: Mapping[str, Any]) -> str | None:
    """The v2 hallucination check of a wrongly answered record (``None`` when its example cannot be rebuilt)."""
    import logging

    from attrib.shapes.v2.grounding import record_failure_kind

    try:
        ex = _example2(str(record.get("uid", "")))
    except ValueError:
        return None
    if record.get("question") is not None and ex.question.text != record["question"]:
        logging.getLogger(__name__).warning("example %s: collected question differs from shapes2's", record.get("uid"))
        return None
    return record_failure_kind(record, ex.scene)


def _processor(path: Path) -> Any:
    from attrib.shapes.processor import ShapesProcessor

    return ShapesProcessor.from_pretrained(path)


def _bundled(name: str) -> Any:
    def path() -> Path:
        from attrib.shapes.model import bundled_model_path

        return bundled_model_path(name)

    return path


def register() -> None:
    """Register the processor kind, the bundled models and the ``shapes:<split>`` and ``shapes2:<split>`` datasets."""
    from attrib.collect.datasets import DatasetKind, register_dataset
    from attrib.models.loading import NamedModel, ProcessorKind, register_named_model, register_processor_kind

    register_processor_kind(ProcessorKind("ShapesProcessor", _processor, parse_answer, dataset="shapes:test"))
    register_named_model(
        NamedModel(
            "shapes2-qwen25vl",
            _bundled("shapes2-qwen25vl"),
            estimator="estimator",
            flagger="flagger.json",
            dataset="shapes2:test",
            default=True,
            description="the bundled thinking VLM (Qwen2.5-VL class, 6 layers x 8 heads, trained on benchmark v2: "
            "long traces grounded in the image)",
        )
    )
    register_named_model(
        NamedModel(
            "shapes-qwen25vl",
            _bundled("shapes-qwen25vl"),
            estimator="estimator",
            flagger="flagger.json",
            dataset="shapes:test",
            description="the first bundled model (4 layers x 6 heads, benchmark v1: short templated traces), kept "
            "for its published comparisons and old collections",
        )
    )
    register_named_model(
        NamedModel(
            "shapes-qwen25vl-v1",
            _bundled("shapes-qwen25vl-v1"),
            estimator="estimator",
            dataset="shapes:test",
            description="the v1 point-and-copy model on benchmark v1 (same data and budget as shapes-qwen25vl)",
        )
    )
    register_dataset(
        DatasetKind(
            "shapes",
            shapes_items,
            judge=judge,
            image=_image,
            failure_kind=_failure_kind,
            description="the attrib.shapes benchmark: shapes:train, shapes:validation, shapes:test",
            span_info=_span_info,
        )
    )
    register_dataset(
        DatasetKind(
            "shapes2",
            shapes2_items,
            judge=judge,
            image=_image2,
            failure_kind=_failure_kind2,
            description="attrib.shapes benchmark v2 (long, grounded traces): shapes2:train, shapes2:validation, "
            "shapes2:test",
            span_info=_span_info2,
            max_new_tokens=256,  # as `attrib shapes eval` for v2: the longest reference traces fit
        )
    )
