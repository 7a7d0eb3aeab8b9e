"""``attrib serve``: a local web view that paints each span's heatmap while the model generates.

Web stack: the standard library's ``http.server.ThreadingHTTPServer`` and
Server-Sent Events. Why: the view is one page for one user; SSE is a plain
text response that the page reads with ``fetch()`` and a stream reader, and
the server needs nothing beyond CPython, which is maintained with the
interpreter itself and adds no dependency or event loop to bridge with the
threaded generation. A client that disconnects makes the next write fail (a
keep-alive comment goes out every few seconds while nothing else does); the
handler then closes the stream, which stops generation at the next token.

Security model:

- **Loopback by default.** The server binds to 127.0.0.1; any other ``host``
  needs an explicit ``token`` (refused with ``ValueError`` before binding
  otherwise), and the server logs a warning that it serves beyond this machine.
- **Side effects only on POST, with a token.** ``GET`` routes only read.
  Uploading and starting a generation are ``POST`` requests that carry the
  server's token in the ``X-Attrib-Token`` header (compared in constant time).
  On loopback without a ``token``, a random one is made per server and placed
  in the page; an explicit token is never placed in the page: the user types
  it (or opens ``/#token=...``).
- **Host and Origin.** A request whose ``Host`` is not this server (its bind
  address, the address the connection came in on, ``localhost``/``127.0.0.1``/
  ``[::1]`` on loopback, or ``allowed_hosts``; with this server's port) gets
  403, which defeats DNS rebinding. A request whose ``Origin`` is not this
  server's own origin gets 403, and so does a ``POST`` without ``Origin``.
  The page cannot be framed (``frame-ancestors 'none'``) and runs only its own
  script (a per-response CSP nonce).
- **Limits.** Bodies need a ``Content-Length`` within the limit (16 MB for an
  upload, 64 KB for a stream request) and are read under a socket timeout and
  an overall deadline. An upload's declared pixel size is checked before it is
  decoded (at most ``MAX_PIXELS``); only
  PNG, JPEG, GIF, BMP and WebP are opened; uploads are kept downscaled in a
  bounded store ([`UploadStore`][attrib.streaming.serve.UploadStore]) that
  evicts the least recently used. At most a few uploads and streams run at
  once (429 beyond), and each stream is closed after ``time_limit_s`` with an
  ``error`` event saying so.
- **Errors.** Every refusal is a 4xx answer with a one-line JSON
  ``{"error": ...}`` (or an SSE ``error`` event once a stream has started),
  and the server keeps serving.

Routes:

- ``GET /``: the page.
- ``GET /api/examples``: examples to pick from (the model's default dataset, e.g. ``shapes:test``, or those given).
- ``GET /api/image/<id>``: an example's or an upload's image (PNG).
- ``POST /api/upload`` (token): raw image bytes -> ``{"id": ..., "width": ..., "height": ...}``.
- ``POST /api/stream`` (token): JSON ``{"image": id, "prompt": text}`` -> an event stream
  (``start`` with the image and regions, one ``span`` per reasoning span,
  then ``final``; ``error`` with a message if generation fails or runs out of time).
"""

from __future__ import annotations

import copy
import hmac
import html
import io
import ipaddress
import json
import logging
import queue
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from PIL import Image, ImageOps

from attrib.collect.datasets import CollectItem, open_dataset
from attrib.io import to_rgb
from attrib.streaming.events import EventLog
from attrib.streaming.report import CSS, HEATMAP_JS, labels_payload, png_data_uri
from attrib.streaming.stream import AttributionStream, Attributor, FinalEvent, SpanEvent

__all__ = [
    "MAX_PIXELS",
    "MAX_UPLOAD",
    "MAX_UPLOADS",
    "TIME_LIMIT_S",
    "TOKEN_HEADER",
    "UPLOAD_SIDE",
    "AttribServer",
    "UploadStore",
    "default_examples",
    "is_loopback",
    "make_server",
    "run_until_interrupted",
    "serve",
]

logger = logging.getLogger(__name__)

#: Largest upload body, in bytes.
MAX_UPLOAD = 16 * 1024 * 1024
#: Largest ``POST /api/stream`` body, in bytes.
MAX_STREAM_REQUEST = 64 * 1024
#: Largest upload, in pixels (width x height as its header declares them, checked before decoding).
MAX_PIXELS = 16_000_000
#: Uploads kept at once (least recently used evicted first).
MAX_UPLOADS = 32
#: Long side of a stored upload, in pixels (larger uploads are downscaled when stored).
UPLOAD_SIDE = 1024
#: Longest prompt, in characters.
MAX_PROMPT_CHARS = 2000
#: Examples offered by default.
N_EXAMPLES = 12
#: Socket timeout of each connection, in seconds (reading a request, writing a response).
SOCKET_TIMEOUT_S = 30.0
#: Default generation time limit per stream request, in seconds.
TIME_LIMIT_S = 300.0
#: The request header that carries the token.
TOKEN_HEADER = "X-Attrib-Token"
#: Shortest explicit token accepted.
MIN_TOKEN_CHARS = 12

_BODY_DEADLINE_S = 60.0  # a whole request body must arrive within this
_HEARTBEAT_S = 10.0  # an SSE comment goes out when no event did for this long
_CLOSE_WAIT_S = 5.0  # how long a handler waits for a closed stream's threads
_MAX_BUSY = 4  # uploads being decoded, and streams running or waiting, at once
_LINGER_BYTES = 1 << 20  # unread request bytes drained before closing (so the client reads the answer)
_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_WILDCARDS = ("", "0.0.0.0", "::")
_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)

_PAGE_CSS = """
.grow{flex:1;min-width:320px}
ol.spans{padding-left:0;list-style:none;max-height:420px;overflow-y:auto}
ol.spans li{padding:2px 4px;border-radius:3px;cursor:pointer;margin-bottom:2px}
ol.spans li.cur{background:#ffe08a}
ol.spans .idx{color:#666;font-variant-numeric:tabular-nums;margin-right:0.4em}
ol.spans .top{color:#666;font-size:0.9em;margin-left:0.5em}
.legend{width:336px;font-size:0.85em;margin-top:0.4em}
.legend .bar{height:12px;border:1px solid #999;background:linear-gradient(to right,rgba(40,90,230,0.8),
rgba(40,90,230,0) 50%,rgba(230,40,30,0) 50%,rgba(230,40,30,0.8))}
.legend .ticks{display:flex;justify-content:space-between}
"""

_PAGE_JS = r"""
const $ = function (id) { return document.getElementById(id); };
const IMG = new Image();
const state = { spans: [], labels: null, labBytes: null, firstSpanAt: null, finalAt: null,
  done: false, serverGenerationDone: null, serverFirstSpanEmitted: null, error: null, image: null };
window.__attrib = state;
const META = document.querySelector('meta[name="attrib-token"]');
let running = null;  // the AbortController of the stream in progress
if (META) { $("token").hidden = true; }
else if (location.hash.startsWith("#token=")) {
  $("token").value = decodeURIComponent(location.hash.slice(7));
  history.replaceState(null, "", location.pathname);
}
function token() { return META ? META.content : $("token").value; }
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls; return e; }
function fail(msg) { state.error = msg; $("status").textContent = "error: " + msg; }
function stop() { if (running) { running.abort(); running = null; } }
function clearSpans() {
  state.spans = []; state.firstSpanAt = null; state.finalAt = null; state.done = false; state.error = null;
  $("trace").textContent = ""; $("answer").textContent = ""; $("tops").textContent = "";
  $("flag").textContent = ""; $("share").textContent = ""; delete $("heat").dataset.span;
}
function show(i) {
  const s = state.spans[i];
  Array.from($("trace").children).forEach(function (e, j) { e.classList.toggle("cur", j === i); });
  $("tops").textContent = "";
  if (!s) return;
  if (!IMG.complete || !IMG.naturalWidth) return;  // repainted by IMG.onload
  s.top_regions.forEach(function (t, j) { const tr = el("tr"); tr.appendChild(el("td", "#" + (j + 1)));
    tr.appendChild(el("td", "region " + t[0])); tr.appendChild(el("td", t[1].toFixed(4)));
    const pt = partText(s, t[0]); if (pt) tr.appendChild(el("td", pt));
    $("tops").appendChild(tr); });
  $("share").textContent = shareText(s);
  paintHeatmap($("heat"), IMG, state.labels, state.labBytes, s.scores, s.top_regions);
  $("heat").dataset.span = String(i);
}
IMG.onload = function () {
  if (state.spans.length) show(state.spans.length - 1);
  else paintHeatmap($("heat"), IMG, state.labels, state.labBytes, null, []);
  $("heat").dataset.image = state.image || "";
};
function showImage(id) {  // the picked image, at once, before any generation
  stop(); clearSpans(); state.labels = null; state.labBytes = null; state.image = id;
  $("status").textContent = ""; $("question").textContent = "";
  if (id) IMG.src = "/api/image/" + encodeURIComponent(id);
}
fetch("/api/examples").then(function (r) { return r.json(); }).then(function (xs) {
  xs.forEach(function (x) { const o = el("option", x.id + ": " + x.question); o.value = x.id;
    o.dataset.q = x.question; $("pick").appendChild(o); });
  $("prompt").value = xs.length ? xs[0].question : "";
  if (xs.length) showImage(xs[0].id);
});
$("pick").addEventListener("change", function () { const o = $("pick").selectedOptions[0];
  if (o && o.dataset.q) $("prompt").value = o.dataset.q;
  showImage($("pick").value); });
$("file").addEventListener("change", function () {
  const f = $("file").files[0]; if (!f) return;
  if (f.size > MAX_UPLOAD) { fail("the file is " + f.size + " bytes; the limit is " + MAX_UPLOAD + " bytes"); return; }
  $("status").textContent = "uploading...";
  fetch("/api/upload", { method: "POST", headers: { "X-Attrib-Token": token() }, body: f })
    .then(function (r) { return r.json(); }).then(function (d) {
      if (d.error) { fail(d.error); return; }
      const o = el("option", "upload: " + f.name); o.value = d.id; $("pick").appendChild(o); $("pick").value = d.id;
      showImage(d.id);
    }).catch(function (e) { fail(String(e)); });
});
function onEvent(name, d) {
  if (name === "start") {
    state.labels = d.labels; state.labBytes = decodeLabels(d.labels);
    IMG.src = d.image; $("question").textContent = d.prompt;
  } else if (name === "span") {
    const s = d; state.spans.push(s); const i = state.spans.length - 1;
    if (state.firstSpanAt === null) {
      state.firstSpanAt = performance.now(); state.serverFirstSpanEmitted = s.emitted_s;
    }
    const li = el("li"); li.appendChild(el("span", "#" + s.index, "idx")); li.appendChild(el("span", s.text, "txt"));
    const t = s.top_regions[0];
    if (t) li.appendChild(el("span", "top: region " + t[0] + " (" + t[1].toFixed(3) + ")", "top"));
    li.onclick = function () { show(i); }; $("trace").appendChild(li);
    if (s.flagged) $("flag").textContent = "failure flag raised at span " + s.index;
    show(i);
  } else if (name === "final") {
    state.finalAt = performance.now(); state.done = true; state.serverGenerationDone = d.generation_s;
    $("answer").textContent = "Answer: " + (d.answer === null ? "(none)" : d.answer) +
      (d.correct === null ? "" : (d.correct ? " (right)" : " (wrong; truth " + d.truth + ")"));
    $("status").textContent = "done: " + d.generated_tokens + " tokens in " + d.generation_s.toFixed(2) + " s";
  } else if (name === "error") {
    fail(d.error);
  }
}
async function readEvents(resp, ctl) {
  const reader = resp.body.getReader(); const dec = new TextDecoder(); let buf = "";
  for (;;) {
    const r = await reader.read();
    if (r.done) break;
    buf += dec.decode(r.value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
      let name = "message"; let data = "";
      block.split("\n").forEach(function (line) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      });
      if (data && running === ctl) onEvent(name, JSON.parse(data));
    }
  }
  if (running === ctl) {
    running = null;
    if (!state.done && state.error === null) fail("the stream ended before the answer");
  }
}
$("run").addEventListener("click", function () {
  stop(); clearSpans();
  $("status").textContent = "generating...";
  const ctl = new AbortController(); running = ctl;
  fetch("/api/stream", { method: "POST", signal: ctl.signal,
    headers: { "Content-Type": "application/json", "X-Attrib-Token": token() },
    body: JSON.stringify({ image: $("pick").value, prompt: $("prompt").value }) })
    .then(function (r) {
      if (!r.ok) return r.json().then(function (d) { if (running === ctl) { running = null; fail(d.error); } });
      return readEvents(r, ctl);
    }).catch(function (e) {
      if (e.name === "AbortError" || running !== ctl) return;
      running = null; fail(String(e));
    });
});
"""

_LEGEND = (
    '<div class="legend" id="legend"><div class="bar"></div>'
    '<div class="ticks"><span>blue: -max</span><span>0</span><span>red: +max</span></div>'
    '<p class="muted">Red: removing the region lowers the span\'s log-probability (the span relies on it). '
    "Blue: removing it raises it. Intensity: |score| relative to the span's largest |score|. "
    "Numbers mark the span's top regions.</p></div>"
)


def _page(token: str | None, nonce: str) -> bytes:
    meta = "" if token is None else f'<meta name="attrib-token" content="{html.escape(token)}">'
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        + meta
        + "<title>attrib live</title><style>"
        + CSS
        + _PAGE_CSS
        + "</style></head><body><h1>attrib: live attribution</h1>"
        '<p class="muted">Pick a benchmark image or upload one, ask a question, and watch each reasoning span\'s '
        "regions light up as the model generates.</p>"
        '<div class="row"><select id="pick"></select> '
        '<input type="file" id="file" accept="image/png,image/jpeg,image/gif,image/bmp,image/webp"> '
        '<input type="password" id="token" placeholder="token" autocomplete="off"></div>'
        f'<p><input id="prompt" size="80" maxlength="{MAX_PROMPT_CHARS}"> <button id="run">Run</button> '
        '<span id="status" class="muted"></span></p>'
        '<div class="row"><div><canvas id="heat"></canvas>' + _LEGEND + "</div>"
        '<div class="grow"><h3 id="question"></h3><ol id="trace" class="spans"></ol><p id="answer"></p>'
        '<p id="flag" class="bad"></p><h3>Top regions of the selected span</h3><table id="tops"></table>'
        '<p id="share" class="muted"></p></div></div>'
        f'<script nonce="{nonce}">const MAX_UPLOAD = {MAX_UPLOAD};' + HEATMAP_JS + _PAGE_JS + "</script></body></html>"
    ).encode()


def _csp(nonce: str) -> str:
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def default_examples(attributor: Attributor, n: int = N_EXAMPLES) -> list[CollectItem]:
    """The first ``n`` examples of the model's default dataset (none when it has none)."""
    spec = attributor.loaded.default_dataset
    return [] if spec is None else list(open_dataset(spec).items(n, 0))


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, allow: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = allow


class UploadStore:
    """Uploaded images, at most ``capacity`` of them, each at most ``max_side`` pixels on its long side.

    Adding beyond ``capacity`` evicts the least recently used upload (looking one up counts as a use),
    so memory stays bounded however many uploads arrive. Thread-safe.

    Args:
        capacity: Uploads kept at once.
        max_side: Long side of a stored image; larger ones are downscaled (aspect kept) when stored.

    Raises:
        ValueError: If ``capacity`` or ``max_side`` is below 1.
    """

    def __init__(self, capacity: int = MAX_UPLOADS, max_side: int = UPLOAD_SIDE) -> None:
        if capacity < 1 or max_side < 1:
            raise ValueError(f"capacity and max_side must be at least 1, got {capacity} and {max_side}")
        self.capacity = capacity
        self.max_side = max_side
        self._images: OrderedDict[str, Image.Image] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, image: Image.Image) -> str:
        """Store ``image`` (as RGB, downscaled to ``max_side``) and return its new id."""
        im = _fit(to_rgb(image), self.max_side)
        key = "upload-" + secrets.token_hex(8)
        with self._lock:
            self._images[key] = im
            while len(self._images) > self.capacity:
                self._images.popitem(last=False)
        return key

    def get(self, key: str) -> Image.Image | None:
        """The upload stored under ``key`` (``None`` when unknown or evicted)."""
        with self._lock:
            im = self._images.get(key)
            if im is not None:
                self._images.move_to_end(key)
            return im

    def sizes(self) -> list[tuple[int, int]]:
        """``(width, height)`` of each stored upload, least recently used first."""
        with self._lock:
            return [im.size for im in self._images.values()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._images)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._images


def _fit(im: Image.Image, max_side: int) -> Image.Image:
    """``im`` downscaled (aspect kept) so its long side is at most ``max_side``; ``im`` itself when it fits."""
    w, h = im.size
    if max(w, h) <= max_side:
        return im
    f = max_side / max(w, h)
    return im.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.LANCZOS)


def _open_formats() -> tuple[str, ...]:
    known = set(Image.registered_extensions().values())
    return tuple(f for f in _FORMATS if f in known)


def _decode_upload(data: bytes, *, max_pixels: int, max_side: int) -> Image.Image:
    """Decode an uploaded image, refusing its declared size before decoding any pixel."""
    too_big = "the image is too large to decode ({}); the limit is {} pixels"
    try:
        im = Image.open(io.BytesIO(data), formats=_open_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, too_big.format(e, max_pixels)) from None
    except Exception:  # UnidentifiedImageError, or a malformed header a plugin trips over
        raise _HTTPError(HTTPStatus.BAD_REQUEST, "not a readable image (PNG, JPEG, GIF, BMP or WebP)") from None
    with im:
        w, h = im.size
        if w < 1 or h < 1:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, f"not a readable image: it declares {w}x{h} pixels")
        if w * h > max_pixels:
            raise _HTTPError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the image is {w}x{h} = {w * h} pixels; the limit is {max_pixels} pixels",
            )
        try:
            im.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale when it is much larger
            im.load()
            rgb = _fit(to_rgb(ImageOps.exif_transpose(im)), max_side)  # the full-size decode is dropped here
            if rgb is im:
                rgb = im.copy()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise _HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, too_big.format(e, max_pixels)) from None
        except Exception as e:  # truncated or corrupt data (OSError, zlib.error, EOFError, ...)
            raise _HTTPError(HTTPStatus.BAD_REQUEST, f"not a readable image: {e}") from None
    return rgb


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address, IPv6 with or without brackets) is this machine only.

    ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``) are; wildcards (``0.0.0.0``, ``::``, ``""``),
    other names and other addresses are not.
    """
    h = host.strip().lower().strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _host_name(addr: str) -> str:
    """An address as a ``Host`` header writes it (IPv6 in brackets, IPv4-mapped IPv6 as IPv4), lowercased."""
    a = addr.strip().lower()
    try:
        ip = ipaddress.ip_address(a.strip("[]").split("%")[0])
    except ValueError:
        return a
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return f"[{ip}]" if isinstance(ip, ipaddress.IPv6Address) else str(ip)


def _host_port(value: str, default_port: int = 80) -> str | None:
    """``name:port`` of a ``Host`` value (``None`` when malformed)."""
    v = value.strip().lower()
    if v.startswith("["):
        end = v.find("]")
        if end < 0:
            return None
        name, rest = v[: end + 1], v[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:] if rest else str(default_port)
    elif v.count(":") == 1:
        name, port = v.split(":")
    elif ":" not in v:
        name, port = v, str(default_port)
    else:
        return None
    if not name or not (port.isascii() and port.isdigit()) or len(port) > 5 or "/" in name or "@" in name:
        return None
    return f"{name}:{int(port)}"


def _check_token(token: str) -> None:
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError(
            f"the token must be at least {MIN_TOKEN_CHARS} printable ASCII characters without spaces "
            "(make one with: python -c 'import secrets; print(secrets.token_urlsafe())')"
        )


class _Handler(BaseHTTPRequestHandler):
    server: AttribServer
    timeout = SOCKET_TIMEOUT_S
    server_version = "attrib"
    sys_version = ""
    default_request_version = "HTTP/1.0"  # a status line even for a request line too broken to name a version

    def setup(self) -> None:
        super().setup()
        self._unread = True  # request bytes may be left unread (drained before closing)
        self._started = False  # an SSE stream has begun: errors are events from here on

    def handle(self) -> None:
        try:
            super().handle()
        finally:
            if self._unread:
                self._linger()

    def _linger(self) -> None:
        """Close our side after the answer, then drain what the client still sends, so it reads the answer."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(1.0)
            deadline = time.monotonic() + 2.0
            got = 0
            while got < _LINGER_BYTES and time.monotonic() < deadline:
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                got += len(chunk)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s " + format, self.address_string(), *args)

    # -- answers -------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, ctype: str, extra: Sequence[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (*_HEADERS, *extra):
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200, extra: Sequence[tuple[str, str]] = ()) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", extra)

    def _error(self, e: _HTTPError) -> None:
        self.close_connection = True
        if self._started:
            self._event("error", {"error": e.message})
            return
        self._json({"error": e.message}, e.status, [("Allow", e.allow)] if e.allow else [])

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer the base class's own refusals (bad request line, headers too long, ...) as JSON."""
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        try:
            default = HTTPStatus(code).phrase
        except ValueError:
            default = "error"
        self._json({"error": message or default}, code)

    # -- request checks ------------------------------------------------------------------------

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        try:
            self._check_headers()
        except _HTTPError as e:
            self._error(e)
            return False
        return True

    def _check_headers(self) -> None:
        srv = self.server
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1:
            raise _HTTPError(HTTPStatus.FORBIDDEN, f"a request needs exactly one Host header, got {len(hosts)}")
        host = _host_port(hosts[0])
        if host is None or host not in srv.allowed_host_ports(self.connection):
            raise _HTTPError(HTTPStatus.FORBIDDEN, f"Host {hosts[0][:100]!r} is not this server")
        origins = self.headers.get_all("Origin") or []
        if len(origins) > 1:
            raise _HTTPError(HTTPStatus.FORBIDDEN, "more than one Origin header")
        if origins:
            o = origins[0].strip().lower()
            if not o.startswith("http://") or _host_port(o[7:]) != host:
                raise _HTTPError(HTTPStatus.FORBIDDEN, f"Origin {origins[0][:100]!r} is not this server's origin")
        elif self.command == "POST":
            raise _HTTPError(
                HTTPStatus.FORBIDDEN, f"a POST needs an Origin header (this server's: http://{hosts[0].strip()})"
            )
        if self.command not in ("GET", "POST"):
            raise _HTTPError(HTTPStatus.METHOD_NOT_ALLOWED, f"method {self.command} is not allowed", "GET, POST")
        if (self.headers.get_all("Content-Length") or ["0"]) == ["0"] and not self.headers.get("Transfer-Encoding"):
            self._unread = False  # no body: nothing to drain

    def _check_token(self) -> None:
        given = self.headers.get_all(TOKEN_HEADER) or []
        if not given:
            raise _HTTPError(HTTPStatus.FORBIDDEN, f"missing {TOKEN_HEADER} header: reload the page")
        if len(given) > 1 or not hmac.compare_digest(
            given[0].strip().encode("latin-1", "replace"), self.server.token.encode()
        ):
            raise _HTTPError(HTTPStatus.FORBIDDEN, f"wrong {TOKEN_HEADER}")

    def _body(self, limit: int) -> bytes:
        """The request body: at most ``limit`` bytes, declared by one ``Content-Length``, read under a deadline."""
        if self.headers.get("Transfer-Encoding"):
            raise _HTTPError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length, not Transfer-Encoding")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise _HTTPError(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
        if len(values) > 1:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "more than one Content-Length header")
        raw = values[0].strip()
        if not (raw.isascii() and raw.isdigit()):
            raise _HTTPError(HTTPStatus.BAD_REQUEST, f"Content-Length must be a non-negative integer, got {raw[:40]!r}")
        if len(raw) > 20 or int(raw) > limit:
            raise _HTTPError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is {raw[:40]} bytes; the limit is {limit} bytes"
            )
        n = int(raw)
        parts: list[bytes] = []
        got = 0
        deadline = time.monotonic() + _BODY_DEADLINE_S
        try:
            while got < n:
                if time.monotonic() > deadline:
                    raise _HTTPError(
                        HTTPStatus.REQUEST_TIMEOUT, f"the body did not arrive within {_BODY_DEADLINE_S:g} s"
                    )
                chunk = self.rfile.read1(min(65536, n - got))
                if not chunk:
                    raise _HTTPError(HTTPStatus.BAD_REQUEST, f"the body ended after {got} of {n} bytes")
                parts.append(chunk)
                got += len(chunk)
        except TimeoutError:
            raise _HTTPError(
                HTTPStatus.REQUEST_TIMEOUT, f"timed out reading the body ({got} of {n} bytes arrived)"
            ) from None
        self._unread = False
        return b"".join(parts)

    # -- routes --------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _route(self, path: str) -> tuple[str, Callable[[str], None]]:
        if path.startswith("/api/image/"):
            return "GET", self._image
        routes: dict[str, tuple[str, Callable[[str], None]]] = {
            "/": ("GET", self._page),
            "/api/examples": ("GET", self._examples),
            "/api/upload": ("POST", self._upload),
            "/api/stream": ("POST", self._stream),
        }
        if path not in routes:
            raise _HTTPError(HTTPStatus.NOT_FOUND, f"no route {path[:200]}")
        return routes[path]

    def _dispatch(self) -> None:
        try:
            path = urlsplit(self.path).path
            method, fn = self._route(path)
            if self.command != method:
                raise _HTTPError(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} takes {method}, not {self.command}", method)
            if method == "POST":
                self._check_token()
            fn(path)
        except _HTTPError as e:
            logger.info("%s %s refused: %d %s", self.command, self.path[:200], e.status, e.message)
            with suppress(OSError):
                self._error(e)
        except OSError as e:  # the client went away or stalled; nothing to answer
            logger.info("connection to %s ended: %s", self.address_string(), e)
            self.close_connection = True
        except Exception as e:
            logger.exception("request %s %s failed", self.command, self.path[:200])
            self.close_connection = True
            try:
                if self._started:
                    self._event("error", {"error": f"{type(e).__name__}: {e}"})
                else:
                    self._json({"error": f"internal error: {type(e).__name__}"}, HTTPStatus.INTERNAL_SERVER_ERROR)
            except OSError:
                pass

    def _page(self, path: str) -> None:
        nonce = secrets.token_urlsafe(16)
        token = self.server.token if self.server.token_in_page else None
        self._send(200, _page(token, nonce), "text/html; charset=utf-8", [("Content-Security-Policy", _csp(nonce))])

    def _examples(self, path: str) -> None:
        self._json([{"id": k, "question": ex.question} for k, ex in self.server.examples.items()])

    def _image(self, path: str) -> None:
        key = unquote(path[len("/api/image/") :])
        try:
            im, _ = self.server.image(key)
        except KeyError:
            raise _HTTPError(HTTPStatus.NOT_FOUND, f"unknown image {key[:100]!r}") from None
        buf = io.BytesIO()
        to_rgb(im).save(buf, format="PNG")
        self._send(200, buf.getvalue(), "image/png")

    def _upload(self, path: str) -> None:
        srv = self.server
        with srv.slot("upload"):
            data = self._body(MAX_UPLOAD)
            if not data:
                raise _HTTPError(HTTPStatus.BAD_REQUEST, "the upload is empty: send the image file's bytes")
            im = _decode_upload(data, max_pixels=srv.max_pixels, max_side=srv.uploads.max_side)
            del data
            key = srv.uploads.add(im)
        w, h = im.size
        self._json({"id": key, "width": w, "height": h})

    def _stream(self, path: str) -> None:
        srv = self.server
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise _HTTPError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"send the request as application/json, not {ctype[:60]!r}"
            )
        body = self._body(MAX_STREAM_REQUEST)
        usage = 'the body must be a JSON object {"image": ID, "prompt": TEXT}'
        try:
            req = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise _HTTPError(HTTPStatus.BAD_REQUEST, usage) from None
        if not isinstance(req, dict) or not isinstance(req.get("image"), str) or not isinstance(req.get("prompt"), str):
            raise _HTTPError(HTTPStatus.BAD_REQUEST, usage)
        key, prompt = req["image"], req["prompt"]
        if not prompt.strip():
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "the prompt is empty")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise _HTTPError(
                HTTPStatus.BAD_REQUEST, f"the prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}"
            )
        try:
            image, truth = srv.image(key)
        except KeyError:
            raise _HTTPError(
                HTTPStatus.NOT_FOUND,
                f"unknown image {key[:100]!r}: pick an example or upload one (the last {srv.uploads.capacity} "
                "uploads are kept)",
            ) from None
        if truth is not None and prompt != srv.examples[key].question:
            truth = None
        with srv.slot("stream"):
            try:
                stream = srv.attributor.stream(
                    image,
                    prompt,
                    truth=truth,
                    flagger=srv.flagger_factory(),
                    max_new_tokens=srv.max_new_tokens,
                    stop_on_flag=srv.stop_on_flag,
                    **srv.generate_kwargs,
                )
            except ValueError as e:
                raise _HTTPError(HTTPStatus.BAD_REQUEST, str(e)) from None
            self._sse(stream, prompt)

    # -- the event stream ----------------------------------------------------------------------

    def _event(self, name: str, data: Any) -> None:
        self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()

    def _sse(self, stream: AttributionStream, prompt: str) -> None:
        srv = self.server
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("X-Accel-Buffering", "no")
        for k, v in _HEADERS:
            self.send_header(k, v)
        self.end_headers()
        self._started = True
        self.close_connection = True
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        log = srv.events
        sid: str | None = None
        if log is not None:
            sid = log.start(stream, model=srv.attributor.name, flagger=stream.flagger, client=self.client_address[0])

        def pump() -> None:
            try:
                for ev in stream:
                    if log is not None and sid is not None:
                        log.event(sid, ev)
                    events.put(("event", ev))
            except BaseException as e:  # handed to the handler, which reports it
                if log is not None and sid is not None:
                    log.error(sid, f"{type(e).__name__}: {e}")
                events.put(("failed", e))
            else:
                events.put(("end", None))

        limit = srv.time_limit_s
        deadline = time.monotonic() + limit
        try:
            self._event(
                "start",
                {
                    "prompt": prompt,
                    "image": png_data_uri(stream.image),
                    "labels": labels_payload(stream.partition.labels),
                },
            )
            threading.Thread(target=pump, name="attrib-serve-stream", daemon=True).start()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    logger.warning("stream stopped at its time limit of %g s", limit)
                    if log is not None and sid is not None:
                        log.error(sid, f"generation stopped at the time limit of {limit:g} s")
                    self._event("error", {"error": f"generation stopped: it reached the time limit of {limit:g} s"})
                    return
                try:
                    kind, item = events.get(timeout=min(left, _HEARTBEAT_S))
                except queue.Empty:
                    self.wfile.write(b": keepalive\n\n")
                    self.wfile.flush()
                    continue
                if kind == "end":
                    return
                if kind == "failed":
                    logger.error("stream failed", exc_info=item)
                    self._event("error", {"error": f"{type(item).__name__}: {item}"})
                    return
                if isinstance(item, SpanEvent):
                    self._event("span", item.to_dict())
                elif isinstance(item, FinalEvent):
                    self._event("final", item.to_dict())
                    return
        except OSError:
            logger.info("client disconnected; generation stopped")
            if log is not None and sid is not None:
                log.error(sid, "client disconnected; generation stopped")
            srv.count_disconnect()
        finally:
            stream.close(timeout=_CLOSE_WAIT_S)


class AttribServer(ThreadingHTTPServer):
    """The live view's HTTP server (built by [`make_server`][attrib.streaming.serve.make_server]).

    Attributes:
        attributor: What it streams with.
        token: The token ``POST`` requests carry in ``X-Attrib-Token``.
        token_in_page: Whether the page carries the token (a random per-server token on loopback) or the user
            types it (an explicit token).
        uploads: The bounded upload store.
        examples: Examples offered, by id.
        time_limit_s: Generation time limit per stream request.
        max_pixels: Largest upload, in pixels.
        disconnects: Streams ended because their client went away.
    """

    daemon_threads = True

    def __init__(
        self,
        addr: tuple[str, int],
        attributor: Attributor,
        *,
        token: str,
        token_in_page: bool,
        flagger_factory: Callable[[], Any],
        max_new_tokens: int,
        generate_kwargs: dict[str, Any],
        examples: Sequence[CollectItem],
        allowed_hosts: Sequence[str] = (),
        time_limit_s: float = TIME_LIMIT_S,
        max_uploads: int = MAX_UPLOADS,
        max_pixels: int = MAX_PIXELS,
        events: EventLog | None = None,
        stop_on_flag: bool = False,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        super().__init__(addr, _Handler)
        self.attributor = attributor
        self.token = token
        self.token_in_page = token_in_page
        self.flagger_factory = flagger_factory
        self.events = events
        self.stop_on_flag = stop_on_flag
        self.max_new_tokens = max_new_tokens
        self.generate_kwargs = generate_kwargs
        self.examples = {ex.uid: ex for ex in examples}
        self.uploads = UploadStore(max_uploads, UPLOAD_SIDE)
        self.time_limit_s = time_limit_s
        self.max_pixels = max_pixels
        self.disconnects = 0
        self._count_lock = threading.Lock()
        self._slots = {k: threading.BoundedSemaphore(_MAX_BUSY) for k in ("upload", "stream")}
        port = int(self.server_address[1])
        self.port = port
        host = addr[0].strip().lower()
        names: set[str] = set()
        if host not in _WILDCARDS:
            names.add(_host_name(host))
        if is_loopback(host):
            names.update(_LOOPBACK_NAMES)
        elif host in _WILDCARDS:
            names.add(socket.gethostname().lower())
        hp = {f"{n}:{port}" for n in names}
        for extra in allowed_hosts:
            e = _host_port(extra, port)
            if e is None:
                raise ValueError(f"allowed host {extra!r} is not a host name or address (optionally with :port)")
            hp.add(e)
        self._host_ports = frozenset(hp)

    def allowed_host_ports(self, conn: socket.socket) -> frozenset[str]:
        """The ``name:port`` values a ``Host`` header may take on connection ``conn``.

        Those fixed at construction, plus the address ``conn`` came in on (and the loopback names when it is
        a loopback address).
        """
        try:
            local = _host_name(str(conn.getsockname()[0]))
        except OSError:
            return self._host_ports
        extra = {f"{local}:{self.port}"}
        if is_loopback(local):
            extra.update(f"{n}:{self.port}" for n in _LOOPBACK_NAMES)
        return self._host_ports | extra

    def image(self, key: str) -> tuple[Image.Image, str | None]:
        """An example's image and answer, or an upload's image and ``None``.

        Raises:
            KeyError: For an unknown (or evicted) id.
        """
        if key in self.examples:
            ex = self.examples[key]
            return ex.load_image(), ex.answer
        im = self.uploads.get(key)
        if im is None:
            raise KeyError(key)
        return im, None

    @contextmanager
    def slot(self, kind: str) -> Iterator[None]:
        """Hold one of the few slots for ``kind`` (``"upload"`` or ``"stream"``); 429 when all are taken."""
        sem = self._slots[kind]
        if not sem.acquire(blocking=False):
            raise _HTTPError(
                HTTPStatus.TOO_MANY_REQUESTS, f"busy: {_MAX_BUSY} {kind}s are in progress; try again when one ends"
            )
        try:
            yield
        finally:
            sem.release()

    def count_disconnect(self) -> None:
        """Count one stream ended by its client going away."""
        with self._count_lock:
            self.disconnects += 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log (never print) an error that escaped a handler; the server keeps serving."""
        logger.exception("request from %s failed", client_address)


def make_server(
    attributor: Attributor,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    allowed_hosts: Sequence[str] = (),
    flagger: Any = None,
    max_new_tokens: int = 200,
    examples: Sequence[CollectItem] | None = None,
    time_limit_s: float = TIME_LIMIT_S,
    max_uploads: int = MAX_UPLOADS,
    events: EventLog | None = None,
    stop_on_flag: bool = False,
    **generate_kwargs: Any,
) -> AttribServer:
    """Build (but do not start) the server; ``port=0`` picks a free port (see ``server.server_address``).

    Args:
        attributor: What to stream with.
        host: Bind address; the default serves this machine only. Any other (a LAN address, ``0.0.0.0``)
            needs ``token`` and logs a warning that the server is reachable beyond this machine.
        port: TCP port.
        token: The secret ``POST`` requests must carry (``X-Attrib-Token``; at least 12 characters). ``None``
            (loopback only): a random token per server, placed in the page. An explicit token is not placed
            in the page; the user enters it there (or opens ``http://HOST:PORT/#token=TOKEN``).
        allowed_hosts: More names (``"name"`` or ``"name:port"``) the ``Host`` header may take, e.g. the
            machine's DNS name or a forwarded port.
        flagger: A calibrated failure flagger to copy for each stream (``None``: no flag).
        max_new_tokens: Generation budget per request.
        examples: Examples to offer (default: [`default_examples`][attrib.streaming.serve.default_examples]).
        time_limit_s: Generation time limit per stream request; the stream then ends with an ``error`` event.
        max_uploads: Uploads kept at once (least recently used evicted).
        events: A JSON-lines log every stream's events are appended to
            ([`EventLog`][attrib.streaming.events.EventLog]; each stream's start line names the client).
        stop_on_flag: End a generation as soon as its failure flag rises (needs ``flagger``).
        **generate_kwargs: Passed to ``generate`` (e.g. ``min_new_tokens``).

    Returns:
        The server, bound and not yet serving.

    Raises:
        ValueError: For a non-loopback ``host`` without ``token``, a short token, a non-positive
            ``time_limit_s`` or ``max_uploads``, a malformed ``allowed_hosts`` entry, or ``stop_on_flag``
            without a flagger (all before binding).
    """
    if stop_on_flag and flagger is None:
        raise ValueError("stop_on_flag needs a failure flagger")
    loopback = is_loopback(host)
    if token is None:
        if not loopback:
            raise ValueError(
                f"host {host!r} serves beyond this machine: pass a token (attrib serve --host {host} --token SECRET, "
                f"at least {MIN_TOKEN_CHARS} characters), or bind to 127.0.0.1"
            )
        secret, in_page = secrets.token_urlsafe(32), True
    else:
        _check_token(token)
        secret, in_page = token, False
    if not time_limit_s > 0:
        raise ValueError(f"time_limit_s must be positive, got {time_limit_s}")
    if max_uploads < 1:
        raise ValueError(f"max_uploads must be at least 1, got {max_uploads}")
    for extra in allowed_hosts:
        if _host_port(extra) is None:
            raise ValueError(f"allowed host {extra!r} is not a host name or address (optionally with :port)")

    def factory() -> Any:
        return None if flagger is None else copy.deepcopy(flagger)

    exs = default_examples(attributor) if examples is None else list(examples)
    srv = AttribServer(
        (host, port),
        attributor,
        token=secret,
        token_in_page=in_page,
        flagger_factory=factory,
        max_new_tokens=max_new_tokens,
        generate_kwargs=generate_kwargs,
        examples=exs,
        allowed_hosts=allowed_hosts,
        time_limit_s=time_limit_s,
        max_uploads=max_uploads,
        events=events,
        stop_on_flag=stop_on_flag,
    )
    if not loopback:
        logger.warning(
            "attrib serve listens on %s port %d, beyond this machine: anyone who can reach it can read the page "
            "and the examples; uploads and generations need the token",
            host or "all interfaces",
            srv.port,
        )
    return srv


def serve(
    attributor: Attributor,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    flagger: Any = None,
) -> None:
    """Serve until interrupted (see [`make_server`][attrib.streaming.serve.make_server] for the arguments)."""
    srv = make_server(attributor, host=host, port=port, token=token, flagger=flagger)
    h, p = srv.server_address[:2]
    logger.warning("attrib serve: open http://%s:%d/ (Ctrl-C stops)", _host_name(str(h)), p)
    run_until_interrupted(srv)


def run_until_interrupted(srv: ThreadingHTTPServer) -> None:
    """``serve_forever`` until Ctrl-C, then close the socket."""
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
