"""Greedy evaluation of a model on a benchmark split, with a blank-image control."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedModel

from attrib.shapes.dataset import Example, iter_split
from attrib.shapes.parse import parse_output
from attrib.shapes.pointing import score_pointing, strip_pointing
from attrib.shapes.processor import ShapesProcessor
from attrib.shapes.scene import Difficulty
from attrib.shapes.v2.grounding import GroundingScore, score_grounding, summarise
from metrics.stats import mean_ci

__all__ = ["EvalResult", "ExampleOutcome", "evaluate", "generate_batch"]

logger = logging.getLogger(__name__)


@dataclass
class ExampleOutcome:
    """One evaluated example.

    Attributes:
        uid: Example id.
        family: Question family.
        answer: Ground-truth answer.
        output: Decoded model output.
        predicted: Parsed answer, or ``None``.
        parsed: Whether the output parsed.
        correct: Whether the parsed answer equals the ground truth.
        blank_output: Output on the blank image (when the control ran).
        blank_correct: Correct on the blank image.
        copy_sources: Copied image token of every ``<|copy|>`` (point-and-copy models).
        pointing_hits: Copies inside the object the sentence names (point-and-copy models).
        pointing_copies: Copies made inside region blocks (point-and-copy models).
        grounding: Object descriptions and position words of the real-image output checked against the
            scene (see [`attrib.shapes.v2.grounding`][attrib.shapes.v2.grounding]).
        reference_sentences: Sentences of the ground-truth trace.
        failure_kind: ``None`` when right; ``"hallucination"`` (names an absent object) or
            ``"reasoning_error"`` when wrong.
    """

    uid: str
    family: str
    answer: str
    output: str
    predicted: str | None
    parsed: bool
    correct: bool
    blank_output: str | None = None
    blank_correct: bool | None = None
    copy_sources: list[int] | None = None
    pointing_hits: int | None = None
    pointing_copies: int | None = None
    grounding: GroundingScore | None = None
    reference_sentences: int | None = None
    failure_kind: str | None = None


@dataclass
class EvalResult:
    """Aggregate evaluation; [`to_dict`][attrib.shapes.evaluate.EvalResult.to_dict] gives the JSON the CLI writes.

    Attributes:
        n: Examples evaluated.
        accuracy: Share answered correctly (unparseable outputs count as wrong).
        parse_rate: Share of outputs that parse into think sentences and an answer.
        n_failures: Examples answered wrongly or unparseably.
        blank_image_accuracy: Accuracy on the same questions with a blank image.
        seconds_per_example: Wall time per example (real-image pass only).
        per_family: ``{family: {"n", "accuracy", "blank_image_accuracy", "chain_length_median",
            "reference_chain_length_median", "object_accuracy", "position_accuracy"}}``.
        outcomes: Per-example outcomes.
        pointing_accuracy: Share of copies (inside region blocks, real images) that
            land inside the named object; ``None`` for plain models. See
            [`attrib.shapes.pointing`][attrib.shapes.pointing].
        meta: Model, split and settings.
        grounding: ``object_accuracy`` (share of asserted object descriptions that the scene has),
            ``position_accuracy`` (share of position words right when the description names a real
            object), ``chain_length_median`` (sentences of the generated think blocks), the reference
            traces' median and the mention counts behind them; real images only.
        failure_kinds: Failures by kind: ``hallucination``, ``reasoning_error``.
    """

    n: int
    accuracy: float
    parse_rate: float
    n_failures: int
    blank_image_accuracy: float | None
    seconds_per_example: float
    per_family: dict[str, dict[str, Any]]
    outcomes: list[ExampleOutcome] = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict)
    pointing_accuracy: float | None = None
    grounding: dict[str, Any] = field(default_factory=dict)
    failure_kinds: dict[str, int] = field(default_factory=dict)

    def to_dict(self, *, with_outcomes: bool = False) -> dict[str, Any]:
        """JSON-ready summary with bootstrap 95 % intervals."""
        acc = [o.correct for o in self.outcomes]
        d: dict[str, Any] = {
            "accuracy": self.accuracy,
            "accuracy_ci": list(_ci(acc)),
            "blank_image_accuracy": self.blank_image_accuracy,
            "n_failures": self.n_failures,
            "parse_rate": self.parse_rate,
            "n": self.n,
            "seconds_per_example": self.seconds_per_example,
            "per_family": self.per_family,
            **self.grounding,
            "failure_kinds": self.failure_kinds,
            **self.meta,
        }
        if self.pointing_accuracy is not None:
            d["pointing_accuracy"] = self.pointing_accuracy
            d["pointing_copies"] = sum(o.pointing_copies or 0 for o in self.outcomes)
        blank = [o.blank_correct for o in self.outcomes if o.blank_correct is not None]
        if blank:
            d["blank_image_accuracy_ci"] = list(_ci(blank))
        if with_outcomes:
            d["outcomes"] = [
                {**o.__dict__, "grounding": None if o.grounding is None else o.grounding.__dict__}
                for o in self.outcomes
            ]
        return d


def _strip(text: str) -> str:
    """The base trace format: region blocks (v1) and latent blocks removed."""
    from attrib.shapes.latent_train import strip_latent

    return strip_latent(strip_pointing(text))


def _ci(xs: Sequence[bool]) -> tuple[float, float]:
    r = mean_ci(np.asarray(xs, dtype=np.float64), n_boot=1000)
    return r["ci_low"], r["ci_high"]


@torch.inference_mode()
def generate_batch(
    model: PreTrainedModel,
    processor: ShapesProcessor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    *,
    max_new_tokens: int = 200,
) -> list[str]:
    """Greedy-decode a left-padded batch and return the decoded outputs.

    Args:
        model: A Qwen2.5-VL model.
        processor: Its processor.
        images: One image per question.
        questions: Questions.
        max_new_tokens: Generation budget per example.

    Returns:
        Decoded outputs (think tags kept, pad and end tokens dropped).
    """
    batch = processor(images, questions)
    out = model.generate(  # type: ignore[operator]
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=int(processor.tokenizer.eos_token_id),
        pad_token_id=int(processor.tokenizer.pad_token_id),
    )
    new = out[:, batch["input_ids"].shape[1] :]
    return [processor.decode(row) for row in new]


def _generate(
    model: Any,
    processor: ShapesProcessor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    max_new_tokens: int,
    copy_feed: str = "source",
) -> list[tuple[str, list[int]]]:
    """Decoded outputs and, for point-and-copy models, the copy sources of each."""
    from attrib.variants.base import VariantModel

    if not isinstance(model, VariantModel):
        return [(o, []) for o in generate_batch(model, processor, images, questions, max_new_tokens=max_new_tokens)]
    batch: dict[str, Any] = dict(processor(images, questions))
    with torch.inference_mode():
        g = model.generate(
            **batch,
            max_new_tokens=model.generation_budget(max_new_tokens),
            eos_token_id=int(processor.tokenizer.eos_token_id),
            copy_feed=copy_feed,
        )
    out = []
    for r in range(len(images)):
        ids, src = g.generated(r)
        out.append((processor.decode(ids), [s for s in src if s >= 0]))
    return out


def evaluate(
    model: PreTrainedModel,
    processor: ShapesProcessor,
    *,
    split: str = "test",
    n: int = 1000,
    start: int = 0,
    benchmark_seed: int = 0,
    difficulty: Difficulty | None = None,
    batch_size: int = 32,
    blank_control: bool = True,
    max_new_tokens: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    examples: Sequence[Example] | None = None,
    copy_feed: str = "source",
    benchmark: str = "shapes",
) -> EvalResult:
    """Evaluate greedy accuracy on ``n`` examples of ``split``.

    Args:
        model: The model.
        processor: Its processor.
        split: Benchmark split.
        n: Number of examples.
        start: First example index.
        benchmark_seed: Benchmark seed.
        difficulty: Difficulty (the benchmark's ``medium`` preset by default).
        batch_size: Examples per ``generate`` call.
        blank_control: Also answer every question on a blank image.
        max_new_tokens: Generation budget per example (200 for v1, 256 for v2 when ``None``; the longest
            v2 reference output is 187 tokens).
        on_progress: Called as ``on_progress(done, total)`` after every batch.
        examples: Evaluate these instead of generating ``split``.
        copy_feed: Point-and-copy models only: what a copy feeds back (``"source"``;
            interventions ``"mean"``, ``"token"``; see
            [`PointCopyModel.decode_options`][attrib.variants.pointcopy.model.PointCopyModel.decode_options]).
        benchmark: ``"shapes"`` (v1) or ``"shapes2"`` (v2, [`attrib.shapes.v2`][attrib.shapes.v2]): which
            split to generate when ``examples`` is not given.

    Returns:
        An [`EvalResult`][attrib.shapes.evaluate.EvalResult].

    Raises:
        ValueError: If ``n`` or ``batch_size`` is not positive, or the benchmark is unknown.
    """
    if benchmark not in ("shapes", "shapes2"):
        raise ValueError(f"unknown benchmark {benchmark!r}; choose 'shapes' or 'shapes2'")
    if max_new_tokens is None:
        max_new_tokens = 200 if benchmark == "shapes" else 256
    if examples is None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if benchmark == "shapes2":
            from attrib.shapes.v2.dataset import iter_split as iter_split2

            examples = list(iter_split2(split, n, start=start, benchmark_seed=benchmark_seed, difficulty=difficulty))
        else:
            examples = list(iter_split(split, n, start=start, benchmark_seed=benchmark_seed, difficulty=difficulty))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_vocabulary(processor, examples, benchmark)
    from attrib.variants.pointcopy.model import PointCopyModel

    pointcopy = isinstance(model, PointCopyModel)
    if copy_feed != "source" and not pointcopy:
        raise ValueError(f"copy_feed={copy_feed!r} needs a point-and-copy model; this one has no copies")
    total = len(examples) * (2 if blank_control else 1)
    done = 0
    outcomes: list[ExampleOutcome] = []
    t0 = time.perf_counter()
    for b in range(0, len(examples), batch_size):
        chunk = examples[b : b + batch_size]
        images, questions = [e.image() for e in chunk], [e.question.text for e in chunk]
        outs = _generate(model, processor, images, questions, max_new_tokens, copy_feed)
        for e, (o, src) in zip(chunk, outs, strict=True):
            p = parse_output(_strip(o))
            grounding = score_grounding(_strip(o), e.scene)
            correct = p.ok and p.answer == e.answer
            rec = ExampleOutcome(
                uid=e.uid,
                family=e.family,
                answer=e.answer,
                output=o,
                predicted=p.answer,
                parsed=p.ok,
                correct=correct,
                grounding=grounding,
                reference_sentences=len(e.question.sentences),
                failure_kind=None if correct else ("hallucination" if grounding.hallucinated else "reasoning_error"),
            )
            if pointcopy:
                sc = score_pointing(e, o, src)
                rec.copy_sources, rec.pointing_hits, rec.pointing_copies = src, sc.hits, sc.copies
            outcomes.append(rec)
        done += len(chunk)
        if on_progress is not None:
            on_progress(done, total)
    seconds = time.perf_counter() - t0
    if blank_control:
        for b in range(0, len(examples), batch_size):
            chunk = examples[b : b + batch_size]
            blanks, questions = [e.blank_image() for e in chunk], [e.question.text for e in chunk]
            outs = _generate(model, processor, blanks, questions, max_new_tokens, copy_feed)
            for k, (o, _src) in enumerate(outs):
                p = parse_output(_strip(o))
                rec = outcomes[b + k]
                rec.blank_output = o
                rec.blank_correct = p.ok and p.answer == rec.answer
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, total)
    fam: dict[str, list[ExampleOutcome]] = defaultdict(list)
    for rec in outcomes:
        fam[rec.family].append(rec)
    per_family: dict[str, dict[str, Any]] = {}
    for f, os_ in sorted(fam.items()):
        per_family[f] = {"n": len(os_), "accuracy": float(np.mean([o.correct for o in os_]))}
        if blank_control:
            per_family[f]["blank_image_accuracy"] = float(np.mean([bool(o.blank_correct) for o in os_]))
        per_family[f] |= _grounding(os_)
    nn = len(outcomes)
    pointing = None
    if pointcopy:
        n_copies = sum(o.pointing_copies or 0 for o in outcomes)
        pointing = sum(o.pointing_hits or 0 for o in outcomes) / n_copies if n_copies else 0.0
    return EvalResult(
        n=nn,
        accuracy=float(np.mean([o.correct for o in outcomes])),
        parse_rate=float(np.mean([o.parsed for o in outcomes])),
        n_failures=sum(not o.correct for o in outcomes),
        blank_image_accuracy=float(np.mean([bool(o.blank_correct) for o in outcomes])) if blank_control else None,
        seconds_per_example=seconds / nn,
        per_family=per_family,
        outcomes=outcomes,
        meta={"split": split, "start": start, "benchmark_seed": benchmark_seed}
        | ({"copy_feed": copy_feed} if pointcopy else {}),
        pointing_accuracy=pointing,
        grounding=_grounding(outcomes),
        failure_kinds={k: sum(o.failure_kind == k for o in outcomes) for k in ("hallucination", "reasoning_error")},
    )


def _check_vocabulary(processor: Any, examples: Sequence[Example], benchmark: str, n_check: int = 50) -> None:
    """Refuse a model whose vocabulary lacks words of the benchmark's questions or reference traces.

    A word-level model trained on one benchmark version reads the other's words as ``<unk>`` and would be
    scored on prompts it cannot read. The first ``n_check`` examples are checked, and the first ten of the
    benchmark's ``test`` split (two of each family), so that a small ``n`` still sees every family's words.

    Raises:
        ValueError: Naming the missing words and the ``benchmark`` evaluated.
    """
    tok = getattr(processor, "tokenizer", None)
    unk = getattr(tok, "unk_token_id", None)
    if tok is None or unk is None:
        return
    if benchmark == "shapes2":
        from attrib.shapes.v2.dataset import iter_split as iter_split2

        probe: list[Example] = list(iter_split2("test", 10))
    else:
        probe = list(iter_split("test", 10))
    missing: set[str] = set()
    for e in [*examples[:n_check], *probe]:
        for text in (e.question.text, _strip(e.target_text())):
            for word in text.replace("<think>", " ").replace("</think>", " ").split():
                if unk in tok.encode(word, add_special_tokens=False):
                    missing.add(word)
    if missing:
        other = "shapes2" if benchmark == "shapes" else "shapes"
        raise ValueError(
            f"the model's vocabulary lacks words of benchmark {benchmark!r} (e.g. {sorted(missing)[:5]}): "
            f"it was not trained on it; evaluate it with --benchmark {other}, or train one with "
            f"`attrib shapes train --benchmark {benchmark}`"
        )


def _grounding(outcomes: Sequence[ExampleOutcome]) -> dict[str, Any]:
    """Grounding metrics of outcomes (see [`summarise`][attrib.shapes.v2.grounding.summarise])."""
    d = summarise([o.grounding for o in outcomes if o.grounding is not None])
    refs = [o.reference_sentences for o in outcomes if o.reference_sentences is not None]
    d["reference_chain_length_median"] = float(np.median(refs)) if refs else None
    return d
