"""Tiny random configs of every supported VLM family, built in-process (no download)."""

from __future__ import annotations

from typing import Any

import torch

VOCAB = 128
IMG, VID, VSTART, VEND = 100, 101, 102, 103

FAMILY_NAMES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "glm4v", "llava")


def _rope(head_dim: int, partial: float = 1.0) -> dict[str, Any]:
    half = int(head_dim * partial) // 2
    t = half // 4
    h = (half - t) // 2
    return {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [t, h, half - t - h]}


def _text(**kw: Any) -> dict[str, Any]:
    base = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    base.update(kw)
    return base


def build(family: str, attn: str = "sdpa") -> Any:
    """A randomly initialised tiny model of ``family`` (eval mode, fixed seed)."""
    torch.manual_seed(0)
    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        cfg = Qwen2VLConfig(
            text_config=_text(rope_parameters=_rope(16)),
            vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2},
            image_token_id=IMG,
            video_token_id=VID,
            vision_start_token_id=VSTART,
            vision_end_token_id=VEND,
        )
        cls: Any = Qwen2VLForConditionalGeneration
    elif family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        cfg = Qwen2_5_VLConfig(
            text_config=_text(rope_parameters=_rope(16)),
            vision_config={
                "depth": 2,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 2,
                "out_hidden_size": 64,
                "window_size": 56,
                "fullatt_block_indexes": [1],
            },
            image_token_id=IMG,
            video_token_id=VID,
            vision_start_token_id=VSTART,
            vision_end_token_id=VEND,
        )
        cls = Qwen2_5_VLForConditionalGeneration
    elif family == "qwen3_vl":
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        cfg = Qwen3VLConfig(
            text_config=_text(head_dim=16, rope_parameters=_rope(16)),
            vision_config={
                "depth": 2,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 2,
                "out_hidden_size": 64,
                "patch_size": 16,
                "num_position_embeddings": 64,
                "deepstack_visual_indexes": [0],
            },
            image_token_id=IMG,
            video_token_id=VID,
            vision_start_token_id=VSTART,
            vision_end_token_id=VEND,
        )
        cls = Qwen3VLForConditionalGeneration
    elif family == "glm4v":
        from transformers import Glm4vConfig, Glm4vForConditionalGeneration

        cfg = Glm4vConfig(
            text_config=_text(rope_parameters={**_rope(16, 0.5), "partial_rotary_factor": 0.5}),
            vision_config={
                "depth": 2,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 2,
                "out_hidden_size": 64,
                "image_size": 56,
            },
            image_token_id=IMG,
            video_token_id=VID,
            image_start_token_id=VSTART,
            image_end_token_id=VEND,
        )
        cls = Glm4vForConditionalGeneration
    elif family == "llava":
        from transformers import LlavaConfig, LlavaForConditionalGeneration

        cfg = LlavaConfig(
            text_config={"model_type": "llama", **_text()},
            vision_config={
                "model_type": "clip_vision_model",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": 56,
                "patch_size": 14,
            },
            image_token_id=IMG,
            vision_feature_layer=-1,
        )
        cls = LlavaForConditionalGeneration
    else:
        raise ValueError(family)
    return cls._from_config(cfg, attn_implementation=attn).eval()


def inputs(family: str, *, n_text: int = 6, images: int = 1) -> dict[str, torch.Tensor]:
    """Model inputs with ``images`` images of a 2x3 merged grid (LLaVA: 4x4) and some text."""
    g = torch.Generator().manual_seed(1)
    text = torch.randint(10, 90, (n_text,), generator=g)
    if family == "llava":
        n_img, pv = 16, torch.randn(images, 3, 56, 56, generator=g)
        extra: dict[str, torch.Tensor] = {}
    else:
        patch = 16 if family == "qwen3_vl" else 14
        gh, gw = 4, 6
        n_img = gh * gw // 4
        pv = torch.randn(images * gh * gw, 3 * 2 * patch * patch, generator=g)
        extra = {"image_grid_thw": torch.tensor([[1, gh, gw]] * images)}
    parts = [torch.tensor([1])]
    for _ in range(images):
        parts += [torch.tensor([VSTART]), torch.full((n_img,), IMG), torch.tensor([VEND])]
    parts.append(text)
    ids = torch.cat(parts)[None]
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pv, **extra}
    if family != "llava":
        out["mm_token_type_ids"] = (ids == IMG).long()
    return out


def n_image_tokens(family: str) -> int:
    return 16 if family == "llava" else 6
