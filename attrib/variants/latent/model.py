"""The latent-visual-token variant of a Qwen2/2.5-VL model (GAP, granular alignment; see docs/latent.md).

Mechanism. The model writes ``<latent>``; the next ``n_latent`` input positions
then carry no token but a continuous vector computed from the model's own last
hidden state (a *latent token*, id ``<|latent|>`` in ``input_ids``); then
``</latent>`` follows and text resumes. The vector fed back, from the final,
normed hidden state ``h`` of the position before, depends on the *mode*:

* ``raw``: ``v = h``, the output-as-input paradigm (Monet, Coconut): a vector
  from the decoder's norm regime where the model expects an input embedding;
* ``ema``: ``v = h · ē / ‖h‖``, where ``ē`` is a running (exponential moving)
  average of the norm of the image input embeddings: EMA norm calibration;
* ``pca``: ``v = P_kᵀ F(h) + μ``, where ``F`` is a learned linear head
  (hidden -> k), and ``P_k`` (``k`` orthonormal rows) and ``μ`` are the principal
  axes and mean of the model's own image input embeddings (vision output after
  the merger): the PCA-aligned latent head. ``F`` starts at zero, so a fresh head
  emits the mean image embedding.

Training ([`attrib.shapes.latent_train`][attrib.shapes.latent_train]) supervises every latent with an
auxiliary target: the image input embedding of a cell of the object the sentence
refers to (``target`` in [`LatentModel.forward`][attrib.variants.base.VariantModel.forward]).

Position provenance: ``0`` text, ``1`` image token, ``3`` latent token (the codes
of ``attrib.analysis.norms.TOKEN_TYPES``).

Checkpoint layout (a directory):

```text
latent.json                class, version, mode, n_latent, token ids, base class
latent_head.safetensors    mu, basis, ema_norm, image_norm, text_norm (+ head.weight, head.bias for pca)
base/                      the wrapped Qwen2/2.5-VL
tokenizer.json, ...        the processor (extra tokens <latent>, </latent>, <|latent|>)
```

As with the point-and-copy variant, the plain class pointed at a latent directory
finds no ``config.json`` and fails; [`attrib.load`][attrib.models.loading.load] detects the layout. The
decode loop and the checkpoint I/O are [`VariantModel`][attrib.variants.base.VariantModel]'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from attrib.capture.sdpa import KeyPart
from attrib.variants.base import DecodeStep, Generation, Prepared, VariantModel

__all__ = [
    "LATENT",
    "LATENT_CLOSE",
    "LATENT_OPEN",
    "LATENT_TOKENS",
    "MODES",
    "LatentGeneration",
    "LatentModel",
    "LatentOutput",
    "latent_norm_stats",
    "require_latent",
]


#: What a latent feeds back (module docstring).
Mode = Literal["raw", "ema", "pca"]
#: Latent modes.
MODES: tuple[str, ...] = ("raw", "ema", "pca")
#: ``intervene(row, block, slot, v) -> v'``: replace a latent before it is fed.
Intervention = Callable[[int, int, int, torch.Tensor], torch.Tensor]

LATENT_OPEN, LATENT_CLOSE, LATENT = "<latent>", "</latent>", "<|latent|>"
#: The special tokens the variant adds to a vocabulary (ids after the base vocabulary).
LATENT_TOKENS: tuple[str, ...] = (LATENT_OPEN, LATENT_CLOSE, LATENT)


@dataclass
class LatentOutput:
    """What [`LatentModel.forward`][attrib.variants.base.VariantModel.forward] returns.

    Attributes:
        logits: ``(B, T, V)`` vocabulary logits.
        hidden: ``(B, T, d)`` final normed hidden states.
        latents: ``(n, d)`` the vectors fed at the latent slots (in slot order).
        loss: ``lm_loss + aux_weight * aux_loss`` (``None`` without labels).
        lm_loss: Cross-entropy over the labelled positions.
        aux_loss: Relative squared error of the predicted latents against their targets
            (``sum ‖v - t‖² / sum ‖t‖²``; ``0`` without latent slots).
    """

    logits: torch.Tensor
    hidden: torch.Tensor
    latents: torch.Tensor
    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


@dataclass
class LatentGeneration(Generation):
    """What [`LatentModel.generate`][attrib.variants.base.VariantModel.generate] returns.

    Attributes:
        sequences: ``(B, P + G)`` ids (``<|latent|>`` at latent positions; padding after EOS).
        sources: ``(B, P + G)`` all ``-1`` (latents alias no image token).
        prompt_len: ``P``.
        lengths: Generated positions per row, latents and EOS included.
        latents: Per row, the ``(block, slot, vector)`` of every latent fed (after any intervention).
        raw_latents: Per row, the vectors the model produced, before any intervention.
    """

    latents: list[list[tuple[int, int, torch.Tensor]]] = field(default_factory=list)
    raw_latents: list[list[torch.Tensor]] = field(default_factory=list)

    def ids(self, row: int = 0) -> list[int]:
        """Generated ids of row ``row`` (EOS included)."""
        return self.generated(row)[0]


@dataclass
class _LatentState:
    remaining: list[int]
    close_next: list[bool]
    block: list[int]
    latents: list[list[tuple[int, int, torch.Tensor]]]
    raw: list[list[torch.Tensor]]
    intervene: Intervention | None


class LatentModel(VariantModel):
    """A Qwen2/2.5-VL that feeds latent visual tokens back (see the module docstring).

    Generation ([`generate`][attrib.variants.base.VariantModel.generate]): after the model
    chooses ``<latent>``, the next ``n_latent`` positions take
    [`latent_vectors`][attrib.variants.latent.model.LatentModel.latent_vectors]
    of the hidden state before each (through the ``intervene`` option first, when
    given), then ``</latent>`` is fed and greedy decoding resumes. Latent slots count
    toward ``max_new_tokens``; ``on_token`` sees ``<|latent|>`` at latent positions.

    Args:
        base: A ``Qwen2_5_VLForConditionalGeneration`` or ``Qwen2VLForConditionalGeneration``
            whose vocabulary holds the three ``LATENT_TOKENS``.
        token_ids: Ids of ``<latent>``, ``</latent>`` and ``<|latent|>``.
        mode: ``"raw"``, ``"ema"`` or ``"pca"``.
        n_latent: Latent tokens per block.
        pca_k: Principal axes of the PCA-aligned head.
        ema_momentum: Momentum of the running image-embedding norm (``ema`` mode).

    Raises:
        ValueError: For an unsupported base class, mode, size or token id.
    """

    KIND = "latent-visual-token"
    META_FILE = "latent.json"
    WEIGHTS_FILE = "latent_head.safetensors"
    HOW_TO_GET = "It has no latent support; train one with `attrib latent train`."

    mu: torch.Tensor
    basis: torch.Tensor
    ema_norm: torch.Tensor
    image_norm: torch.Tensor
    text_norm: torch.Tensor

    def __init__(
        self,
        base: Any,
        token_ids: tuple[int, int, int],
        *,
        mode: Mode = "pca",
        n_latent: int = 4,
        pca_k: int = 32,
        ema_momentum: float = 0.99,
    ) -> None:
        super().__init__(base)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if n_latent < 1:
            raise ValueError(f"n_latent must be >= 1, got {n_latent}")
        if not 0 <= ema_momentum < 1:
            raise ValueError(f"ema_momentum must be in [0, 1), got {ema_momentum}")
        d = int(base.config.text_config.hidden_size)
        if not 1 <= pca_k <= d:
            raise ValueError(f"pca_k must be in [1, {d}], got {pca_k}")
        vocab = base.get_input_embeddings().num_embeddings
        if len(set(token_ids)) != 3 or not all(0 <= t < vocab for t in token_ids):
            raise ValueError(f"token ids {token_ids} must be three distinct ids inside the vocabulary ({vocab})")
        self.mode: Mode = mode
        self.n_latent = int(n_latent)
        self.pca_k = int(pca_k)
        self.ema_momentum = float(ema_momentum)
        self.open_id, self.close_id, self.latent_id = (int(t) for t in token_ids)
        self.register_buffer("mu", torch.zeros(d))
        self.register_buffer("basis", torch.zeros(self.pca_k, d))
        self.register_buffer("ema_norm", torch.ones(()))
        self.register_buffer("image_norm", torch.ones(()))
        self.register_buffer("text_norm", torch.ones(()))
        self.head: nn.Linear | None = None
        if mode == "pca":
            self.head = nn.Linear(d, self.pca_k)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    # ------------------------------------------------------------------ pieces
    @property
    def hidden_size(self) -> int:
        """``d``."""
        return int(self.mu.numel())

    @torch.no_grad()
    def init_alignment(self, image_embeds: torch.Tensor) -> None:
        """Set ``μ``, ``P_k`` and the reference norms from image input embeddings ``(N, d)``.

        Also sets the EMA norm to the mean image-embedding norm, and ``text_norm`` to
        the mean norm of the vocabulary's input embeddings.

        Raises:
            ValueError: With fewer than ``pca_k`` embeddings.
        """
        x = image_embeds.detach().float()
        if x.ndim != 2 or x.shape[1] != self.hidden_size:
            raise ValueError(f"image embeddings must be (N, {self.hidden_size}), got {tuple(x.shape)}")
        if x.shape[0] < self.pca_k:
            raise ValueError(f"PCA of {self.pca_k} axes needs at least {self.pca_k} embeddings, got {x.shape[0]}")
        mu = x.mean(0)
        _, _, vh = torch.linalg.svd(x - mu, full_matrices=False)
        self.mu.copy_(mu)
        self.basis.copy_(vh[: self.pca_k])
        norm = x.norm(dim=-1).mean()
        self.ema_norm.copy_(norm)
        self.image_norm.copy_(norm)
        self.text_norm.copy_(self.base.get_input_embeddings().weight.detach().float().norm(dim=-1).mean())

    @torch.no_grad()
    def update_ema(self, image_embeds: torch.Tensor) -> None:
        """One EMA step of the running image-embedding norm (``ema`` mode, training)."""
        if image_embeds.numel() == 0:
            return
        cur = image_embeds.detach().float().norm(dim=-1).mean()
        self.ema_norm.mul_(self.ema_momentum).add_((1 - self.ema_momentum) * cur)

    def latent_vectors(self, h: torch.Tensor) -> torch.Tensor:
        """The vector fed back from final hidden states ``h`` (``(..., d)``), by mode."""
        if self.mode == "raw":
            return h
        if self.mode == "ema":
            return h * (self.ema_norm.to(h.dtype) / h.norm(dim=-1, keepdim=True).clamp_min(1e-6))
        assert self.head is not None
        return self.head(h) @ self.basis.to(h.dtype) + self.mu.to(h.dtype)

    def embed(
        self, input_ids: torch.Tensor, image_embeds: torch.Tensor, latent_values: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Input embeddings: tokens, image embeddings at image positions, ``latent_values`` at latent positions.

        Args:
            input_ids: ``(B, T)``.
            image_embeds: ``(N_total, d)``.
            latent_values: ``(n, d)``: one vector per ``<|latent|>`` position, in
                row-major order (required when there are latent positions).

        Raises:
            ValueError: If counts of image tokens or latent positions do not match.
        """
        emb = self.base.get_input_embeddings()(input_ids)
        img = input_ids == self.image_token_id
        if int(img.sum()) != image_embeds.shape[0]:
            raise ValueError(f"{int(img.sum())} image tokens in input_ids but {image_embeds.shape[0]} image embeddings")
        emb = emb.masked_scatter(img[..., None], image_embeds.to(emb.dtype))
        lat = input_ids == self.latent_id
        n = int(lat.sum())
        if n == 0:
            return emb
        if latent_values is None or latent_values.shape[0] != n:
            got = None if latent_values is None else latent_values.shape[0]
            raise ValueError(f"{n} latent positions in input_ids but {got} latent vectors")
        return emb.masked_scatter(lat[..., None], latent_values.to(emb.dtype))

    def _targets(self, input_ids: torch.Tensor, target: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """Target vectors of the latent slots, ``(n, d)``, from per-position target cells."""
        lat = input_ids == self.latent_id
        n_img = (input_ids == self.image_token_id).sum(1)
        off = torch.cumsum(n_img, 0) - n_img
        rows = torch.nonzero(lat)[:, 0]
        cells = target[lat]
        if bool((cells < 0).any()) or bool((cells >= n_img[rows]).any()):
            raise ValueError("a latent target cell lies outside its example's image tokens")
        return image_embeds[off[rows] + cells]

    # ------------------------------------------------------------------ forward
    def forward_prepared(
        self, input_ids: torch.Tensor, prep: Prepared, labels: torch.Tensor | None, options: dict[str, Any]
    ) -> LatentOutput:
        """Training forward over a batch with latent slots (two passes when there are any).

        Called by [`forward`][attrib.variants.base.VariantModel.forward]: ``model(input_ids, labels=...,
        latent_target=..., aux_weight=..., **inputs)``.

        Pass 1 (no gradient) feeds the *target* embeddings at the latent slots and
        computes the latent the model would emit at every slot from the hidden state
        before it. Pass 2 feeds those latents (the model's own, given a correct
        context) and carries the gradient: the language-model loss on ``labels``,
        plus the auxiliary loss between the latents pass 2 predicts and the targets.

        Args:
            input_ids: ``(B, T)``; latent slots hold ``<|latent|>``.
            prep: The prepared inputs.
            labels: ``(B, T)`` token targets (``-100`` ignored); position ``t`` is predicted from ``t - 1``.
            options: ``latent_target`` (``(B, T)``: the image-token index, within its example,
                whose embedding is the target of each latent slot, ``-1`` elsewhere) and
                ``aux_weight`` (weight of the auxiliary loss, default 1).

        Raises:
            ValueError: With latent slots but no targets.
        """
        latent_target = options.get("latent_target")
        aux_weight = float(options.get("aux_weight", 1.0))
        image_embeds = prep.image_embeds
        attention_mask = prep.attention_mask
        if self.training and self.mode == "ema":
            self.update_ema(image_embeds)
        pos = self.position_ids(input_ids, prep.mm_token_type_ids, prep.image_grid_thw, attention_mask)
        lm = self.base.model.language_model
        lat = input_ids == self.latent_id
        # the hidden state that predicts slot t sits at t - 1
        before = torch.zeros_like(lat)
        before[:, :-1] = lat[:, 1:]
        targets: torch.Tensor | None = None
        fed: torch.Tensor | None = None
        if bool(lat.any()):
            if latent_target is None:
                raise ValueError("latent slots in input_ids but no latent_target")
            targets = self._targets(input_ids, latent_target, image_embeds).detach()
            with torch.no_grad():
                h1 = lm(
                    inputs_embeds=self.embed(input_ids, image_embeds, targets),
                    position_ids=pos,
                    attention_mask=attention_mask,
                    use_cache=False,
                ).last_hidden_state
                fed = self.latent_vectors(h1[before]).detach()
        hidden = lm(
            inputs_embeds=self.embed(input_ids, image_embeds, fed),
            position_ids=pos,
            attention_mask=attention_mask,
            use_cache=False,
        ).last_hidden_state
        logits = self.base.lm_head(hidden)
        latents = fed if fed is not None else hidden.new_zeros(0, hidden.shape[-1])
        if labels is None:
            return LatentOutput(logits, hidden, latents)
        lm_loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
        )
        aux = hidden.new_zeros(())
        if targets is not None:
            pred = self.latent_vectors(hidden[before]).float()
            aux = (pred - targets.float()).pow(2).sum() / targets.float().pow(2).sum().clamp_min(1e-6)
        return LatentOutput(logits, hidden, latents, lm_loss + aux_weight * aux, lm_loss, aux)

    # ------------------------------------------------------------------ generation
    def prefill_embeds(self, input_ids: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """The prompt's input embeddings."""
        return self.embed(input_ids, image_embeds)

    def decode_step(self, h: torch.Tensor, state: _LatentState, step: int, done: torch.Tensor) -> DecodeStep:
        """Greedy tokens; inside a latent block, the latent vectors (through ``intervene``) instead."""
        embed_tokens = self.base.get_input_embeddings()
        tok = self.base.lm_head(h).argmax(-1)
        e = embed_tokens(tok)
        vec = self.latent_vectors(h)
        for r in range(tok.shape[0]):
            if done[r]:
                tok[r] = self.pad_token_id
            elif state.remaining[r] > 0:
                slot = self.n_latent - state.remaining[r]
                v = vec[r]
                state.raw[r].append(v.detach().clone())
                if state.intervene is not None:
                    v = state.intervene(r, state.block[r], slot, v).to(e.dtype)
                state.latents[r].append((state.block[r], slot, v.detach().clone()))
                tok[r] = self.latent_id
                e[r] = v
                state.remaining[r] -= 1
                state.close_next[r] = state.remaining[r] == 0
            elif state.close_next[r]:
                tok[r] = self.close_id
                e[r] = embed_tokens.weight[self.close_id]
                state.close_next[r] = False
            elif int(tok[r]) == self.open_id:
                state.remaining[r] = self.n_latent
                state.block[r] += 1
        return DecodeStep(tok, torch.full_like(tok, -1), e)

    def decode_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """``intervene``: ``intervene(row, block, slot, v) -> v'`` replaces each latent before it is fed."""
        return {"intervene": options.get("intervene")}

    def decode_start(
        self, input_ids: torch.Tensor, hidden: torch.Tensor, image_embeds: torch.Tensor, options: dict[str, Any]
    ) -> _LatentState:
        """No latent block open in any row."""
        b = input_ids.shape[0]
        return _LatentState(
            [0] * b, [False] * b, [-1] * b, [[] for _ in range(b)], [[] for _ in range(b)], options["intervene"]
        )

    def decode_finish(self, generation: Generation, state: _LatentState) -> LatentGeneration:
        """A [`LatentGeneration`][attrib.variants.latent.model.LatentGeneration] with every latent fed (and
        produced)."""
        return LatentGeneration(
            sequences=generation.sequences,
            sources=generation.sources,
            prompt_len=generation.prompt_len,
            lengths=generation.lengths,
            latents=state.latents,
            raw_latents=state.raw,
        )

    def key_part(self) -> KeyPart:
        """Latent tokens alias no image token: a ``latent`` part of ``(L, H)`` mass."""
        return KeyPart("latent")

    def note_key(self, part: KeyPart, token: int, source: int, position: int) -> None:
        """A ``<|latent|>`` position joins the part."""
        if token == self.latent_id:
            part.positions.append(position)

    def generation_budget(self, max_new_tokens: int) -> int:
        """Latent slots count as positions: room for 4 blocks beyond ``max_new_tokens``."""
        return max_new_tokens + 4 * self.n_latent

    # ------------------------------------------------------------------ checkpoints
    def extra_tensors(self) -> dict[str, torch.Tensor]:
        """Alignment buffers, reference norms and (``pca``) the latent head."""
        tensors = {k: getattr(self, k) for k in ("mu", "basis", "ema_norm", "image_norm", "text_norm")}
        if self.head is not None:
            tensors["head.weight"] = self.head.weight
            tensors["head.bias"] = self.head.bias
        return tensors

    def extra_meta(self) -> dict[str, Any]:
        """Mode, block size, PCA rank, EMA momentum and token ids."""
        return {
            "mode": self.mode,
            "n_latent": self.n_latent,
            "pca_k": self.pca_k,
            "ema_momentum": self.ema_momentum,
            "token_ids": [self.open_id, self.close_id, self.latent_id],
        }

    @classmethod
    def from_meta(cls, base: Any, meta: dict[str, Any]) -> LatentModel:
        """A fresh latent model with the recorded settings."""
        return cls(
            base,
            tuple(int(t) for t in meta["token_ids"]),  # type: ignore[arg-type]
            mode=meta["mode"],
            n_latent=int(meta["n_latent"]),
            pca_k=int(meta["pca_k"]),
            ema_momentum=float(meta["ema_momentum"]),
        )

    def load_extra_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy the saved buffers and head in."""
        for k in ("mu", "basis", "ema_norm", "image_norm", "text_norm"):
            getattr(self, k).copy_(tensors[k])
        if self.head is not None:
            self.head.weight.data.copy_(tensors["head.weight"])
            self.head.bias.data.copy_(tensors["head.bias"])


def require_latent(model: Any) -> LatentModel:
    """``model`` if it is a [`LatentModel`][attrib.variants.latent.model.LatentModel].

    Raises:
        TypeError: Naming the model's class, for any model without latent support.
    """
    if not isinstance(model, LatentModel):
        raise TypeError(
            f"{type(model).__name__} has no latent support: latent probing needs a latent-visual-token model "
            "(attrib.variants.latent.LatentModel; train one with `attrib latent train`)"
        )
    return model


def latent_norm_stats(model: LatentModel, vectors: list[torch.Tensor]) -> dict[str, float]:
    """Mean latent norm and its ratio to the image and text input-embedding norms.

    Returns:
        ``{"n", "latent_norm", "ratio_to_image_input", "ratio_to_text_input"}`` (NaN without latents).
    """
    if not vectors:
        nan = float("nan")
        return {"n": 0, "latent_norm": nan, "ratio_to_image_input": nan, "ratio_to_text_input": nan}
    norm = float(np.mean([float(v.float().norm()) for v in vectors]))
    return {
        "n": len(vectors),
        "latent_norm": norm,
        "ratio_to_image_input": norm / float(model.image_norm),
        "ratio_to_text_input": norm / float(model.text_norm),
    }
