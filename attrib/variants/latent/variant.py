"""The latent-visual-token variant in the pipeline: its model kind and its
[`Variant`][attrib.variants.registry.Variant]."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from attrib.analysis.norms import token_types
from attrib.variants.base import register_research_variant
from attrib.variants.latent.model import LatentModel
from attrib.variants.registry import NormItem, ResearchVariant

if TYPE_CHECKING:
    from attrib.models.loading import LoadedModel

__all__ = ["LatentVariant", "latent_norm_states", "register"]


@torch.inference_mode()
def latent_norm_states(
    model: LatentModel,
    inputs: Iterable[dict[str, torch.Tensor]],
    *,
    eos_token_id: int | None = None,
    max_new_tokens: int = 256,
) -> Iterator[tuple[Sequence[torch.Tensor], np.ndarray]]:
    """Per input, every layer's hidden states along the model's own greedy trace, and the token types.

    Each input is decoded greedily (latents fed back as in generation, at most ``max_new_tokens``
    positions, latent ones included), then the whole sequence is run once more to read every layer's
    hidden states; latent positions are token type ``latent`` (code 3), whose entry 0 is the fed-back
    vector itself.
    """
    for b in inputs:
        embeds = model.image_embeddings(b["pixel_values"], b["image_grid_thw"])
        g = model.generate(
            b["input_ids"],
            attention_mask=b["attention_mask"],
            mm_token_type_ids=b.get("mm_token_type_ids"),
            image_grid_thw=b["image_grid_thw"],
            image_embeds=embeds,
            eos_token_id=eos_token_id,
            max_new_tokens=max_new_tokens,
        )
        seq = g.sequences[:, : g.prompt_len + g.lengths[0]]
        vecs = [v for _, _, v in getattr(g, "latents", [[]])[0]]
        lat = torch.stack(vecs) if vecs else None
        mm = (seq == model.image_token_id).long()
        pos = model.position_ids(seq, mm, b["image_grid_thw"], None)
        out = model.base.model.language_model(
            inputs_embeds=model.embed(seq, embeds, lat), position_ids=pos, output_hidden_states=True, use_cache=False
        )
        where = torch.nonzero(seq[0] == model.latent_id).flatten().tolist()
        yield (
            [h.detach() for h in out.hidden_states],
            token_types(seq[0], model.image_token_id, dict.fromkeys(where, 3)),
        )


class LatentVariant(ResearchVariant):
    """Latent tokens as a key part of their own (``latent``: ``(L, H)`` mass); no ablation through latents."""

    name = "latent"
    description = "latent visual tokens (GAP): decoder states fed back as input positions"
    parts: tuple[str, ...] = ("latent",)

    def norm_states(
        self, loaded: LoadedModel, items: Sequence[NormItem]
    ) -> Iterator[tuple[Sequence[torch.Tensor], np.ndarray]] | None:
        """Along the model's own greedy traces
        ([`latent_norm_states`][attrib.variants.latent.variant.latent_norm_states]); references are not used."""
        return latent_norm_states(
            loaded.model, (loaded.build(im, q) for im, q, _ in items), eos_token_id=loaded.eos_token_id
        )


def register() -> None:
    """Register the model kind (with [`attrib.models`][attrib.models]) and the variant (with
    [`attrib.variants`][attrib.variants])."""
    register_research_variant(LatentModel, LatentVariant())
