"""What the research variants share: a Qwen2/2.5-VL wrapped with one decode loop and one checkpoint layout.

Both variants (v1 point-and-copy, latent visual tokens) run their own decode
loop over the base model's language model, because what they feed back at a
step is not a token embedding: a copied image embedding, or a latent vector.
[`VariantModel`][attrib.variants.base.VariantModel] holds everything else once:

- the base model's pieces they need: image input embeddings, M-RoPE position ids
  in which their own tokens are text tokens, the stop and pad ids;
- the decode loop ([`VariantModel.generate`][attrib.variants.base.VariantModel.generate]): prefill with the KV cache,
  then per step a variant-specific [`VariantModel.decode_step`][attrib.variants.base.VariantModel.decode_step] chooses
  the
  tokens and the embeddings to feed, while the loop keeps the bookkeeping
  (finished rows, lengths, ``on_token(row, token, source)`` callbacks, stopping);
- capture through the variant's own tokens ([`VariantModel.capture`][attrib.variants.base.VariantModel.capture]): one
  [`KeyPart`][attrib.capture.sdpa.KeyPart] the variant fills as it decodes;
- the checkpoint layout: ``<META_FILE>`` (class, version, the variant's settings,
  base class), ``<WEIGHTS_FILE>`` (the variant's own tensors) and ``base/`` (the
  wrapped model, which the plain class cannot load from the top directory).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from attrib.capture.sdpa import AttentionCapture, CaptureResult, KeyPart, SpanCallback

__all__ = [
    "DecodeStep",
    "Generation",
    "OnToken",
    "Prepared",
    "VariantModel",
    "eos_id",
    "image_embeddings",
    "pad_id",
    "register_research_variant",
    "rope_positions",
]

#: ``on_token(row, token_id, source) -> stop?``: every generated position; ``source`` is the copied
#: image token (``-1`` for none). Returning ``True`` stops generation.
OnToken = Callable[[int, int, int], "bool | None"]


def image_embeddings(base: Any, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
    """All images' input embeddings (vision output after the merger), ``(N_total, d)``."""
    out = base.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)
    pooled = out.pooler_output
    return torch.cat(list(pooled), dim=0) if isinstance(pooled, (list, tuple)) else pooled


def rope_positions(
    base: Any,
    input_ids: torch.Tensor,
    mm_token_type_ids: torch.Tensor,
    image_grid_thw: torch.Tensor,
    attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """M-RoPE position ids ``(3, B, T)``; every non-image token takes a text position."""
    m = base.model
    try:
        pos, _ = m.get_rope_index(
            input_ids,
            mm_token_type_ids=mm_token_type_ids,
            image_grid_thw=image_grid_thw,
            attention_mask=attention_mask,
        )
    except TypeError:  # Qwen2-VL signature without mm_token_type_ids
        pos, _ = m.get_rope_index(input_ids, image_grid_thw, None, attention_mask)
    return pos


def eos_id(config: Any) -> int:
    """The config's end-of-sequence id (the first of a list; ``-1`` when there is none)."""
    e = getattr(config, "eos_token_id", None)
    if e is None:
        e = getattr(config.text_config, "eos_token_id", None)
    if isinstance(e, (list, tuple)):
        e = e[0]
    return int(e) if e is not None else -1


def pad_id(config: Any) -> int:
    """The config's pad id (0 when there is none)."""
    return int(getattr(config, "pad_token_id", None) or getattr(config.text_config, "pad_token_id", 0) or 0)


@dataclass
class DecodeStep:
    """What a variant chooses at one decode step.

    Attributes:
        tokens: ``(B,)`` ids to record (the pad id for finished rows).
        sources: ``(B,)`` copied image token per row, ``-1`` for none.
        embeds: ``(B, d)`` the inputs of the next forward.
    """

    tokens: torch.Tensor
    sources: torch.Tensor
    embeds: torch.Tensor


@dataclass
class Prepared:
    """The inputs of a forward or a decode, defaults filled in (see
    [`VariantModel.prepare`][attrib.variants.base.VariantModel.prepare]).

    Attributes:
        attention_mask: ``(B, T)`` (``None`` only when a forward asked not to fill it).
        mm_token_type_ids: ``(B, T)``, 1 on image tokens.
        image_grid_thw: ``(n_images, 3)``.
        image_embeds: ``(N_total, d)`` image input embeddings.
    """

    attention_mask: torch.Tensor | None
    mm_token_type_ids: torch.Tensor
    image_grid_thw: torch.Tensor
    image_embeds: torch.Tensor


@dataclass
class Generation:
    """What a variant's ``generate`` returns.

    Attributes:
        sequences: ``(B, P + G)`` ids (the variant's own token id at its positions; padding after EOS).
        sources: ``(B, P + G)`` copied image-token index per position, ``-1`` elsewhere.
        prompt_len: ``P``.
        lengths: Generated positions per row, EOS included.
    """

    sequences: torch.Tensor
    sources: torch.Tensor
    prompt_len: int
    lengths: list[int] = field(default_factory=list)

    def generated(self, row: int = 0) -> tuple[list[int], list[int]]:
        """``(ids, sources)`` of row ``row``'s generated positions (EOS included)."""
        n = self.lengths[row]
        s = self.prompt_len
        return (
            [int(x) for x in self.sequences[row, s : s + n]],
            [int(x) for x in self.sources[row, s : s + n]],
        )


class VariantModel(nn.Module):
    """Base of the research variants: a Qwen2/2.5-VL with a decode loop and a checkpoint layout of their own.

    Subclasses set the class attributes, implement [`prefill_embeds`][attrib.variants.base.VariantModel.prefill_embeds],
    [`decode_options`][attrib.variants.base.VariantModel.decode_options],
    [`decode_start`][attrib.variants.base.VariantModel.decode_start],
    [`decode_step`][attrib.variants.base.VariantModel.decode_step] and
    [`decode_finish`][attrib.variants.base.VariantModel.decode_finish] for generation,
    [`key_part`][attrib.variants.base.VariantModel.key_part] and
    [`note_key`][attrib.variants.base.VariantModel.note_key]
    for capture, and
    [`extra_tensors`][attrib.variants.base.VariantModel.extra_tensors],
    [`extra_meta`][attrib.variants.base.VariantModel.extra_meta],
    [`from_meta`][attrib.variants.base.VariantModel.from_meta] and
    [`load_extra_tensors`][attrib.variants.base.VariantModel.load_extra_tensors] for checkpoints.

    Args:
        base: A ``Qwen2_5_VLForConditionalGeneration`` or ``Qwen2VLForConditionalGeneration``.

    Raises:
        ValueError: For an unsupported base class.
    """

    SUPPORTED: ClassVar[tuple[str, ...]] = ("Qwen2_5_VLForConditionalGeneration", "Qwen2VLForConditionalGeneration")
    #: What the variant is called in messages ("v1 point-and-copy").
    KIND: ClassVar[str] = "research-variant"
    #: The metadata file that marks a checkpoint directory of this variant.
    META_FILE: ClassVar[str] = "variant.json"
    #: The variant's own tensors.
    WEIGHTS_FILE: ClassVar[str] = "variant.safetensors"
    #: How to get such a checkpoint (for the message when a directory is not one).
    HOW_TO_GET: ClassVar[str] = ""

    base: Any

    def __init__(self, base: Any) -> None:
        super().__init__()
        if type(base).__name__ not in self.SUPPORTED:
            raise ValueError(f"the {self.KIND} variant wraps {' or '.join(self.SUPPORTED)}, got {type(base).__name__}")
        self.base = base
        self.image_token_id = int(base.config.image_token_id)

    # ------------------------------------------------------------------ base pieces
    @property
    def config(self) -> Any:
        """The base model's config."""
        return self.base.config

    def get_input_embeddings(self) -> nn.Module:
        """The base model's token embedding table."""
        return self.base.get_input_embeddings()  # type: ignore[no-any-return]

    def image_embeddings(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """All images' input embeddings (vision output after the merger), ``(N_total, d)``."""
        return image_embeddings(self.base, pixel_values, image_grid_thw)

    def position_ids(
        self,
        input_ids: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        image_grid_thw: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """M-RoPE position ids ``(3, B, T)``; the variant's own tokens are text tokens here."""
        return rope_positions(self.base, input_ids, mm_token_type_ids, image_grid_thw, attention_mask)

    # ------------------------------------------------------------------ inputs
    def prepare(
        self,
        input_ids: torch.Tensor,
        inputs: Mapping[str, Any],
        image_embeds: torch.Tensor | None = None,
        *,
        fill_mask: bool = True,
    ) -> Prepared:
        """The inputs every forward and decode needs, with their defaults filled in.

        Args:
            input_ids: ``(B, T)``.
            inputs: ``attention_mask``, ``mm_token_type_ids``, ``pixel_values``, ``image_grid_thw``
                (any may be absent; other keys are ignored).
            image_embeds: Precomputed [`image_embeddings`][attrib.variants.base.VariantModel.image_embeddings] (skips
                the vision tower).
            fill_mask: Default a missing attention mask to ones (else leave it ``None``).

        Raises:
            ValueError: Without ``image_grid_thw``, or without pixels and image embeddings.
        """
        grid = inputs.get("image_grid_thw")
        if grid is None:
            raise ValueError(f"the {self.KIND} variant needs image_grid_thw")
        mask = inputs.get("attention_mask")
        if mask is None and fill_mask:
            mask = torch.ones_like(input_ids)
        mm = inputs.get("mm_token_type_ids")
        if mm is None:
            mm = (input_ids == self.image_token_id).long()
        if image_embeds is None:
            pixels = inputs.get("pixel_values")
            if pixels is None:
                raise ValueError(f"the {self.KIND} variant needs pixel_values or image_embeds")
            image_embeds = self.image_embeddings(pixels, grid)
        return Prepared(mask, mm, grid, image_embeds)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        labels: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        **inputs: Any,
    ) -> Any:
        """Teacher-forced forward over a batch (the variant's
        [`forward_prepared`][attrib.variants.base.VariantModel.forward_prepared]).

        Args:
            input_ids: ``(B, T)``.
            labels: ``(B, T)`` targets (``-100`` ignored); position ``t`` is predicted from ``t - 1``.
            image_embeds: Precomputed [`image_embeddings`][attrib.variants.base.VariantModel.image_embeddings] (skips
                the vision tower).
            **inputs: ``attention_mask`` (left padding), ``mm_token_type_ids``, ``pixel_values``,
                ``image_grid_thw``, and the variant's own options (other keys are ignored).

        Raises:
            ValueError: If ``image_grid_thw`` is missing, or neither pixels nor image embeddings are given.
        """
        prep = self.prepare(input_ids, inputs, image_embeds, fill_mask=False)
        return self.forward_prepared(input_ids, prep, labels, inputs)

    def forward_prepared(
        self, input_ids: torch.Tensor, prep: Prepared, labels: torch.Tensor | None, options: dict[str, Any]
    ) -> Any:
        """The variant's forward, with prepared inputs (``options``: the other keyword arguments)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ decoding (subclass hooks)
    def prefill_embeds(self, input_ids: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """Input embeddings of the prompt (image embeddings at the image positions)."""
        raise NotImplementedError

    def decode_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The variant's [`generate`][attrib.variants.base.VariantModel.generate] options, checked and with defaults
        (unknown keys are ignored)."""
        return {}

    def decode_start(
        self, input_ids: torch.Tensor, hidden: torch.Tensor, image_embeds: torch.Tensor, options: dict[str, Any]
    ) -> Any:
        """The variant's decoding state after the prefill (``hidden``: the prompt's final hidden states)."""
        raise NotImplementedError

    def decode_steps(self, max_new_tokens: int, options: dict[str, Any]) -> int:
        """How many positions to decode at most."""
        return max_new_tokens

    def decode_step(self, h: torch.Tensor, state: Any, step: int, done: torch.Tensor) -> DecodeStep:
        """Choose step ``step``'s tokens from the last hidden states ``h`` ``(B, d)``."""
        raise NotImplementedError

    def decode_finish(self, generation: Generation, state: Any) -> Generation:
        """The variant's own result type, from the shared record and the final state."""
        return generation

    def key_part(self) -> KeyPart:
        """The capture's key part for this variant's own tokens (see [`KeyPart`][attrib.capture.sdpa.KeyPart])."""
        raise NotImplementedError

    def note_key(self, part: KeyPart, token: int, source: int, position: int) -> None:
        """Record a generated position in [`key_part`][attrib.variants.base.VariantModel.key_part]'s part when it is one
        of the variant's tokens."""
        raise NotImplementedError

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        *,
        max_new_tokens: int = 256,
        eos_token_id: int | None = None,
        on_token: OnToken | None = None,
        image_embeds: torch.Tensor | None = None,
        **options: Any,
    ) -> Generation:
        """Greedy decoding with the KV cache (the loop both variants share).

        Args:
            input_ids: ``(B, P)`` left-padded prompts.
            max_new_tokens: Generation budget (the variant's own positions count).
            eos_token_id: Stop a row at this id (default: the config's).
            on_token: Called as ``on_token(row, token_id, source)`` for every new position
                (``source``: the copied image token, ``-1`` for none); returning ``True`` stops generation.
            image_embeds: Precomputed image embeddings (skips the vision tower).
            **options: The model inputs (``attention_mask``, ``mm_token_type_ids``, ``pixel_values``,
                ``image_grid_thw``) and the variant's own options (see its class).

        Returns:
            The variant's [`Generation`][attrib.variants.base.Generation].

        Raises:
            ValueError: For missing image inputs, a bad option, or ``do_sample=True`` (greedy only).
        """
        from transformers import DynamicCache

        if options.pop("do_sample", False):
            raise ValueError(
                f"{type(self).__name__} decodes greedily: sampling (do_sample) is not supported for research variants"
            )
        for key in ("temperature", "top_p", "top_k"):
            options.pop(key, None)
        opts = self.decode_options(options)
        prep = self.prepare(input_ids, options, image_embeds)
        attention_mask = prep.attention_mask
        assert attention_mask is not None
        b, p = input_ids.shape
        eos = eos_token_id if eos_token_id is not None else eos_id(self.base.config)
        lm = self.base.model.language_model
        cache = DynamicCache(config=self.base.config.text_config)
        pos = self.position_ids(input_ids, prep.mm_token_type_ids, prep.image_grid_thw, attention_mask)
        hidden = lm(
            inputs_embeds=self.prefill_embeds(input_ids, prep.image_embeds),
            position_ids=pos,
            attention_mask=attention_mask,
            cache=cache,
            use_cache=True,
        ).last_hidden_state
        state = self.decode_start(input_ids, hidden, prep.image_embeds, opts)
        next_pos = pos.amax(dim=(0, 2)) + 1  # (B,)
        h = hidden[:, -1]
        seqs = [input_ids]
        srcs = [torch.full_like(input_ids, -1)]
        done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        lengths = [0] * b
        for step in range(self.decode_steps(max_new_tokens, opts)):
            choice = self.decode_step(h, state, step, done)
            tok, src = choice.tokens, choice.sources
            seqs.append(tok[:, None].clone())
            srcs.append(src[:, None].clone())
            stop = False
            for r in range(b):
                if bool(done[r]):
                    continue
                lengths[r] += 1
                if on_token is not None and on_token(r, int(tok[r]), int(src[r])):
                    stop = True
            done = done | (tok == eos)
            if bool(done.all()) or stop:
                break
            attention_mask = torch.cat([attention_mask, (~done).long()[:, None]], dim=1)
            step_pos = next_pos.view(1, b, 1).expand(3, b, 1)
            next_pos = next_pos + 1
            h = lm(
                inputs_embeds=choice.embeds[:, None],
                position_ids=step_pos,
                attention_mask=attention_mask,
                cache=cache,
                use_cache=True,
            ).last_hidden_state[:, -1]
        gen = Generation(
            sequences=torch.cat(seqs, dim=1), sources=torch.cat(srcs, dim=1), prompt_len=p, lengths=lengths
        )
        return self.decode_finish(gen, state)

    def capture(
        self,
        inputs: dict[str, Any],
        assignment: Any,
        *,
        decode: Callable[[list[int]], str],
        max_new_tokens: int = 256,
        eos_token_id: int | None = None,
        per_token: bool = False,
        on_span: SpanCallback | None = None,
        stop: Callable[[], bool] | None = None,
        **options: Any,
    ) -> tuple[CaptureResult, Generation]:
        """Generate greedily for batch-1 ``inputs`` and capture region attention, the variant's tokens included.

        Args:
            inputs: Prompt inputs (batch size 1).
            assignment: ``(K, N_image)`` region -> image-token matrix.
            decode: Token ids -> text, special tokens kept (span segmentation).
            max_new_tokens: Generation budget.
            eos_token_id: Stop id (default: the model config's).
            per_token: Keep per-token features.
            on_span: Called as spans complete.
            stop: Polled after every position; ``True`` ends generation.
            **options: The variant's [`generate`][attrib.variants.base.VariantModel.generate] options.

        Returns:
            ``(capture, generation)``: the capture's key part ([`key_part`][attrib.variants.base.VariantModel.key_part])
            holds the
            attention to the variant's tokens, and ``token_sources`` the copied image token
            of every generated position (``-1`` for none).
        """
        prompt_len = int(inputs["input_ids"].shape[1])
        part = self.key_part()
        with AttentionCapture(
            self.base, inputs, assignment, decode=decode, per_token=per_token, on_span=on_span, parts=[part]
        ) as cap:
            count = [0]

            def on_token(_row: int, token: int, source: int) -> bool:
                cap.push_token(token)
                self.note_key(part, token, source, prompt_len + count[0])
                count[0] += 1
                return bool(stop()) if stop is not None else False

            gen = self.generate(
                **inputs, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, on_token=on_token, **options
            )
        res = cap.result()
        res.token_sources = gen.generated(0)[1]
        return res, gen

    def generation_budget(self, max_new_tokens: int) -> int:
        """Positions to allow for ``max_new_tokens`` tokens of text (the variant's own positions count too)."""
        return max_new_tokens

    @property
    def pad_token_id(self) -> int:
        """The pad id recorded for finished rows."""
        return pad_id(self.base.config)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def is_checkpoint(cls, path: str | Path) -> bool:
        """Whether ``path`` is a checkpoint directory of this variant."""
        return (Path(path) / cls.META_FILE).is_file()

    @classmethod
    def refuse_checkpoint(cls, path: str | Path) -> None:
        """Refuse a checkpoint of this variant where a plain model is expected.

        Raises:
            ValueError: If ``path`` holds one.
        """
        if cls.is_checkpoint(path):
            raise ValueError(
                f"{path} is a {cls.KIND} checkpoint, not a plain model; load it with attrib.load "
                f"(or {cls.__module__}.{cls.__name__}.from_pretrained)"
            )

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        """The variant's own tensors, saved in ``WEIGHTS_FILE``."""
        raise NotImplementedError

    def extra_meta(self) -> dict[str, Any]:
        """The variant's settings, saved in ``META_FILE``."""
        raise NotImplementedError

    @classmethod
    def from_meta(cls, base: Any, meta: dict[str, Any]) -> VariantModel:
        """A fresh model around ``base`` with the settings in ``meta``."""
        raise NotImplementedError

    def load_extra_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy [`extra_tensors`][attrib.variants.base.VariantModel.extra_tensors] back in."""
        raise NotImplementedError

    def save_pretrained(self, path: str | Path) -> None:
        """Write the checkpoint layout (module docstring)."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        self.base.save_pretrained(p / "base")
        save_file({k: v.detach().contiguous() for k, v in self.extra_tensors().items()}, str(p / self.WEIGHTS_FILE))
        meta = {"class": type(self).__name__, "version": 1, **self.extra_meta(), "base_class": type(self.base).__name__}
        (p / self.META_FILE).write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> Any:
        """Load a checkpoint written by [`save_pretrained`][attrib.variants.base.VariantModel.save_pretrained]
        (safetensors + JSON only).

        Args:
            path: The checkpoint directory.
            **kwargs: Passed to the base class's ``from_pretrained`` (``dtype``, ...).

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If ``path`` is not a checkpoint of this variant, or its files are corrupt.
        """
        import transformers

        p = Path(path)
        if not p.is_dir():
            raise FileNotFoundError(f"model directory not found: {p}")
        if not cls.is_checkpoint(p):
            raise ValueError(f"{p} is not a {cls.KIND} checkpoint (no {cls.META_FILE}). {cls.HOW_TO_GET}".strip())
        try:
            meta = json.loads((p / cls.META_FILE).read_text())
            base = getattr(transformers, meta["base_class"]).from_pretrained(p / "base", **kwargs)
            tensors = load_file(str(p / cls.WEIGHTS_FILE))
            model = cls.from_meta(base, meta)
            model.load_extra_tensors(tensors)
        except Exception as e:  # transformers, safetensors and json raise several types
            raise ValueError(f"corrupt {cls.KIND} checkpoint {p}: {type(e).__name__}: {e}") from e
        return model.eval()


def register_research_variant(model_class: type[VariantModel], variant: Any) -> None:
    """Register a research variant: its checkpoint kind with [`attrib.models`][attrib.models] (detected by
    ``model_class.META_FILE``, loaded with ``model_class.from_pretrained``, local files only) and
    ``variant`` (its [`Variant`][attrib.variants.registry.Variant], named like the kind) with the registry.

    Raises:
        ValueError: If either is registered already.
    """
    from attrib.models.loading import ModelKind, register_model_kind
    from attrib.variants.registry import register_variant

    def load(path: Path, *, dtype: torch.dtype = torch.float32) -> VariantModel:
        return model_class.from_pretrained(path, local_files_only=True, dtype=dtype)  # type: ignore[no-any-return]

    register_model_kind(ModelKind(variant.name, model_class.is_checkpoint, load, f"{model_class.KIND} checkpoint"))
    register_variant(variant)
