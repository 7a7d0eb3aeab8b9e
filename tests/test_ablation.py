"""Causal ablation targets: exactness, causality, masking, batching, positions, modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import FAMILY_NAMES, build, inputs, n_image_tokens

from attrib.ablation import AblationRunner, loo_subsets, random_subsets, span_deltas
from attrib.models.adapters import adapter_for

K = 3


def _setup(family: str, n_new: int = 8):  # type: ignore[no-untyped-def]
    model = build(family)
    x = inputs(family)
    out = model.generate(**x, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)
    gen = out[0, x["input_ids"].shape[1] :].tolist()
    n = n_image_tokens(family)
    a = np.zeros((K, n), np.float32)
    a[np.arange(n) % K, np.arange(n)] = 1
    return model, x, gen, a


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_empty_set_reproduces_unablated_and_batching_agrees(family: str) -> None:
    model, x, gen, a = _setup(family)
    r = AblationRunner(model, x, gen, a, batch_size=3)
    # Reference log-probs from a plain forward of the model.
    full = torch.cat([x["input_ids"], torch.tensor([gen])], 1)
    key = adapter_for(model).token_type_key
    extra = {k: v for k, v in x.items() if k not in ("input_ids", "attention_mask") and k != key}
    if key is not None and key in x:
        extra[key] = torch.cat([x[key], torch.zeros(1, len(gen), dtype=torch.long)], 1)
    with torch.no_grad():
        logits = model(input_ids=full, attention_mask=torch.ones_like(full), **extra).logits
    lp = torch.log_softmax(logits[0, x["input_ids"].shape[1] - 1 : -1].float(), -1)
    ref = lp.gather(-1, torch.tensor(gen)[:, None])[:, 0].numpy()
    np.testing.assert_allclose(r.base_logprobs, ref, atol=1e-5)
    np.testing.assert_allclose(r.logprobs(np.zeros((1, K), bool))[0], ref, atol=1e-5)
    subsets = random_subsets(K, 7, seed=1)
    batched = r.logprobs(subsets)
    single = np.concatenate([r.logprobs(s[None]) for s in subsets])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert np.abs(batched - r.base_logprobs).max() > 1e-4, "removing regions must change something"


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_ablation_changes_nothing_before_the_image(family: str) -> None:
    model, x, gen, a = _setup(family)
    r = AblationRunner(model, x, gen, a)
    first_img = int(r.prep.image_pos.min())
    base = r.full_logits(np.zeros((1, K), bool))
    for k in range(K):
        abl = r.full_logits(loo_subsets(K)[k : k + 1])
        assert torch.equal(abl[0, :first_img], base[0, :first_img])
        assert not torch.allclose(abl[0, first_img + 6 :], base[0, first_img + 6 :])


@pytest.mark.parametrize("family", ["qwen2_5_vl", "glm4v", "llava"])
def test_masked_keys_receive_zero_attention_under_eager(family: str) -> None:
    model, x, gen, a = _setup(family)
    model.set_attn_implementation("eager")
    r = AblationRunner(model, x, gen, a, compact=False)  # removed tokens kept in the sequence, masked
    rem = np.array([[True, False, True]])
    seen: list[torch.Tensor] = []

    def grab(mod, args, kwargs, out):  # type: ignore[no-untyped-def]
        seen.append(out[1].detach())

    handles = [m.register_forward_hook(grab, with_kwargs=True) for m in adapter_for(model).attention_modules(model)]
    try:
        r.logprobs(rem)
    finally:
        for h in handles:
            h.remove()
    removed_tokens = r.prep.image_pos[torch.from_numpy(a[[0, 2]].sum(0) > 0)]
    assert len(seen) == 2
    for att in seen:
        assert att.shape[-1] == r.prep.full_ids.shape[1]
        assert (att[..., removed_tokens] == 0).all()
        kept = r.prep.image_pos[torch.from_numpy(a[1] > 0)]
        assert (att[..., -1, kept] > 0).all()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "glm4v"])
def test_positions_are_those_of_the_unablated_input(family: str) -> None:
    model, x, gen, a = _setup(family)
    r = AblationRunner(model, x, gen, a, compact=False)  # compaction drops the removed positions
    got: list[torch.Tensor] = []
    lm = r._language_model()
    h = lm.register_forward_pre_hook(lambda m, args, kw: got.append(kw["position_ids"]), with_kwargs=True)
    try:
        r.logprobs(np.ones((2, K), bool))
    finally:
        h.remove()
    ref = r.prep.position_ids
    assert ref.shape[0] in (3, 4), "M-RoPE ids expected"
    assert torch.equal(got[0], ref.expand(*ref.shape[:-2], 2, ref.shape[-1]))


def test_mean_and_repaint_modes() -> None:
    import attrib
    from attrib.regions import segment
    from attrib.shapes import make_example

    m = attrib.load()
    model, proc = m.model, m.processor
    ex = make_example("test", 1)
    x = proc([ex.image()], [ex.question.text])
    out = model.generate(**x, max_new_tokens=60, do_sample=False)
    gen = out[0, x["input_ids"].shape[1] :].tolist()
    part = segment(ex.image(), 8, method="grid")
    assign = part.assign_tokens("shapes_qwen25vl")
    subsets = random_subsets(8, 3, seed=0)
    for mode in ("mask", "mean"):
        r = AblationRunner(model, x, gen, assign, mode=mode)
        np.testing.assert_allclose(r.logprobs(np.zeros((1, 8), bool))[0], r.base_logprobs, atol=1e-5)
        assert np.abs(r.logprobs(subsets) - r.base_logprobs).max() > 1e-3
    rp = AblationRunner(
        model,
        x,
        gen,
        assign,
        mode="repaint",
        image=ex.image(),
        region_labels=part.labels,
        encode_image=lambda im: proc([im], [ex.question.text]),
    )
    np.testing.assert_allclose(rp.logprobs(np.zeros((1, 8), bool))[0], rp.base_logprobs, atol=1e-4)
    assert np.abs(rp.logprobs(np.ones((1, 8), bool)) - rp.base_logprobs).max() > 1e-3


def test_span_deltas_hand_values() -> None:
    base = np.array([-1.0, -2.0, -0.5, -0.1])
    abl = np.array([[-1.5, -2.0, -1.5, -0.1], [-1.0, -2.0, -0.5, -0.1]])
    d = span_deltas(base, abl, [(0, 2), (2, 4)])
    np.testing.assert_allclose(d, [[0.5, 1.0], [0.0, 0.0]])
    assert span_deltas(base, abl, []).shape == (2, 0)


def test_subsets_and_bad_input() -> None:
    s = random_subsets(10, 32, seed=3)
    assert s.shape == (32, 10) and 0.3 < s.mean() < 0.7
    assert np.array_equal(s, random_subsets(10, 32, seed=3))
    assert not np.array_equal(s, random_subsets(10, 32, seed=4))
    assert np.array_equal(loo_subsets(4), np.eye(4, dtype=bool))
    model, x, gen, a = _setup("qwen2_5_vl", n_new=3)
    with pytest.raises(ValueError, match="unknown ablation mode"):
        AblationRunner(model, x, gen, a, mode="blur")
    with pytest.raises(ValueError, match="needs image="):
        AblationRunner(model, x, gen, a, mode="repaint")
    with pytest.raises(ValueError, match="visual tokens"):
        AblationRunner(model, x, gen, np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="trace is empty"):
        AblationRunner(model, x, [], a)
    r = AblationRunner(model, x, gen, a)
    with pytest.raises(ValueError, match="removal sets must have shape"):
        r.logprobs(np.zeros((2, 5), bool))
    with pytest.raises(ValueError, match="not supported for qwen3_vl"):
        m3, x3, g3, a3 = _setup("qwen3_vl", n_new=2)
        AblationRunner(m3, x3, g3, a3, mode="mean")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_embedding_forward_reproduces_the_model(family: str) -> None:
    """The gradient baselines' forward, fed the unablated image embeddings, is the model itself (deepstack
    features and bidirectional image attention included), and it is differentiable in the embeddings."""
    model, x, gen, a = _setup(family)
    r = AblationRunner(model, x, gen, a, batch_size=3)
    spans = [(0, 3), (3, 8)]
    forward, feats = r.embedding_forward(spans)
    assert feats.shape[1] == n_image_tokens(family)
    want = np.array([r.base_logprobs[s:e].sum() for s, e in spans])
    img = feats.clone().requires_grad_(True)
    got = forward(img)
    np.testing.assert_allclose(got.detach().numpy()[0], want, atol=1e-4)
    got.sum().backward()
    assert img.grad is not None and float(img.grad.abs().sum()) > 0
    # Two rows at once: the second with the embeddings zeroed gives other log-probs.
    both = forward(torch.cat([feats, torch.zeros_like(feats)])).detach().numpy()
    np.testing.assert_allclose(both[0], want, atol=1e-4)
    assert np.abs(both[1] - want).max() > 1e-4


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_leaving_removed_tokens_out_equals_masking_them(family: str) -> None:
    """Mask mode's compaction (removed image tokens dropped from the sequence) is exact."""
    model, x, gen, a = _setup(family)
    rem = np.concatenate([loo_subsets(K), random_subsets(K, 5, seed=1), np.ones((1, K), bool)])
    compact = AblationRunner(model, x, gen, a, batch_size=4)
    masked = AblationRunner(model, x, gen, a, batch_size=4, compact=False)
    assert masked.prep.embeds is None
    adapter = adapter_for(model)
    deep = family in ("qwen3_vl", "qwen3_vl_moe")  # deepstack features pin image tokens in place
    assert (compact.prep.embeds is not None) == (not deep and not adapter.bidirectional_image)
    np.testing.assert_allclose(compact.logprobs(rem), masked.logprobs(rem), rtol=0, atol=2e-5)
    # A removal set that removes nothing still reproduces the unablated trace.
    np.testing.assert_allclose(compact.logprobs(np.zeros((1, K), bool))[0], compact.base_logprobs, rtol=0, atol=2e-5)
