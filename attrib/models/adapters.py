"""Model adapters, described as data: one small record per VLM family.

An adapter says where the language model's decoder layers are, how to read
L, H and the KV heads from the config, which token id marks image tokens, how
the image's merged token grid is read from the inputs, and which
[`GridSpec`][attrib.regions.geometry.GridSpec] maps pixels to tokens. No code
elsewhere branches on model names: a new family is one more record here (see
docs/architecture.md, "A new model family").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "ADAPTERS",
    "CHECKPOINTS",
    "ModelAdapter",
    "adapter_for",
    "adapter_for_config",
    "get_adapter",
    "register_adapter",
    "register_checkpoint",
]


#: Config attributes holding the ids of image and video marker tokens, across families.
_VISION_TOKEN_ATTRS = (
    "image_token_id",
    "image_token_index",
    "video_token_id",
    "video_token_index",
    "vision_start_token_id",
    "vision_end_token_id",
    "image_start_token_id",
    "image_end_token_id",
    "video_start_token_id",
    "video_end_token_id",
    "boi_token_id",
    "eoi_token_id",
    "boi_token_index",
    "eoi_token_index",
    "image_seq_token_id",
)


@dataclass(frozen=True)
class ModelAdapter:
    """Where things are in one VLM family.

    Attributes:
        family: Family name (also the ``GridSpec`` name unless ``grid_family`` is set).
        classes: transformers class names handled (``*ForConditionalGeneration``).
        layers_path: Dotted path from the top model to the decoder layer list.
        attn_attr: Attribute of a decoder layer holding its self-attention module.
        image_token_attr: Config attribute holding the image token id.
        grid_source: ``"grid_thw"`` (rows/cols from ``image_grid_thw`` / merge) or
            ``"square"`` (a square grid of the image-token count, LLaVA).
        merge_attr: Vision-config attribute holding the spatial merge size.
        grid_family: Name of the pixel -> token ``GridSpec`` (defaults to ``family``).
        max_images: Images per prompt the capture supports.
        encode_once: Batched ablation forwards may reuse one vision encoding
            (``mm_encoder_outputs``); otherwise the image is re-encoded per batch.
        image_placeholder: Prompt text standing for one image when the tokenizer has no chat
            template (it must hold ``image_marker``).
        pad_token: The token repeated once per visual token.
        image_marker: The token the chat template emits for one image (default: ``pad_token``).
        image_sequence: What ``image_marker`` expands to, ``{pads}`` standing for the visual
            tokens (``pad_token`` once per token), e.g. ``"<img>{pads}</img>"``.
        image_processor: The PIL image processor: ``"qwen2_vl"`` (Qwen2-VL family), ``"glm4v"``,
            ``"clip"`` (LLaVA), ``"gemma3"`` or ``"got_ocr2"`` (InternVL).
        token_type_key: The input marking image tokens with 1 (``mm_token_type_ids`` for the Qwen
            and GLM families, as transformers 5.x requires; ``token_type_ids`` for Gemma 3), or
            ``None``.
        grid_from_processor: The pixel -> token grid follows the checkpoint's image processor
            (its pixel budget or canvas, its patch and merge sizes); otherwise the registered grid
            spec ``grid_spec_name`` is used.
        grid_temporal_factor: Frames per temporal patch in the processor's area rule (GLM: 2).
        square_rule: For a square grid, how its side follows from the config:
            ``"vision_patches"`` (``image_size / patch_size``, LLaVA), ``"mm_tokens_per_image"``
            (its square root, Gemma 3) or ``"downsample"`` (``image_size / patch_size *
            downsample_ratio``, InternVL's pixel shuffle).
        bidirectional_image: Image tokens attend to each other both ways (Gemma 3), so an
            ablation mask keeps that block.
    """

    family: str
    classes: tuple[str, ...]
    layers_path: str = "model.language_model.layers"
    attn_attr: str = "self_attn"
    image_token_attr: str = "image_token_id"
    grid_source: str = "grid_thw"
    merge_attr: str = "spatial_merge_size"
    grid_family: str | None = None
    max_images: int = 1
    encode_once: bool = True
    image_placeholder: str = "<|vision_start|><|image_pad|><|vision_end|>"
    pad_token: str = "<|image_pad|>"
    image_marker: str | None = None
    image_sequence: str = "{pads}"
    image_processor: str = "qwen2_vl"
    token_type_key: str | None = "mm_token_type_ids"
    grid_from_processor: bool = True
    grid_temporal_factor: int = 1
    square_rule: str = "vision_patches"
    bidirectional_image: bool = False

    def __post_init__(self) -> None:
        if self.grid_source not in ("grid_thw", "square"):
            raise ValueError(f"adapter {self.family}: grid_source must be 'grid_thw' or 'square'")
        if self.square_rule not in ("vision_patches", "mm_tokens_per_image", "downsample"):
            raise ValueError(f"adapter {self.family}: unknown square_rule {self.square_rule!r}")
        if "{pads}" not in self.image_sequence:
            raise ValueError(f"adapter {self.family}: image_sequence must hold '{{pads}}'")

    @property
    def marker(self) -> str:
        """The token the chat template emits for one image."""
        return self.image_marker or self.pad_token

    def square_side(self, config: Any) -> int:
        """Visual tokens per side of a square grid, from the model config (see ``square_rule``)."""
        if self.square_rule == "mm_tokens_per_image":
            return round(float(config.mm_tokens_per_image) ** 0.5)
        vc = config.vision_config
        size = vc.image_size[0] if isinstance(vc.image_size, (list, tuple)) else vc.image_size
        patch = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size
        side = int(size) // int(patch)
        if self.square_rule == "downsample":
            side = round(side * float(config.downsample_ratio))
        return side

    # ------------------------------------------------------------ reading the model
    def text_config(self, model: Any) -> Any:
        """The language model's config."""
        cfg = model.config
        return getattr(cfg, "text_config", cfg)

    def dims(self, model: Any) -> tuple[int, int, int]:
        """``(L, H, KV heads)`` of the language model."""
        tc = self.text_config(model)
        heads = int(tc.num_attention_heads)
        kv = int(getattr(tc, "num_key_value_heads", None) or heads)
        return int(tc.num_hidden_layers), heads, kv

    def layers(self, model: Any) -> list[torch.nn.Module]:
        """The decoder layers, in order.

        Raises:
            ValueError: If the path does not exist on this model.
        """
        obj = model
        for part in self.layers_path.split("."):
            if not hasattr(obj, part):
                raise ValueError(f"{type(model).__name__} has no {self.layers_path!r} (adapter {self.family!r})")
            obj = getattr(obj, part)
        return list(obj)

    def attention_modules(self, model: Any) -> list[torch.nn.Module]:
        """The language model's self-attention modules, one per layer."""
        return [getattr(layer, self.attn_attr) for layer in self.layers(model)]

    def image_token_id(self, model: Any) -> int:
        """The id of the image placeholder token."""
        tid = getattr(model.config, self.image_token_attr, None)
        if tid is None:
            tid = getattr(model.config, "image_token_index", None)
        if tid is None:
            raise ValueError(f"{type(model).__name__} config has no {self.image_token_attr}")
        return int(tid)

    def vision_token_ids(self, model: Any) -> list[int]:
        """Ids of the tokens that mark images and videos in a prompt (placeholder, start and end).

        A generated trace must not contain them: a teacher-forced forward over the trace would count them
        as more images (or shift the multimodal positions), so generation suppresses them.
        """
        cfg = model.config
        vocab = int(getattr(self.text_config(model), "vocab_size", 0) or 0)
        ids = {self.image_token_id(model)}
        for name in _VISION_TOKEN_ATTRS:
            v = getattr(cfg, name, None)
            if isinstance(v, int) and v >= 0:
                ids.add(v)
        return sorted(i for i in ids if not vocab or i < vocab)

    def image_grids(self, model: Any, inputs: dict[str, Any]) -> list[tuple[int, int]]:
        """Per image, the merged token grid ``(rows, cols)`` in the model's token order.

        Raises:
            ValueError: If the inputs hold no image.
        """
        ids = inputs["input_ids"]
        n_img_tokens = int((ids[0] == self.image_token_id(model)).sum())
        if n_img_tokens == 0:
            raise ValueError("the prompt holds no image tokens: pass an image with the prompt")
        if self.grid_source == "grid_thw":
            thw = inputs.get("image_grid_thw")
            if thw is None:
                raise ValueError("inputs lack image_grid_thw")
            merge = int(getattr(model.config.vision_config, self.merge_attr, 2))
            return [(int(h) // merge, int(w) // merge) for _, h, w in thw.tolist()]
        side = round(n_img_tokens**0.5)
        if side * side != n_img_tokens:
            raise ValueError(f"{n_img_tokens} image tokens do not form a square grid")
        return [(side, side)]

    @property
    def grid_spec_name(self) -> str:
        """Name of the ``GridSpec`` that maps pixels to this family's tokens."""
        return self.grid_family or self.family


ADAPTERS: dict[str, ModelAdapter] = {}
#: Public checkpoints (hub ids) mapped to their adapter family.
CHECKPOINTS: dict[str, str] = {}


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    """Register an adapter; a family or class already registered is refused."""
    if adapter.family in ADAPTERS:
        raise ValueError(f"adapter family {adapter.family!r} is already registered")
    for other in ADAPTERS.values():
        clash = set(other.classes) & set(adapter.classes)
        if clash:
            raise ValueError(f"classes {sorted(clash)} are already handled by adapter {other.family!r}")
    ADAPTERS[adapter.family] = adapter
    return adapter


def register_checkpoint(hub_id: str, family: str) -> None:
    """Map a public checkpoint id to an adapter family; duplicates are refused."""
    if hub_id in CHECKPOINTS:
        raise ValueError(f"checkpoint {hub_id!r} is already registered (family {CHECKPOINTS[hub_id]!r})")
    if family not in ADAPTERS:
        raise ValueError(f"unknown adapter family {family!r}; supported: {sorted(ADAPTERS)}")
    CHECKPOINTS[hub_id] = family


def get_adapter(family: str) -> ModelAdapter:
    """The adapter of ``family`` (or of a registered checkpoint id).

    Raises:
        ValueError: For an unknown name (the message lists the supported families).
    """
    family = CHECKPOINTS.get(family, family)
    if family not in ADAPTERS:
        raise ValueError(f"unsupported model family {family!r}; supported families: {sorted(ADAPTERS)}")
    return ADAPTERS[family]


def adapter_for(model: Any) -> ModelAdapter:
    """The adapter handling ``model``'s class.

    Raises:
        ValueError: For an unsupported class (the message lists the supported families).
    """
    name = type(model).__name__
    for a in ADAPTERS.values():
        if name in a.classes:
            return a
    raise ValueError(
        f"unsupported model class {name}; supported families: "
        + ", ".join(f"{a.family} ({'/'.join(a.classes)})" for a in ADAPTERS.values())
    )


def adapter_for_config(config: Any) -> ModelAdapter:
    """The adapter for a model *config* (before loading any weights).

    Raises:
        ValueError: For an unsupported architecture (the message lists the supported families).
    """
    for name in getattr(config, "architectures", None) or []:
        for a in ADAPTERS.values():
            if name in a.classes:
                return a
    mt = getattr(config, "model_type", None)
    if mt in ADAPTERS:
        return ADAPTERS[mt]
    raise ValueError(
        f"unsupported model (model_type={mt!r}, architectures={getattr(config, 'architectures', None)}); "
        "supported families: " + ", ".join(f"{a.family} ({'/'.join(a.classes)})" for a in ADAPTERS.values())
    )


register_adapter(ModelAdapter("qwen2_vl", ("Qwen2VLForConditionalGeneration",)))
register_adapter(ModelAdapter("qwen2_5_vl", ("Qwen2_5_VLForConditionalGeneration",)))
register_adapter(ModelAdapter("qwen3_vl", ("Qwen3VLForConditionalGeneration",), encode_once=False))
register_adapter(ModelAdapter("qwen3_vl_moe", ("Qwen3VLMoeForConditionalGeneration",), encode_once=False))
register_adapter(
    ModelAdapter(
        "glm4v",
        ("Glm4vForConditionalGeneration",),
        image_placeholder="<|begin_of_image|><|image|><|end_of_image|>",
        pad_token="<|image|>",
        image_processor="glm4v",
        grid_temporal_factor=2,
    )
)
register_adapter(
    ModelAdapter(
        "glm4v_moe",
        ("Glm4vMoeForConditionalGeneration",),
        image_placeholder="<|begin_of_image|><|image|><|end_of_image|>",
        pad_token="<|image|>",
        image_processor="glm4v",
        grid_temporal_factor=2,
    )
)
register_adapter(
    ModelAdapter(
        "gemma3",
        ("Gemma3ForConditionalGeneration",),
        grid_source="square",
        encode_once=False,
        image_placeholder="<start_of_image>",
        pad_token="<image_soft_token>",
        image_marker="<start_of_image>",
        image_sequence="\n\n<start_of_image>{pads}<end_of_image>\n\n",
        image_processor="gemma3",
        token_type_key="token_type_ids",
        square_rule="mm_tokens_per_image",
        bidirectional_image=True,
    )
)
register_adapter(
    ModelAdapter(
        "internvl",
        ("InternVLForConditionalGeneration",),
        grid_source="square",
        encode_once=False,
        image_placeholder="<image>",
        pad_token="<IMG_CONTEXT>",
        image_marker="<image>",
        image_sequence="<img>{pads}</img>",
        image_processor="got_ocr2",
        token_type_key=None,
        square_rule="downsample",
    )
)
register_adapter(
    ModelAdapter(
        "llava",
        ("LlavaForConditionalGeneration",),
        image_token_attr="image_token_id",
        grid_source="square",
        encode_once=False,
        image_placeholder="<image>",
        pad_token="<image>",
        image_processor="clip",
        token_type_key=None,
    )
)

register_checkpoint("Qwen/Qwen3-VL-8B-Thinking", "qwen3_vl")
register_checkpoint("zai-org/GLM-4.1V-9B-Thinking", "glm4v")
register_checkpoint("THUDM/GLM-4.1V-9B-Thinking", "glm4v")
register_checkpoint("XiaomiMiMo/MiMo-VL-7B-RL", "qwen2_5_vl")
register_checkpoint("nvidia/Cosmos-Reason1-7B", "qwen2_5_vl")
register_checkpoint("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl")
register_checkpoint("Qwen/Qwen2-VL-7B-Instruct", "qwen2_vl")
register_checkpoint("llava-hf/llava-1.5-7b-hf", "llava")
register_checkpoint("Qwen/Qwen3-VL-30B-A3B-Thinking", "qwen3_vl_moe")
register_checkpoint("zai-org/GLM-4.5V", "glm4v_moe")
register_checkpoint("google/gemma-3-12b-it", "gemma3")
register_checkpoint("OpenGVLab/InternVL3-8B-hf", "internvl")
