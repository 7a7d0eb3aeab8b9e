"""The training fast paths compute what the stock modules compute."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from attrib.io import to_rgb
from attrib.shapes import make_example
from attrib.shapes.fastpath import vision_fast_path
from attrib.shapes.model import ModelSize, build_config
from attrib.shapes.processor import ShapesProcessor
from attrib.shapes.train import TrainConfig, step_batch


def _model(proc: ShapesProcessor) -> torch.nn.Module:
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(build_config(proc, ModelSize.tiny())).train()


def test_fast_path_matches_stock_loss_and_gradients(shapes_processor: ShapesProcessor) -> None:
    model = _model(shapes_processor)
    batch = step_batch(shapes_processor, TrainConfig(batch_size=3, size=ModelSize.tiny()), 0)
    ref = model(**batch).loss
    ref.backward()
    g0 = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    with vision_fast_path(model) as n:
        assert n == 1 + len(model.model.visual.blocks)  # the patch embedding and every attention block
        out = model(**batch).loss
        out.backward()
    assert torch.allclose(ref, out, rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        if name in g0:
            assert torch.allclose(g0[name], p.grad, rtol=1e-3, atol=1e-6), name
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_fast_path_falls_back_on_unequal_windows(shapes_processor: ShapesProcessor) -> None:
    model = _model(shapes_processor).eval()
    rng = np.random.default_rng(0)
    # 280 x 336: windows at the image border are smaller than the others
    im = Image.fromarray(rng.integers(0, 256, (280, 336, 3), dtype=np.uint8))
    batch = shapes_processor([im], ["How many objects are there?"])
    with torch.no_grad():
        ref = model(**batch).logits
        with vision_fast_path(model):
            fast = model(**batch).logits
    assert torch.allclose(ref, fast, atol=1e-5)


def test_fast_path_is_removed_on_error(shapes_processor: ShapesProcessor) -> None:
    model = _model(shapes_processor)
    with pytest.raises(RuntimeError, match="boom"), vision_fast_path(model):
        assert any("forward" in m.__dict__ for m in model.modules())
        raise RuntimeError("boom")
    assert all("forward" not in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("size", [(224, 224), (336, 280), (448, 448)])
def test_vectorised_pixels_match_the_image_processor(shapes_processor: ShapesProcessor, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    ims = [to_rgb(Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))) for _ in range(3)]
    fast = shapes_processor._fast_pixels(ims)
    assert fast is not None
    ref = shapes_processor.image_processor(ims, return_tensors="np")
    np.testing.assert_allclose(fast["pixel_values"], ref["pixel_values"], atol=1e-6)
    np.testing.assert_array_equal(fast["image_grid_thw"], ref["image_grid_thw"])


def test_vectorised_pixels_decline_when_a_resize_is_needed(shapes_processor: ShapesProcessor) -> None:
    assert shapes_processor._fast_pixels([Image.new("RGB", (300, 200))]) is None
    assert shapes_processor._fast_pixels([Image.new("RGB", (224, 224)), Image.new("RGB", (252, 224))]) is None
    ex = make_example("test", 0)
    assert shapes_processor._fast_pixels([ex.image()]) is not None
