"""Self-contained HTML reports of streamed attributions.

One file, no network: the image is inlined as a PNG data URI, the region map
as base64 bytes, and a few lines of inline JavaScript paint the heatmap of the
span picked with the slider onto a canvas. All user text (prompt, generated
text, model name) reaches the page only as escaped JSON inside a
``<script type="application/json">`` block and is inserted with
``textContent``, never as HTML, so a prompt holding ``<script>`` shows as text.
"""

from __future__ import annotations

import base64
import html
import io
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from attrib.io import json_for_script

if TYPE_CHECKING:
    from attrib.streaming.stream import StreamResult

__all__ = ["CSS", "HEATMAP_JS", "labels_payload", "png_data_uri", "render_report", "result_payload"]

_MAX_SIDE = 256


def png_data_uri(image: Image.Image, max_side: int = 512) -> str:
    """The image as a PNG data URI (downscaled to ``max_side``)."""
    im = image.convert("RGB")
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def labels_payload(labels: np.ndarray) -> dict[str, Any]:
    """A region map as the page draws it: downsampled uint8 bytes (base64) and region centroids."""
    lab = np.asarray(labels)
    h, w = lab.shape
    step = max(1, int(np.ceil(max(h, w) / _MAX_SIDE)))
    small = lab[::step, ::step].astype(np.uint8)
    k = int(lab.max()) + 1
    ys, xs = np.indices(lab.shape)
    cnt = np.maximum(np.bincount(lab.ravel(), minlength=k), 1)
    cy = np.bincount(lab.ravel(), weights=ys.ravel(), minlength=k) / cnt / h
    cx = np.bincount(lab.ravel(), weights=xs.ravel(), minlength=k) / cnt / w
    return {
        "w": int(small.shape[1]),
        "h": int(small.shape[0]),
        "k": k,
        "data": base64.b64encode(small.tobytes()).decode(),
        "centroids": [[round(float(x), 4), round(float(y), 4)] for x, y in zip(cx, cy, strict=True)],
    }


def result_payload(result: StreamResult) -> dict[str, Any]:
    """The JSON a report (or the live view) draws one result from."""
    d = result.to_dict()
    d["image"] = png_data_uri(result.image)
    d["labels"] = labels_payload(result.regions)
    return d


#: Shared drawing code of the report and the live view (``paintHeatmap(canvas, img, labels, scores, top)``),
#: and the per-span key parts of research variants (``partText``, ``shareText``).
HEATMAP_JS = r"""
function partText(s, region) {
  const p = s.parts || {}; const names = Object.keys(p);
  return names.map(function (n) { return n.replace("_", " ") + " " + p[n][region].toFixed(4) +
    ", direct " + (s.scores[region] - p[n][region]).toFixed(4); }).join("; ");
}
function shareText(s) {
  const sh = s.shares || {};
  return Object.keys(sh).map(function (n) { return n + " share " + sh[n].toFixed(3); }).join(", ");
}
function decodeLabels(lab) {
  const raw = atob(lab.data); const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}
function paintHeatmap(canvas, img, lab, labBytes, scores, top) {
  const ctx = canvas.getContext("2d");
  canvas.width = img.naturalWidth || img.width; canvas.height = img.naturalHeight || img.height;
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  if (!scores) return;
  let m = 0; for (const v of scores) m = Math.max(m, Math.abs(v));
  if (m <= 0) m = 1;
  const off = document.createElement("canvas"); off.width = lab.w; off.height = lab.h;
  const octx = off.getContext("2d"); const im = octx.createImageData(lab.w, lab.h);
  for (let i = 0; i < labBytes.length; i++) {
    const s = scores[labBytes[i]] / m;
    const a = Math.min(1, Math.abs(s));
    im.data[4*i] = s >= 0 ? 230 : 40; im.data[4*i+1] = s >= 0 ? 40 : 90; im.data[4*i+2] = s >= 0 ? 30 : 230;
    im.data[4*i+3] = Math.round(200 * a);
  }
  octx.putImageData(im, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
  ctx.font = "bold " + Math.max(10, Math.round(canvas.width / 22)) + "px sans-serif";
  (top || []).forEach(function (t, i) {
    const c = lab.centroids[t[0]]; if (!c) return;
    const x = c[0] * canvas.width, y = c[1] * canvas.height;
    ctx.fillStyle = "rgba(0,0,0,0.75)"; ctx.fillRect(x - 9, y - 11, 20, 20);
    ctx.fillStyle = "#fff"; ctx.fillText(String(i + 1), x - 4, y + 5);
  });
}
"""

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1100px}
.result{border:1px solid #ccc;border-radius:8px;padding:1em;margin-bottom:1.5em}
.row{display:flex;gap:1.5em;flex-wrap:wrap}
canvas{width:336px;height:336px;image-rendering:pixelated;border:1px solid #999}
.trace span.sp{padding:1px 2px;border-radius:3px}
.trace span.cur{background:#ffe08a}
.ok{color:#0a7a26;font-weight:bold}.bad{color:#b00020;font-weight:bold}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
.muted{color:#666;font-size:0.9em}
"""

_REPORT_JS = r"""
(function (uid) {
const DATA = JSON.parse(document.getElementById("attrib-data-" + uid).textContent);
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls; return e; }
function fmt(v) { return (v === null || v === undefined) ? "-" : (typeof v === "number" ? v.toFixed(3) : String(v)); }
DATA.results.forEach(function (r, ri) {
  const box = el("div", undefined, "result"); box.id = "result-" + ri;
  box.appendChild(el("h2", "Q: " + r.prompt));
  const row = el("div", undefined, "row"); box.appendChild(row);
  const left = el("div"); row.appendChild(left);
  const canvas = el("canvas"); canvas.id = "heat-" + ri; left.appendChild(canvas);
  const sl = el("input"); sl.type = "range"; sl.min = 0; sl.max = Math.max(0, r.spans.length - 1); sl.value = 0;
  sl.id = "slider-" + ri; sl.style.width = "336px"; left.appendChild(el("div")).appendChild(sl);
  const lbl = el("div", "", "muted"); left.appendChild(lbl);
  const right = el("div"); right.style.flex = "1"; row.appendChild(right);
  const trace = el("p", undefined, "trace"); right.appendChild(trace);
  const spans = r.spans.map(function (s, i) { const e = el("span", s.text + " ", "sp"); e.dataset.i = i;
    e.onclick = function () { sl.value = i; show(i); }; trace.appendChild(e); return e; });
  const tops = el("table"); right.appendChild(el("h3", "Top regions of this span")); right.appendChild(tops);
  const ans = el("p"); ans.appendChild(el("b", "Answer: "));
  ans.appendChild(el("span", r.answer === null ? "(none)" : r.answer));
  if (r.correct !== null && r.correct !== undefined) { ans.appendChild(el("span", "  ")); ans.appendChild(
      el("span", r.correct ? "right" : "wrong (truth: " + r.truth + ")", r.correct ? "ok" : "bad")); }
  right.appendChild(ans);
  if (r.flagged_at !== null && r.flagged_at !== undefined) right.appendChild(
      el("p", "Failure flag raised at span " + r.flagged_at + " (prefix tortuosity above threshold)", "bad"));
  const f = r.faithfulness;
  right.appendChild(el("h3", "Faithfulness"));
  const ft = el("table"); right.appendChild(ft);
  function frow(k, v) { const tr = el("tr"); tr.appendChild(el("td", k)); tr.appendChild(el("td", fmt(v)));
    ft.appendChild(tr); }
  if (f && f.n_spans) {
    frow("Pearson(streamed scores, leave-one-out), mean over spans", f.pearson_vs_loo);
    frow("top-" + f.k + " drop (streamed ranking)", f.topk_drop);
    frow("top-" + f.k + " drop (leave-one-out oracle)", f.topk_drop_oracle);
    frow("top-" + f.k + " drop / oracle", f.topk_drop_normalized);
    frow(f.k + " random regions' drop", f.random_drop);
  } else { frow("per-example ablation check", "not run"); }
  const v = (r.estimator || {}).validation || {};
  Object.keys(v).forEach(function (k) { frow("estimator held-out " + k, v[k]); });
  box.appendChild(el("p", r.generated_tokens + " tokens in " + fmt(r.generation_s) + " s; model " + r.model, "muted"));
  document.getElementById("results-" + uid).appendChild(box);
  const img = new Image(); const labBytes = decodeLabels(r.labels);
  function show(i) {
    const s = r.spans[i];
    spans.forEach(function (e, j) { e.classList.toggle("cur", j === i); });
    tops.textContent = "";
    if (!s) { paintHeatmap(canvas, img, r.labels, labBytes, null, []); lbl.textContent = "no span"; return; }
    s.top_regions.forEach(function (t, j) { const tr = el("tr"); tr.appendChild(el("td", "#" + (j + 1)));
      tr.appendChild(el("td", "region " + t[0])); tr.appendChild(el("td", t[1].toFixed(4)));
      const pt = partText(s, t[0]); if (pt) tr.appendChild(el("td", pt)); tops.appendChild(tr); });
    const sh = shareText(s);
    lbl.textContent = "span " + (i + 1) + " / " + r.spans.length + " (tokens " + s.start + "-" + s.end + ")" +
      (sh ? "; " + sh : "");
    paintHeatmap(canvas, img, r.labels, labBytes, s.scores, s.top_regions);
    canvas.dataset.span = String(i);
  }
  sl.addEventListener("input", function () { show(parseInt(sl.value, 10)); });
  img.onload = function () { show(0); box.dataset.ready = "1"; };
  img.src = r.image;
});
})"""


def render_report(results: Sequence[StreamResult], *, title: str = "attrib report", standalone: bool = True) -> str:
    """Render results as HTML.

    Args:
        results: Streamed results.
        title: Page title (escaped).
        standalone: A full document (``True``) or a fragment for Jupyter.

    Returns:
        The HTML text.
    """
    payload = {"results": [result_payload(r) for r in results]}
    uid = secrets.token_hex(4)
    body = (
        f"<h1>{html.escape(title)}</h1>"
        '<p class="muted">Red: removing the region lowers the span\'s log-probability (the span relies on it); '
        "blue: the opposite. Numbers mark the top regions. Drag the slider or click a sentence.</p>"
        f'<div id="results-{uid}"></div>'
        f'<script type="application/json" id="attrib-data-{uid}">{json_for_script(payload)}</script>'
        f'<script>{HEATMAP_JS}{_REPORT_JS}("{uid}");</script>'
    )
    if not standalone:
        return f"<div><style>{CSS}</style>{body}</div>"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>{body}</body></html>"
    )
