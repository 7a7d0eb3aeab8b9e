"""Region partitions, methods, token assignment across model families, and region metrics."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from attrib.regions import GRID_SPECS, REGION_METHODS, RegionPartition, get_grid_spec, register_region_method, segment
from attrib.shapes import iter_split, make_example
from metrics.regions import object_recall, region_purity

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "glm4v", "llava", "llava_pad"]
SIZES = [(224, 224), (448, 336), (300, 200), (200, 520), (1000, 700)]


def _img(w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(w * h)
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[: h // 2, : w // 3] = (200, 30, 30)
    arr[h // 2 :, w // 2 :] = (30, 30, 200)
    arr += rng.integers(0, 10, size=arr.shape, dtype=np.uint8)
    return Image.fromarray(arr)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["color", "grid", "voronoi", "blocks"])
def test_every_token_covered_exactly_once(family: str, method: str) -> None:
    for w, h in SIZES:
        part = segment(_img(w, h), 16, method=method)
        a = part.assign_tokens(family)
        m = a.matrix
        assert m.shape == (part.k, a.grid.n_tokens)
        assert (m.sum(0) == 1).all()
        assert a.token_region.min() >= 0 and a.token_region.max() < part.k


def _processor_grid(family: str, w: int, h: int) -> tuple[int, int]:
    img = _img(w, h)
    if family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        spec = get_grid_spec(family)
        ip = Qwen2VLImageProcessorPil(
            patch_size=spec.patch_size, merge_size=2, min_pixels=spec.min_pixels, max_pixels=spec.max_pixels
        )
        _, gh, gw = ip(images=[img], return_tensors="np")["image_grid_thw"][0]
        return int(gh) // 2, int(gw) // 2
    if family == "glm4v":
        from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

        _, gh, gw = Glm4vImageProcessorPil()(images=[img], return_tensors="np")["image_grid_thw"][0]
        return int(gh) // 2, int(gw) // 2
    from transformers import CLIPImageProcessor

    pv = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})(
        images=[img], return_tensors="np"
    )["pixel_values"]
    return pv.shape[2] // 14, pv.shape[3] // 14


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "glm4v", "llava"])
def test_grid_matches_real_image_processors(family: str) -> None:
    for w, h in [*SIZES, (20, 20), (3000, 2000)]:
        g = get_grid_spec(family).token_grid(w, h)
        assert (g.rows, g.cols) == _processor_grid(family, w, h), (family, w, h)


def test_small_and_huge_images_follow_processor_rules() -> None:
    spec = get_grid_spec("qwen2_5_vl")
    tiny = spec.token_grid(10, 10)
    assert tiny.n_tokens * 28 * 28 >= spec.min_pixels
    huge = spec.token_grid(8000, 6000)
    assert huge.n_tokens * 28 * 28 <= spec.max_pixels
    part = segment(_img(20, 20), 2, method="grid")
    assert part.assign_tokens("qwen2_5_vl").matrix.sum(0).tolist() == [1.0] * tiny.n_tokens
    with pytest.raises(ValueError, match="aspect ratio"):
        spec.token_grid(5000, 10)


def test_k_larger_than_tokens_is_an_error() -> None:
    part = segment(_img(224, 224), 100, method="grid")
    with pytest.raises(ValueError, match="K=100 regions exceed the 64 visual tokens"):
        part.assign_tokens("qwen2_5_vl")
    with pytest.raises(ValueError, match="exceeds the"):
        segment(_img(32, 32), 5000, method="color")


def test_llava_crop_maps_to_center() -> None:
    g = get_grid_spec("llava").token_grid(672, 336)
    x0, y0, _, _ = g.token_box(0)
    assert g.rows == g.cols == 24 and x0 == pytest.approx(168.0) and y0 == pytest.approx(0.0)
    labels = np.zeros((336, 672), dtype=int)
    labels[:, 336:] = 1
    a = RegionPartition(labels).assign_tokens("llava")
    assert (a.token_region.reshape(24, 24)[:, :12] == 0).all() and (a.token_region.reshape(24, 24)[:, 12:] == 1).all()


def test_color_regions_follow_objects() -> None:
    purities, recalls = [], []
    for ex in iter_split("test", 12):
        part = segment(ex.image(), 32, method="color")
        assert part.k == 32
        gt = ex.scene.label_map()
        purities.append(region_purity(part.labels, gt))
        recalls.append(object_recall(part.labels, gt))
        for r in range(part.k):
            _, n = ndimage.label(part.labels == r)
            assert n == 1, "Ward with connectivity must give connected regions"
    assert np.mean(purities) >= 0.9
    assert np.mean(recalls) >= 0.85
    block_recall = np.mean(
        [
            object_recall(segment(e.image(), 32, method="blocks").labels, e.scene.label_map())
            for e in iter_split("test", 12)
        ]
    )
    assert block_recall < np.mean(recalls)


def test_auto_k_in_range() -> None:
    ex = make_example("test", 1)
    part = segment(ex.image(), None, method="color")
    assert 16 <= part.k <= 128
    with pytest.raises(ValueError, match="explicit K"):
        segment(ex.image(), None, method="grid")


def test_faiss_kmeans_alternative() -> None:
    pytest.importorskip("faiss")
    ex = make_example("test", 2)
    part = segment(ex.image(), 24, method="color", clusterer="kmeans")
    assert 1 < part.k <= 24
    assert region_purity(part.labels, ex.scene.label_map()) > 0.9


def _tiny_dino():  # type: ignore[no-untyped-def]
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    cfg = DINOv3ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=16,
        num_register_tokens=2,
    )
    return DINOv3ViTModel(cfg).eval()


def test_dinov3_regions_tiny_random_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from attrib.regions import DinoV3Features

    model = _tiny_dino()
    model.save_pretrained(tmp_path / "dino")
    img = make_example("test", 0).image()
    feats = DinoV3Features(str(tmp_path / "dino"), max_patches=196)
    f = feats(img)
    assert f.shape == (14, 14, 32)
    assert np.allclose(np.linalg.norm(f, axis=-1), 1, atol=1e-4)
    part = segment(img, 16, method="dinov3", features=feats)
    assert part.k == 16 and part.labels.shape == (224, 224)
    assert (part.assign_tokens("qwen2_5_vl").matrix.sum(0) == 1).all()
    part2 = segment(img, 16, method="dinov3", model=model, max_patches=196)
    assert np.array_equal(part.labels, part2.labels)
    with pytest.raises(ValueError, match="need model="):
        segment(img, 16, method="dinov3")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_image_modes_are_converted(mode: str) -> None:
    img = make_example("test", 0).image().convert(mode)
    assert segment(img, 16, method="color").k == 16


def test_heatmap_overlay_and_save_load(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ex = make_example("test", 4)
    part = segment(ex.image(), 16, method="color")
    scores = np.arange(part.k, dtype=float)
    hm = part.heatmap(scores)
    assert hm.shape == (224, 224) and (hm == part.labels).all()
    ov = part.overlay(ex.image(), scores)
    assert ov.size == (224, 224) and ov.mode == "RGB"
    assert part.boundaries().any()
    with pytest.raises(ValueError, match="scores must have shape"):
        part.heatmap(np.zeros(3))
    part.save(tmp_path / "p")
    back = RegionPartition.load(tmp_path / "p")
    assert np.array_equal(back.labels, part.labels) and back.method == "color"
    (tmp_path / "p.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt region partition"):
        RegionPartition.load(tmp_path / "p")
    with pytest.raises(FileNotFoundError):
        RegionPartition.load(tmp_path / "missing")


def test_registries_refuse_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_region_method("color")(REGION_METHODS["color"])
    from attrib.regions import register_grid_spec

    with pytest.raises(ValueError, match="already registered"):
        register_grid_spec(GRID_SPECS["llava"])
    with pytest.raises(ValueError, match="unknown region method"):
        segment(_img(56, 56), 4, method="slic")
    with pytest.raises(ValueError, match="supported"):
        get_grid_spec("gpt4v")


def test_purity_and_recall_hand_values() -> None:
    regions = np.array([[0, 0], [1, 1]])
    truth = np.array([[5, 5], [5, 7]])
    assert region_purity(regions, truth) == pytest.approx(0.75)
    assert region_purity(truth, truth) == 1.0
    assert region_purity(np.zeros((2, 2), int), truth) == pytest.approx(0.75)
    truth_bg = np.array([[-1, -1], [-1, 3]])
    # Object 3 sits in region 1, which the background dominates (tie -> lower class index = background).
    assert object_recall(regions, truth_bg) == 0.0
    assert object_recall(np.array([[0, 0], [0, 1]]), truth_bg) == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        region_purity(regions, truth[:1])
