"""``attrib serve`` under hostile input: malformed requests, foreign pages, big images, many uploads.

Each refusal must be a clean 4xx (JSON ``{"error": ...}``) and leave the server serving; a request from
another origin, for another host or without the token must never reach the model; uploads stay bounded.
"""

from __future__ import annotations

import gc
import http.client
import io
import json
import logging
import re
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from PIL import Image

from attrib.cli import main
from attrib.streaming import serve as serve_mod
from attrib.streaming.serve import (
    TOKEN_HEADER,
    UPLOAD_SIDE,
    AttribServer,
    UploadStore,
    is_loopback,
    make_server,
)
from attrib.streaming.stream import Attributor

QUESTION = "How many circles are there?"


@pytest.fixture(scope="module")
def attributor() -> Attributor:
    return Attributor.load()


@contextmanager
def running(attributor: Attributor, **kw: Any) -> Iterator[AttribServer]:
    kw.setdefault("max_new_tokens", 40)
    srv = make_server(attributor, port=0, **kw)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def server(attributor: Attributor) -> Iterator[AttribServer]:
    with running(attributor) as srv:
        yield srv


# -- helpers -----------------------------------------------------------------------------------


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header declares ``width`` x ``height`` pixels (IHDR patched, CRC fixed)."""
    data = bytearray(_png(Image.new("1", (8, 8))))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def _host(srv: AttribServer) -> str:
    return f"127.0.0.1:{srv.port}"


def _good(srv: AttribServer) -> dict[str, str]:
    return {"Host": _host(srv), "Origin": f"http://{_host(srv)}", TOKEN_HEADER: srv.token}


def _raw(srv: AttribServer, data: bytes, *, close: str = "half") -> tuple[int | None, Any]:
    """Send ``data`` on a fresh socket; ``close``: ``half`` (shut writing, read the answer), ``full`` (hang up)."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(data)
        if close == "full":
            return None, None
        if close == "half":
            s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    assert m, f"no status line in {out[:200]!r}"
    return int(m.group(1)), json.loads(body) if body[:1] in (b"{", b"[") else body


def _request(
    srv: AttribServer,
    method: str,
    path: str,
    headers: dict[str, str | None] | None = None,
    body: bytes = b"",
    *,
    content_length: str | None = "auto",
    close: str = "half",
) -> tuple[int | None, Any]:
    """A raw HTTP/1.1 request with this server's good headers, overridden by ``headers`` (``None`` drops one)."""
    hdrs: dict[str, str | None] = {**_good(srv), **(headers or {})}
    if content_length == "auto":
        hdrs.setdefault("Content-Length", str(len(body)) if body or method == "POST" else None)
    elif content_length is not None:
        hdrs["Content-Length"] = content_length
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in hdrs.items() if v is not None]
    return _raw(srv, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body, close=close)


def _stream_body(image: str, prompt: str) -> bytes:
    return json.dumps({"image": image, "prompt": prompt}).encode()


def _post_stream(srv: AttribServer, image: str, prompt: str, **headers: str | None) -> tuple[int | None, Any]:
    hdrs: dict[str, str | None] = {"Content-Type": "application/json", **headers}
    return _request(srv, "POST", "/api/stream", hdrs, _stream_body(image, prompt))


def _to_stream(srv: AttribServer, body: bytes, ctype: str = "application/json") -> tuple[int | None, Any]:
    return _request(srv, "POST", "/api/stream", {"Content-Type": ctype}, body)


def _events(body: bytes) -> list[tuple[str, Any]]:
    out = []
    for block in body.decode().split("\n\n"):
        lines = block.split("\n")
        name = next((ln[7:] for ln in lines if ln.startswith("event: ")), None)
        data = next((ln[6:] for ln in lines if ln.startswith("data: ")), None)
        if name and data:
            out.append((name, json.loads(data)))
    return out


def _assert_serves(srv: AttribServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    conn.request("GET", "/api/examples")
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())[0]["id"] == "test-0"
    conn.close()


# -- malformed requests ------------------------------------------------------------------------

UP = "/api/upload"
TINY = _png(Image.new("RGB", (40, 40), (200, 30, 30)))
FUZZ: list[tuple[str, int, Callable[[AttribServer], tuple[int | None, Any]]]] = [
    ("content-length-not-integer", 400, lambda s: _request(s, "POST", UP, body=TINY, content_length="abc")),
    ("content-length-negative", 400, lambda s: _request(s, "POST", UP, body=TINY, content_length="-5")),
    ("content-length-float", 400, lambda s: _request(s, "POST", UP, body=TINY, content_length="1e3")),
    ("content-length-unicode-digits", 400, lambda s: _request(s, "POST", UP, body=TINY, content_length="\xb2\xb3")),
    ("content-length-huge", 413, lambda s: _request(s, "POST", UP, body=TINY, content_length="9" * 40)),
    ("content-length-above-limit", 413, lambda s: _request(s, "POST", UP, body=TINY, content_length="20000000")),
    ("content-length-twice", 400, lambda s: _request(s, "POST", UP, {"Content-length": "5"}, TINY)),
    ("content-length-missing", 411, lambda s: _request(s, "POST", UP, content_length=None)),
    ("chunked", 411, lambda s: _request(s, "POST", UP, {"Transfer-Encoding": "chunked"}, b"5\r\nhello\r\n0\r\n\r\n")),
    ("truncated-body", 400, lambda s: _request(s, "POST", UP, body=TINY[:10], content_length="1000")),
    ("empty-upload", 400, lambda s: _request(s, "POST", UP, content_length="0")),
    ("garbage-request", 400, lambda s: _raw(s, b"\x00\x01\xff\xfe garbage \x7f\r\n\r\n")),
    ("request-line-too-long", 414, lambda s: _raw(s, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")),
    ("too-many-headers", 431, lambda s: _request(s, "GET", "/", {f"X-H{i}": "v" for i in range(150)})),
    ("garbage-image", 400, lambda s: _request(s, "POST", UP, body=b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)),
    ("not-an-image", 400, lambda s: _request(s, "POST", UP, body=b"%!PS-Adobe-3.0 EPSF-3.0\n" + b"x" * 64)),
    ("truncated-png", 400, lambda s: _request(s, "POST", UP, body=_png(_noise(300, 200))[:5000])),
    ("decompression-bomb", 413, lambda s: _request(s, "POST", UP, body=_bomb_png(20000, 20000))),
    ("bomb-warning-range", 413, lambda s: _request(s, "POST", UP, body=_bomb_png(10000, 10000))),
    ("above-pixel-limit", 413, lambda s: _request(s, "POST", UP, body=_png(Image.new("1", (5000, 4000))))),
    ("put", 405, lambda s: _request(s, "PUT", UP, body=TINY)),
    ("delete", 405, lambda s: _request(s, "DELETE", "/api/image/test-0")),
    ("patch", 405, lambda s: _request(s, "PATCH", "/", body=b"{}")),
    ("options", 405, lambda s: _request(s, "OPTIONS", "/api/stream")),
    ("unknown-method", 405, lambda s: _request(s, "BREW", "/")),
    ("unknown-route", 404, lambda s: _request(s, "GET", "/etc/passwd")),
    ("unknown-post-route", 404, lambda s: _request(s, "POST", "/api/run", body=b"{}")),
    ("unknown-image", 404, lambda s: _request(s, "GET", "/api/image/upload-0000")),
    ("get-stream", 405, lambda s: _request(s, "GET", f"/api/stream?image=test-0&prompt={QUESTION.replace(' ', '+')}")),
    ("get-upload", 405, lambda s: _request(s, "GET", UP)),
    ("post-page", 405, lambda s: _request(s, "POST", "/", body=b"x")),
    ("foreign-origin-get", 403, lambda s: _request(s, "GET", "/", {"Origin": "http://evil.example"})),
    ("foreign-origin-post", 403, lambda s: _request(s, "POST", UP, {"Origin": "http://evil.example"}, TINY)),
    ("null-origin", 403, lambda s: _request(s, "POST", UP, {"Origin": "null"}, TINY)),
    ("https-origin", 403, lambda s: _request(s, "POST", UP, {"Origin": f"https://{_host(s)}"}, TINY)),
    ("missing-origin-post", 403, lambda s: _request(s, "POST", UP, {"Origin": None}, TINY)),
    ("rebound-host", 403, lambda s: _request(s, "GET", "/", {"Host": f"evil.example:{s.port}", "Origin": None})),
    ("wrong-port-host", 403, lambda s: _request(s, "GET", "/", {"Host": "127.0.0.1:1", "Origin": None})),
    ("missing-host", 403, lambda s: _raw(s, b"GET / HTTP/1.0\r\n\r\n")),
    ("two-hosts", 403, lambda s: _request(s, "GET", "/", {"host": "evil.example"})),
    ("missing-token", 403, lambda s: _request(s, "POST", UP, {TOKEN_HEADER: None}, TINY)),
    ("wrong-token", 403, lambda s: _request(s, "POST", UP, {TOKEN_HEADER: "x" * 43}, TINY)),
    ("non-ascii-token", 403, lambda s: _request(s, "POST", UP, {TOKEN_HEADER: "\xe9" * 43}, TINY)),
    ("stream-not-json-type", 415, lambda s: _to_stream(s, b"", "text/plain")),
    ("stream-bad-json", 400, lambda s: _to_stream(s, b"{")),
    (
        "stream-json-list",
        400,
        lambda s: _to_stream(s, b"[]"),
    ),
    (
        "stream-bad-utf8",
        400,
        lambda s: _to_stream(s, b"\xff"),
    ),
    (
        "stream-body-too-big",
        413,
        lambda s: _to_stream(s, b" " * 70000),
    ),
    ("stream-unknown-image", 404, lambda s: _post_stream(s, "nope", QUESTION)),
    ("stream-empty-prompt", 400, lambda s: _post_stream(s, "test-0", "   ")),
    ("stream-prompt-too-long", 400, lambda s: _post_stream(s, "test-0", "x" * 5000)),
]


def _gradient(w: int, h: int) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([x % 256, y % 256, (x // 7 + y // 5) % 256], axis=-1).astype(np.uint8))


def _noise(w: int, h: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("case", "expected", "send"), FUZZ, ids=[c[0] for c in FUZZ])
def test_malformed_requests_get_a_clean_4xx_and_the_server_keeps_serving(
    server: AttribServer, case: str, expected: int, send: Callable[[AttribServer], tuple[int | None, Any]]
) -> None:
    status, body = send(server)
    assert status == expected, (case, body)
    # One-line JSON, the base class's own refusals (bad request line, too many headers) included.
    assert isinstance(body, dict) and isinstance(body["error"], str) and "\n" not in body["error"], body
    _assert_serves(server)


def test_a_client_that_hangs_up_mid_body_or_stalls_leaves_the_server_serving(
    server: AttribServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Declared 1,000,000 bytes, sent 10, hung up: nobody to answer; the server carries on.
    status, _ = _request(server, "POST", UP, body=TINY[:10], content_length="1000000", close="full")
    assert status is None
    _assert_serves(server)
    # Declared more than it sends and then stalls: the socket timeout answers 408.
    monkeypatch.setattr(serve_mod._Handler, "timeout", 0.5)
    t0 = time.perf_counter()
    status, body = _request(server, "POST", UP, body=TINY[:10], content_length="1000", close="open")
    assert status == 408 and "timed out" in body["error"]
    assert time.perf_counter() - t0 < 10
    _assert_serves(server)


def test_the_page_carries_the_token_a_nonce_csp_and_refuses_framing(server: AttribServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/")
    r = conn.getresponse()
    page = r.read().decode()
    assert r.status == 200
    assert f'<meta name="attrib-token" content="{server.token}">' in page
    csp = r.getheader("Content-Security-Policy") or ""
    nonce = re.search(r"'nonce-([^']+)'", csp)
    assert nonce and f'<script nonce="{nonce.group(1)}">' in page and "frame-ancestors 'none'" in csp
    assert r.getheader("X-Frame-Options") == "DENY" and r.getheader("X-Content-Type-Options") == "nosniff"
    # Every page load draws a fresh nonce; the token stays the server's.
    conn.request("GET", "/")
    r2 = conn.getresponse()
    r2.read()
    assert r2.getheader("Content-Security-Policy") != csp
    # The loopback aliases of a loopback bind are this server too (with its port).
    for alias in ("localhost", "[::1]"):
        status, page2 = _request(server, "GET", "/", {"Host": f"{alias}:{server.port}", "Origin": None})
        assert status == 200 and b"attrib-token" in page2


def test_upload_then_stream_through_the_whole_protocol(server: AttribServer) -> None:
    status, body = _request(server, "POST", UP, body=_png(_gradient(3000, 2000)))
    assert status == 200 and body["id"].startswith("upload-")
    assert (body["width"], body["height"]) == (UPLOAD_SIDE, 683)  # downscaled when stored, aspect kept
    status, png = _request(server, "GET", "/api/image/" + body["id"])
    assert status == 200 and Image.open(io.BytesIO(png)).size == (UPLOAD_SIDE, 683)
    status, stream = _post_stream(server, body["id"], QUESTION)
    assert status == 200
    events = _events(stream)
    names = [n for n, _ in events]
    assert names[0] == "start" and names[-1] == "final" and "span" in names
    assert events[0][1]["prompt"] == QUESTION and events[-1][1]["correct"] is None
    # An example with its own question: its truth travels with it.
    status, examples = _request(server, "GET", "/api/examples")
    assert status == 200
    status, stream = _post_stream(server, examples[0]["id"], examples[0]["question"])
    assert status == 200 and _events(stream)[-1][1]["correct"] is not None


def test_memory_stays_bounded_under_many_large_uploads(attributor: Attributor) -> None:
    data = _png(_gradient(2000, 1500))
    with running(attributor) as srv:
        ids = []
        for _ in range(100):
            status, body = _request(srv, "POST", UP, body=data)
            assert status == 200, body
            ids.append(body["id"])
        store = srv.uploads
        assert len(store) == store.capacity == 32
        sizes = store.sizes()
        assert all(max(s) <= UPLOAD_SIDE for s in sizes)
        assert sum(w * h for w, h in sizes) <= 32 * 1024 * 768
        assert ids[-1] in store and ids[0] not in store
        assert _request(srv, "GET", "/api/image/" + ids[0])[0] == 404  # evicted
        assert _request(srv, "GET", "/api/image/" + ids[-1])[0] == 200
        # No decoded full-size upload survives anywhere in the process.
        gc.collect()
        live = [o.size for o in gc.get_objects() if issubclass(type(o), Image.Image)]
        assert not [s for s in live if s == (2000, 1500)]
        assert sum(w * h for w, h in live) <= 40 * 1024 * 768


def test_the_store_evicts_the_least_recently_used() -> None:
    store = UploadStore(capacity=3, max_side=64)
    a, b, c = (store.add(Image.new("RGB", (100, 50))) for _ in range(3))
    assert store.get(a) is not None  # a is now the most recent
    d = store.add(Image.new("L", (10, 10)))
    assert b not in store and all(k in store for k in (a, c, d))
    assert sorted(store.sizes()) == [(10, 10), (64, 32), (64, 32)]
    assert store.get(d) is not None and store.get(d).mode == "RGB"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="at least 1"):
        UploadStore(capacity=0)


def test_a_foreign_page_or_host_cannot_start_a_generation(
    attributor: Attributor, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = attributor.stream

    def counting(*args: Any, **kw: Any) -> Any:
        calls.append(args[1:])
        return real(*args, **kw)

    monkeypatch.setattr(attributor, "stream", counting)
    with running(attributor) as srv:
        refused = [
            _post_stream(srv, "test-0", QUESTION, Origin="http://evil.example"),
            _post_stream(srv, "test-0", QUESTION, Origin="null"),
            _post_stream(srv, "test-0", QUESTION, Origin=None),
            _post_stream(
                srv, "test-0", QUESTION, Host=f"evil.example:{srv.port}", Origin=f"http://evil.example:{srv.port}"
            ),
            _post_stream(srv, "test-0", QUESTION, **{TOKEN_HEADER: None}),
            _post_stream(
                srv, "test-0", QUESTION, **{TOKEN_HEADER: srv.token[:-1] + ("B" if srv.token.endswith("A") else "A")}
            ),
            # A "simple" cross-site form post: no custom header, form content type.
            _request(
                srv,
                "POST",
                "/api/stream",
                {
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Origin": "http://evil.example",
                    TOKEN_HEADER: None,
                },
                b"image=test-0",
            ),
            _request(srv, "GET", "/api/stream?image=test-0&prompt=hi"),
        ]
        assert [s for s, _ in refused] == [403, 403, 403, 403, 403, 403, 403, 405]
        assert calls == []
        # The same request from the page itself goes through (so the counter does count).
        status, body = _post_stream(srv, "test-0", QUESTION)
        assert status == 200 and _events(body)[-1][0] == "final"
        assert len(calls) == 1


def test_a_stream_past_its_time_limit_ends_with_an_error_event(attributor: Attributor) -> None:
    with running(attributor, time_limit_s=1.0, max_new_tokens=1500, min_new_tokens=1500) as srv:
        t0 = time.perf_counter()
        status, body = _post_stream(srv, "test-1", QUESTION)
        assert status == 200
        events = _events(body)
        assert events[0][0] == "start" and events[-1][0] == "error"
        assert "time limit of 1 s" in events[-1][1]["error"] and "final" not in [n for n, _ in events]
        assert time.perf_counter() - t0 < 20
        # Generation stopped: the model is free again, and the server serves the next request.
        assert attributor.lock.acquire(timeout=10)
        attributor.lock.release()
        _assert_serves(srv)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.5", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_public_host_needs_a_token_and_logs_a_warning(
    attributor: Attributor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def never_bind(self: Any) -> None:
        raise AssertionError("bound before refusing")

    with monkeypatch.context() as m:
        m.setattr(AttribServer, "server_bind", never_bind)
        for host in ("0.0.0.0", "", "192.168.1.5"):
            with pytest.raises(ValueError, match="serves beyond this machine: pass a token"):
                make_server(attributor, host=host, port=0)
        with pytest.raises(ValueError, match="at least 12"):
            make_server(attributor, host="0.0.0.0", port=0, token="SECRET")
    token = "correct-horse-battery-staple"
    with caplog.at_level(logging.WARNING, logger="attrib.streaming.serve"):
        srv = make_server(attributor, host="0.0.0.0", port=0, token=token, max_new_tokens=40)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "beyond this machine" in warnings[0].getMessage()
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        # An explicit token never goes into the page: whoever can reach the page must also know the token.
        status, page = _request(srv, "GET", "/", {"Origin": None})
        assert status == 200 and token.encode() not in page and b'<meta name="attrib-token"' not in page
        assert _request(srv, "POST", UP, {TOKEN_HEADER: None}, TINY)[0] == 403
        status, body = _request(srv, "POST", UP, {TOKEN_HEADER: token}, TINY)
        assert status == 200 and body["id"].startswith("upload-")
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_cli_refuses_a_public_host_without_a_token_before_loading(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ATTRIB_SERVE_TOKEN", raising=False)
    t0 = time.perf_counter()
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "serves beyond this machine: pass --token" in err
    assert time.perf_counter() - t0 < 5  # refused before the model loads
