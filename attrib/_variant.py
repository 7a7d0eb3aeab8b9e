"""Pieces shared by the research variants that wrap a Qwen2/2.5-VL (v1 point-and-copy, latent tokens).

Both variants run their own decode loop over the base model's language model, so
they need the same four things from the base: the image input embeddings, M-RoPE
position ids in which their extra tokens are text tokens, and the stop and pad ids.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["eos_id", "image_embeddings", "pad_id", "rope_positions"]


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
