"""(PIL image, prompt) -> model inputs for every family, consistent with the region token grids."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_models as tm
from tiny_models import FAMILY_NAMES, IMG, build

from attrib.capture import capture_generate
from attrib.models.adapters import get_adapter
from attrib.models.inputs import InputBuilder
from attrib.regions import segment


def _builder(family: str) -> InputBuilder:
    return InputBuilder(
        get_adapter(family),
        tm.tokenizer(family),
        tm.image_processor(family),
        tokens_per_image=tm.n_image_tokens(family) if family in tm.SQUARE else None,
    )


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_builder_inputs_match_region_grid_and_capture_runs(family: str) -> None:
    model = build(family)
    builder = _builder(family)
    img = tm.test_image(family)
    x = builder(img, "w10 w11 w12")
    a = get_adapter(family)
    n = int((x["input_ids"] == IMG).sum())
    assert n == tm.n_image_tokens(family)
    part = segment(img, 4, method="grid")
    assign = part.assign_tokens(builder.grid_spec())
    assert assign.grid.n_tokens == n
    assert (a.token_type_key in x) if a.token_type_key else not ({"mm_token_type_ids", "token_type_ids"} & set(x))
    if a.token_type_key:
        assert int(x[a.token_type_key].sum()) == n  # exactly the image tokens are marked
    res = capture_generate(
        model, x, assign, decode=lambda ids: " ".join(f"w{i}." for i in ids), max_new_tokens=4, min_new_tokens=4
    )
    assert res.features.shape[1:] == (4, 2, 4) and len(res.spans) >= 1
    assert np.isfinite(res.features).all()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_system_prompt_and_answer_go_through_the_chat_template(family: str) -> None:
    builder = _builder(family)
    img = tm.test_image(family)
    plain = builder(img, "w10 w11")
    with_system = builder(img, "w10 w11", system="w20 w21")
    ids = with_system["input_ids"][0].tolist()
    assert ids[: len(ids)] != plain["input_ids"][0].tolist()
    assert 20 in ids and 21 in ids and 20 not in plain["input_ids"][0].tolist()
    assert ids.index(6) < ids.index(IMG)  # the system turn comes before the image
    assert int((with_system["input_ids"] == IMG).sum()) == tm.n_image_tokens(family)
    answered = builder(img, "w10 w11", answer="w30 w31")
    tail = answered["input_ids"][0].tolist()[-3:]
    assert tail[:2] == [30, 31] or tail[-2:] == [30, 31]


def test_builder_bad_input() -> None:
    builder = _builder("qwen2_5_vl")
    img = tm.test_image("qwen2_5_vl")
    with pytest.raises(ValueError, match="no image"):
        builder(None, "w10")
    with pytest.raises(ValueError, match="must not contain"):
        builder(img, "w10 <|image_pad|>")
    with pytest.raises(ValueError, match="lacks the image token"):
        InputBuilder(get_adapter("qwen2_5_vl"), tm.tokenizer("llava"), None)
