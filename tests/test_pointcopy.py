"""The v1 point-and-copy wrapper, its traces and its training/evaluation, on tiny random configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_models as tm
import torch

import attrib
from attrib.shapes import make_example
from attrib.shapes.model import ModelSize, load_model
from attrib.shapes.pointing import pointing_trace, score_pointing, strip_pointing, target_cells
from attrib.shapes.train import TrainConfig, train
from attrib.variants.pointcopy.model import COPY, REGION_OPEN, PointCopyModel, provenance

COPY_ID = 110


def _wrapped(family: str, *, keys: str = "hidden") -> PointCopyModel:
    return PointCopyModel(tm.build(family), COPY_ID, keys=keys).eval()  # type: ignore[arg-type]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
def test_joint_logits_shape_and_masked_padding(family: str) -> None:
    pc = _wrapped(family)
    inp = tm.inputs(family)
    out = pc(**inp)
    n_img = tm.n_image_tokens(family)
    assert out.logits.shape == (1, inp["input_ids"].shape[1], pc.n_vocab + n_img)
    assert out.n_vocab == tm.VOCAB and int(out.n_image[0]) == n_img
    assert torch.isfinite(out.logits).all()


def test_copy_outside_the_image_is_impossible() -> None:
    """In a batch whose images differ in size, the smaller image's padded copy slots get -inf."""
    pc = _wrapped("qwen2_5_vl")
    a = tm.inputs("qwen2_5_vl")
    g = torch.Generator().manual_seed(3)
    # second example: a 2x2 merged-token image (4 tokens) instead of 6
    ids_b = torch.cat([torch.tensor([1, tm.VSTART]), torch.full((1,), tm.IMG), torch.tensor([tm.VEND])])
    ids_b = torch.cat([ids_b, torch.randint(10, 90, (a["input_ids"].shape[1] - ids_b.numel(),), generator=g)])
    ids = torch.stack([a["input_ids"][0], ids_b])
    pv = torch.cat([a["pixel_values"], torch.randn(4, a["pixel_values"].shape[1], generator=g)])
    grid = torch.tensor([[1, 4, 6], [1, 2, 2]])
    inp = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == tm.IMG).long(),
        "pixel_values": pv,
        "image_grid_thw": grid,
    }
    out = pc(**inp)
    v = pc.n_vocab
    assert torch.isinf(out.logits[1, :, v + 1 :]).all() and (out.logits[1, :, v + 1 :] < 0).all()
    assert torch.isfinite(out.logits[0, :, v : v + 6]).all()
    with torch.no_grad():
        pc.lq.weight.mul_(64.0)  # large copy logits: greedy decoding copies
    gen = pc.generate(**inp, max_new_tokens=6, eos_token_id=-1)
    row1 = gen.copy_src[1, gen.prompt_len :]
    assert (row1 >= 0).any() and int(row1.max()) == 0  # row 1 has one image token: only copy index 0 exists
    assert int(gen.copy_src[0].max()) < 6


def test_copy_sources_are_checked() -> None:
    pc = _wrapped("qwen2_5_vl")
    inp = tm.inputs("qwen2_5_vl")
    ids = inp["input_ids"].clone()
    ids[0, -1] = COPY_ID
    src = torch.full_like(ids, -1)
    src[0, -1] = 6  # the image has 6 tokens: 0..5
    with pytest.raises(ValueError, match="outside its example's image"):
        pc(**{**inp, "input_ids": ids}, copy_src=src)
    src[0, -1] = 2
    src[0, -2] = 1  # not a <|copy|> position
    with pytest.raises(ValueError, match="not <\\|copy\\|>"):
        pc(**{**inp, "input_ids": ids}, copy_src=src)


@pytest.mark.parametrize("keys", ["hidden", "embeds"])
def test_copy_token_feeds_the_source_patch_embedding(keys: str) -> None:
    pc = _wrapped("qwen2_5_vl", keys=keys)
    inp = tm.inputs("qwen2_5_vl")
    emb_img = pc.image_embeddings(inp["pixel_values"], inp["image_grid_thw"])
    ids = torch.cat([inp["input_ids"], torch.tensor([[COPY_ID, 20, COPY_ID]])], dim=1)
    src = torch.full_like(ids, -1)
    src[0, -3], src[0, -1] = 4, 1
    e = pc.embed(ids, src, emb_img)
    assert torch.equal(e[0, -3], emb_img[4]) and torch.equal(e[0, -1], emb_img[1])
    assert torch.equal(e[0, -2], pc.base.get_input_embeddings().weight[20])
    kind, source = provenance(ids[0], src[0], tm.IMG)
    img_pos = np.flatnonzero(ids[0].numpy() == tm.IMG)
    assert (kind[img_pos] == 1).all() and list(source[img_pos]) == list(range(6))
    assert list(kind[-3:]) == [2, 0, 2] and list(source[-3:]) == [4, -1, 1]
    assert (kind[:2] == 0).all()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
@pytest.mark.parametrize("keys", ["hidden", "embeds"])
def test_cached_decoding_equals_full_forward(family: str, keys: str) -> None:
    """Feed a fixed mix of text tokens and copies through the KV cache; compare with one full forward."""
    pc = _wrapped(family, keys=keys)
    inp = tm.inputs(family)
    v = pc.n_vocab
    forced = torch.tensor([[30, v + 2, 41, v + 5, v + 0, 12, 55, v + 3]])
    gen = pc.generate(**inp, forced=forced, return_logits=True, eos_token_id=-1)
    assert torch.equal(gen.choices, forced)
    seq, src = gen.sequences, gen.copy_src
    p = gen.prompt_len
    assert seq[0, p:].tolist() == [30, COPY_ID, 41, COPY_ID, COPY_ID, 12, 55, COPY_ID]
    assert src[0, p:].tolist() == [-1, 2, -1, 5, 0, -1, -1, 3]
    full = pc(
        input_ids=seq,
        attention_mask=torch.ones_like(seq),
        mm_token_type_ids=(seq == tm.IMG).long(),
        pixel_values=inp["pixel_values"],
        image_grid_thw=inp["image_grid_thw"],
        copy_src=src,
    )
    assert gen.logits is not None
    assert torch.allclose(full.logits[0, p - 1 : -1], gen.logits[0], atol=1e-4, rtol=1e-4)
    # greedy decoding is the argmax of the same logits
    free = pc.generate(**inp, max_new_tokens=8, eos_token_id=-1, return_logits=True)
    assert free.logits is not None and torch.equal(free.logits[0].argmax(-1), free.choices[0])


def test_copy_feed_interventions_feed_the_mean_or_the_bare_token() -> None:
    """``copy_feed`` replaces what a copy feeds back; checked against a full forward with those inputs."""
    pc = _wrapped("qwen2_5_vl")
    inp = tm.inputs("qwen2_5_vl")
    v = pc.n_vocab
    forced = torch.tensor([[30, v + 2, 41, v + 5, 12, 55]])
    src_gen = pc.generate(**inp, forced=forced, return_logits=True, eos_token_id=-1)
    img = pc.image_embeddings(inp["pixel_values"], inp["image_grid_thw"])
    seq, cs, p = src_gen.sequences, src_gen.copy_src, src_gen.prompt_len
    pos = pc.position_ids(seq, (seq == tm.IMG).long(), inp["image_grid_thw"], torch.ones_like(seq))
    copies = (cs[0] >= 0).nonzero().flatten()
    lm = pc.base.model.language_model
    for feed in ("mean", "token"):
        gen = pc.generate(**inp, forced=forced, return_logits=True, eos_token_id=-1, copy_feed=feed)
        assert torch.equal(gen.sequences, seq) and torch.equal(gen.copy_src, cs)  # same choices, other inputs
        emb = pc.embed(seq, cs, img)
        emb[0, copies] = img.mean(0) if feed == "mean" else pc.get_input_embeddings()(seq[0, copies])
        hidden = lm(inputs_embeds=emb, position_ids=pos).last_hidden_state
        keys, valid = pc._keys(seq, hidden, img)
        want = pc._joint(hidden, keys, valid)[0, p - 1 : -1]
        assert gen.logits is not None and src_gen.logits is not None
        torch.testing.assert_close(gen.logits[0], want, atol=1e-4, rtol=1e-4)
        # the first copy is fed at step 1, so the logits differ from step 2 on
        assert torch.allclose(gen.logits[0, :2], src_gen.logits[0, :2], atol=1e-5)
        assert not torch.allclose(gen.logits[0, 2:], src_gen.logits[0, 2:], atol=1e-3)
    with pytest.raises(ValueError, match="copy_feed"):
        pc.generate(**inp, max_new_tokens=2, copy_feed="zeros")
    # in a batch each row's copies get that row's own image mean (zeros for a row without image tokens)
    flat = torch.arange(12.0).view(6, 2)
    valid = torch.tensor([[True, True, False, False], [False, False, False, False], [True, True, True, True]])
    means = PointCopyModel._row_means(flat, valid)
    assert means.tolist() == [[1.0, 2.0], [0.0, 0.0], [7.0, 8.0]]
    from attrib.shapes.evaluate import evaluate

    m = attrib.load("shapes-qwen25vl")
    plain, proc = m.model, m.processor
    with pytest.raises(ValueError, match="point-and-copy"):
        evaluate(plain, proc, n=1, copy_feed="mean")


def test_batched_generation_with_left_padding_matches_single() -> None:
    pc = _wrapped("qwen2_5_vl")
    a = tm.inputs("qwen2_5_vl", n_text=6)
    b = tm.inputs("qwen2_5_vl", n_text=3)
    width = a["input_ids"].shape[1]
    pad = width - b["input_ids"].shape[1]
    ids = torch.stack([a["input_ids"][0], torch.cat([torch.zeros(pad, dtype=torch.long), b["input_ids"][0]])])
    am = torch.stack([a["attention_mask"][0], torch.cat([torch.zeros(pad, dtype=torch.long), b["attention_mask"][0]])])
    batch = {
        "input_ids": ids,
        "attention_mask": am,
        "mm_token_type_ids": (ids == tm.IMG).long(),
        "pixel_values": torch.cat([a["pixel_values"], b["pixel_values"]]),
        "image_grid_thw": torch.cat([a["image_grid_thw"], b["image_grid_thw"]]),
    }
    v = pc.n_vocab
    forced = torch.tensor([[7, v + 1, 9, v + 4, 21]] * 2)
    both = pc.generate(**batch, forced=forced, return_logits=True, eos_token_id=-1)
    for row, single_in in enumerate((a, b)):
        one = pc.generate(**single_in, forced=forced[:1], return_logits=True, eos_token_id=-1)
        assert both.logits is not None and one.logits is not None
        assert torch.allclose(both.logits[row], one.logits[0], atol=1e-4, rtol=1e-4)


def test_save_load_and_class_mismatch_errors(tmp_path: Path) -> None:
    pc = _wrapped("qwen2_5_vl")
    with torch.no_grad():
        pc.lk.weight.add_(0.01)
    pc.save_pretrained(tmp_path / "v1")
    back = PointCopyModel.from_pretrained(tmp_path / "v1")
    assert torch.equal(back.lk.weight, pc.lk.weight) and back.keys == "hidden"
    inp = tm.inputs("qwen2_5_vl")
    assert torch.allclose(back(**inp).logits, pc(**inp).logits, atol=1e-6)
    # the plain class on a v1 directory, and the reverse
    from transformers import Qwen2_5_VLForConditionalGeneration

    with pytest.raises(OSError):
        Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "v1", local_files_only=True)
    with pytest.raises(ValueError, match="v1 point-and-copy checkpoint"):
        PointCopyModel.refuse_checkpoint(tmp_path / "v1")
    with pytest.raises(ValueError, match="v1 point-and-copy checkpoint"):
        load_model(tmp_path / "v1")
    pc.base.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="not a v1 point-and-copy checkpoint"):
        PointCopyModel.from_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="wraps"):
        PointCopyModel(torch.nn.Linear(2, 2), COPY_ID)


def test_pointing_trace_round_trip_and_scoring() -> None:
    for i in range(20):
        ex = make_example("test", i)
        text, src = pointing_trace(ex)
        assert text.count(COPY) == len(src)
        assert strip_pointing(text) == ex.target_text()
        sc = score_pointing(ex, text, src)
        assert sc.copies == len(src) and sc.hits == sc.copies  # the ground truth points right
        if src:
            wrong = [(s + 32) % 64 for s in src]  # the mirror half of the 8 x 8 grid
            assert score_pointing(ex, text, wrong).hits < sc.copies
    with pytest.raises(ValueError, match="copy tokens"):
        score_pointing(ex, text, [*src, 0])


def test_target_cells_lie_on_the_object() -> None:
    ex = make_example("test", 5)
    for i in range(len(ex.scene.objects)):
        cells = target_cells(ex.scene, i)
        m = ex.scene.mask(i)
        for c in cells:
            r, q = divmod(c, 8)
            assert m[r * 28 : (r + 1) * 28, q * 28 : (q + 1) * 28].any()


def _v1_cfg(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "steps": 3,
        "batch_size": 2,
        "size": ModelSize.tiny(),
        "ckpt_every": 0,
        "warmup": 1,
        "compile": False,
        "workers": 0,
        "variant": "v1",
    }
    base.update(kw)
    return TrainConfig(**base)


def test_v1_training_smoke_eval_and_cli(tmp_path: Path) -> None:
    from attrib.cli import main

    res = train(_v1_cfg(), tmp_path / "v1")
    assert all(np.isfinite(loss) for _, loss in res.losses)
    loaded = attrib.load(tmp_path / "v1")
    model, proc = loaded.model, loaded.processor
    assert isinstance(model, PointCopyModel) and loaded.variant == "pointcopy"
    assert proc.tokenizer.convert_tokens_to_ids(COPY) == model.copy_token_id
    log = json.loads((tmp_path / "v1" / "train_log.json").read_text())
    assert log["config"]["variant"] == "v1"
    out = tmp_path / "eval.json"
    rc = main(["shapes", "eval", "--model", str(tmp_path / "v1"), "--n", "2", "--batch-size", "2", "--json", str(out)])
    assert rc == 0
    d = json.loads(out.read_text())
    for key in ("accuracy", "blank_image_accuracy", "n_failures", "parse_rate", "n", "pointing_accuracy"):
        assert key in d
    assert 0.0 <= d["pointing_accuracy"] <= 1.0
    # the estimator pipeline (collect, fit, evaluate) takes the v1 model unchanged
    from attrib.collect import Collection

    col = tmp_path / "col"
    args = ["--model", str(tmp_path / "v1"), "--dataset", "shapes:test", "--n", "2", "--k", "8", "--loo"]
    args += ["--subsets", "8", "--max-new-tokens", "12", "--threads", "1", "--out", str(col)]
    assert main(["collect", *args]) == 0
    exs = list(Collection.open(col).examples())
    assert len(exs) == 2
    for ex in exs:
        n_spans = np.asarray(ex["features"]).shape[0]
        assert len(ex["span_copy_share"]) == n_spans
        assert all(0.0 <= s <= 1.0 for s in ex["span_copy_share"])
        # the via-copy part is stored beside the features, and its share is the recorded one
        f, via = np.asarray(ex["features"], dtype=np.float64), np.asarray(ex["parts"]["via_copy"], dtype=np.float64)
        assert via.shape == f.shape and (via >= 0).all() and (f - via >= -1e-6).all()
        tot = f.sum(axis=(1, 2, 3))
        share = np.divide(via.sum(axis=(1, 2, 3)), tot, out=np.zeros_like(tot), where=tot > 0)
        np.testing.assert_allclose(share, ex["span_copy_share"], atol=1e-5)
    est = tmp_path / "est"
    assert main(["fit", "--train", str(col), "--all-examples", "--out", str(est)]) == 0
    ev = tmp_path / "faith.json"
    ev_args = ["evaluate", "--test", str(col), "--estimator", str(est), "--train", str(col), "--sizes", ""]
    ev_args += ["--methods", "estimator,raw_attention,best_layer,contextcite,leave_one_out", "--json", str(ev)]
    assert main(ev_args) == 0
    methods = json.loads(ev.read_text())["methods"]
    assert set(methods) == {"estimator", "raw_attention", "best_layer", "contextcite", "leave_one_out"}
    assert np.isfinite(methods["leave_one_out"]["lds"]["value"])
    assert methods["estimator"]["r2"]["n"] > 0
    # the v1-vs-base analyses run from collections (here the same one twice) and the v1 model
    res_path, figs = tmp_path / "v1.json", tmp_path / "figs"
    v1_args = ["v1", "--base-test", str(col), "--v1-test", str(col), "--base-estimator", str(est)]
    v1_args += ["--v1-estimator", str(est), "--v1-model", str(tmp_path / "v1"), "--n-copy", "1"]
    v1_args += ["--v1-train", str(col), "--refit-all-examples", "--refit-loss", "ridge"]
    assert main([*v1_args, "--json", str(res_path), "--figures", str(figs)]) == 0
    res = json.loads(res_path.read_text())
    assert {"decay", "late_chain", "late_chain_attention", "copy_attention", "late_chain_refit"} <= set(res)
    # the direct-only control beside the totals
    assert {"late_chain", "late_chain_attention", "late_chain_refit"} <= set(res["direct_only"])
    fm = res["faithfulness"]["v1"]["methods"]
    assert set(fm) == {"raw_attention", "estimator", "estimator_refit"}
    assert all({"total", "direct_only", "direct_minus_total"} <= set(m) for m in fm.values())
    assert all("lds" in m["direct_only"] and "r2" in m["direct_only"] for m in fm.values())
    assert res["faithfulness"]["refit"]["n_train_examples"] == 2
    assert (figs / "decay.png").stat().st_size > 0
    ca = res["copy_attention"]
    assert len(ca["copy_mass"]) == len(ca["source_mass"]) == (ca["n_tokens"] > 0) * 2  # tiny model: 2 layers
    assert ca["n_examples"] == 1 and ca["dataset"] == "shapes:test"  # --n-copy 1, the default dataset


def test_v1_on_benchmark_v2_traces_training_and_eval(tmp_path: Path) -> None:
    """v1 point-and-copy on benchmark v2: every object sentence points at its object's cells (raster order over
    the canvas's grid, non-square canvases included), the v2 recipe trains it, and its evaluation scores pointing."""
    from attrib.cli import main
    from attrib.shapes.v2 import make_example as make_example2

    shapes_seen, copies, wrong_hits = set(), 0, 0
    for i in range(16):
        ex = make_example2("test", i)
        text, src = pointing_trace(ex)
        n_object = sum(1 for s in ex.question.sentences if s.kind == "object")
        assert text.count(REGION_OPEN) == n_object > 0
        assert strip_pointing(text) == ex.target_text()
        cells = (ex.scene.height // 28) * (ex.scene.width // 28)
        assert all(0 <= c < cells for c in src)
        sc = score_pointing(ex, text, src)
        assert sc.hits == sc.copies == len(src) and sc.blocks == n_object  # the ground truth points right
        wrong_hits += score_pointing(ex, text, [(c + cells // 2) % cells for c in src]).hits  # half a canvas away
        copies += len(src)
        shapes_seen.add((ex.scene.width, ex.scene.height))
    assert any(w != h for w, h in shapes_seen) and wrong_hits < copies / 2
    cfg = TrainConfig.v2(
        variant="v1", steps=3, batch_size=2, size=ModelSize.tiny(), ckpt_every=0, warmup=1, workers=0, curriculum=0
    )
    res = train(cfg, tmp_path / "v1v2")
    assert all(np.isfinite(loss) for _, loss in res.losses)
    loaded = attrib.load(tmp_path / "v1v2")
    assert isinstance(loaded.model, PointCopyModel) and loaded.variant == "pointcopy"
    assert loaded.default_dataset == "shapes2:test"
    log = json.loads((tmp_path / "v1v2" / "train_log.json").read_text())
    assert log["config"]["variant"] == "v1" and log["config"]["benchmark"] == "shapes2"
    out = tmp_path / "eval.json"
    args = ["shapes", "eval", "--model", str(tmp_path / "v1v2"), "--n", "2", "--batch-size", "2", "--json", str(out)]
    assert main(args) == 0
    d = json.loads(out.read_text())
    assert d["benchmark"] == "shapes2" and 0.0 <= d["pointing_accuracy"] <= 1.0 and "position_accuracy" in d
    # the v1 analyses read their copy-attention examples from the dataset the v1 collection was made on
    col = tmp_path / "col"
    c_args = ["--model", str(tmp_path / "v1v2"), "--dataset", "shapes2:test", "--n", "1", "--k", "8", "--subsets", "4"]
    assert main(["collect", *c_args, "--max-new-tokens", "12", "--threads", "1", "--out", str(col)]) == 0
    res_path = tmp_path / "v1.json"
    v1_args = ["v1", "--base-test", str(col), "--v1-test", str(col), "--v1-model", str(tmp_path / "v1v2")]
    assert main([*v1_args, "--n-copy", "1", "--json", str(res_path)]) == 0
    assert json.loads(res_path.read_text())["copy_attention"]["dataset"] == "shapes2:test"


def _forced_trace(pc: PointCopyModel, inp: dict[str, torch.Tensor]) -> tuple[list[int], list[int]]:
    v = pc.n_vocab
    gen = pc.generate(**inp, forced=torch.tensor([[30, v + 2, 41, v + 5, 12, 55, v + 2, 8]]), eos_token_id=-1)
    return gen.generated(0)


def test_capture_aliases_copies_to_their_source_regions() -> None:
    pc = PointCopyModel(tm.build("qwen2_5_vl", attn="eager"), COPY_ID).eval()
    inp = tm.inputs("qwen2_5_vl")
    assign = np.zeros((3, 6), dtype=np.float32)  # 3 regions over the 6 image tokens
    assign[0, :2] = assign[1, 2:4] = assign[2, 4:] = 1
    v = pc.n_vocab
    res, gen = pc.capture(
        inp,
        assign,
        decode=lambda ids: " ".join(map(str, ids)) + ".",
        max_new_tokens=6,
        per_token=True,
        eos_token_id=-1,
        forced=torch.tensor([[30, v + 2, 41, v + 5, 12, v + 2]]),
    )
    ids, src = gen.generated(0)
    assert res.copy_features is not None and res.per_token is not None and res.token_sources == src
    assert pc.base.config.text_config._attn_implementation == "eager"  # restored
    # recompute the attention rows with eager attention over the full sequence
    seq, cs = gen.sequences, gen.copy_src
    emb = pc.embed(seq, cs, pc.image_embeddings(inp["pixel_values"], inp["image_grid_thw"]))
    pos = pc.position_ids(seq, (seq == tm.IMG).long(), inp["image_grid_thw"], torch.ones_like(seq))
    out = pc.base.model.language_model(inputs_embeds=emb, position_ids=pos, output_attentions=True)
    p = gen.prompt_len
    kind, source = provenance(seq[0], cs[0], tm.IMG)
    for t in range(len(ids)):
        q = p - 1 + t
        for layer, att in enumerate(out.attentions):
            row = att[0, :, q, : q + 1].detach().numpy()  # (H, q+1)
            want = np.zeros((row.shape[0], 3))
            for k in range(q + 1):
                if kind[k] in (1, 2):
                    want += row[:, k : k + 1] * assign[:, source[k]][None, :]
            np.testing.assert_allclose(res.per_token[t, :, layer, :].T, want, atol=1e-5)
    assert any(s >= 0 for s in src)


def test_ablation_removes_copies_with_their_region() -> None:
    from attrib.variants.pointcopy.attribution import PointCopyAblation

    pc = _wrapped("qwen2_5_vl")
    inp = tm.inputs("qwen2_5_vl")
    ids, src = _forced_trace(pc, inp)
    assign = np.zeros((3, 6), dtype=np.float32)
    assign[0, :2] = assign[1, 2:4] = assign[2, 4:] = 1
    p = inp["input_ids"].shape[1]
    # the unablated joint log-probs are those of the teacher-forced forward
    run = PointCopyAblation(pc, inp, ids, src, assign, mode="mean")
    seq = torch.cat([inp["input_ids"], torch.tensor([ids])], 1)
    cs = torch.cat([torch.full_like(inp["input_ids"], -1), torch.tensor([src])], 1)
    full = pc(input_ids=seq, pixel_values=inp["pixel_values"], image_grid_thw=inp["image_grid_thw"], copy_src=cs)
    lp = torch.log_softmax(full.logits[0, p - 1 : -1], -1)
    tgt = [pc.n_vocab + s if s >= 0 else i for i, s in zip(ids, src, strict=True)]
    np.testing.assert_allclose(run.base_logprobs, lp[torch.arange(len(ids)), tgt].detach().numpy(), atol=1e-4)
    np.testing.assert_allclose(run.logprobs(np.zeros((1, 3), dtype=bool))[0], run.base_logprobs, atol=1e-6)
    # mean mode: a copy of patch 2 (region 1) carries the mean image embedding once region 1 is removed
    removed = np.array([[False, True, False]])
    emb = run.ablated_inputs(removed)[0]
    feats = run.image_embeds
    copy_pos = [p + i for i, s in enumerate(src) if s >= 0]
    for q, s in zip(copy_pos, [s for s in src if s >= 0], strict=True):
        expect = feats.mean(0) if s in (2, 3) else feats[s]
        assert torch.allclose(emb[q], expect, atol=1e-6), (q, s)
    assert not np.allclose(run.logprobs(removed)[0], run.base_logprobs)
    # mask mode: removing region 1 also hides the copies of patch 2 from every later token
    mrun = PointCopyAblation(pc, inp, ids, src, assign, mode="mask")
    np.testing.assert_allclose(mrun.base_logprobs, run.base_logprobs, atol=1e-4)
    first_copy = src.index(2)
    changed = mrun.logprobs(removed)[0] - mrun.base_logprobs
    assert np.abs(changed[first_copy + 1 :]).max() > 0
    with pytest.raises(ValueError, match="mode"):
        PointCopyAblation(pc, inp, ids, src, assign, mode="repaint")
    with pytest.raises(ValueError, match="copy sources"):
        PointCopyAblation(pc, inp, ids, src[:-1], assign)
