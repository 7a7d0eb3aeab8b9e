"""Self-contained HTML reports of streamed attributions.

One file, no network: the image is inlined as a PNG data URI, the region map
as base64 bytes, and a few lines of inline JavaScript paint the heatmap of the
span picked with the slider onto a canvas. All user text (prompt, generated
text, model name) reaches the page only as escaped JSON inside a
``<script type="application/json">`` block and is inserted with
``textContent``, never as HTML, so a prompt holding ``<script>`` shows as text.

The notebook fragment (``standalone=False``, what ``StreamResult._repr_html_``
shows) lives inside other people's pages, so it differs in two ways:

- its CSS is scoped: every rule is prefixed with the fragment's own container id
  ([`scoped_css`][attrib.streaming.report.scoped_css]), and there is no ``body`` rule;
- it carries a static fallback that needs no script (nbviewer, GitHub): the image
  with the first span's heatmap painted on it server-side
  ([`paint_heatmap`][attrib.streaming.report.paint_heatmap]), as a PNG data URI, and
  the trace as escaped HTML. The report's script hides it once the interactive view is built.
"""

from __future__ import annotations

import base64
import html
import io
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from attrib.io import json_for_script

if TYPE_CHECKING:
    from attrib.streaming.stream import StreamResult

__all__ = [
    "CSS",
    "HEATMAP_JS",
    "labels_payload",
    "paint_heatmap",
    "png_data_uri",
    "render_report",
    "result_payload",
    "scoped_css",
]

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


#: Heatmap colours of [`HEATMAP_JS`][attrib.streaming.report.HEATMAP_JS]: positive and negative scores, and the
#: largest alpha (out of 255), reached by the score of largest absolute value.
_POS_RGB = (230, 40, 30)
_NEG_RGB = (40, 90, 230)
_MAX_ALPHA = 200


def paint_heatmap(
    image: Image.Image, regions: np.ndarray, scores: np.ndarray | Sequence[float] | None, max_side: int = 512
) -> Image.Image:
    """The image with a span's region scores painted on it, as the report's script paints its canvas.

    Each pixel takes its region's score ``s`` scaled by the largest absolute score,
    and is blended with red (``s > 0``: removing the region lowers the span's
    log-probability) or blue (``s < 0``) at opacity ``200 / 255 * |s|``; a zero
    score leaves the pixel as it is.

    Args:
        image: The input image (downscaled, like [`png_data_uri`][attrib.streaming.report.png_data_uri],
            to ``max_side``).
        regions: ``(H, W)`` region labels at the image's resolution.
        scores: ``(K,)`` per-region scores; ``None`` paints nothing.
        max_side: Largest side of the result.

    Returns:
        An RGB image.
    """
    im = image.convert("RGB")
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side))
    if scores is None:
        return im
    s = np.asarray(scores, dtype=np.float64).ravel()
    lab = np.asarray(regions)
    w, h = im.size
    rows = np.minimum((np.arange(h) + 0.5) * lab.shape[0] / h, lab.shape[0] - 1).astype(np.intp)
    cols = np.minimum((np.arange(w) + 0.5) * lab.shape[1] / w, lab.shape[1] - 1).astype(np.intp)
    per_pixel = lab[rows][:, cols].astype(np.intp)
    m = float(np.abs(s).max()) if s.size else 0.0
    m = m if m > 0 else 1.0
    valid = (per_pixel >= 0) & (per_pixel < s.size)
    v = np.where(valid, s[np.clip(per_pixel, 0, max(s.size - 1, 0))] if s.size else 0.0, 0.0) / m
    alpha = (np.round(_MAX_ALPHA * np.minimum(1.0, np.abs(v))) / 255.0)[..., None]
    colour = np.where((v >= 0)[..., None], np.array(_POS_RGB, np.float64), np.array(_NEG_RGB, np.float64))
    out = np.asarray(im, dtype=np.float64) * (1 - alpha) + colour * alpha
    return Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8), "RGB")


def result_payload(result: StreamResult) -> dict[str, Any]:
    """The JSON a report (or the live view) draws one result from."""
    d = result.to_dict()
    d["image"] = png_data_uri(result.image)
    d["labels"] = labels_payload(result.regions)
    d["estimator"] = _shareable_estimator(d.get("estimator") or {})
    return d


#: Estimator metadata a shared page may carry (no paths of the machine that fit it).
_ESTIMATOR_KEYS = ("model_id", "region_method", "k", "ablation_mode", "n_train_examples", "version")


def _shareable_estimator(meta: dict[str, Any]) -> dict[str, Any]:
    """The estimator's figures and settings, without the training and test collections' paths."""
    out: dict[str, Any] = {k: meta[k] for k in _ESTIMATOR_KEYS if k in meta}
    if "model_id" in out and ("/" in str(out["model_id"]) and Path(str(out["model_id"])).is_absolute()):
        out["model_id"] = Path(str(out["model_id"])).name
    val = meta.get("validation")
    if isinstance(val, dict):
        out["validation"] = {k: v for k, v in val.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return out


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
function fmt(v) {
  if (v === null || v === undefined) return "-";
  if (typeof v !== "number") return String(v);
  return Number.isInteger(v) ? String(v) : v.toFixed(3);
}
DATA.results.forEach(function (r, ri) {
  const box = el("div", undefined, "result"); box.id = uid + "-result-" + ri; box.dataset.index = String(ri);
  box.appendChild(el("h2", "Q: " + r.prompt));
  const row = el("div", undefined, "row"); box.appendChild(row);
  const left = el("div"); row.appendChild(left);
  const canvas = el("canvas"); canvas.id = uid + "-heat-" + ri; left.appendChild(canvas);
  const sl = el("input"); sl.type = "range"; sl.min = 0; sl.max = Math.max(0, r.spans.length - 1); sl.value = 0;
  sl.id = uid + "-slider-" + ri; sl.style.width = "336px"; left.appendChild(el("div")).appendChild(sl);
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
      el("p", "Failure flag raised at span " + r.flagged_at + " ("
        + (r.flag_rule || "prefix tortuosity above threshold") + ")", "bad"));
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
  // Figures only: where they were measured (paths on the machine that fit the estimator) is not the reader's.
  Object.keys(v).filter(function (k) { return typeof v[k] === "number"; }).forEach(function (k) {
    frow("estimator held-out " + k.replace(/_/g, " "), v[k]); });
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


#: Rules for the static fallback of the notebook fragment (scoped like the rest).
_STATIC_CSS = """
.attrib-static img{width:336px;height:auto;image-rendering:pixelated;border:1px solid #999}
"""

_RULE = re.compile(r"([^{}]+)\{([^{}]*)\}")


def scoped_css(css: str, scope: str) -> str:
    """Confine a flat style sheet to one element: every selector gets ``scope`` in front.

    ``.row`` becomes ``#scope .row``; ``body`` and ``html`` become the scope itself,
    so page-wide settings (font, colour, width) apply to the container only.

    Args:
        css: Rules ``selector, ...{declarations}`` without ``@`` rules or nesting.
        scope: A selector for the container, e.g. ``"#attrib-1a2b3c4d"``.

    Returns:
        The scoped style sheet, one rule per line.

    Raises:
        ValueError: If ``css`` holds ``@`` rules or text outside rules.
    """
    if "@" in css or _RULE.sub("", css).strip():
        raise ValueError("scoped_css takes a flat list of rules (no @-rules, nothing outside braces)")
    out = []
    for sel, body in _RULE.findall(css):
        parts = []
        for one in (x.strip() for x in sel.split(",")):
            parts.append(scope if one in ("body", "html") else f"{scope} {one}")
        out.append(f"{','.join(parts)}{{{body.strip()}}}")
    return "\n".join(out)


def _fmt(v: object) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def _static_result(r: StreamResult) -> str:
    """The script-free preview of one result: first span's heatmap as a PNG, trace and answer (all escaped)."""
    first = r.spans[0] if r.spans else None
    painted = paint_heatmap(r.image, r.regions, None if first is None else first.scores)
    img = (
        f'<img src="{png_data_uri(painted)}" width="336" '
        f'alt="{"heatmap of span 1" if first is not None else "input image"}">'
    )
    if first is not None:
        label = f"span 1 / {len(r.spans)} (tokens {first.start}-{first.end}); static preview, scripts off"
        trace = "".join(
            f'<span class="sp{" cur" if i == 0 else ""}">{html.escape(s.text)} </span>' for i, s in enumerate(r.spans)
        )
        tops = "".join(
            f"<tr><td>#{j + 1}</td><td>region {int(k)}</td><td>{float(v):.4f}</td></tr>"
            for j, (k, v) in enumerate(first.top_regions)
        )
        top_block = f"<h3>Top regions of span 1</h3><table>{tops}</table>"
    else:
        label, trace, top_block = "no span", html.escape(r.output), ""
    answer = "(none)" if r.answer is None else html.escape(r.answer)
    verdict = ""
    if r.correct is not None:
        verdict = (
            '  <span class="ok">right</span>'
            if r.correct
            else f'  <span class="bad">wrong (truth: {html.escape(str(r.truth))})</span>'
        )
    return (
        '<div class="result">'
        f"<h2>Q: {html.escape(r.prompt)}</h2>"
        f'<div class="row"><div>{img}<div class="muted">{html.escape(label)}</div></div>'
        f'<div style="flex:1"><p class="trace">{trace}</p>{top_block}'
        f"<p><b>Answer: </b><span>{answer}</span>{verdict}</p></div></div>"
        f'<p class="muted">{r.generated_tokens} tokens in {_fmt(r.generation_s)} s; model {html.escape(r.model)}</p>'
        "</div>"
    )


def render_report(results: Sequence[StreamResult], *, title: str = "attrib report", standalone: bool = True) -> str:
    """Render results as HTML.

    Args:
        results: Streamed results.
        title: Page title (escaped).
        standalone: A full document (``True``) or a fragment for Jupyter: its CSS is scoped to
            its own container (``#attrib-<id>``) and it carries a static preview for viewers that
            run no scripts (see the module docstring).

    Returns:
        The HTML text.
    """
    payload = {"results": [result_payload(r) for r in results]}
    uid = secrets.token_hex(4)
    head = (
        f"<h1>{html.escape(title)}</h1>"
        '<p class="muted">Red: removing the region lowers the span\'s log-probability (the span relies on it); '
        "blue: the opposite. Numbers mark the top regions. Drag the slider or click a sentence.</p>"
    )
    data = f'<script type="application/json" id="attrib-data-{uid}">{json_for_script(payload)}</script>'
    if not standalone:
        scope = f"attrib-{uid}"
        static = "".join(_static_result(r) for r in results)
        # the preview goes once the interactive view is built (not if the script fails half-way)
        hide = f'document.getElementById("attrib-static-{uid}").style.display = "none";'
        return (
            f'<div id="{scope}" class="attrib-report"><style>{scoped_css(CSS + _STATIC_CSS, "#" + scope)}</style>'
            f'{head}<div class="attrib-static" id="attrib-static-{uid}">{static}</div>'
            f'<div id="results-{uid}"></div>{data}<script>{HEATMAP_JS}{_REPORT_JS}("{uid}");{hide}</script></div>'
        )
    body = f'{head}<div id="results-{uid}"></div>{data}<script>{HEATMAP_JS}{_REPORT_JS}("{uid}");</script>'
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>{body}</body></html>"
    )
