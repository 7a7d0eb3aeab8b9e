"""Streaming attributions on the bundled model with the bundled estimator."""

from __future__ import annotations

import functools
import http.client
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attrib.cli import main
from attrib.shapes import make_example
from attrib.streaming import Attributor, FinalEvent, SpanEvent, StreamResult
from estimators.linear import LinearHeadEstimator


@pytest.fixture(scope="module")
def attributor() -> Attributor:
    return Attributor.load()


def test_events_arrive_while_generation_runs(attributor: Attributor) -> None:
    ex = make_example("test", 0)
    # A long generation (min_new_tokens) so "during" and "after" are far apart.
    stream = attributor.stream(ex.image(), ex.question.text, max_new_tokens=400, min_new_tokens=400)
    received: list[float] = []
    final = None
    with stream:
        for ev in stream:
            received.append(time.perf_counter() - stream._t0)
            if isinstance(ev, FinalEvent):
                final = ev
            else:
                assert isinstance(ev, SpanEvent)
                assert ev.scores.shape == (attributor.k,) and len(ev.top_regions) == 3
                assert ev.top_regions[0][1] == pytest.approx(float(ev.scores.max()))
                assert 0 <= ev.latency_ms < 5000 and ev.end > ev.start
    assert final is not None and isinstance(final.result, StreamResult)
    done = stream.generation_done_s
    assert done is not None and len(received) >= 3
    # The first span event reached the consumer well before generate() returned.
    assert received[0] < 0.5 * done
    res = final.result
    assert res.generated_tokens == 400
    assert [s.index for s in res.spans] == list(range(len(res.spans)))
    assert res.scores.shape == (len(res.spans), attributor.k)
    assert "<canvas" not in res._repr_html_() and "attrib-data-" in res._repr_html_()


def test_streamed_scores_equal_the_estimator_on_captured_features(attributor: Attributor) -> None:
    from attrib.capture import capture_generate

    ex = make_example("test", 3)
    res = attributor.stream(ex.image(), ex.question.text, truth=ex.answer).run()
    x = attributor.loaded.build(ex.image(), ex.question.text)
    cap = capture_generate(
        attributor.model,
        x,
        attributor.assignment(attributor.partition(ex.image()), x),
        decode=attributor.loaded.decode_raw,
        max_new_tokens=200,
        do_sample=False,
    )
    np.testing.assert_allclose(res.scores, attributor.estimator.region_scores(cap.features), rtol=1e-4, atol=1e-5)
    assert res.correct == (res.answer == ex.answer)
    f = attributor.verify(res)
    assert f["n_spans"] == len(res.spans) and -1 <= f["pearson_vs_loo"] <= 1
    assert f["topk_drop_oracle"] > f["random_drop"]


@pytest.mark.parametrize("worker", [False, True], ids=["inline", "worker"])
def test_event_exception_surfaces_and_stops_generation(
    attributor: Attributor, monkeypatch: pytest.MonkeyPatch, worker: bool
) -> None:
    """An exception while making an event (inline or on the attribution thread) ends generation and reaches the
    consumer."""
    ex = make_example("test", 1)

    def boom(features: np.ndarray) -> np.ndarray:
        raise RuntimeError("estimator exploded")

    monkeypatch.setattr(attributor, "span_scorer", lambda: boom)  # what each span's event scores with
    stream = attributor.stream(ex.image(), ex.question.text, max_new_tokens=1500, min_new_tokens=1500, worker=worker)
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="estimator exploded"), stream:
        for _ in stream:
            pass
    # Closing stopped generation long before its 1,500 tokens; the model is free again.
    assert attributor.lock.acquire(timeout=20)
    attributor.lock.release()
    assert time.perf_counter() - t0 < 20
    assert attributor.model.config.text_config._attn_implementation == "sdpa"


def test_generation_exception_surfaces(attributor: Attributor, monkeypatch: pytest.MonkeyPatch) -> None:
    ex = make_example("test", 1)

    def bad_generate(*a: object, **k: object) -> None:
        raise MemoryError("out of memory in generate")

    monkeypatch.setattr(attributor.model, "generate", bad_generate)
    with pytest.raises(MemoryError, match="out of memory"):
        attributor.stream(ex.image(), ex.question.text).run()


def test_bad_inputs(attributor: Attributor, tmp_path: Path) -> None:
    ex = make_example("test", 0)
    with pytest.raises(ValueError, match="past the model's context of 4096"):
        attributor.stream(ex.image(), "word " * 4000)
    # An estimator of another shape (another model) is refused.
    other = LinearHeadEstimator(layer_head_shape=(7, 3))
    other.coef_, other.intercept_ = np.ones((7, 3)), 0.0
    other.save(tmp_path / "other", model_id="some-7b")
    with pytest.raises(ValueError, match=r"7 x 3 .*some-7b.*6 layers x 8 heads"):
        Attributor.load(estimator=tmp_path / "other")
    # Same shape, but a recorded signature of another model.
    same = LinearHeadEstimator(layer_head_shape=(6, 8))  # the default model's shape
    same.coef_, same.intercept_ = np.ones((6, 8)), 0.0
    sig = {"class": "Qwen2_5_VLForConditionalGeneration", "L": 6, "H": 8, "config_sha": "x", "embeddings_sha": "y"}
    same.save(tmp_path / "same", model_id="other-model", model_signature=sig)
    with pytest.raises(ValueError, match="fit on another model"):
        Attributor.load(estimator=tmp_path / "same")
    # A checkpoint of an unsupported architecture, and a directory that is no checkpoint at all.
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(
        tmp_path / "bert"
    )
    with pytest.raises(ValueError, match=r"unsupported model .*bert"):
        Attributor.load(model=str(tmp_path / "bert"), estimator=tmp_path / "same")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"not a model checkpoint: it has no config\.json"):
        Attributor.load(model=str(tmp_path / "empty"), estimator=tmp_path / "same")
    # Missing and corrupt images (CLI).
    (tmp_path / "bad.png").write_bytes(b"not a png")
    for img in (tmp_path / "missing.png", tmp_path / "bad.png"):
        assert main(["stream", "--image", str(img), "--prompt", "How many circles are there?"]) == 2
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        Attributor.load(model=str(tmp_path / "nope"), estimator=tmp_path / "same")


def test_cli_stream_and_demo(tmp_path: Path) -> None:
    ex = make_example("test", 2)
    ex.image().save(tmp_path / "img.png")
    args = ["stream", "--image", str(tmp_path / "img.png"), "--prompt", ex.question.text, "--truth", ex.answer]
    args += ["--html", str(tmp_path / "r.html"), "--json", str(tmp_path / "r.json")]
    assert main(args) == 0
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["spans"] and d["faithfulness"]["n_spans"] == len(d["spans"]) and d["correct"] in (True, False)
    html = (tmp_path / "r.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "http://" not in html and "https://" not in html
    assert main(["demo", "--n", "2", "--out", str(tmp_path / "demo")]) == 0
    demo = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert len(demo["results"]) == 2 and all(r["spans"] for r in demo["results"])
    assert (tmp_path / "demo" / "report.html").stat().st_size > 10_000


def test_report_escapes_user_text(attributor: Attributor) -> None:
    from attrib.streaming.report import json_for_script, render_report

    res = StreamResult(
        image=Image.new("RGB", (56, 56)),
        prompt="</script><script>alert(1)</script>",
        regions=np.zeros((56, 56), dtype=np.int64),
        spans=[],
        output="<b>x</b>",
        answer="<img src=x onerror=alert(1)>",
        generated_tokens=0,
        generation_s=0.0,
        model="<m>",
    )
    html = render_report([res], title="<title>")
    assert "<script>alert" not in html and "</script><script>alert" not in html
    assert "<img src=x" not in html and "&lt;title&gt;" in html
    assert json.loads(json_for_script({"a": "</script>"})) == {"a": "</script>"}


def test_server_stops_generation_when_the_client_disconnects(attributor: Attributor) -> None:
    from attrib.streaming.serve import TOKEN_HEADER, make_server

    srv = make_server(attributor, port=0, max_new_tokens=1500, min_new_tokens=1500)
    assert srv.server_address[0] == "127.0.0.1"
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        host, port = srv.server_address[:2]
        here = f"{host!s}:{port}"
        headers = {"Origin": f"http://{here}", TOKEN_HEADER: srv.token}
        sock = socket.create_connection((str(host), port), timeout=30)
        body = json.dumps({"image": "test-1", "prompt": "How many circles are there?"}).encode()
        sock.sendall(
            (
                f"POST /api/stream HTTP/1.1\r\nHost: {here}\r\nOrigin: http://{here}\r\n"
                f"{TOKEN_HEADER}: {srv.token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        seen = b""
        while b"event: span" not in seen:
            chunk = sock.recv(65536)
            assert chunk, "server closed the stream early"
            seen += chunk
        assert b"text/event-stream" in seen and b"event: start" in seen
        t0 = time.perf_counter()
        sock.close()
        # Generation of 1,500 tokens takes far longer than this; the disconnect must stop it.
        deadline = time.time() + 30
        while srv.disconnects == 0 and time.time() < deadline:
            time.sleep(0.05)
        assert srv.disconnects == 1
        assert attributor.lock.acquire(timeout=10)
        attributor.lock.release()
        assert time.perf_counter() - t0 < 15
        # Bad input over HTTP: a 4xx with the reason, and the server keeps serving.
        conn = http.client.HTTPConnection(str(host), port, timeout=30)
        conn.request(
            "POST",
            "/api/stream",
            body=json.dumps({"image": "nope", "prompt": "hi"}),
            headers={**headers, "Content-Type": "application/json"},
        )
        r = conn.getresponse()
        assert r.status == 404 and "unknown image" in json.loads(r.read())["error"]
        conn.request("POST", "/api/upload", body=b"garbage", headers={**headers, "Content-Length": "7"})
        r = conn.getresponse()
        assert r.status == 400 and "not a readable image" in r.read().decode()
    finally:
        srv.shutdown()
        srv.server_close()


def _attrib_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("attrib-")]


def _count_forwards(attributor: Attributor, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    forward = attributor.model.forward

    @functools.wraps(forward)  # generate() validates its kwargs against forward's signature
    def counted(*a: object, **k: object) -> object:
        calls[0] += 1
        return forward(*a, **k)

    monkeypatch.setattr(attributor.model, "forward", counted)
    return calls


@pytest.mark.parametrize(
    ("model", "worker"), [("shapes-qwen25vl", False), ("shapes-qwen25vl", True), ("shapes-qwen25vl-v1", False)]
)
def test_streamed_events_identical_to_a_post_hoc_capture(model: str, worker: bool) -> None:
    """Span by span, the stream's events are the estimator applied to a capture of the same generation."""
    from attrib.variants.registry import CaptureRequest

    a = Attributor.load(model)
    ex = make_example("test", 5)
    res = a.stream(ex.image(), ex.question.text, worker=worker).run()
    x = a.loaded.build(ex.image(), ex.question.text)
    cap = a.variant.capture(a.loaded, CaptureRequest(x, a.assignment(a.partition(ex.image()), x)))
    assert res.generated_ids == cap.generated_ids and len(res.spans) == len(cap.spans) >= 2
    assert [(s.index, s.text, s.start, s.end) for s in res.spans] == [
        (s.index, s.text, s.start, s.end) for s in cap.spans
    ]
    np.testing.assert_allclose(res.scores, a.estimator.region_scores(cap.features), rtol=0, atol=1e-6)
    for name, part in cap.parts.items():
        if part.ndim == 4:  # alias parts (v1 copies): their share of each score
            want = a.estimator.region_scores(part)
            np.testing.assert_allclose(np.stack([s.parts[name] for s in res.spans]), want, rtol=0, atol=1e-6)
    assert not _attrib_threads()


def test_closing_on_the_iterating_thread_stops_generation_at_once(
    attributor: Attributor, monkeypatch: pytest.MonkeyPatch
) -> None:
    ex = make_example("test", 1)
    calls = _count_forwards(attributor, monkeypatch)
    stream = attributor.stream(ex.image(), ex.question.text, max_new_tokens=1500, min_new_tokens=1500)
    seen = []
    with stream:
        for ev in stream:
            seen.append(ev)
            if isinstance(ev, SpanEvent):
                at_close = calls[0]
                stream.close()
    assert len(seen) == 1 and calls[0] == at_close < 300  # not one forward pass after close()
    assert not _attrib_threads() and not attributor.lock.locked()
    assert attributor.model.config.text_config._attn_implementation == "sdpa"
    # The model is free: the next stream runs normally.
    assert attributor.stream(ex.image(), ex.question.text).run().spans


def test_closing_from_another_thread_stops_generation_within_one_token(
    attributor: Attributor, monkeypatch: pytest.MonkeyPatch
) -> None:
    ex = make_example("test", 1)
    calls = _count_forwards(attributor, monkeypatch)
    stream = attributor.stream(ex.image(), ex.question.text, max_new_tokens=1500, min_new_tokens=1500)
    at_close: list[int] = []
    closer: threading.Thread | None = None
    final = None

    def close() -> None:
        at_close.append(calls[0])
        stream.close(timeout=30)

    for ev in stream:
        if isinstance(ev, SpanEvent) and closer is None:
            closer = threading.Thread(target=close)
            closer.start()
            while not at_close:
                time.sleep(0.001)
        if isinstance(ev, FinalEvent):
            final = ev
    assert closer is not None
    closer.join(30)
    assert not closer.is_alive()
    # The forward pass running when close() was called may finish; no other starts.
    assert calls[0] <= at_close[0] + 1
    assert final is not None and final.result.generated_tokens <= at_close[0] + 1 < 1500
    assert not _attrib_threads() and not attributor.lock.locked()


def test_no_thread_outlives_the_stream(attributor: Attributor, monkeypatch: pytest.MonkeyPatch) -> None:
    ex = make_example("test", 2)
    attributor.stream(ex.image(), ex.question.text).run()
    assert not _attrib_threads()
    attributor.stream(ex.image(), ex.question.text, worker=True).run()
    assert not _attrib_threads()
    # Abandoned mid-way without close(): the iterator's finalisation ends everything.
    it = iter(attributor.stream(ex.image(), ex.question.text, max_new_tokens=600, min_new_tokens=600))
    next(it)
    del it
    assert not _attrib_threads() and not attributor.lock.locked()
    # An exception in the consumer's loop body.
    with pytest.raises(KeyError), attributor.stream(ex.image(), ex.question.text) as s:
        for _ in s:
            raise KeyError("consumer")
    assert not _attrib_threads() and not attributor.lock.locked()
    # An exception in the worker.
    monkeypatch.setattr(attributor, "span_scorer", lambda: lambda f: 1 / 0)
    with pytest.raises(ZeroDivisionError), attributor.stream(ex.image(), ex.question.text, worker=True) as s:
        list(s)
    assert not _attrib_threads() and not attributor.lock.locked()
    # Abandoned mid-way with the worker running.
    monkeypatch.undo()
    it = iter(attributor.stream(ex.image(), ex.question.text, max_new_tokens=600, min_new_tokens=600, worker=True))
    next(it)
    assert _attrib_threads()  # the attribution thread runs while the stream does
    del it
    assert not _attrib_threads() and not attributor.lock.locked()


def test_the_consumer_keeps_its_autograd_mode(attributor: Attributor) -> None:
    """Generation runs in inference mode on the consumer's thread; the loop body never sees it."""
    ex = make_example("test", 2)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            for _ in attributor.stream(ex.image(), ex.question.text):
                assert torch.is_grad_enabled() is grad and not torch.is_inference_mode_enabled()
            assert torch.is_grad_enabled() is grad and not torch.is_inference_mode_enabled()


def test_a_second_stream_on_the_same_thread_is_refused_not_deadlocked(attributor: Attributor) -> None:
    ex = make_example("test", 2)
    with attributor.stream(ex.image(), ex.question.text, max_new_tokens=600, min_new_tokens=600) as first:
        events = iter(first)  # held: dropping the iterator ends the stream
        next(events)
        with pytest.raises(RuntimeError, match="busy with a stream that this thread is iterating"):
            attributor.stream(ex.image(), ex.question.text).run()
    assert not attributor.lock.locked() and not _attrib_threads()


def test_a_stream_iterated_on_another_thread_gives_the_same_result(attributor: Attributor) -> None:
    """``attrib serve`` iterates on a server thread: the result is the main thread's."""
    ex = make_example("test", 4)
    here = attributor.stream(ex.image(), ex.question.text).run()
    there: list[StreamResult] = []
    t = threading.Thread(target=lambda: there.append(attributor.stream(ex.image(), ex.question.text).run()))
    t.start()
    t.join(120)
    assert there and there[0].generated_ids == here.generated_ids
    np.testing.assert_array_equal(there[0].scores, here.scores)
