"""(PIL image, prompt) -> model inputs for every family, consistent with the region token grids."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tiny_models import FAMILY_NAMES, IMG, VEND, VSTART, build
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from attrib.capture import capture_generate
from attrib.models.adapters import get_adapter
from attrib.models.inputs import InputBuilder, load_image_processor
from attrib.regions import GridSpec, segment

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}PLACEHOLDER{% else %} {{ p['text'] }}{% endif %}{% endfor %}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant{% endif %}"
)


def _tokenizer(family: str) -> PreTrainedTokenizerFast:
    a = get_adapter(family)
    vocab = {f"w{i}": i for i in range(10, 90)}
    vocab |= {"<unk>": 0, "<pad>": 1, "<|im_start|>": 104, "<|im_end|>": 105, "user": 106, "assistant": 107}
    vocab[a.pad_token] = IMG
    specials = ["<|im_start|>", "<|im_end|>", a.pad_token]
    if family == "glm4v":
        vocab |= {"<|begin_of_image|>": VSTART, "<|end_of_image|>": VEND}
        specials += ["<|begin_of_image|>", "<|end_of_image|>"]
    elif family != "llava":
        vocab |= {"<|vision_start|>": VSTART, "<|vision_end|>": VEND}
        specials += ["<|vision_start|>", "<|vision_end|>"]
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>")
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = TEMPLATE.replace("PLACEHOLDER", a.image_placeholder)
    return tok


def _builder(family: str, model) -> tuple[InputBuilder, GridSpec, Image.Image]:  # type: ignore[no-untyped-def]
    a = get_adapter(family)
    if family == "llava":
        ip = load_image_processor("clip", size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
        spec = GridSpec("tiny_llava", 14, 1, "shortest_edge_crop", crop_size=56)
        img = Image.new("RGB", (80, 56), (200, 10, 10))
        return InputBuilder(a, _tokenizer(family), ip, tokens_per_image=16), spec, img
    patch = 16 if family == "qwen3_vl" else 14
    cell = 2 * patch
    if family == "glm4v":
        ip = load_image_processor("glm4v", size={"shortest_edge": 2 * cell * cell, "longest_edge": 4 * 6 * cell * cell})
        spec = GridSpec(
            "tiny_glm", 14, 2, "smart", min_pixels=2 * cell * cell, max_pixels=24 * cell * cell, temporal_factor=2
        )
    else:
        ip = load_image_processor(
            "qwen2_vl", patch_size=patch, merge_size=2, min_pixels=cell * cell, max_pixels=6 * cell * cell
        )
        spec = GridSpec("tiny_qwen", patch, 2, "smart", min_pixels=cell * cell, max_pixels=6 * cell * cell)
    img = Image.new("RGB", (3 * cell, 2 * cell), (200, 10, 10))
    return InputBuilder(a, _tokenizer(family), ip), spec, img


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_builder_inputs_match_region_grid_and_capture_runs(family: str) -> None:
    model = build(family)
    builder, spec, img = _builder(family, model)
    x = builder(img, "w10 w11 w12")
    a = get_adapter(family)
    n = int((x["input_ids"] == IMG).sum())
    part = segment(img, 4, method="grid")
    assign = part.assign_tokens(spec)
    assert assign.grid.n_tokens == n
    assert ("mm_token_type_ids" in x) == a.token_types
    res = capture_generate(
        model, x, assign, decode=lambda ids: " ".join(f"w{i}." for i in ids), max_new_tokens=4, min_new_tokens=4
    )
    assert res.features.shape[1:] == (4, 2, 4) and len(res.spans) >= 1
    assert np.isfinite(res.features).all()


def test_builder_bad_input() -> None:
    model = build("qwen2_5_vl")
    builder, _, img = _builder("qwen2_5_vl", model)
    with pytest.raises(ValueError, match="no image"):
        builder(None, "w10")
    with pytest.raises(ValueError, match="must not contain"):
        builder(img, "w10 <|image_pad|>")
    tok = _tokenizer("llava")
    with pytest.raises(ValueError, match="lacks the image token"):
        InputBuilder(get_adapter("qwen2_5_vl"), tok, None)
