"""The local processor: tokenizer, image processor and input assembly."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from attrib.io import load_image, to_rgb
from attrib.shapes import iter_split
from attrib.shapes.processor import IMAGE_PAD, ShapesProcessor


def test_tokenizer_roundtrips_every_benchmark_text(shapes_processor: ShapesProcessor) -> None:
    tok = shapes_processor.tokenizer
    for ex in iter_split("test", 100):
        for text in (ex.question.text, ex.target_text()):
            ids = tok.encode(text, add_special_tokens=False)
            assert tok.unk_token_id not in ids, text
            assert tok.decode(ids) == text


def test_save_load_roundtrip(shapes_processor: ShapesProcessor, tmp_path) -> None:  # type: ignore[no-untyped-def]
    shapes_processor.save_pretrained(tmp_path)
    p2 = ShapesProcessor.from_pretrained(tmp_path)
    exs = list(iter_split("test", 3))
    a = shapes_processor([e.image() for e in exs], [e.question.text for e in exs], [e.target_text() for e in exs])
    b = p2([e.image() for e in exs], [e.question.text for e in exs], [e.target_text() for e in exs])
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].equal(b[k]), k
    assert p2.tokenizer.chat_template == shapes_processor.tokenizer.chat_template


def test_inputs_layout(shapes_processor: ShapesProcessor) -> None:
    exs = list(iter_split("test", 2))
    b = shapes_processor([e.image() for e in exs], [e.question.text for e in exs], [e.target_text() for e in exs])
    assert b["image_grid_thw"].tolist() == [[1, 16, 16], [1, 16, 16]]
    assert b["pixel_values"].shape == (2 * 256, 3 * 2 * 14 * 14)
    img_id = shapes_processor.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    assert ((b["input_ids"] == img_id).sum(1) == 64).all()
    assert b["mm_token_type_ids"].equal((b["input_ids"] == img_id).long())
    # Left padding: the last column is always a real token; labels only cover the answer.
    assert (b["attention_mask"][:, -1] == 1).all()
    for i, e in enumerate(exs):
        lab = b["labels"][i]
        assert shapes_processor.decode(lab[lab != -100]) == e.target_text()


def test_resizes_arbitrary_images(shapes_processor: ShapesProcessor) -> None:
    img = Image.fromarray(np.zeros((100, 250, 3), dtype=np.uint8))
    b = shapes_processor([img], ["Is there a red circle?"])
    t, h, w = b["image_grid_thw"][0].tolist()
    assert t == 1 and h % 2 == 0 and w % 2 == 0 and w > h
    small = Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8))
    b = shapes_processor([small], ["Is there a red circle?"])
    assert int(np.prod(b["image_grid_thw"][0].tolist())) * 14 * 14 >= 112 * 112


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "I;16"])
def test_modes_are_converted(mode: str) -> None:
    img = Image.new(mode, (56, 56))
    assert to_rgb(img).mode == "RGB"


def test_corrupt_and_missing_image(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match=r"broken\.png"):
        load_image(bad)
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        load_image(tmp_path / "nope.png")
    good = tmp_path / "ok.png"
    Image.new("RGBA", (30, 20), (255, 0, 0, 128)).save(good)
    assert load_image(good).mode == "RGB"


def test_processor_errors(shapes_processor: ShapesProcessor, tmp_path) -> None:  # type: ignore[no-untyped-def]
    img = Image.new("RGB", (224, 224))
    with pytest.raises(ValueError, match="batch lengths disagree"):
        shapes_processor([img, img], ["q"])
    with pytest.raises(FileNotFoundError, match="processor directory not found"):
        ShapesProcessor.from_pretrained(tmp_path / "missing")
    (tmp_path / "tokenizer.json").write_text("{not json")
    (tmp_path / "preprocessor_config.json").write_text("{}")
    with pytest.raises(ValueError, match="corrupt processor files"):
        ShapesProcessor.from_pretrained(tmp_path)
