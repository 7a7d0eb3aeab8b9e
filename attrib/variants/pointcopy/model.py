"""The v1 point-and-copy variant of a Qwen2/2.5-VL model.

Mechanism (v1, Chung et al.; see docs/pointcopy.md):

* Two linear heads, ``Lq`` and ``Lk`` (hidden -> hidden, initialised to the
  identity divided by ``sqrt(d)``, so that copy logits start near zero). At
  every position the final, normed hidden state ``h_t`` gives a query ``Lq h_t``;
  the keys are ``Lk`` of either the final hidden states at the image positions
  (``keys="hidden"``, the default) or of the image input embeddings themselves
  (``keys="embeds"``: the vision output after the merger).
* Copy logits ``(Lq h_t)·(Lk k_j) / sqrt(d)`` for every image token ``j`` of the
  example are concatenated to the vocabulary logits: one joint distribution over
  ``V + N`` outcomes, trained with plain cross-entropy. Index ``V + j`` means
  "point at image token j". Image tokens that do not exist (padding in a batch
  of different image sizes) get ``-inf``, so a copy outside the image cannot be
  chosen.
* Choosing ``V + j`` feeds image token ``j``'s input embedding back as the next
  input: a *copy token*. It sits at an ordinary text position (text M-RoPE
  position, ``mm_token_type_ids`` 0) and carries the id of ``<|copy|>`` in
  ``input_ids``; which patch it copies is kept beside the ids in ``copy_src``
  (``-1`` elsewhere). Generation runs its own loop over the model's KV cache and
  keeps the copy memory (image embeddings and projected keys) in its own state.

Provenance of every position is [`provenance`][attrib.variants.pointcopy.model.provenance]: ``0`` text, ``1`` image
token
``j``, ``2`` copy of image token ``j``.

Checkpoint layout (a directory):

```text
pointcopy.json            class, version, key mode, copy token id, base class
copy_heads.safetensors    lq.weight, lk.weight
base/                     the wrapped Qwen2/2.5-VL (config.json, model.safetensors)
tokenizer.json, ...       the processor (extra tokens <region>, </region>, <|copy|>)
```

The base weights sit in ``base/`` on purpose: the plain class pointed at a v1
directory finds no ``config.json`` and fails; [`attrib.load`][attrib.models.loading.load] detects the
layout and loads it through this class. The decode loop and the checkpoint I/O
are [`VariantModel`][attrib.variants.base.VariantModel]'s, shared with the latent variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from attrib.capture.sdpa import KeyPart
from attrib.variants.base import DecodeStep, Generation, Prepared, VariantModel

__all__ = [
    "COPY",
    "COPY_TOKENS",
    "REGION_CLOSE",
    "REGION_OPEN",
    "PointCopyGeneration",
    "PointCopyModel",
    "PointCopyOutput",
    "provenance",
]


#: Where the copy keys come from: final hidden states at the image positions, or the image embeddings.
KeyMode = Literal["hidden", "embeds"]

REGION_OPEN, REGION_CLOSE, COPY = "<region>", "</region>", "<|copy|>"
#: The special tokens the variant adds to a vocabulary (ids after the base vocabulary).
COPY_TOKENS: tuple[str, ...] = (REGION_OPEN, REGION_CLOSE, COPY)


def provenance(input_ids: torch.Tensor, copy_src: torch.Tensor, image_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Where every position of a sequence comes from.

    Args:
        input_ids: ``(T,)`` ids of one sequence.
        copy_src: ``(T,)`` copied image-token index, ``-1`` where none.
        image_token_id: The image pad id.

    Returns:
        ``(kind, source)``: ``kind`` is ``0`` text, ``1`` image token, ``2`` copy
        token; ``source`` is the image-token index (``j`` for the ``j``-th image
        token, or the copied one) and ``-1`` for text.
    """
    ids = input_ids.detach().cpu().numpy()
    src = copy_src.detach().cpu().numpy().astype(np.int64)
    kind = np.zeros(ids.shape, dtype=np.int8)
    source = np.full(ids.shape, -1, dtype=np.int64)
    img = ids == image_token_id
    kind[img] = 1
    source[img] = np.arange(int(img.sum()))
    cp = src >= 0
    kind[cp] = 2
    source[cp] = src[cp]
    return kind, source


@dataclass
class PointCopyOutput:
    """What [`PointCopyModel.forward`][attrib.variants.base.VariantModel.forward] returns.

    Attributes:
        logits: ``(B, T, V + N)`` joint logits (vocabulary, then image tokens; ``-inf``
            where an image token does not exist for that example).
        n_vocab: ``V``.
        n_image: ``(B,)`` image tokens per example.
        hidden: ``(B, T, d)`` final normed hidden states.
        loss: Mean cross-entropy over the labelled positions (``None`` without labels).
    """

    logits: torch.Tensor
    n_vocab: int
    n_image: torch.Tensor
    hidden: torch.Tensor
    loss: torch.Tensor | None = None


@dataclass
class PointCopyGeneration(Generation):
    """What [`PointCopyModel.generate`][attrib.variants.base.VariantModel.generate] returns.

    Attributes:
        sequences: ``(B, P + G)`` ids (``<|copy|>`` at copy positions; padding after EOS).
        sources: ``(B, P + G)`` copied image-token index, ``-1`` elsewhere (also
            [`copy_src`][attrib.variants.pointcopy.model.PointCopyGeneration.copy_src]).
        prompt_len: ``P``.
        lengths: Generated tokens per row, EOS included.
        choices: ``(B, G)`` joint indices chosen (``>= V`` for copies; ``-1`` after EOS).
        n_vocab: ``V``.
        logits: ``(B, G, V + N)`` joint logits of every step (``return_logits=True``).
    """

    choices: torch.Tensor | None = None
    n_vocab: int = 0
    logits: torch.Tensor | None = None

    @property
    def copy_src(self) -> torch.Tensor:
        """``(B, P + G)`` copied image-token index, ``-1`` elsewhere."""
        return self.sources


@dataclass
class _CopyState:
    keys: torch.Tensor
    valid: torch.Tensor
    image_embeds: torch.Tensor
    offsets: torch.Tensor
    row_mean: torch.Tensor | None
    forced: torch.Tensor | None
    copy_feed: str
    return_logits: bool
    choices: list[torch.Tensor]
    kept: list[torch.Tensor]


class PointCopyModel(VariantModel):
    """A Qwen2/2.5-VL with point-and-copy heads (see the module docstring).

    Args:
        base: A ``Qwen2_5_VLForConditionalGeneration`` or ``Qwen2VLForConditionalGeneration``
            whose vocabulary holds ``<|copy|>``.
        copy_token_id: Id of ``<|copy|>``.
        keys: ``"hidden"`` (final hidden states at image positions) or ``"embeds"``
            (image input embeddings).

    Raises:
        ValueError: For an unsupported base class, key mode or copy id.
    """

    KIND = "v1 point-and-copy"
    META_FILE = "pointcopy.json"
    WEIGHTS_FILE = "copy_heads.safetensors"
    HOW_TO_GET = "Train one with `attrib shapes train --variant v1`; load a plain model with attrib.load."

    def __init__(self, base: Any, copy_token_id: int, *, keys: KeyMode = "hidden") -> None:
        super().__init__(base)
        if keys not in ("hidden", "embeds"):
            raise ValueError(f"keys must be 'hidden' or 'embeds', got {keys!r}")
        d = int(base.config.text_config.hidden_size)
        if not 0 <= copy_token_id < base.get_input_embeddings().num_embeddings:
            raise ValueError(f"copy_token_id {copy_token_id} is outside the vocabulary")
        self.lq = nn.Linear(d, d, bias=False)
        self.lk = nn.Linear(d, d, bias=False)
        with torch.no_grad():
            self.lq.weight.copy_(torch.eye(d) / d**0.5)
            self.lk.weight.copy_(torch.eye(d) / d**0.5)
        self.scale = d**-0.5
        self.keys = keys
        self.copy_token_id = int(copy_token_id)

    # ------------------------------------------------------------------ pieces
    @property
    def n_vocab(self) -> int:
        """Vocabulary logits per position (``V``)."""
        return int(self.base.lm_head.out_features)

    @staticmethod
    def _row_means(image_embeds: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Per example, the mean of its image embeddings ``(B, d)`` (zeros without an image)."""
        n = valid.sum(1)
        rows = torch.split(image_embeds, n.tolist())
        return torch.stack([r.mean(0) if len(r) else image_embeds.new_zeros(image_embeds.shape[1]) for r in rows])

    def _image_layout(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example, image tokens and the offset of its first one in the flat embedding list."""
        n = (input_ids == self.image_token_id).sum(1)
        return n, torch.cumsum(n, 0) - n

    def embed(self, input_ids: torch.Tensor, copy_src: torch.Tensor | None, image_embeds: torch.Tensor) -> torch.Tensor:
        """Input embeddings: token embeddings, image embeddings at image positions, copies at copy positions.

        Raises:
            ValueError: If the image-token count does not match ``image_embeds``, a copy
                source is out of its example's image, or a copy source sits on a non-copy id.
        """
        emb = self.base.get_input_embeddings()(input_ids)
        img = input_ids == self.image_token_id
        if int(img.sum()) != image_embeds.shape[0]:
            raise ValueError(f"{int(img.sum())} image tokens in input_ids but {image_embeds.shape[0]} image embeddings")
        emb = emb.masked_scatter(img[..., None], image_embeds.to(emb.dtype))
        if copy_src is None:
            return emb
        cp = copy_src >= 0
        if bool((cp & (input_ids != self.copy_token_id)).any()):
            raise ValueError("copy_src marks a position whose id is not <|copy|>")
        n, off = self._image_layout(input_ids)
        if bool((copy_src >= n[:, None]).any()):
            raise ValueError("a copy source lies outside its example's image tokens")
        gidx = (off[:, None] + copy_src.clamp(min=0)).clamp(max=max(0, image_embeds.shape[0] - 1))
        copies = image_embeds[gidx].to(emb.dtype)
        return torch.where(cp[..., None], copies, emb)

    def _keys(
        self, input_ids: torch.Tensor, hidden: torch.Tensor, image_embeds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected copy keys ``(B, Nmax, d)`` and their validity mask ``(B, Nmax)``."""
        n, off = self._image_layout(input_ids)
        nmax = int(n.max()) if n.numel() else 0
        b, d = input_ids.shape[0], hidden.shape[-1]
        keys = hidden.new_zeros(b, max(1, nmax), d)
        valid = torch.zeros(b, max(1, nmax), dtype=torch.bool, device=hidden.device)
        for i in range(b):
            k = int(n[i])
            if k == 0:
                continue
            if self.keys == "hidden":
                src = hidden[i][input_ids[i] == self.image_token_id]
            else:
                src = image_embeds[int(off[i]) : int(off[i]) + k].to(hidden.dtype)
            keys[i, :k] = src
            valid[i, :k] = True
        return self.lk(keys), valid

    def _joint(self, hidden: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        vocab = self.base.lm_head(hidden)
        copy = torch.einsum("btd,bnd->btn", self.lq(hidden), keys) * self.scale
        copy = copy.masked_fill(~valid[:, None, :], float("-inf"))
        return torch.cat([vocab, copy.to(vocab.dtype)], dim=-1)

    # ------------------------------------------------------------------ forward
    def forward_prepared(
        self, input_ids: torch.Tensor, prep: Prepared, labels: torch.Tensor | None, options: dict[str, Any]
    ) -> PointCopyOutput:
        """Teacher-forced joint logits (and loss) over a batch.

        Called by [`forward`][attrib.variants.base.VariantModel.forward]: ``model(input_ids, labels=...,
        copy_src=..., **inputs)``.

        Args:
            input_ids: ``(B, T)``; copy positions hold ``<|copy|>``.
            prep: The prepared inputs.
            labels: ``(B, T)`` joint targets (token id, or ``V + j`` for a copy of ``j``;
                ``-100`` ignored). Position ``t`` is predicted from ``t - 1``.
            options: ``copy_src``: ``(B, T)`` copied image-token index per position, ``-1`` elsewhere.
        """
        copy_src = options.get("copy_src")
        emb = self.embed(input_ids, copy_src, prep.image_embeds)
        pos = self.position_ids(input_ids, prep.mm_token_type_ids, prep.image_grid_thw, prep.attention_mask)
        hidden = self.base.model.language_model(
            inputs_embeds=emb, position_ids=pos, attention_mask=prep.attention_mask, use_cache=False
        ).last_hidden_state
        keys, valid = self._keys(input_ids, hidden, prep.image_embeds)
        logits = self._joint(hidden, keys, valid)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return PointCopyOutput(logits, self.n_vocab, valid.sum(1), hidden, loss)

    # ------------------------------------------------------------------ generation
    def prefill_embeds(self, input_ids: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """The prompt's input embeddings (no copies yet)."""
        return self.embed(input_ids, None, image_embeds)

    def decode_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """``forced`` (``(B, G)`` joint indices fed instead of the greedy choice: teacher forcing
        through the cache, ``G`` caps the length), ``return_logits`` (keep every step's joint
        logits) and ``copy_feed``: what a copy feeds back, ``"source"`` (the copied patch's image
        embedding: the mechanism) or, as interventions, ``"mean"`` (the row's mean image
        embedding) or ``"token"`` (the ``<|copy|>`` token's own embedding: no image content).

        Raises:
            ValueError: For an unknown ``copy_feed``.
        """
        copy_feed = options.get("copy_feed", "source")
        if copy_feed not in ("source", "mean", "token"):
            raise ValueError(f"copy_feed must be 'source', 'mean' or 'token', got {copy_feed!r}")
        return {
            "forced": options.get("forced"),
            "return_logits": bool(options.get("return_logits", False)),
            "copy_feed": copy_feed,
        }

    def decode_start(
        self, input_ids: torch.Tensor, hidden: torch.Tensor, image_embeds: torch.Tensor, options: dict[str, Any]
    ) -> _CopyState:
        """Copy keys of the prompt's image tokens, their layout, and the interventions' means."""
        keys, valid = self._keys(input_ids, hidden, image_embeds)
        row_mean = self._row_means(image_embeds, valid) if options["copy_feed"] == "mean" else None
        offsets = self._image_layout(input_ids)[1]
        return _CopyState(
            keys,
            valid,
            image_embeds,
            offsets,
            row_mean,
            options["forced"],
            options["copy_feed"],
            options["return_logits"],
            [],
            [],
        )

    def decode_steps(self, max_new_tokens: int, options: dict[str, Any]) -> int:
        """``max_new_tokens``, capped by the length of ``forced``."""
        forced = options["forced"]
        return max_new_tokens if forced is None else min(max_new_tokens, int(forced.shape[1]))

    def decode_step(self, h: torch.Tensor, state: _CopyState, step: int, done: torch.Tensor) -> DecodeStep:
        """Greedy (or forced) choice over the joint distribution; a copy feeds its patch's embedding."""
        joint = self._joint(h[:, None], state.keys, state.valid)[:, -1]  # (B, V + N)
        if state.return_logits:
            state.kept.append(joint)
        choice = joint.argmax(-1) if state.forced is None else state.forced[:, step].to(joint.device)
        v = self.n_vocab
        is_copy = choice >= v
        j = (choice - v).clamp(min=0)
        tok = torch.where(is_copy, torch.full_like(choice, self.copy_token_id), choice)
        src = torch.where(is_copy, j, torch.full_like(j, -1))
        tok = torch.where(done, torch.full_like(tok, self.pad_token_id), tok)
        src = torch.where(done, torch.full_like(src, -1), src)
        state.choices.append(torch.where(done, torch.full_like(choice, -1), choice))
        ie = state.image_embeds
        gidx = (state.offsets + j).clamp(max=max(0, ie.shape[0] - 1))
        e = self.base.get_input_embeddings()(tok)
        if state.copy_feed != "token":
            fed = ie[gidx] if state.row_mean is None else state.row_mean
            e = torch.where(is_copy[:, None], fed.to(e.dtype), e)
        return DecodeStep(tok, src, e)

    def decode_finish(self, generation: Generation, state: _CopyState) -> PointCopyGeneration:
        """A [`PointCopyGeneration`][attrib.variants.pointcopy.model.PointCopyGeneration] with the choices and (on
        request) the joint logits."""
        b = generation.sequences.shape[0]
        return PointCopyGeneration(
            sequences=generation.sequences,
            sources=generation.sources,
            prompt_len=generation.prompt_len,
            lengths=generation.lengths,
            choices=torch.stack(state.choices, dim=1) if state.choices else torch.zeros(b, 0, dtype=torch.long),
            n_vocab=self.n_vocab,
            logits=torch.stack(state.kept, dim=1) if state.kept else None,
        )

    def key_part(self) -> KeyPart:
        """Copy tokens alias their source image tokens: the ``via_copy`` part."""
        return KeyPart("via_copy", sources=[])

    def note_key(self, part: KeyPart, token: int, source: int, position: int) -> None:
        """A copy (``source >= 0``) joins the part with its source."""
        if source >= 0:
            assert part.sources is not None
            part.positions.append(position)
            part.sources.append(source)

    # ------------------------------------------------------------------ checkpoints
    def extra_tensors(self) -> dict[str, torch.Tensor]:
        """The copy heads."""
        return {"lq.weight": self.lq.weight, "lk.weight": self.lk.weight}

    def extra_meta(self) -> dict[str, Any]:
        """Key mode and copy token id."""
        return {"keys": self.keys, "copy_token_id": self.copy_token_id}

    @classmethod
    def from_meta(cls, base: Any, meta: dict[str, Any]) -> PointCopyModel:
        """A fresh wrapper with the recorded key mode and copy token id."""
        return cls(base, int(meta["copy_token_id"]), keys=meta["keys"])

    def load_extra_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy the saved heads in."""
        self.lq.weight.data.copy_(tensors["lq.weight"])
        self.lk.weight.data.copy_(tensors["lk.weight"])
