"""``attrib serve``: a local web view that paints each span's heatmap while the model generates.

Web stack: the standard library's ``http.server.ThreadingHTTPServer`` and
Server-Sent Events. Why: the view is one page, one user, on 127.0.0.1; SSE is
a plain chunked text response that every browser's ``EventSource`` reads, and
the server needs nothing beyond CPython, which is maintained with the
interpreter itself and adds no dependency or event loop to bridge with the
threaded generation. A client that disconnects makes the next write fail;
the handler then closes the stream, which stops generation at the next token.

Routes:

- ``GET /``: the page.
- ``GET /api/examples``: examples to pick from (the model's default dataset, e.g. ``shapes:test``, or those given).
- ``GET /api/image/<id>``: an example's or an upload's image (PNG).
- ``POST /api/upload``: raw image bytes (at most 16 MB) -> ``{"id": ...}``.
- ``GET /api/stream?image=<id>&prompt=<text>``: the event stream
  (``start`` with the image and regions, one ``span`` per reasoning span,
  then ``final``; ``error`` with a message on bad input).
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import threading
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from PIL import Image, UnidentifiedImageError

from attrib.collect.datasets import CollectItem, open_dataset
from attrib.streaming.report import CSS, HEATMAP_JS, labels_payload, png_data_uri
from attrib.streaming.stream import Attributor, FinalEvent, SpanEvent

__all__ = ["default_examples", "make_server", "run_until_interrupted", "serve"]

logger = logging.getLogger(__name__)

MAX_UPLOAD = 16 * 1024 * 1024
MAX_PROMPT_CHARS = 2000
N_EXAMPLES = 12

_PAGE_JS = r"""
const $ = function (id) { return document.getElementById(id); };
const IMG = new Image();
const state = { spans: [], labels: null, labBytes: null, firstSpanAt: null, finalAt: null,
  done: false, serverGenerationDone: null, serverFirstSpanEmitted: null, error: null };
window.__attrib = state;
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls; return e; }
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
fetch("/api/examples").then(function (r) { return r.json(); }).then(function (xs) {
  xs.forEach(function (x) { const o = el("option", x.id + ": " + x.question); o.value = x.id;
    o.dataset.q = x.question; $("pick").appendChild(o); });
  $("prompt").value = xs.length ? xs[0].question : "";
});
$("pick").addEventListener("change", function () { const o = $("pick").selectedOptions[0];
  if (o && o.dataset.q) $("prompt").value = o.dataset.q; });
$("file").addEventListener("change", function () {
  const f = $("file").files[0]; if (!f) return;
  fetch("/api/upload", { method: "POST", body: f }).then(function (r) { return r.json(); }).then(function (d) {
    if (d.error) { $("status").textContent = "error: " + d.error; return; }
    const o = el("option", "upload: " + f.name); o.value = d.id; $("pick").appendChild(o); $("pick").value = d.id;
  });
});
$("run").addEventListener("click", function () {
  state.spans = []; state.firstSpanAt = null; state.finalAt = null; state.done = false; state.error = null;
  $("trace").textContent = ""; $("answer").textContent = ""; $("tops").textContent = "";
  $("status").textContent = "generating...";
  const url = "/api/stream?image=" + encodeURIComponent($("pick").value) + "&prompt=" +
    encodeURIComponent($("prompt").value);
  const es = new EventSource(url);
  es.addEventListener("start", function (m) {
    const d = JSON.parse(m.data); state.labels = d.labels; state.labBytes = decodeLabels(d.labels);
    IMG.onload = function () {
      if (state.spans.length) show(state.spans.length - 1);
      else paintHeatmap($("heat"), IMG, state.labels, state.labBytes, null, []);
    };
    IMG.src = d.image; $("question").textContent = d.prompt;
  });
  es.addEventListener("span", function (m) {
    const s = JSON.parse(m.data); state.spans.push(s);
    if (state.firstSpanAt === null) {
      state.firstSpanAt = performance.now(); state.serverFirstSpanEmitted = s.emitted_s;
    }
    const e = el("span", s.text + " ", "sp"); const i = state.spans.length - 1;
    e.onclick = function () { show(i); }; $("trace").appendChild(e);
    if (s.flagged) $("flag").textContent = "failure flag raised at span " + s.index;
    show(i);
  });
  es.addEventListener("final", function (m) {
    const d = JSON.parse(m.data); es.close(); state.finalAt = performance.now(); state.done = true;
    state.serverGenerationDone = d.generation_s;
    $("answer").textContent = "Answer: " + (d.answer === null ? "(none)" : d.answer) +
      (d.correct === null ? "" : (d.correct ? " (right)" : " (wrong; truth " + d.truth + ")"));
    $("status").textContent = "done: " + d.generated_tokens + " tokens in " + d.generation_s.toFixed(2) + " s";
  });
  es.addEventListener("error", function (m) {
    es.close();
    if (state.done) return;
    let msg = "connection lost";
    if (m && m.data) { try { msg = JSON.parse(m.data).error; } catch (err) { msg = String(m.data); } }
    state.error = msg; $("status").textContent = "error: " + msg;
  });
});
"""

_PAGE = (
    '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
    "<title>attrib live</title><style>" + CSS + "</style></head><body><h1>attrib: live attribution</h1>"
    '<p class="muted">Pick a benchmark image or upload one, ask a question, and watch each reasoning span\'s '
    "regions light up as the model generates.</p>"
    '<div class="row"><select id="pick"></select> <input type="file" id="file" accept="image/*"></div>'
    '<p><input id="prompt" size="80"> <button id="run">Run</button> <span id="status" class="muted"></span></p>'
    '<div class="row"><div><canvas id="heat"></canvas></div><div style="flex:1"><h3 id="question"></h3>'
    '<p id="trace" class="trace"></p><p id="answer"></p><p id="flag" class="bad"></p>'
    '<h3>Top regions of the selected span</h3><table id="tops"></table><p id="share" class="muted"></p></div></div>'
    "<script>" + HEATMAP_JS + _PAGE_JS + "</script></body></html>"
)


def default_examples(attributor: Attributor, n: int = N_EXAMPLES) -> list[CollectItem]:
    """The first ``n`` examples of the model's default dataset (none when it has none)."""
    spec = attributor.loaded.default_dataset
    return [] if spec is None else list(open_dataset(spec).items(n, 0))


class _State:
    def __init__(
        self,
        attributor: Attributor,
        flagger_factory: Any,
        max_new_tokens: int,
        generate_kwargs: dict[str, Any],
        examples: Sequence[CollectItem],
    ) -> None:
        self.attributor = attributor
        self.flagger_factory = flagger_factory
        self.max_new_tokens = max_new_tokens
        self.generate_kwargs = generate_kwargs
        self.uploads: dict[str, Image.Image] = {}
        self.lock = threading.Lock()
        self.examples = {ex.uid: ex for ex in examples}

    def image(self, key: str) -> tuple[Image.Image, str | None]:
        if key in self.examples:
            ex = self.examples[key]
            return ex.load_image(), ex.answer
        with self.lock:
            if key in self.uploads:
                return self.uploads[key], None
        raise KeyError(key)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def do_GET(self) -> None:
        url = urlparse(self.path)
        st = self.server.state
        if url.path == "/":
            self._send(200, _PAGE.encode(), "text/html; charset=utf-8")
        elif url.path == "/api/examples":
            self._json([{"id": k, "question": ex.question} for k, ex in st.examples.items()])
        elif url.path.startswith("/api/image/"):
            try:
                im, _ = st.image(url.path.rsplit("/", 1)[1])
            except KeyError:
                self._json({"error": "unknown image"}, HTTPStatus.NOT_FOUND)
                return
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            self._send(200, buf.getvalue(), "image/png")
        elif url.path == "/api/stream":
            self._stream(parse_qs(url.query))
        else:
            self._json({"error": f"no route {url.path}"}, HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:
        if urlparse(self.path).path != "/api/upload":
            self._json({"error": "no such route"}, HTTPStatus.NOT_FOUND)
            return
        n = int(self.headers.get("Content-Length") or 0)
        if n <= 0 or n > MAX_UPLOAD:
            self._json({"error": f"upload must be 1 byte to {MAX_UPLOAD} bytes, got {n}"}, HTTPStatus.BAD_REQUEST)
            return
        data = self.rfile.read(n)
        try:
            im = Image.open(io.BytesIO(data))
            im.load()
        except (UnidentifiedImageError, OSError) as e:
            self._json({"error": f"not a readable image: {e}"}, HTTPStatus.BAD_REQUEST)
            return
        key = "upload-" + secrets.token_hex(6)
        with self.server.state.lock:
            self.server.state.uploads[key] = im.convert("RGB")
        self._json({"id": key})

    def _event(self, name: str, data: Any) -> None:
        self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()

    def _stream(self, q: dict[str, list[str]]) -> None:
        st = self.server.state
        key = (q.get("image") or [""])[0]
        prompt = (q.get("prompt") or [""])[0]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        try:
            try:
                if not prompt.strip():
                    raise ValueError("the prompt is empty")
                if len(prompt) > MAX_PROMPT_CHARS:
                    raise ValueError(f"the prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
                try:
                    image, truth = st.image(key)
                except KeyError:
                    raise ValueError(f"unknown image {key!r}: pick an example or upload one") from None
                if truth is not None and prompt != st.examples[key].question:
                    truth = None
                stream = st.attributor.stream(
                    image,
                    prompt,
                    truth=truth,
                    flagger=st.flagger_factory(),
                    max_new_tokens=st.max_new_tokens,
                    **st.generate_kwargs,
                )
            except ValueError as e:
                self._event("error", {"error": str(e)})
                return
            self._event(
                "start",
                {
                    "prompt": prompt,
                    "image": png_data_uri(stream.image),
                    "labels": labels_payload(stream.partition.labels),
                },
            )
            with stream:
                try:
                    for ev in stream:
                        if isinstance(ev, SpanEvent):
                            self._event("span", ev.to_dict())
                        elif isinstance(ev, FinalEvent):
                            self._event("final", ev.to_dict())
                except (BrokenPipeError, ConnectionResetError):
                    raise
                except Exception as e:  # the model failed: tell the client, keep serving
                    logger.exception("stream failed")
                    self._event("error", {"error": f"{type(e).__name__}: {e}"})
        except (BrokenPipeError, ConnectionResetError):
            logger.info("client disconnected; generation stopped")
            self.server.disconnects += 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], state: _State) -> None:
        super().__init__(addr, _Handler)
        self.state = state
        self.disconnects = 0


def make_server(
    attributor: Attributor,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    flagger: Any = None,
    max_new_tokens: int = 200,
    examples: Sequence[CollectItem] | None = None,
    **generate_kwargs: Any,
) -> ThreadingHTTPServer:
    """Build (but do not start) the server; ``port=0`` picks a free port (see ``server.server_address``).

    Args:
        attributor: What to stream with.
        host: Bind address; the default serves this machine only.
        port: TCP port.
        flagger: A calibrated failure flagger to copy for each stream (``None``: no flag).
        max_new_tokens: Generation budget per request.
        examples: Examples to offer (default: [`default_examples`][attrib.streaming.serve.default_examples]).
        **generate_kwargs: Passed to ``generate`` (e.g. ``min_new_tokens``).
    """
    import copy

    def factory() -> Any:
        return None if flagger is None else copy.deepcopy(flagger)

    exs = default_examples(attributor) if examples is None else list(examples)
    return _Server((host, port), _State(attributor, factory, max_new_tokens, generate_kwargs, exs))


def serve(attributor: Attributor, *, host: str = "127.0.0.1", port: int = 8765, flagger: Any = None) -> None:
    """Serve until interrupted."""
    srv = make_server(attributor, host=host, port=port, flagger=flagger)
    h, p = srv.server_address[:2]
    logger.warning("attrib serve: open http://%s:%d/ (Ctrl-C stops)", h, p)
    run_until_interrupted(srv)


def run_until_interrupted(srv: ThreadingHTTPServer) -> None:
    """``serve_forever`` until Ctrl-C, then close the socket."""
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
