"""The capture's decode fast path and the streamed path's per-step helpers, against what transformers does."""

from __future__ import annotations

import pytest
import tiny_models as tm
import torch
from tiny_models import build, inputs
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from attrib.capture import sdpa
from attrib.variants.registry import _stopper, _suppressor


class _Attn(torch.nn.Module):
    """Stands for a decoder attention module: transformers reads only ``num_key_value_groups`` from it."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups


def _masks(t: int, dtype: torch.dtype) -> list[torch.Tensor | None]:
    g = torch.Generator().manual_seed(t)
    keep = torch.rand(1, 1, 1, t, generator=g) > 0.3
    keep[..., 0] = True
    additive = torch.zeros(1, 1, 1, t, dtype=dtype).masked_fill(~keep, torch.finfo(dtype).min)
    return [None, keep, additive]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv"), [(4, 4), (6, 2), (8, 1)])
def test_decode_kernel_output_is_transformers_sdpa_bit_for_bit(heads: int, kv: int, dtype: torch.dtype) -> None:
    """The fast path returns exactly what ``sdpa`` returns, and the softmax's true log-normaliser."""
    torch.manual_seed(0)
    d, t = 16, 37
    q = torch.randn(1, heads, 1, d, dtype=dtype)
    k = torch.randn(1, kv, t, d, dtype=dtype)
    v = torch.randn(1, kv, t, d, dtype=dtype)
    mod = _Attn(heads // kv)
    for mask in _masks(t, dtype):
        kw = {"dropout": 0.0, "scaling": 0.3}
        ref, _ = sdpa_attention_forward(mod, q, k, v, mask, **kw)
        got = sdpa._decode_with_lse(mod, q, k, v, mask, kw)
        assert got is not None
        out, lse = got
        assert out.shape == ref.shape and torch.equal(out, ref)
        s = (q[0, :, 0].float().reshape(kv, heads // kv, d) @ k[0].float().transpose(1, 2)) * 0.3
        if mask is not None:
            m = mask[0, 0, 0]
            s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m.float()
        want = torch.logsumexp(s, -1).reshape(1, heads, 1)  # as the kernel lays it out
        torch.testing.assert_close(lse, want, atol=1e-4 if dtype == torch.float32 else 2e-2, rtol=0)
        # The prefill's row has no kernel normaliser: the capture computes the same quantity itself.
        torch.testing.assert_close(sdpa._last_row_lse(q, k, mask, 0.3), want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv"), [(4, 4), (6, 2), (8, 1)])
def test_prefill_kernel_output_is_transformers_sdpa_bit_for_bit(heads: int, kv: int, dtype: torch.dtype) -> None:
    """A mask-free causal prefill: exactly what ``sdpa`` returns, and the last row's true log-normaliser."""
    torch.manual_seed(1)
    d, t = 16, 29
    q = torch.randn(1, heads, t, d, dtype=dtype)
    k = torch.randn(1, kv, t, d, dtype=dtype)
    v = torch.randn(1, kv, t, d, dtype=dtype)
    mod = _Attn(heads // kv)
    kw = {"dropout": 0.0, "scaling": 0.3}
    ref, _ = sdpa_attention_forward(mod, q, k, v, None, **kw)
    got = sdpa._prefill_with_lse(mod, q, k, v, kw)
    assert got is not None
    out, lse = got
    assert out.shape == ref.shape and torch.equal(out, ref)
    want = sdpa._last_row_lse(q, k, None, 0.3)  # the last row sees every key
    assert lse.shape == (1, heads, 1) and lse.dtype == torch.float32
    torch.testing.assert_close(lse, want, atol=1e-4 if dtype == torch.float32 else 2e-2, rtol=0)
    # Declined: a cache prefix (keys longer than the queries), a mask's caller, a non-causal module, a batch.
    assert sdpa._prefill_with_lse(mod, q[:, :, 1:], k, v, kw) is None
    assert sdpa._prefill_with_lse(mod, q, k, v, {**kw, "is_causal": False}) is None
    assert sdpa._prefill_with_lse(mod, q.expand(2, -1, -1, -1), k.expand(2, -1, -1, -1), v, kw) is None
    assert sdpa._prefill_with_lse(mod, q, k, v, {**kw, "dropout": 0.1}) is None


def test_decode_fast_path_declines_what_sdpa_would_not_run_as_flash() -> None:
    """A batch, dropout, a soft cap, a position bias or attention weights: transformers' own path is taken."""
    q, k, v = torch.randn(1, 4, 1, 8), torch.randn(1, 4, 5, 8), torch.randn(1, 4, 5, 8)
    mod = _Attn(1)
    assert sdpa._decode_with_lse(mod, q, k, v, None, {}) is not None
    assert sdpa._decode_with_lse(mod, q.expand(2, -1, -1, -1), k.expand(2, -1, -1, -1), v, None, {}) is None
    for kw in ({"dropout": 0.1}, {"softcap": 30.0}, {"position_bias": torch.zeros(1)}, {"output_attentions": True}):
        assert sdpa._decode_with_lse(mod, q, k, v, None, kw) is None


def test_captured_generation_equals_plain_generation_with_the_fast_path() -> None:
    """Every family: same tokens and same scores as plain SDPA generation (the kernel output is bit-identical)."""
    for family in tm.FAMILY_NAMES:
        model = build(family)
        x = inputs(family)
        kw = {"max_new_tokens": 10, "min_new_tokens": 10, "do_sample": False}
        plain = model.generate(**x, output_scores=True, return_dict_in_generate=True, **kw)
        with sdpa.AttentionCapture(model, x, torch.ones(1, tm.n_image_tokens(family)), decode=str) as cap:
            got = model.generate(**x, output_scores=True, return_dict_in_generate=True, **kw)
        assert torch.equal(got.sequences, plain.sequences), family
        for a, b in zip(got.scores, plain.scores, strict=True):
            assert torch.equal(a, b), family
        assert len(cap.result().generated_ids) == 0  # no streamer given: generation was only observed
        if family == "qwen2_5_vl":  # a mask-free decode step: the planned direct kernel call served it
            assert cap._direct and all(cap._direct.values())


def test_suppressor_equals_transformers_suppress_tokens() -> None:
    """Same generated ids as ``suppress_tokens``; ids past the vocabulary are ignored, as transformers does."""
    from transformers import LogitsProcessorList

    model = build("qwen2_5_vl")
    x = inputs("qwen2_5_vl")
    kw = {"max_new_tokens": 12, "min_new_tokens": 12, "do_sample": False}
    free = model.generate(**x, **kw)[0, x["input_ids"].shape[1] :].tolist()
    banned = [*sorted(set(free[:3])), 10_000]
    ref = model.generate(**x, suppress_tokens=banned, **kw)
    got = model.generate(**x, logits_processor=LogitsProcessorList([_suppressor(banned)]), **kw)
    assert torch.equal(got, ref)
    assert not set(got[0, x["input_ids"].shape[1] :].tolist()) & set(banned)
    scores = torch.zeros(1, tm.VOCAB)
    out = _suppressor([3, 5])(None, scores)
    assert out[0, 3] == out[0, 5] == float("-inf") and scores[0, 3] == 0  # the caller's scores are left alone


def test_stopper_answers_the_flag_at_each_step() -> None:
    state = {"stop": False}
    stop = _stopper(lambda: state["stop"])
    ids = torch.zeros(1, 3, dtype=torch.long)
    assert stop(ids, None).tolist() == [False]
    state["stop"] = True
    assert stop(ids, None).tolist() == [True]
    state["stop"] = False
    assert stop(ids, None).tolist() == [False]
