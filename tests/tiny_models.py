"""Tiny random configs of every supported VLM family, built in-process (no download)."""

from __future__ import annotations

from typing import Any

import torch

VOCAB = 128
IMG, VID, VSTART, VEND = 100, 101, 102, 103

FAMILY_NAMES = (
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "glm4v",
    "llava",
    "qwen3_vl_moe",
    "glm4v_moe",
    "gemma3",
    "internvl",
)
#: Families whose visual tokens form a fixed square grid (the rest read their grid from ``image_grid_thw``).
SQUARE = ("llava", "gemma3", "internvl")


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
    elif family in ("qwen3_vl", "qwen3_vl_moe"):
        from transformers import (
            Qwen3VLConfig,
            Qwen3VLForConditionalGeneration,
            Qwen3VLMoeConfig,
            Qwen3VLMoeForConditionalGeneration,
        )

        moe = family == "qwen3_vl_moe"
        experts = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "decoder_sparse_step": 1}
        cfg = (Qwen3VLMoeConfig if moe else Qwen3VLConfig)(
            text_config=_text(head_dim=16, rope_parameters=_rope(16), **(experts if moe else {})),
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
        cls = Qwen3VLMoeForConditionalGeneration if moe else Qwen3VLForConditionalGeneration
    elif family in ("glm4v", "glm4v_moe"):
        from transformers import (
            Glm4vConfig,
            Glm4vForConditionalGeneration,
            Glm4vMoeConfig,
            Glm4vMoeForConditionalGeneration,
        )

        moe = family == "glm4v_moe"
        experts = {
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "first_k_dense_replace": 1,
            "n_shared_experts": 1,
        }
        cfg = (Glm4vMoeConfig if moe else Glm4vConfig)(
            text_config=_text(
                rope_parameters={**_rope(16, 0.5), "partial_rotary_factor": 0.5}, **(experts if moe else {})
            ),
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
        cls = Glm4vMoeForConditionalGeneration if moe else Glm4vForConditionalGeneration
    elif family == "gemma3":
        from transformers import Gemma3Config, Gemma3ForConditionalGeneration

        cfg = Gemma3Config(
            text_config={"model_type": "gemma3_text", **_text(head_dim=16, sliding_window=64)},
            vision_config={
                "model_type": "siglip_vision_model",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": 56,
                "patch_size": 14,
            },
            mm_tokens_per_image=4,
            image_token_index=IMG,
            boi_token_index=VSTART,
            eoi_token_index=VEND,
        )
        cls = Gemma3ForConditionalGeneration
    elif family == "internvl":
        from transformers import InternVLConfig, InternVLForConditionalGeneration

        cfg = InternVLConfig(
            text_config={"model_type": "qwen2", **_text()},
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": [56, 56],
                "patch_size": [14, 14],
            },
            image_token_id=IMG,
            downsample_ratio=0.5,
        )
        cls = InternVLForConditionalGeneration
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
    model = cls._from_config(cfg, attn_implementation=attn).eval()
    if family == "gemma3":  # its projection is zero-initialised: give the image tokens a signal
        with torch.no_grad():
            model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.2)
    return model


def inputs(family: str, *, n_text: int = 6, images: int = 1) -> dict[str, torch.Tensor]:
    """Model inputs with ``images`` images of a 2x3 merged grid (LLaVA: 4x4; Gemma 3, InternVL: 2x2) and some text."""
    g = torch.Generator().manual_seed(1)
    text = torch.randint(10, 90, (n_text,), generator=g)
    if family in SQUARE:
        n_img, pv = n_image_tokens(family), torch.randn(images, 3, 56, 56, generator=g)
        extra: dict[str, torch.Tensor] = {}
    else:
        patch = 16 if family.startswith("qwen3_vl") else 14
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
    key = type_key(family)
    if key is not None:
        out[key] = (ids == IMG).long()
    return out


def type_key(family: str) -> str | None:
    """The input that marks image tokens (``None``: the family has none)."""
    if family in ("llava", "internvl"):
        return None
    return "token_type_ids" if family == "gemma3" else "mm_token_type_ids"


def n_image_tokens(family: str) -> int:
    return {"llava": 16, "gemma3": 4, "internvl": 4}.get(family, 6)


# --------------------------------------------------------------------------- checkpoints on disk
#: Token of each id in the tiny vocabularies (ids 10-89 are words ``w10``..``w89``).
SPECIAL_IDS = {"<unk>": 0, "<pad>": 1, "<|im_end|>": 2, "<|im_start|>": 3, "<think>": 7, "</think>": 8, ".": 9}
_IMAGE_TOKENS = {  # family -> (pad token, start, end, marker or None)
    "qwen2_vl": ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>", None),
    "qwen2_5_vl": ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>", None),
    "qwen3_vl": ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>", None),
    "qwen3_vl_moe": ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>", None),
    "glm4v": ("<|image|>", "<|begin_of_image|>", "<|end_of_image|>", None),
    "glm4v_moe": ("<|image|>", "<|begin_of_image|>", "<|end_of_image|>", None),
    "llava": ("<image>", None, None, None),
    "gemma3": ("<image_soft_token>", "<start_of_image>", "<end_of_image>", None),
    "internvl": ("<IMG_CONTEXT>", "<img>", "</img>", "<image>"),
}
_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }}{% if m['content'] is string %} {{ m['content'] }}"
    "{% else %}{% for p in m['content'] %}{% if p['type'] == 'image' %} PLACEHOLDER{% else %} {{ p['text'] }}"
    "{% endif %}{% endfor %}{% endif %} <|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant"
    "{% endif %}"
)


def tokenizer(family: str, *, sentences: bool = False) -> Any:
    """A word-level tokenizer over the tiny vocabulary, with the family's image tokens and a chat template.

    With ``sentences``, the words of ids 60-89 and the ``x`` words end with a full stop (``"x91."``), so that a
    random model's sampled trace has sentence spans every few tokens; prompts use ``w10``..``w59``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from attrib.models.adapters import get_adapter

    pad, start, end, marker = _IMAGE_TOKENS[family]
    dot = "." if sentences else ""
    vocab = {f"w{i}" + (dot if i >= 60 else ""): i for i in range(10, 90)}
    vocab |= {f"x{i}{dot}": i for i in (*range(90, 100), *range(105, VOCAB))}
    vocab |= SPECIAL_IDS | {"user": 4, "assistant": 5, "system": 6, pad: IMG, "<|video_pad|>": VID}
    specials = ["<|im_start|>", "<|im_end|>", "<think>", "</think>", pad]
    for tok, tid in ((start, VSTART), (end, VEND), (marker, 104)):
        if tok is not None:
            vocab[tok] = tid
            specials.append(tok)
    if family == "llava":
        vocab[f"x102{dot}"], vocab[f"x103{dot}"], vocab[f"x104{dot}"] = 102, 103, 104
    elif 104 not in vocab.values():
        vocab[f"x104{dot}"] = 104
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>")
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = _TEMPLATE.replace("PLACEHOLDER", get_adapter(family).image_placeholder)
    return tok


def image_processor(family: str) -> Any:
    """The family's PIL image processor, sized so that a 84 x 56 image (LLaVA, Gemma 3, InternVL: any) gives
    :func:`n_image_tokens` visual tokens."""
    from attrib.models.adapters import get_adapter
    from attrib.models.inputs import load_image_processor

    kind = get_adapter(family).image_processor
    if kind == "clip":
        return load_image_processor("clip", size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    if kind in ("gemma3", "got_ocr2"):
        return load_image_processor(kind, size={"height": 56, "width": 56})
    patch = 16 if family.startswith("qwen3_vl") else 14
    cell = 2 * patch
    if kind == "glm4v":
        return load_image_processor(
            "glm4v", size={"shortest_edge": 2 * cell * cell, "longest_edge": 4 * 6 * cell * cell}
        )
    return load_image_processor(
        "qwen2_vl", patch_size=patch, merge_size=2, min_pixels=cell * cell, max_pixels=6 * cell * cell
    )


def test_image(family: str, colour: tuple[int, int, int] = (200, 10, 10)) -> Any:
    """An image of the size :func:`image_processor` turns into :func:`n_image_tokens` tokens."""
    from PIL import Image

    cell = 32 if family.startswith("qwen3_vl") else 28
    return Image.new("RGB", (3 * cell, 2 * cell), colour)


def save_checkpoint(
    family: str, path: Any, *, shard_size: str = "100KB", dtype: Any = None, sentences: bool = True
) -> Any:
    """Save a tiny random model of ``family`` as a user's checkpoint arrives: sharded safetensors with the
    index file, config, tokenizer with its chat template, and the image processor's config.

    ``sentences``: see :func:`tokenizer` (sampled traces then have spans).

    Returns:
        The directory.
    """
    from pathlib import Path

    out = Path(path)
    model = build(family)
    cfg = model.config
    text = getattr(cfg, "text_config", cfg)
    text.eos_token_id, text.pad_token_id = SPECIAL_IDS["<|im_end|>"], SPECIAL_IDS["<pad>"]
    if dtype is not None:
        model = model.to(dtype)
    model.generation_config.eos_token_id = SPECIAL_IDS["<|im_end|>"]
    model.generation_config.pad_token_id = SPECIAL_IDS["<pad>"]
    if sentences:  # a random model would otherwise close its thinking block at random
        model.generation_config.suppress_tokens = [SPECIAL_IDS["<think>"], SPECIAL_IDS["</think>"]]
    model.save_pretrained(out, max_shard_size=shard_size)
    tokenizer(family, sentences=sentences).save_pretrained(out)
    image_processor(family).save_pretrained(out)
    return out


# --------------------------------------------------------------------------- references
def eager_rows(model: Any, full_ids: Any, x: dict[str, Any], prompt_len: int, assign: Any) -> Any:
    """Reference: eager attention of the full (prompt + generated) sequence, rows that predict each token:
    ``(T, K, L, H)`` attention mass on each region's image tokens (``assign``: ``(K, N_image)``)."""
    import numpy as np

    from attrib.models.adapters import adapter_for as _adapter_for

    model.set_attn_implementation("eager")
    key = _adapter_for(model).token_type_key
    try:
        kw = {k: v for k, v in x.items() if k not in ("input_ids", "attention_mask") and k != key}
        extra = {}
        if key is not None and key in x:
            extra[key] = torch.cat([x[key], torch.zeros(1, full_ids.shape[1] - prompt_len, dtype=torch.long)], 1)
        with torch.no_grad():
            out = model(
                input_ids=full_ids, attention_mask=torch.ones_like(full_ids), output_attentions=True, **kw, **extra
            )
    finally:
        model.set_attn_implementation("sdpa")
    img = torch.nonzero(x["input_ids"][0] == _adapter_for(model).image_token_id(model)).flatten()
    m = torch.as_tensor(np.asarray(assign).T, dtype=torch.float32)
    rows = []
    for t in range(full_ids.shape[1] - prompt_len):
        q = prompt_len - 1 + t
        per_layer = [a[0, :, q, img].float() @ m for a in out.attentions]  # (H, K)
        rows.append(torch.stack(per_layer).permute(2, 0, 1).numpy())  # (K, L, H)
    return np.stack(rows)
