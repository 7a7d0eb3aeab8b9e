"""The v1 point-and-copy variant of a Qwen2/2.5-VL model.

Mechanism (v1, Chung et al.; ../shared/DESIGN.md §5):

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

Provenance of every position is :func:`provenance`: ``0`` text, ``1`` image token
``j``, ``2`` copy of image token ``j``.

Checkpoint layout (a directory)::

    pointcopy.json            class, version, key mode, copy token id, base class
    copy_heads.safetensors    lq.weight, lk.weight
    base/                     the wrapped Qwen2/2.5-VL (config.json, model.safetensors)
    tokenizer.json, ...       the processor (extra tokens <region>, </region>, <|copy|>)

The base weights sit in ``base/`` on purpose: the plain class pointed at a v1
directory finds no ``config.json`` and fails, and :func:`check_not_pointcopy`
turns that into a clear message in attrib's own loaders.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F  # noqa: N812

from attrib._variant import eos_id, image_embeddings, pad_id, rope_positions

__all__ = [
    "COPY",
    "COPY_TOKENS",
    "REGION_CLOSE",
    "REGION_OPEN",
    "PointCopyGeneration",
    "PointCopyModel",
    "PointCopyOutput",
    "check_not_pointcopy",
    "is_pointcopy_dir",
    "provenance",
]

logger = logging.getLogger(__name__)

REGION_OPEN, REGION_CLOSE, COPY = "<region>", "</region>", "<|copy|>"
#: The special tokens the variant adds to a vocabulary (ids after the base vocabulary).
COPY_TOKENS: tuple[str, ...] = (REGION_OPEN, REGION_CLOSE, COPY)
_META = "pointcopy.json"
_HEADS = "copy_heads.safetensors"
_SUPPORTED = ("Qwen2_5_VLForConditionalGeneration", "Qwen2VLForConditionalGeneration")

KeyMode = Literal["hidden", "embeds"]


def is_pointcopy_dir(path: str | Path) -> bool:
    """Whether ``path`` is a point-and-copy checkpoint directory."""
    return (Path(path) / _META).is_file()


def check_not_pointcopy(path: str | Path) -> None:
    """Refuse a v1 checkpoint where a plain model is expected.

    Raises:
        ValueError: If ``path`` holds a point-and-copy checkpoint.
    """
    if is_pointcopy_dir(path):
        raise ValueError(
            f"{path} is a v1 point-and-copy checkpoint, not a plain model; load it with "
            "attrib.pointcopy.PointCopyModel.from_pretrained (or pass it where a point-and-copy model is accepted)"
        )


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
    """What :meth:`PointCopyModel.forward` returns.

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
class PointCopyGeneration:
    """What :meth:`PointCopyModel.generate` returns.

    Attributes:
        sequences: ``(B, P + G)`` ids (``<|copy|>`` at copy positions; padding after EOS).
        copy_src: ``(B, P + G)`` copied image-token index, ``-1`` elsewhere.
        prompt_len: ``P``.
        choices: ``(B, G)`` joint indices chosen (``>= V`` for copies; ``-1`` after EOS).
        n_vocab: ``V``.
        lengths: Generated tokens per row, EOS included.
        logits: ``(B, G, V + N)`` joint logits of every step (``return_logits=True``).
    """

    sequences: torch.Tensor
    copy_src: torch.Tensor
    prompt_len: int
    choices: torch.Tensor
    n_vocab: int
    lengths: list[int] = field(default_factory=list)
    logits: torch.Tensor | None = None

    def generated(self, row: int = 0) -> tuple[list[int], list[int]]:
        """``(ids, copy sources)`` of row ``row``'s generated tokens (EOS included)."""
        n = self.lengths[row]
        s = self.prompt_len
        return (
            [int(x) for x in self.sequences[row, s : s + n]],
            [int(x) for x in self.copy_src[row, s : s + n]],
        )


class PointCopyModel(nn.Module):
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

    def __init__(self, base: Any, copy_token_id: int, *, keys: KeyMode = "hidden") -> None:
        super().__init__()
        if type(base).__name__ not in _SUPPORTED:
            raise ValueError(f"point-and-copy wraps {' or '.join(_SUPPORTED)}, got {type(base).__name__}")
        if keys not in ("hidden", "embeds"):
            raise ValueError(f"keys must be 'hidden' or 'embeds', got {keys!r}")
        self.base = base
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
        self.image_token_id = int(base.config.image_token_id)

    # ------------------------------------------------------------------ pieces
    @property
    def config(self) -> Any:
        """The base model's config."""
        return self.base.config

    def get_input_embeddings(self) -> nn.Module:
        """The base model's token embedding table (``<|copy|>`` included)."""
        return self.base.get_input_embeddings()  # type: ignore[no-any-return]

    @property
    def n_vocab(self) -> int:
        """Vocabulary logits per position (``V``)."""
        return int(self.base.lm_head.out_features)

    def image_embeddings(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """All images' input embeddings (vision output after the merger), ``(N_total, d)``."""
        return image_embeddings(self.base, pixel_values, image_grid_thw)

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

    def position_ids(
        self,
        input_ids: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        image_grid_thw: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """M-RoPE position ids ``(3, B, T)``; copy tokens are text tokens here."""
        return rope_positions(self.base, input_ids, mm_token_type_ids, image_grid_thw, attention_mask)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        copy_src: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        **_: Any,
    ) -> PointCopyOutput:
        """Teacher-forced joint logits (and loss) over a batch.

        Args:
            input_ids: ``(B, T)``; copy positions hold ``<|copy|>``.
            attention_mask: ``(B, T)`` (left padding).
            mm_token_type_ids: ``(B, T)``, 1 on image tokens.
            pixel_values: Patchified pixels of every image.
            image_grid_thw: ``(n_images, 3)``.
            copy_src: ``(B, T)`` copied image-token index per position, ``-1`` elsewhere.
            labels: ``(B, T)`` joint targets (token id, or ``V + j`` for a copy of ``j``;
                ``-100`` ignored). Position ``t`` is predicted from ``t - 1``.
            image_embeds: Precomputed :meth:`image_embeddings` (skips the vision tower).

        Raises:
            ValueError: If neither pixels nor image embeddings are given.
        """
        if image_grid_thw is None:
            raise ValueError("point-and-copy needs image_grid_thw")
        if image_embeds is None:
            if pixel_values is None:
                raise ValueError("point-and-copy needs pixel_values or image_embeds")
            image_embeds = self.image_embeddings(pixel_values, image_grid_thw)
        if mm_token_type_ids is None:
            mm_token_type_ids = (input_ids == self.image_token_id).long()
        emb = self.embed(input_ids, copy_src, image_embeds)
        pos = self.position_ids(input_ids, mm_token_type_ids, image_grid_thw, attention_mask)
        hidden = self.base.model.language_model(
            inputs_embeds=emb, position_ids=pos, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        keys, valid = self._keys(input_ids, hidden, image_embeds)
        logits = self._joint(hidden, keys, valid)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return PointCopyOutput(logits, self.n_vocab, valid.sum(1), hidden, loss)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 256,
        eos_token_id: int | None = None,
        on_token: Callable[[int, int, int], bool | None] | None = None,
        image_embeds: torch.Tensor | None = None,
        forced: torch.Tensor | None = None,
        return_logits: bool = False,
        copy_feed: str = "source",
        **_: Any,
    ) -> PointCopyGeneration:
        """Greedy decoding with the KV cache; copies feed image embeddings back.

        Args:
            input_ids: ``(B, P)`` left-padded prompts.
            attention_mask: ``(B, P)``.
            mm_token_type_ids: ``(B, P)``.
            pixel_values: Patchified pixels.
            image_grid_thw: ``(n_images, 3)``.
            max_new_tokens: Generation budget.
            eos_token_id: Stop a row at this id (default: the config's ``eos_token_id``).
            on_token: Called as ``on_token(row, token_id, copy_src)`` for every new token
                (``copy_src`` ``-1`` for text); returning ``True`` stops generation.
            image_embeds: Precomputed image embeddings (skips the vision tower).
            forced: ``(B, G)`` joint indices to feed instead of the greedy choice
                (teacher forcing through the cache; ``G`` caps the length).
            return_logits: Keep every step's joint logits in the result.
            copy_feed: What a copy feeds back: ``"source"`` (the copied patch's image
                embedding: the mechanism), or, as interventions, ``"mean"`` (the row's
                mean image embedding) or ``"token"`` (the ``<|copy|>`` token's own input
                embedding: no image content). The choice of patch is unchanged.

        Returns:
            A :class:`PointCopyGeneration`.

        Raises:
            ValueError: For an unknown ``copy_feed`` or missing image inputs.
        """
        from transformers import DynamicCache

        if copy_feed not in ("source", "mean", "token"):
            raise ValueError(f"copy_feed must be 'source', 'mean' or 'token', got {copy_feed!r}")
        if image_grid_thw is None:
            raise ValueError("point-and-copy needs image_grid_thw")
        b, p = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if mm_token_type_ids is None:
            mm_token_type_ids = (input_ids == self.image_token_id).long()
        if image_embeds is None:
            if pixel_values is None:
                raise ValueError("point-and-copy needs pixel_values or image_embeds")
            image_embeds = self.image_embeddings(pixel_values, image_grid_thw)
        eos = eos_token_id if eos_token_id is not None else eos_id(self.base.config)
        pad = pad_id(self.base.config)
        off = self._image_layout(input_ids)[1]
        lm = self.base.model.language_model
        cache = DynamicCache(config=self.base.config.text_config)
        emb = self.embed(input_ids, None, image_embeds)
        pos = self.position_ids(input_ids, mm_token_type_ids, image_grid_thw, attention_mask)
        out = lm(
            inputs_embeds=emb, position_ids=pos, attention_mask=attention_mask, past_key_values=cache, use_cache=True
        )
        hidden = out.last_hidden_state
        keys, valid = self._keys(input_ids, hidden, image_embeds)
        row_mean = self._row_means(image_embeds, valid) if copy_feed == "mean" else None
        next_pos = pos.amax(dim=(0, 2)) + 1  # (B,)
        h = hidden[:, -1:]
        seqs = [input_ids]
        srcs = [torch.full_like(input_ids, -1)]
        choices: list[torch.Tensor] = []
        done = torch.zeros(b, dtype=torch.bool)
        lengths = [0] * b
        embed_tokens = self.base.get_input_embeddings()
        v = self.n_vocab
        steps = max_new_tokens if forced is None else min(max_new_tokens, forced.shape[1])
        kept: list[torch.Tensor] = []
        for step in range(steps):
            joint = self._joint(h, keys, valid)[:, -1]  # (B, V + N)
            if return_logits:
                kept.append(joint)
            choice = joint.argmax(-1) if forced is None else forced[:, step].to(joint.device)
            is_copy = choice >= v
            j = (choice - v).clamp(min=0)
            tok = torch.where(is_copy, torch.full_like(choice, self.copy_token_id), choice)
            src = torch.where(is_copy, j, torch.full_like(j, -1))
            tok = torch.where(done, torch.full_like(tok, pad), tok)
            src = torch.where(done, torch.full_like(src, -1), src)
            choices.append(torch.where(done, torch.full_like(choice, -1), choice))
            seqs.append(tok[:, None])
            srcs.append(src[:, None])
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
            gidx = (off + j).clamp(max=max(0, image_embeds.shape[0] - 1))
            e = embed_tokens(tok)
            if copy_feed != "token":
                fed = image_embeds[gidx] if row_mean is None else row_mean
                e = torch.where(is_copy[:, None], fed.to(e.dtype), e)
            attention_mask = torch.cat([attention_mask, (~done).long()[:, None]], dim=1)
            step_pos = next_pos.view(1, b, 1).expand(3, b, 1)
            next_pos = next_pos + 1
            h = lm(
                inputs_embeds=e[:, None],
                position_ids=step_pos,
                attention_mask=attention_mask,
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state
        return PointCopyGeneration(
            sequences=torch.cat(seqs, dim=1),
            copy_src=torch.cat(srcs, dim=1),
            prompt_len=p,
            choices=torch.stack(choices, dim=1) if choices else torch.zeros(b, 0, dtype=torch.long),
            n_vocab=v,
            lengths=lengths,
            logits=torch.stack(kept, dim=1) if kept else None,
        )

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | Path) -> None:
        """Write the checkpoint layout described in the module docstring."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        self.base.save_pretrained(p / "base")
        save_file(
            {"lq.weight": self.lq.weight.detach().contiguous(), "lk.weight": self.lk.weight.detach().contiguous()},
            str(p / _HEADS),
        )
        meta = {
            "class": "PointCopyModel",
            "version": 1,
            "keys": self.keys,
            "copy_token_id": self.copy_token_id,
            "base_class": type(self.base).__name__,
        }
        (p / _META).write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> PointCopyModel:
        """Load a checkpoint written by :meth:`save_pretrained` (safetensors + JSON only).

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If ``path`` is a plain model or its files are corrupt.
        """
        import transformers

        p = Path(path)
        if not p.is_dir():
            raise FileNotFoundError(f"model directory not found: {p}")
        if not is_pointcopy_dir(p):
            raise ValueError(
                f"{p} is not a v1 point-and-copy checkpoint (no {_META}); load a plain model with its own class "
                "(e.g. attrib.shapes.model.load_model)"
            )
        try:
            meta = json.loads((p / _META).read_text())
            base_cls = getattr(transformers, meta["base_class"])
            base = base_cls.from_pretrained(p / "base", **kwargs)
            heads = load_file(str(p / _HEADS))
        except (OSError, KeyError, AttributeError, json.JSONDecodeError, Exception) as e:
            raise ValueError(f"corrupt point-and-copy checkpoint {p}: {e}") from e
        model = cls(base, int(meta["copy_token_id"]), keys=meta["keys"])
        model.lq.weight.data.copy_(heads["lq.weight"])
        model.lk.weight.data.copy_(heads["lk.weight"])
        return model.eval()
