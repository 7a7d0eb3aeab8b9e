"""Attention capture under SDPA: equality with eager attention, spans, hygiene, bad input."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import tiny_models as tm
import torch
from tiny_models import FAMILY_NAMES, build, inputs, n_image_tokens

from attrib.capture import IMPLEMENTATION, AttentionCapture, CaptureResult, SpanSegmenter, capture_generate
from attrib.models.adapters import ADAPTERS, CHECKPOINTS, adapter_for, get_adapter, register_adapter

WORDS = {i: f"w{i}" for i in range(128)}


def _decode(ids: list[int]) -> str:
    # Every 4th token ends a sentence in the tiny models' fake vocabulary.
    return " ".join(WORDS[i] + ("." if i % 4 == 0 else "") for i in ids)


def _assignment(n: int, k: int = 3) -> np.ndarray:
    m = np.zeros((k, n), dtype=np.float32)
    m[np.arange(n) % k, np.arange(n)] = 1
    return m


@pytest.mark.parametrize("kernel_lse", [True, False], ids=["kernel-lse", "full-pass"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_sdpa_capture_equals_eager(family: str, kernel_lse: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both batched passes (normaliser from the kernel, or recomputed over the cache) equal eager attention."""
    model = build(family)
    x = inputs(family)
    assign = _assignment(n_image_tokens(family))
    passes = {"lse": 0}
    lse_pass = AttentionCapture._layer_rows_lse

    def counted(self: AttentionCapture, layer: int) -> torch.Tensor:
        passes["lse"] += 1
        return lse_pass(self, layer)

    fused_pass = AttentionCapture._fused_rows

    def fused(self: AttentionCapture, *, total: bool = False) -> torch.Tensor | None:
        rows = fused_pass(self, total=total)
        passes["lse"] += self.n_layers if rows is not None else 0  # every layer's rows at once
        return rows

    monkeypatch.setattr(AttentionCapture, "_layer_rows_lse", counted)
    monkeypatch.setattr(AttentionCapture, "_fused_rows", fused)
    with AttentionCapture(model, x, assign, decode=_decode, per_token=True, kernel_lse=kernel_lse) as cap:
        assert adapter_for(model).text_config(model)._attn_implementation == IMPLEMENTATION
        out = model.generate(**x, streamer=cap.streamer, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    res = cap.result()
    # On the CPU every non-sliding layer's rows come from the kernel's normalisers, or none do.
    assert (passes["lse"] >= cap.n_layers // 2) if kernel_lse else passes["lse"] == 0
    assert adapter_for(model).text_config(model)._attn_implementation == "sdpa"
    prompt_len = x["input_ids"].shape[1]
    assert res.generated_ids == out[0, prompt_len:].tolist()
    ref = tm.eager_rows(model, out, x, prompt_len, assign)
    assert res.per_token is not None and res.per_token.shape == ref.shape
    np.testing.assert_allclose(res.per_token, ref, atol=1e-4)
    # Span features are the mean of their tokens' rows.
    for span, f in zip(res.spans, res.features, strict=True):
        np.testing.assert_allclose(f, res.per_token[span.start : span.end].mean(0), atol=1e-6)
    # Without per-token rows (the streaming case: only each span's total is computed), the same features.
    with AttentionCapture(model, x, assign, decode=_decode, kernel_lse=kernel_lse) as cap2:
        out2 = model.generate(**x, streamer=cap2.streamer, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert out2.tolist() == out.tolist()
    res2 = cap2.result()
    assert res2.per_token is None and [s.end for s in res2.spans] == [s.end for s in res.spans]
    np.testing.assert_allclose(res2.features, res.features, atol=1e-5)


def test_sampling_and_capture_are_compatible() -> None:
    model = build("qwen2_5_vl")
    x = inputs("qwen2_5_vl")
    torch.manual_seed(3)
    res = capture_generate(
        model, x, _assignment(6), decode=_decode, max_new_tokens=12, min_new_tokens=12, do_sample=True, top_k=20
    )
    assert len(res.generated_ids) == 12
    assert res.features.shape[1:] == (3, 2, 4)


def test_span_segmentation_on_hand_written_trace() -> None:
    vocab = [
        "<think>",
        " I",
        " see",
        " a",
        " red",
        " circle",
        ".",
        " Two",
        " is",
        " 2",
        "!",
        " done",
        "</think>",
        " ok",
        ".",
    ]
    dec = lambda ids: "".join(vocab[i] for i in ids)  # noqa: E731
    seg = SpanSegmenter(dec)
    spans = [s for t in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14] if (s := seg.push(t))]
    assert [s.text for s in spans] == ["I see a red circle.", "Two is 2!"]
    assert [(s.start, s.end) for s in spans] == [(1, 7), (7, 11)]
    # Without think tags every sentence counts; a trailing fragment is dropped.
    seg = SpanSegmenter(dec)
    spans = [s for t in [1, 2, 6, 7, 8, 9] if (s := seg.push(t))]
    assert [s.text for s in spans] == ["I see."]
    # Custom boundaries: split on "!" only.
    seg = SpanSegmenter(dec, pattern=r"!")
    spans = [s for t in [1, 2, 6, 7, 10, 11] if (s := seg.push(t))]
    assert [s.text for s in spans] == ["I see. Two!"]
    # think_only=False keeps the answer sentence.
    seg = SpanSegmenter(dec, think_only=False)
    spans = [s for t in [0, 1, 6, 12, 13, 14] if (s := seg.push(t))]
    assert [s.text for s in spans] == ["I.", "ok."]


def test_bundled_model_features(bundled_path) -> None:  # type: ignore[no-untyped-def]
    from attrib.regions import segment
    from attrib.shapes import make_example
    from attrib.shapes.model import load_model

    model, proc = load_model(bundled_path)
    ex = make_example("test", 0)
    x = proc([ex.image()], [ex.question.text])
    part = segment(ex.image(), 16, method="color")
    assign = part.assign_tokens("shapes_qwen25vl")
    dec = lambda ids: proc.tokenizer.decode(ids)  # noqa: E731
    res = capture_generate(model, x, assign, decode=dec, max_new_tokens=200, do_sample=False)
    assert len(res.spans) >= 2
    assert res.features.shape == (len(res.spans), 16, 4, 6)
    assert (res.features >= 0).all()
    assert (res.features.sum(axis=1) <= 1 + 1e-5).all()
    assert "</think>" in res.text and res.spans[0].text.endswith(".")


def test_save_load_and_dataframe(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = build("qwen2_5_vl")
    res = capture_generate(
        model, inputs("qwen2_5_vl"), _assignment(6), decode=_decode, max_new_tokens=10, min_new_tokens=10
    )
    res.save(tmp_path / "cap")
    back = CaptureResult.load(tmp_path / "cap")
    assert back.spans == res.spans and np.array_equal(back.features, res.features)
    assert back.meta == res.meta
    df = res.to_dataframe()
    assert len(df) == len(res.spans) * 3
    full = res.to_dataframe(reduce="none")
    assert len(full) == res.features.size and np.isclose(full["mass"].sum(), res.features.sum())


def _hooks(model) -> set[tuple[str, int]]:  # type: ignore[no-untyped-def]
    """Every forward / pre-forward hook on the model (transformers installs a few of its own on first use)."""
    return {(n, h) for n, m in model.named_modules() for h in [*m._forward_hooks.keys(), *m._forward_pre_hooks.keys()]}


def _no_hooks(model, before: set[tuple[str, int]] | None = None) -> bool:  # type: ignore[no-untyped-def]
    return _hooks(model) == (before or set()) and adapter_for(model).text_config(model)._attn_implementation == "sdpa"


def test_hooks_removed_on_exit_and_on_exception() -> None:
    from attrib.capture import active_capture

    model = build("qwen2_5_vl")
    x = inputs("qwen2_5_vl")
    with AttentionCapture(model, x, _assignment(6), decode=_decode) as cap:
        model.generate(**x, streamer=cap.streamer, max_new_tokens=3)
    assert _no_hooks(model) and active_capture() is None
    cap.close()  # closing twice is harmless
    assert _no_hooks(model)

    class StopError(RuntimeError):
        pass

    def boom(span, feats, parts):  # type: ignore[no-untyped-def]
        raise StopError("mid-generation")

    with pytest.raises(StopError), AttentionCapture(model, x, _assignment(6), decode=_decode, on_span=boom) as cap:
        model.generate(**x, streamer=cap.streamer, max_new_tokens=30, min_new_tokens=30)
    assert _no_hooks(model) and active_capture() is None and not cap.active
    # The model still generates normally afterwards.
    model.generate(**x, max_new_tokens=2)


def test_capture_is_freed() -> None:
    model = build("qwen2_5_vl")
    x = inputs("qwen2_5_vl")
    cap = AttentionCapture(model, x, _assignment(6), decode=_decode, per_token=True)
    with cap:
        model.generate(**x, streamer=cap.streamer, max_new_tokens=5, min_new_tokens=5)
    res = cap.result()
    # Nothing of the model's (queries, key caches) is held once the capture has exited.
    assert all(k is None for k in cap._keys) and not cap._values and not any(cap._buf)
    ref_cap, ref_buf = weakref.ref(cap), weakref.ref(cap.segmenter)
    del cap
    gc.collect()
    assert ref_cap() is None and ref_buf() is None
    assert res.per_token is not None  # the result stays valid on its own


def test_bad_input() -> None:
    import transformers

    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="unsupported model class GPT2LMHeadModel; supported families: qwen2_vl"):
        AttentionCapture(gpt2, {"input_ids": torch.ones(1, 3, dtype=torch.long)}, _assignment(6), decode=_decode)
    model = build("qwen2_5_vl")
    no_img = {"input_ids": torch.randint(10, 90, (1, 5))}
    with pytest.raises(ValueError, match="no image tokens"):
        AttentionCapture(model, no_img, _assignment(6), decode=_decode)
    two = inputs("qwen2_5_vl", images=2)
    with pytest.raises(ValueError, match="holds 2 images"):
        AttentionCapture(model, two, _assignment(12), decode=_decode)
    with pytest.raises(ValueError, match="image has 6 visual tokens"):
        AttentionCapture(model, inputs("qwen2_5_vl"), _assignment(9), decode=_decode)
    batch = inputs("qwen2_5_vl")
    batch = {**batch, "input_ids": batch["input_ids"].repeat(2, 1)}
    with pytest.raises(ValueError, match="batch size 1"):
        AttentionCapture(model, batch, _assignment(6), decode=_decode)


def test_no_complete_span_gives_empty_valid_result() -> None:
    model = build("qwen2_5_vl")
    never = lambda ids: " ".join(f"w{i}" for i in ids)  # noqa: E731
    res = capture_generate(model, inputs("qwen2_5_vl"), _assignment(6), decode=never, max_new_tokens=5)
    assert res.spans == [] and res.features.shape == (0, 3, 2, 4)
    assert len(res.generated_ids) >= 1


def test_adapter_registry() -> None:
    assert set(ADAPTERS) >= {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "glm4v", "llava"}
    assert get_adapter("Qwen/Qwen3-VL-8B-Thinking").family == "qwen3_vl"
    assert get_adapter("zai-org/GLM-4.1V-9B-Thinking").family == "glm4v"
    assert CHECKPOINTS["XiaomiMiMo/MiMo-VL-7B-RL"] == "qwen2_5_vl"
    assert CHECKPOINTS["nvidia/Cosmos-Reason1-7B"] == "qwen2_5_vl"
    with pytest.raises(ValueError, match="already registered"):
        register_adapter(ADAPTERS["llava"])
    with pytest.raises(ValueError, match="supported families"):
        get_adapter("gpt-4o")
    for fam in FAMILY_NAMES:
        m = build(fam)
        a = adapter_for(m)
        assert a.family == fam and a.dims(m) == (2, 4, 2) and len(a.attention_modules(m)) == 2


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_nnsight_backend_equals_native(family: str) -> None:
    pytest.importorskip("nnsight")
    from attrib.capture.nnsight import nnsight_capture_generate

    model = build(family)
    x = inputs(family)
    assign = _assignment(n_image_tokens(family))
    native = capture_generate(
        model, x, assign, decode=_decode, per_token=True, max_new_tokens=9, min_new_tokens=9, do_sample=False
    )
    before = _hooks(model)
    via = nnsight_capture_generate(model, x, assign, decode=_decode, per_token=True, max_new_tokens=9, do_sample=False)
    assert via.generated_ids == native.generated_ids
    assert via.spans == native.spans
    np.testing.assert_allclose(via.features, native.features, atol=1e-6)
    assert via.per_token is not None and native.per_token is not None
    np.testing.assert_allclose(via.per_token, native.per_token, atol=1e-6)
    assert _no_hooks(model, before)


@pytest.mark.parametrize("chunk", [1, 3])
def test_batched_pass_size_does_not_change_features(chunk: int) -> None:
    """Rows computed one token at a time, or three at a time, equal the default batched pass."""
    model = build("qwen2_5_vl")
    x = inputs("qwen2_5_vl")
    kw = {"max_new_tokens": 14, "min_new_tokens": 14, "do_sample": False}
    ref = capture_generate(model, x, _assignment(6), decode=_decode, per_token=True, **kw)
    with AttentionCapture(model, x, _assignment(6), decode=_decode, per_token=True, chunk=chunk) as cap:
        model.generate(**x, streamer=cap.streamer, **kw)
    got = cap.result()
    assert got.spans == ref.spans and got.generated_ids == ref.generated_ids and len(ref.spans) >= 2
    assert got.per_token is not None and ref.per_token is not None
    np.testing.assert_allclose(got.per_token, ref.per_token, atol=1e-6)
    np.testing.assert_allclose(got.features, ref.features, atol=1e-6)
    with pytest.raises(ValueError, match="chunk"):
        AttentionCapture(model, x, _assignment(6), decode=_decode, chunk=0)


def test_sliding_window_layers_past_their_window_equal_eager() -> None:
    """Gemma 3's sliding layers drop old keys from their cache: rows stay exact after the image leaves the window."""
    model = build("gemma3")
    window = 8  # the prompt has 13 tokens: the window passes the image during prefill and generation
    model.config.text_config.sliding_window = window
    for mod in adapter_for(model).attention_modules(model):
        if getattr(mod, "sliding_window", None):
            mod.sliding_window = window
    x = inputs("gemma3")
    assign = _assignment(n_image_tokens("gemma3"), k=2)
    with AttentionCapture(model, x, assign, decode=_decode, per_token=True) as cap:
        out = model.generate(**x, streamer=cap.streamer, max_new_tokens=10, min_new_tokens=10, do_sample=False)
    assert any(cap._stepwise)  # the sliding layers switched to computing their rows at each step
    res = cap.result()
    prompt_len = x["input_ids"].shape[1]
    ref = tm.eager_rows(model, out, x, prompt_len, assign)
    assert res.per_token is not None
    np.testing.assert_allclose(res.per_token, ref, atol=1e-4)
    assert ref[-1].sum() < ref[0].sum()  # the image did leave the window of the sliding layers
