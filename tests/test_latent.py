"""The latent-visual-token variant (GAP): modes, cached decoding, interventions, training, probing, attribution."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_models as tm
import torch

import attrib
from attrib.analysis.latent import latent_share
from attrib.capture import AttentionCapture, KeyPart
from attrib.shapes import make_example
from attrib.shapes.latent_train import (
    LatentConfig,
    _derangement,
    _intervention,
    build_latent_model,
    evaluate_latent,
    latent_batch,
    latent_norms,
    latent_trace,
    pool,
    sampled_accuracy,
    save_selection,
    strip_latent,
    train_latent,
)
from attrib.shapes.model import ModelSize, load_model
from attrib.shapes.pointing import target_cells
from attrib.shapes.train import TrainConfig, train
from attrib.variants.latent.model import LATENT, LatentModel, latent_norm_stats, require_latent

IDS = (110, 111, 112)  # <latent>, </latent>, <|latent|> inside the tiny vocabulary


def _wrapped(mode: str, family: str = "qwen2_5_vl", n_latent: int = 2) -> LatentModel:
    m = LatentModel(tm.build(family), IDS, mode=mode, n_latent=n_latent, pca_k=4).eval()  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(1)
    m.init_alignment(torch.randn(40, m.hidden_size, generator=g) * 3 + 1)
    if m.head is not None:
        with torch.no_grad():
            m.head.weight.normal_(0, 0.5, generator=g)
    return m


def _prefer_open(m: LatentModel) -> None:
    """Make greedy decoding open a latent block whenever it can (the tiny lm_head is random)."""
    with torch.no_grad():
        m.base.lm_head.weight[m.open_id] = m.base.lm_head.weight.mean(0)
        bias = torch.zeros(m.base.lm_head.out_features)
        bias[m.open_id] = 1e4
        m.base.lm_head.bias = torch.nn.Parameter(bias)


def test_latent_trace_round_trip_and_targets() -> None:
    for i in range(12):
        e = make_example("test", i)
        text, cells = latent_trace(e, n_latent=3)
        assert strip_latent(text) == e.target_text()
        assert text.count(LATENT) == len(cells) == 3 * text.count("<latent>")
        k = 0
        for s in e.question.sentences:
            if len(s.objects) == 1 and s.text.startswith("There is") and " at the " in s.text:
                tc = target_cells(e.scene, s.objects[0])
                assert cells[k : k + 3] == [tc[j % len(tc)] for j in range(3)]
                k += 3
        assert k == len(cells)


def test_alignment_and_modes_on_constructed_vectors() -> None:
    m = _wrapped("pca")
    x = torch.tensor([[3.0, 4.0] + [0.0] * (m.hidden_size - 2), [0.0, 0.0, 5.0] + [0.0] * (m.hidden_size - 3)] * 3)
    m2 = LatentModel(tm.build("qwen2_5_vl"), IDS, mode="ema", pca_k=2)
    m2.init_alignment(x)
    assert float(m2.image_norm) == pytest.approx(5.0) and float(m2.ema_norm) == pytest.approx(5.0)
    assert torch.allclose(m2.mu[:3], torch.tensor([1.5, 2.0, 2.5]))
    assert torch.allclose(m2.basis @ m2.basis.T, torch.eye(2), atol=1e-5)
    h = torch.randn(7, m.hidden_size) * 40
    # ema: every latent has the running norm
    assert torch.allclose(m2.latent_vectors(h).norm(dim=-1), torch.full((7,), 5.0), atol=1e-4)
    m2.train()
    m2.update_ema(torch.full((4, m.hidden_size), 0.0) + torch.eye(m.hidden_size)[:4] * 15.0)
    assert float(m2.ema_norm) == pytest.approx(0.99 * 5 + 0.01 * 15)
    # raw: identity; pca: inside mu + span(basis)
    raw = LatentModel(tm.build("qwen2_5_vl"), IDS, mode="raw")
    assert torch.equal(raw.latent_vectors(h), h)
    with torch.no_grad():
        v = m.latent_vectors(h) - m.mu
    resid = v - (v @ m.basis.T) @ m.basis
    assert float(resid.norm()) < 1e-3 * float(v.norm())
    with pytest.raises(ValueError, match="mode"):
        LatentModel(tm.build("qwen2_5_vl"), IDS, mode="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="three distinct ids"):
        LatentModel(tm.build("qwen2_5_vl"), (110, 110, 112))


@pytest.mark.parametrize("mode", ["raw", "ema", "pca"])
@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
def test_cached_generation_equals_full_forward(mode: str, family: str) -> None:
    """Latents fed through the KV cache are those a full forward over the same inputs computes."""
    m = _wrapped(mode, family, n_latent=2)
    _prefer_open(m)
    inp = tm.inputs(family)
    g = m.generate(**inp, max_new_tokens=9, eos_token_id=-1)
    gen, sources = g.generated(0)
    assert gen == g.ids(0) == [110, 112, 112, 111, 110, 112, 112, 111, 110]
    assert sources == [-1] * len(gen)  # latents alias no image token
    assert len(g.latents[0]) == 4 and [(b, s) for b, s, _ in g.latents[0]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    seq = g.sequences
    embeds = m.image_embeddings(inp["pixel_values"], inp["image_grid_thw"])
    lat = torch.stack([v for _, _, v in g.latents[0]])
    pos = m.position_ids(seq, (seq == tm.IMG).long(), inp["image_grid_thw"], None)
    h = m.base.model.language_model(
        inputs_embeds=m.embed(seq, embeds, lat), position_ids=pos, use_cache=False
    ).last_hidden_state[0]
    slots = torch.nonzero(seq[0] == IDS[2]).flatten()
    assert torch.allclose(m.latent_vectors(h[slots - 1]), lat, atol=1e-4, rtol=1e-4)
    # greedy text choices are the argmax of the full forward's logits
    p = g.prompt_len
    logits = m.base.lm_head(h)
    for t in range(p, seq.shape[1]):
        if int(seq[0, t]) == IDS[0]:
            assert int(logits[t - 1].argmax()) == IDS[0]


def test_interventions_replace_latents() -> None:
    m = _wrapped("pca")
    _prefer_open(m)
    inp = tm.inputs("qwen2_5_vl")
    gen = torch.Generator().manual_seed(0)
    z = m.generate(**inp, max_new_tokens=4, eos_token_id=-1, intervene=_intervention("zeros", m, 0, [], None, gen))
    assert all(float(v.abs().max()) == 0 for _, _, v in z.latents[0])
    assert any(float(v.abs().max()) > 0 for v in z.raw_latents[0])
    nz = m.generate(**inp, max_new_tokens=4, eos_token_id=-1, intervene=_intervention("noise", m, 0, [], None, gen))
    for (_, _, v), r in zip(nz.latents[0], nz.raw_latents[0], strict=True):
        assert float(v.norm()) == pytest.approx(float(r.norm()), rel=1e-4)
        assert not torch.allclose(v, r)
    mean = m.generate(**inp, max_new_tokens=4, eos_token_id=-1, intervene=_intervention("mean", m, 0, [], None, gen))
    assert all(torch.allclose(v, m.mu) for _, _, v in mean.latents[0])
    rec = [[(0, 0, torch.full((m.hidden_size,), 1.0)), (0, 1, torch.full((m.hidden_size,), 2.0))], [], []]
    fn = _intervention("shuffle", m, 0, rec, np.array([1, 0, 0]), gen)
    assert fn is not None
    assert torch.equal(fn(1, 0, 1, torch.zeros(m.hidden_size)), torch.full((m.hidden_size,), 2.0))
    assert torch.equal(fn(2, 3, 0, torch.zeros(m.hidden_size)), torch.full((m.hidden_size,), 1.0))  # last block
    assert torch.equal(fn(0, 0, 0, torch.zeros(m.hidden_size)), m.mu)  # the other example fed none
    p = _derangement(9, 0)
    assert sorted(p.tolist()) == list(range(9)) and not (p == np.arange(9)).any()


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = TrainConfig(steps=2, batch_size=2, size=ModelSize.tiny(), ckpt_every=0, warmup=1, compile=False, workers=0)
    out = tmp_path_factory.mktemp("latent") / "base"
    train(cfg, out)
    return out


def _cfg(**kw: Any) -> LatentConfig:
    base: dict[str, Any] = {"steps": 2, "batch_size": 2, "pool_n": 4, "warmup": 1, "pca_k": 4, "ckpt_every": 0}
    base.update(kw)
    return LatentConfig(**base)


@pytest.mark.parametrize("mode", ["raw", "pca"])
def test_training_forward_two_passes_and_gradients(tiny_base: Path, mode: str) -> None:
    base, proc0 = load_model(tiny_base)
    m, proc = build_latent_model(base, proc0, _cfg(mode=mode), align_examples=4)
    assert proc.tokenizer.convert_tokens_to_ids(LATENT) == m.latent_id
    assert all(not p.requires_grad for p in m.base.model.visual.parameters())
    exs = [make_example("train", i) for i in range(3)]
    batch = latent_batch(proc, exs, [True, False, True], m.n_latent)
    assert int((batch["latent_target"] >= 0).sum()) == int((batch["input_ids"] == m.latent_id).sum()) > 0
    assert bool((batch["labels"][batch["input_ids"] == m.latent_id] == -100).all())
    m.train()
    out = m(**batch)
    assert out.loss is not None and out.aux_loss is not None and torch.isfinite(out.loss)
    assert float(out.aux_loss.detach()) > 0 and out.latents.shape[0] == int((batch["input_ids"] == m.latent_id).sum())
    out.loss.backward()
    layer0 = m.base.model.language_model.layers[0].mlp.down_proj.weight
    assert layer0.grad is not None and float(layer0.grad.abs().sum()) > 0
    if mode == "pca":
        assert m.head is not None and m.head.weight.grad is not None and float(m.head.weight.grad.abs().sum()) > 0
    # the aux loss alone reaches the decoder in raw mode (latents are its hidden states); in pca mode the
    # fresh head is zero, so it reaches only the head
    m.zero_grad()
    m(**batch).aux_loss.backward()  # type: ignore[union-attr]
    reached = layer0.grad is not None and float(layer0.grad.abs().sum()) > 0
    assert reached == (mode == "raw")


def test_select_train_probe_and_errors(tiny_base: Path, tmp_path: Path) -> None:
    from attrib.cli import main

    cfg = _cfg(mode="pca")
    exs = pool(cfg)
    base, proc0 = load_model(tiny_base)
    acc = sampled_accuracy(base, proc0, exs, samples=2, batch_size=4, max_new_tokens=8)
    assert acc.shape == (4,) and ((acc >= 0) & (acc <= 1)).all()
    sel = tmp_path / "sel.json"
    save_selection(sel, exs, np.array([0.0, 1.0, 0.25, 0.5]), {"samples": 2})
    with pytest.raises(ValueError, match="lacks"):
        train_latent(tiny_base, cfg, tmp_path / "x", {})
    log = train_latent(tiny_base, cfg, tmp_path / "lat", json.loads(sel.read_text())["accuracy"])
    assert log["n_hard"] == 3 and len(log["losses"]) == 2 and all(np.isfinite([v for _, v in log["losses"]]))
    loaded = attrib.load(tmp_path / "lat")
    model, proc = loaded.model, loaded.processor
    assert loaded.variant == "latent"
    # it streams through the variant registry: each span reports its latent share
    from attrib.streaming.stream import Attributor
    from estimators.linear import LinearHeadEstimator

    est = LinearHeadEstimator(layer_head_shape=loaded.dims)
    est.coef_, est.intercept_ = np.ones(loaded.dims), 0.0
    ex0 = make_example("test", 0)
    streamed = Attributor(loaded, est, k=4).stream(ex0.image(), ex0.question.text, max_new_tokens=24).run()
    assert streamed.generated_tokens > 0
    assert all(set(s.shares) == {"latent"} and 0.0 <= s.shares["latent"] <= 1.0 for s in streamed.spans)
    assert isinstance(model, LatentModel) and model.mode == "pca"
    # probing: every intervention, paired deltas, norm ratios
    res = evaluate_latent(model, proc, [make_example("test", i) for i in range(3)], batch_size=2, max_new_tokens=12)
    assert set(res["interventions"]) == {"none", "zeros", "noise", "mean", "shuffle"}
    for r in res["interventions"].values():
        assert -1 <= r["delta"] <= 1 and r["delta_ci"][0] <= r["delta"] + 1e-12
    rep = latent_norms(model, proc, [make_example("test", 0)])
    assert "text" in rep.mean_norm and "image" in rep.mean_norm
    # CLI: probe and shapes eval accept it; a plain model asked for probing gets a clear error
    out = tmp_path / "probe.json"
    rc = main(
        ["latent", "probe", "--model", str(tmp_path / "lat"), "--n", "2", "--batch-size", "2", "--json", str(out)]
    )
    probed = json.loads(out.read_text())
    assert rc == 0 and "shuffle" in probed["interventions"]
    # a benchmark-v1 base stays on benchmark v1, with the budget of the v1 runs
    assert (probed["benchmark"], probed["dataset"], probed["max_new_tokens"]) == ("shapes", "shapes:test", 240)
    assert log["config"]["benchmark"] == "shapes" and loaded.default_dataset == "shapes:test"
    assert main(["shapes", "eval", "--model", str(tmp_path / "lat"), "--n", "2", "--no-blank"]) == 0
    nj = tmp_path / "norms.json"
    assert main(["norms", "--model", str(tmp_path / "lat"), "--n", "1", "--json", str(nj)]) == 0
    assert {"text", "image"} <= set(json.loads(nj.read_text())["ratios"])
    assert main(["latent", "probe", "--model", str(tiny_base), "--n", "2"]) == 2
    with pytest.raises(ValueError, match="no latent support"):
        LatentModel.from_pretrained(tiny_base)
    with pytest.raises(TypeError, match="no latent support"):
        require_latent(base)
    with pytest.raises(TypeError, match="no latent support"):
        evaluate_latent(base, proc0, [make_example("test", 0)])
    with pytest.raises(ValueError, match="latent-visual-token checkpoint"):
        load_model(tmp_path / "lat")
    LatentModel.refuse_checkpoint(tiny_base)  # a plain directory passes
    with pytest.raises(ValueError, match="latent-visual-token checkpoint, not a plain model"):
        LatentModel.refuse_checkpoint(tmp_path / "lat")
    tab = tmp_path / "table.json"
    assert main(["latent", "table", str(out), str(out), "--json", str(tab)]) == 0
    assert json.loads(tab.read_text())["pca"]["seeds"] == 2


def test_save_load_round_trip(tmp_path: Path) -> None:
    m = _wrapped("pca")
    m.save_pretrained(tmp_path / "lat")
    back = LatentModel.from_pretrained(tmp_path / "lat")
    assert back.mode == "pca" and back.n_latent == m.n_latent
    assert back.head is not None and m.head is not None and torch.equal(back.head.weight, m.head.weight)
    assert torch.equal(back.basis, m.basis) and torch.equal(back.mu, m.mu)
    h = torch.randn(3, m.hidden_size)
    assert torch.allclose(back.latent_vectors(h), m.latent_vectors(h))
    from transformers import Qwen2_5_VLForConditionalGeneration

    with pytest.raises(OSError):
        Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "lat", local_files_only=True)


def test_latent_share_hand_computed() -> None:
    f = np.zeros((2, 3, 2, 2))
    f[0, :, 0, 0] = [0.1, 0.2, 0.1]  # direct mass 0.4 at (0,0)
    f[0, 0, 1, 1] = 0.5
    lat = np.zeros((2, 2, 2))
    lat[0, 0, 0] = 0.4
    lat[0, 1, 1] = 0.5
    # uniform: via 0.9, direct 0.9
    assert latent_share(f, lat)[0] == pytest.approx(0.5)
    assert latent_share(f, lat)[1] == 0.0  # no mass at all
    w = np.array([[1.0, 0.0], [0.0, -3.0]])  # negatives clipped: only (0,0) counts
    assert latent_share(f, lat, w)[0] == pytest.approx(0.4 / 0.8)
    lat2 = lat.copy()
    lat2[0] = 0.0
    assert latent_share(f, lat2)[0] == 0.0  # no latent attention: no share
    with pytest.raises(ValueError, match="disagree"):
        latent_share(f, lat[:, :1])


def test_capture_counts_attention_to_latents_and_restores_on_error() -> None:
    m = _wrapped("pca")
    _prefer_open(m)
    inp = tm.inputs("qwen2_5_vl")
    n_img = tm.n_image_tokens("qwen2_5_vl")
    cfg = m.base.config.text_config
    impl = cfg._attn_implementation

    def decode(ids: list[int]) -> str:
        return " ".join("." if i == IDS[1] else str(i) for i in ids)

    cap, gen = m.capture(inp, np.ones((1, n_img), dtype=np.float32), decode=decode, max_new_tokens=9, eos_token_id=-1)
    latent = cap.parts["latent"]
    assert cfg._attn_implementation == impl
    assert latent.shape == (len(cap.spans), cfg.num_hidden_layers, cfg.num_attention_heads)
    assert len(cap.spans) >= 2 and cap.generated_ids == gen.generated(0)[0]
    assert cap.token_sources == [-1] * len(cap.generated_ids)
    assert float(latent[0].sum()) > 0  # the first span holds latents, and later tokens attend to them
    assert ((latent + cap.features.sum(axis=1)) <= 1 + 1e-5).all()
    sh = latent_share(cap.features, latent)
    assert ((sh > 0) & (sh < 1)).all()
    # the attention implementation is restored when generation raises
    ones = np.ones((1, n_img), dtype=np.float32)
    with (
        pytest.raises(RuntimeError, match="boom"),
        AttentionCapture(m.base, inp, ones, decode=decode, parts=[KeyPart("latent")]),
    ):
        assert cfg._attn_implementation != impl
        raise RuntimeError("boom")
    assert cfg._attn_implementation == impl


def test_norm_stats() -> None:
    m = _wrapped("raw")
    vs = [torch.full((m.hidden_size,), 2.0), torch.zeros(m.hidden_size)]
    st = latent_norm_stats(m, vs)
    expect = (2.0 * m.hidden_size**0.5) / 2
    assert st["latent_norm"] == pytest.approx(expect)
    assert st["ratio_to_image_input"] == pytest.approx(expect / float(m.image_norm))
    assert np.isnan(latent_norm_stats(m, [])["latent_norm"])


def test_train_latent_resumes_after_a_kill_and_refuses_another_config(tiny_base: Path, tmp_path: Path) -> None:
    """A run killed after its first checkpoint resumes to the same weights as an uninterrupted run."""
    from attrib.shapes.latent_train import load_latent, load_selection

    cfg = _cfg(mode="pca", steps=3, ckpt_every=1)
    sel = {e.uid: a for e, a in zip(pool(cfg), [0.0, 1.0, 0.25, 0.5], strict=True)}
    whole = train_latent(tiny_base, cfg, tmp_path / "whole", sel)

    class KillError(Exception):
        pass

    def kill_at_2(step: int, _total: int, _loss: float) -> None:
        if step == 2:
            raise KillError

    with pytest.raises(KillError):
        train_latent(tiny_base, cfg, tmp_path / "resumed", sel, on_step=kill_at_2)
    assert (tmp_path / "resumed.ckpt" / "meta.json").is_file() and not (tmp_path / "resumed").exists()
    with pytest.raises(ValueError, match="another config"):
        train_latent(tiny_base, _cfg(mode="pca", steps=4, ckpt_every=1), tmp_path / "resumed", sel)
    again = train_latent(tiny_base, cfg, tmp_path / "resumed", sel)
    assert again["losses"] == whole["losses"]
    a, _ = load_latent(tmp_path / "whole")
    b, _ = load_latent(tmp_path / "resumed")
    assert a.head is not None and b.head is not None and torch.equal(a.head.weight, b.head.weight)
    assert not (tmp_path / "resumed.ckpt").exists()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="malformed selection"):
        load_selection(bad)
    with pytest.raises(FileNotFoundError, match="attrib latent select"):
        load_selection(tmp_path / "missing.json")
