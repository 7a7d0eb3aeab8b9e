"""The variant registry: how the pipeline captures through and ablates each kind of model.

A [`Variant`][attrib.variants.registry.Variant] is what collection, evaluation, streaming and the analyses
need of a kind of model, so that none of them branches on model classes:

- [`Variant.capture`][attrib.variants.registry.Variant.capture]: generate under an attention capture (its own key
  parts included, e.g. copy tokens credited to their source regions);
- [`Variant.ablator`][attrib.variants.registry.Variant.ablator]: an [`Ablator`][attrib.ablation.Ablator] for a fixed
trace;
- [`Variant.record_extras`][attrib.variants.registry.Variant.record_extras]: what a collection records beside the
features;
- [`Variant.norm_states`][attrib.variants.registry.Variant.norm_states]: hidden states and token types for ``attrib
norms``
  (``None``: the core's teacher-forced default).

The arguments travel as one [`CaptureRequest`][attrib.variants.registry.CaptureRequest] or
[`AblationRequest`][attrib.variants.registry.AblationRequest],
so adding an option changes one dataclass, not every implementation.

Plain transformers models use ``PLAIN`` (registered as ``"plain"``);
[`ResearchVariant`][attrib.variants.registry.ResearchVariant] is the base of the research variants, whose models
([`VariantModel`][attrib.variants.base.VariantModel]) capture themselves. The research
variants register from their own packages, through the plugin entry points
([`attrib.plugins`][attrib.plugins]); the core imports only this module.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from PIL import Image

from attrib.ablation import AblationRunner, Ablator
from attrib.capture.sdpa import AttentionCapture, CaptureResult, SpanCallback
from attrib.plugins import load_plugins

if TYPE_CHECKING:
    from attrib.models.loading import LoadedModel

__all__ = [
    "PLAIN",
    "VARIANTS",
    "AblationRequest",
    "CaptureRequest",
    "NormItem",
    "PlainVariant",
    "ResearchVariant",
    "StopFlag",
    "Variant",
    "check_generate_kwargs",
    "get_variant",
    "register_variant",
]

#: ``stop() -> bool``: polled once per generated token; ``True`` ends generation at that token.
StopFlag = Callable[[], bool]
#: ``(image, question, reference answer or None)``: one input of ``attrib norms``.
NormItem = tuple[Image.Image, str, "str | None"]


@dataclass(frozen=True)
class CaptureRequest:
    """One generation to capture.

    Attributes:
        inputs: Batch-1 model inputs.
        assignment: ``(K, N_image)`` region -> image-token matrix (or a ``TokenAssignment``).
        max_new_tokens: Generation budget.
        per_token: Keep per-token features.
        on_span: Called as ``on_span(span, features, parts)`` as spans complete.
        stop: Polled once per token; ``True`` ends generation.
        generate_kwargs: Further options for the model's generation (``min_new_tokens``,
            sampling options for plain models; ``copy_feed``, ``intervene`` for the variants).
    """

    inputs: dict[str, Any]
    assignment: Any
    max_new_tokens: int = 200
    per_token: bool = False
    on_span: SpanCallback | None = None
    stop: StopFlag | None = None
    generate_kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AblationRequest:
    """One fixed trace to ablate.

    Attributes:
        inputs: The batch-1 prompt inputs that produced the trace.
        generated_ids: The trace's token ids.
        assignment: ``(K, N_image)`` region -> image-token matrix.
        record: What [`Variant.record_extras`][attrib.variants.registry.Variant.record_extras] stored for the trace (v1:
            its copy sources).
        mode: Ablation mode (see ``attrib.ablation.ABLATION_MODES``).
        batch_size: Removal sets per forward.
        image: The image (``repaint`` mode).
        region_labels: ``(H, W)`` region map (``repaint`` mode).
        encode_image: ``image -> inputs`` for the same prompt (``repaint`` mode).
    """

    inputs: dict[str, Any]
    generated_ids: Sequence[int]
    assignment: Any
    record: Mapping[str, Any] | None = None
    mode: str = "mask"
    batch_size: int = 16
    image: Image.Image | None = None
    region_labels: np.ndarray | None = None
    encode_image: Callable[[Image.Image], dict[str, Any]] | None = None


class Variant(Protocol):
    """What the pipeline needs of a kind of model.

    Attributes:
        name: Registry key; equals the model kind that [`attrib.models.load`][attrib.models.loading.load] reports.
        description: One line for messages.
        parts: Names of the key parts its captures report (e.g. ``("via_copy",)``).
        ablation_modes: The ablation modes its ablator supports (empty: none).
    """

    name: str
    description: str
    parts: tuple[str, ...]
    ablation_modes: tuple[str, ...]

    def capture(self, loaded: LoadedModel, request: CaptureRequest) -> CaptureResult:
        """Generate for the request's inputs and capture region attention features."""
        ...

    def ablator(self, loaded: LoadedModel, request: AblationRequest) -> Ablator:
        """A runner for the request's fixed trace."""
        ...

    def record_extras(self, result: CaptureResult, columns: slice, mode: str) -> dict[str, Any]:
        """What a collection records for one example beside the features (``columns``: this config's regions)."""
        ...

    def norm_states(
        self, loaded: LoadedModel, items: Sequence[NormItem]
    ) -> Iterator[tuple[Sequence[torch.Tensor], np.ndarray]] | None:
        """Per item, the hidden states and token types for ``attrib norms``; ``None`` for the default."""
        ...


def _suppressor(ids: Sequence[int]) -> Any:
    """A logits processor that gives ``ids`` a score of -inf at every step.

    transformers' ``suppress_tokens`` builds a vocabulary-sized mask at every step (about 1.4 ms
    per token on the CPU for a 152k vocabulary); this one fills the few listed ids. transformers
    also inspects each processor's signature at every step, so the signature is set once here.
    One processor per id set is made and reused by every later generation (it holds no state of one).
    """
    return _suppressor_for(tuple(ids))


@functools.lru_cache(maxsize=64)
def _suppressor_for(ids: tuple[int, ...]) -> Any:
    from transformers import LogitsProcessor

    index: dict[torch.device, torch.Tensor] = {}

    def call(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        idx = index.get(scores.device)
        if idx is None:
            inside = [i for i in ids if 0 <= i < scores.shape[-1]]  # as transformers' mask, ignore ids past the vocab
            idx = index[scores.device] = torch.tensor(inside, dtype=torch.long, device=scores.device)
        return scores.index_fill(-1, idx, float("-inf"))

    call.__signature__ = inspect.signature(call)  # type: ignore[attr-defined]
    cls = type("SuppressIds", (LogitsProcessor,), {"__call__": staticmethod(call), "ids": ids})
    return cls()


def _stopper(flag: StopFlag) -> Any:
    """A stopping criterion that asks ``flag()`` once per step (no tensor made per step)."""
    return _stop_class()(flag)


@functools.cache
def _stop_class() -> type:
    """The criterion's class, made once (transformers is imported lazily)."""
    from transformers import StoppingCriteria

    class _Stop(StoppingCriteria):
        def __init__(self, flag: StopFlag) -> None:
            self.flag = flag
            self.answers: dict[tuple[int, torch.device, bool], torch.Tensor] = {}

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> torch.Tensor:
            k = (input_ids.shape[0], input_ids.device, bool(self.flag()))
            out = self.answers.get(k)
            if out is None:
                out = self.answers[k] = torch.full((k[0],), k[2], dtype=torch.bool, device=k[1])
            return out

    return _Stop


class PlainVariant:
    """Plain transformers models: ``model.generate`` under an
    [`AttentionCapture`][attrib.capture.sdpa.AttentionCapture]."""

    name = "plain"
    description = "a transformers checkpoint of a supported family"
    parts: tuple[str, ...] = ()
    ablation_modes: tuple[str, ...] = ("mask", "mean", "repaint")
    #: Whether generation can sample (``do_sample``, ``temperature``, ``top_p``).
    sampling: bool = True

    def capture(self, loaded: LoadedModel, request: CaptureRequest) -> CaptureResult:
        """``loaded.model.generate`` (greedy unless ``generate_kwargs`` say otherwise) under a capture."""
        from transformers import LogitsProcessorList, StoppingCriteriaList

        kw: dict[str, Any] = {"do_sample": False, **request.generate_kwargs}
        # Image markers in the trace would break every teacher-forced forward over it (ablation, verify).
        suppress = set(loaded.adapter.vision_token_ids(loaded.hf_model)) | set(kw.pop("suppress_tokens", None) or ())
        gen_cfg = getattr(loaded.hf_model, "generation_config", None)
        suppress |= set(getattr(gen_cfg, "suppress_tokens", None) or ())
        if suppress:
            if getattr(gen_cfg, "suppress_tokens", None):  # ours replaces it (transformers would apply it again)
                kw["suppress_tokens"] = None
            kw["logits_processor"] = LogitsProcessorList(
                [_suppressor(sorted(suppress)), *kw.pop("logits_processor", [])]
            )
        if request.stop is not None:
            kw["stopping_criteria"] = StoppingCriteriaList([_stopper(request.stop), *kw.pop("stopping_criteria", [])])
        model = loaded.model
        x = request.inputs
        with AttentionCapture(
            model,
            x,
            request.assignment,
            decode=loaded.decode_raw,
            per_token=request.per_token,
            on_span=request.on_span,
        ) as cap:
            model.generate(**x, streamer=cap.streamer, max_new_tokens=request.max_new_tokens, **kw)
        return cap.result()

    def ablator(self, loaded: LoadedModel, request: AblationRequest) -> Ablator:
        """An [`AblationRunner`][attrib.ablation.AblationRunner]."""
        r = request
        return AblationRunner(
            loaded.model,
            r.inputs,
            r.generated_ids,
            r.assignment,
            mode=r.mode,
            batch_size=r.batch_size,
            image=r.image,
            region_labels=r.region_labels,
            encode_image=r.encode_image,
        )

    def record_extras(self, result: CaptureResult, columns: slice, mode: str) -> dict[str, Any]:
        """Nothing beyond the common record."""
        return {}

    def norm_states(
        self, loaded: LoadedModel, items: Sequence[NormItem]
    ) -> Iterator[tuple[Sequence[torch.Tensor], np.ndarray]] | None:
        """``None``: the core's teacher-forced measurement applies."""
        return None


class ResearchVariant(PlainVariant):
    """Base of the research variants: their model (a [`VariantModel`][attrib.variants.base.VariantModel]) captures
    itself.

    Subclasses set ``name``, ``description``, ``parts`` and
    ``ablation_modes``, and override [`ablator`][attrib.variants.registry.ResearchVariant.ablator] when they can ablate.
    """

    name = "research-variant"
    ablation_modes: tuple[str, ...] = ()
    sampling = False

    def capture(self, loaded: LoadedModel, request: CaptureRequest) -> CaptureResult:
        """The model's own [`capture`][attrib.variants.base.VariantModel.capture]."""
        r = request
        res, _ = loaded.model.capture(
            r.inputs,
            r.assignment,
            decode=loaded.decode_raw,
            max_new_tokens=r.max_new_tokens,
            eos_token_id=loaded.eos_token_id,
            per_token=r.per_token,
            on_span=r.on_span,
            stop=r.stop,
            **r.generate_kwargs,
        )
        return res  # type: ignore[no-any-return]

    def ablator(self, loaded: LoadedModel, request: AblationRequest) -> Ablator:
        """Not available unless the variant overrides it.

        Raises:
            ValueError: Naming the variant and what works without ablation.
        """
        raise ValueError(
            f"ablation is not implemented for {self.description}: collect, evaluate and verify need a model "
            "that can be ablated (stream and norms work without)"
        )


#: The variant of plain transformers models.
PLAIN = PlainVariant()
VARIANTS: dict[str, Variant] = {PLAIN.name: PLAIN}
_LOCK = threading.Lock()


def register_variant(variant: Variant) -> Variant:
    """Register a variant under ``variant.name``; duplicates are refused."""
    with _LOCK:
        if variant.name in VARIANTS:
            raise ValueError(f"variant {variant.name!r} is already registered")
        VARIANTS[variant.name] = variant
    return variant


def get_variant(name: str) -> Variant:
    """The variant registered as ``name`` (plugins loaded first).

    Raises:
        ValueError: For an unknown name (the message lists the registered ones).
    """
    if name not in VARIANTS:
        load_plugins()
    if name not in VARIANTS:
        raise ValueError(f"no variant {name!r} is registered; known: {sorted(VARIANTS)}")
    return VARIANTS[name]


def check_generate_kwargs(variant: Variant, generate_kwargs: Mapping[str, Any]) -> None:
    """Refuse decoding options ``variant`` cannot honour, before any generation starts.

    Raises:
        ValueError: For sampling on a variant that decodes greedily, or a bad temperature or ``top_p``.
    """
    if generate_kwargs.get("do_sample") and not getattr(variant, "sampling", True):
        raise ValueError(f"{variant.description} decodes greedily: drop --do-sample (sampling is not supported)")
    t = generate_kwargs.get("temperature")
    if t is not None and not float(t) > 0:
        raise ValueError(f"temperature must be > 0, got {t}")
    p = generate_kwargs.get("top_p")
    if p is not None and not 0 < float(p) <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
