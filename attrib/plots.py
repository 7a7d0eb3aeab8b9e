"""Every figure attrib draws, in one module: estimator, evaluation, v1, norms and trajectory plots.

matplotlib (and plotly, for the interactive 3-D trajectories) are imported
inside the functions, and figures are built with matplotlib's object-oriented
API (``matplotlib.figure.Figure``), so nothing here selects a backend or
touches pyplot's global state: a notebook keeps its inline backend. Every
function returns its figure (and saves it when given a path).
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attrib.io import atomic_write_text, json_for_script, jsonable
from metrics.trajectory import EPS, TrajectoryPCA, path_length, tortuosity

if TYPE_CHECKING:
    from attrib.analysis.trajectories import Chain

__all__ = [
    "OUTCOME_COLOURS",
    "copy_attention_plot",
    "data_efficiency_plot",
    "decay_plot",
    "norms_plot",
    "region_comparison_plot",
    "trajectories_html",
    "trajectory_plots",
    "weight_heatmap",
]

logger = logging.getLogger(__name__)

#: Plot colour per reasoning outcome (colour-blind safe; successes orange as in the paper's figures).
OUTCOME_COLOURS: dict[str, str] = {
    "success": "#e69f00",
    "failure": "#56b4e9",
    "reasoning_error": "#0072b2",
    "hallucination": "#cc79a7",
}
_FAILURES = ("failure", "reasoning_error", "hallucination")


def _figure(size: tuple[float, float]) -> Any:
    """A matplotlib figure outside pyplot (no backend is selected, no global state changes)."""
    from matplotlib.figure import Figure

    return Figure(figsize=size)


def weight_heatmap(coef: np.ndarray, path: str | Path | None = None, *, ax: Any = None) -> Any:
    """Heatmap of an estimator's L x H weights (layers down, heads across).

    Args:
        coef: ``(L, H)`` weights.
        path: Save the figure here when given (PNG, SVG, ...).
        ax: Draw into this matplotlib axes.

    Returns:
        The matplotlib figure.
    """
    c = np.asarray(coef, dtype=np.float64)
    if ax is None:
        fig = _figure((1.2 + 0.35 * c.shape[1], 1.0 + 0.3 * c.shape[0]))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    lim = float(np.abs(c).max()) or 1.0
    im = ax.imshow(c, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("estimator weights w (L x H)")
    fig.colorbar(im, ax=ax)
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def data_efficiency_plot(rows: list[dict[str, Any]], path: str | Path | None = None, *, topk: int = 5) -> Any:
    """LDS and normalised top-K drop against the number of training examples, with 95 % intervals.

    Args:
        rows: Output of [`attrib.evaluation.data_efficiency`][attrib.evaluation.data_efficiency] (skipped sizes are left
            out).
        path: Save the figure here when given.
        topk: K of the top-K drop in ``rows``.

    Returns:
        The matplotlib figure.
    """
    fig = _figure((5.0, 3.4))
    ax = fig.add_subplot()
    done = [r for r in rows if "lds" in r]
    n = np.array([r["n_train"] for r in done], dtype=float)
    for key, label in (("lds", "LDS"), (f"top{topk}_drop_normalized", f"top-{topk} drop / LOO")):
        have = [r for r in done if key in r]
        if not have:
            continue
        x = np.array([r["n_train"] for r in have], dtype=float)
        v = np.array([r[key]["value"] for r in have])
        lo = np.array([r[key]["ci_low"] for r in have])
        hi = np.array([r[key]["ci_high"] for r in have])
        ax.errorbar(x, v, yerr=[v - lo, hi - v], marker="o", capsize=3, label=label)
    if n.size:
        ax.set_xscale("log")
        ax.set_xticks(n, [str(int(v)) for v in n])
    ax.set_xlabel("training examples (correct only)")
    ax.set_ylabel("score")
    ax.set_title("estimator data efficiency")
    ax.grid(alpha=0.3)
    ax.legend()
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def region_comparison_plot(rows: list[dict[str, Any]], path: str | Path | None = None, *, topk: int = 5) -> Any:
    """Grouped bars of estimator LDS and normalised top-K drop per region method and K.

    Args:
        rows: Output of [`attrib.evaluation.region_comparison`][attrib.evaluation.region_comparison].
        path: Save the figure here when given.
        topk: K of the top-K drop in ``rows``.

    Returns:
        The matplotlib figure.
    """
    methods = sorted({r["region_method"] for r in rows})
    ks = sorted({int(r["k"]) for r in rows})
    keys = [("lds", "LDS"), (f"top{topk}_drop_normalized", f"top-{topk} drop / LOO")]
    fig = _figure((4.2 * len(keys), 3.2))
    axes = fig.subplots(1, len(keys), squeeze=False)
    width = 0.8 / max(1, len(methods))
    for ax, (key, label) in zip(axes[0], keys, strict=True):
        for j, m in enumerate(methods):
            xs, vs, errs = [], [], []
            for i, k in enumerate(ks):
                r = next((r for r in rows if r["region_method"] == m and int(r["k"]) == k and key in r), None)
                if r is None:
                    continue
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                vs.append(r[key]["value"])
                errs.append([r[key]["value"] - r[key]["ci_low"], r[key]["ci_high"] - r[key]["value"]])
            if xs:
                ax.bar(xs, vs, width, yerr=np.array(errs).T, capsize=2, label=m)
        ax.set_xticks(range(len(ks)), [f"K={k}" for k in ks])
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def decay_plot(res: dict[str, Any], path: str | Path | None = None) -> Any:
    """Image and ground-truth attention mass against span position, one line per model (v1 Fig. 3).

    Args:
        res: Output of [`attrib.analysis.pointcopy.compare_decay`][attrib.analysis.pointcopy.compare_decay].
        path: Save the figure here when given.

    Returns:
        The matplotlib figure.
    """
    fig = _figure((9.0, 3.4))
    axes = fig.subplots(1, 2)
    for ax, key, title in zip(
        axes, ("image_mass", "gt_mass"), ("all image tokens", "span's ground-truth region"), strict=True
    ):
        for name, r in res.items():
            rows = [row for row in r["by_position"] if key in row]
            x = np.array([row["position"] for row in rows], dtype=float)
            v = np.array([row[key] for row in rows])
            lo = np.array([row[f"{key}_ci_low"] for row in rows])
            hi = np.array([row[f"{key}_ci_high"] for row in rows])
            ax.errorbar(x, v, yerr=[v - lo, hi - v], marker="o", capsize=3, label=name)
        ax.set_xlabel("span position in the chain")
        ax.set_ylabel("attention mass")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def copy_attention_plot(res: dict[str, Any], path: str | Path | None = None) -> Any:
    """Per-layer attention to copy tokens vs to their source image tokens (v1 Fig. 5).

    Args:
        res: Output of
            [`attrib.analysis.pointcopy.copy_vs_source_by_layer`][attrib.analysis.pointcopy.copy_vs_source_by_layer].
        path: Save the figure here when given.

    Returns:
        The matplotlib figure.
    """
    fig = _figure((5.0, 3.4))
    ax = fig.add_subplot()
    layers = np.arange(len(res["copy_mass"]))
    ax.plot(layers, res["copy_mass"], marker="o", label="copy tokens")
    ax.plot(layers, res["source_mass"], marker="s", label="their source image tokens")
    ax.set_xlabel("layer")
    ax.set_xticks(list(layers))
    ax.set_ylabel("attention mass (mean over heads)")
    ax.set_title(f"attention after a copy (n={res['n_tokens']} tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def norms_plot(report: Any, path: str | Path | None = None) -> Any:
    """Two panels: mean hidden-state norm per layer by token type, and its ratio to that type's input embeddings.

    Args:
        report: A [`attrib.analysis.norms.NormReport`][attrib.analysis.norms.NormReport].
        path: Save the figure here when given.

    Returns:
        The matplotlib figure.
    """
    fig = _figure((10, 3.6))
    axes = fig.subplots(1, 2)
    x = np.arange(report.n_layers + 1)
    for t in report.mean_norm:
        axes[0].plot(x, report.mean_norm[t], marker="o", ms=3, label=f"{t} (n={report.n_tokens[t]})")
        axes[1].plot(x, report.ratio_same_type(t), marker="o", ms=3, label=t)
    axes[0].set_title("mean L2 norm of hidden states")
    axes[1].set_title("ratio to the same type's input embeddings")
    for ax in axes:
        ax.set_xlabel("layer (0 = input embeddings)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"hidden-state norms by token type: {report.model}")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def _log10(x: float) -> float:
    return math.log10(x) if math.isfinite(x) and x > 0 else math.nan


def _subsample(chains: Sequence[Chain], per_outcome: int, seed: int = 0) -> list[Chain]:
    rng = np.random.default_rng(seed)
    out: list[Chain] = []
    for o in OUTCOME_COLOURS:
        cs = [c for c in chains if c.outcome == o]
        if len(cs) > per_outcome:
            cs = [cs[i] for i in sorted(rng.choice(len(cs), per_outcome, replace=False))]
        out += cs
    return out


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body{{font-family:sans-serif;margin:1em;color:#222}}
#wrap{{position:relative;display:inline-block}}
canvas{{border:1px solid #ccc;cursor:grab}}
#tip{{position:absolute;pointer-events:none;background:#fff;border:1px solid #999;padding:2px 5px;
font-size:12px;display:none}}
label{{margin-right:1em}}
</style></head><body>
<h2>{title}</h2>
<p>Reasoning trajectories in attribution space, PCA to 3-D ({explained}). Circle: first span; square: last span.
Drag to rotate, wheel to zoom, hover a path for its example id.</p>
<div id="legend"></div>
<div id="wrap"><canvas id="c" width="900" height="650"></canvas><div id="tip"></div></div>
<noscript><p>This page draws with JavaScript; the static PNG beside it shows the same paths.</p></noscript>
<script id="data" type="application/json">{data}</script>
<script>
(function(){{
const D=JSON.parse(document.getElementById('data').textContent);
const cv=document.getElementById('c'),ctx=cv.getContext('2d'),tip=document.getElementById('tip');
const shown={{}};let yaw=0.6,pitch=0.35,zoom=1,drag=null,proj=[];
let ext=1e-9;for(const ch of D.chains)for(const p of ch.points)for(const v of p)ext=Math.max(ext,Math.abs(v));
const leg=document.getElementById('legend');
for(const o of Object.keys(D.colours)){{
  if(!D.chains.some(c=>c.outcome===o))continue;shown[o]=true;
  const l=document.createElement('label'),b=document.createElement('input');b.type='checkbox';b.checked=true;
  b.onchange=()=>{{shown[o]=b.checked;draw();}};const s=document.createElement('span');
  s.style.color=D.colours[o];s.textContent=' \\u25a0 '+o+' ('+D.chains.filter(c=>c.outcome===o).length+')';
  l.appendChild(b);l.appendChild(s);leg.appendChild(l);
}}
function P(p){{
  const cy=Math.cos(yaw),sy=Math.sin(yaw),cp=Math.cos(pitch),sp=Math.sin(pitch);
  const x=p[0]*cy-p[1]*sy,y0=p[0]*sy+p[1]*cy,y=y0*sp+p[2]*cp,z=y0*cp-p[2]*sp;
  const s=0.42*Math.min(cv.width,cv.height)*zoom/ext;return [cv.width/2+s*x,cv.height/2-s*y,z];
}}
function draw(){{
  ctx.clearRect(0,0,cv.width,cv.height);proj=[];
  const ax=[[ext,0,0],[0,ext,0],[0,0,ext]];ctx.strokeStyle='#bbb';ctx.fillStyle='#888';ctx.lineWidth=1;
  ax.forEach((a,i)=>{{const o=P([0,0,0]),e=P(a);ctx.beginPath();ctx.moveTo(o[0],o[1]);ctx.lineTo(e[0],e[1]);
    ctx.stroke();ctx.fillText('PC'+(i+1),e[0]+3,e[1]);}});
  for(const ch of D.chains){{
    if(!shown[ch.outcome])continue;const q=ch.points.map(P);proj.push([ch,q]);
    ctx.strokeStyle=D.colours[ch.outcome];ctx.fillStyle=D.colours[ch.outcome];ctx.globalAlpha=0.75;
    ctx.lineWidth=1.3;ctx.beginPath();q.forEach((p,i)=>i?ctx.lineTo(p[0],p[1]):ctx.moveTo(p[0],p[1]));ctx.stroke();
    ctx.globalAlpha=1;ctx.beginPath();ctx.arc(q[0][0],q[0][1],3.5,0,2*Math.PI);ctx.fill();
    const e=q[q.length-1];ctx.fillRect(e[0]-3.5,e[1]-3.5,7,7);
  }}
}}
function seg(px,py,a,b){{const dx=b[0]-a[0],dy=b[1]-a[1],l=dx*dx+dy*dy;
  let t=l?((px-a[0])*dx+(py-a[1])*dy)/l:0;t=Math.max(0,Math.min(1,t));
  return Math.hypot(px-a[0]-t*dx,py-a[1]-t*dy);}}
cv.onmousedown=e=>{{drag=[e.clientX,e.clientY];cv.style.cursor='grabbing';}};
window.onmouseup=()=>{{drag=null;cv.style.cursor='grab';}};
cv.onmousemove=e=>{{
  if(drag){{yaw+=(e.clientX-drag[0])*0.01;pitch+=(e.clientY-drag[1])*0.01;drag=[e.clientX,e.clientY];draw();return;}}
  const r=cv.getBoundingClientRect(),x=e.clientX-r.left,y=e.clientY-r.top;let best=null,bd=6;
  for(const [ch,q] of proj){{for(let i=0;i<q.length;i++){{const d=seg(x,y,q[i],q[Math.min(i+1,q.length-1)]);
    if(d<bd){{bd=d;best=ch;}}}}}}
  if(best){{tip.textContent=best.uid+' \\u2014 '+best.outcome+', '+best.points.length+' spans';
    tip.style.left=(x+12)+'px';tip.style.top=(y+12)+'px';tip.style.display='block';}}
  else tip.style.display='none';
}};
cv.onwheel=e=>{{e.preventDefault();zoom*=e.deltaY<0?1.1:1/1.1;draw();}};
draw();
}})();
</script></body></html>
"""


def trajectories_html(
    projected: Sequence[tuple[str, str, np.ndarray]],
    path: str | Path,
    *,
    title: str = "Reasoning trajectories",
    explained: Sequence[float] | None = None,
) -> Path:
    """Write a self-contained interactive 3-D view of projected chains (no network access needed).

    Args:
        projected: Per chain ``(uid, outcome, (n, 3) points)``.
        path: Output HTML file.
        title: Page title (escaped).
        explained: Explained-variance ratio per component, shown in the caption.

    Returns:
        The path written.
    """
    try:
        import plotly.graph_objects as go
    except ImportError:
        go = None
    if go is not None:
        return _plotly_html(go, projected, Path(path), title=title, explained=explained)
    logger.info("plotly not installed: writing the built-in canvas 3-D view instead")
    data = {
        "colours": OUTCOME_COLOURS,
        "chains": [
            {"uid": uid, "outcome": o, "points": np.round(np.asarray(p, dtype=np.float64)[:, :3], 5).tolist()}
            for uid, o, p in projected
        ],
    }
    ev = (
        "explained variance " + ", ".join(f"PC{i + 1} {100 * v:.0f} %" for i, v in enumerate(explained))
        if explained is not None
        else "3 components"
    )
    text = _HTML.format(title=html.escape(title), explained=html.escape(ev), data=json_for_script(jsonable(data)))
    p = Path(path)
    atomic_write_text(p, text)
    return p


def _plotly_html(
    go: Any,
    projected: Sequence[tuple[str, str, np.ndarray]],
    path: Path,
    *,
    title: str,
    explained: Sequence[float] | None,
) -> Path:
    """The plotly version of [`trajectories_html`][attrib.plots.trajectories_html]: plotly.js is inlined, so the file
    works offline."""

    fig = go.Figure()
    seen: set[str] = set()
    for uid, outcome, pts in projected:
        p = np.asarray(pts, dtype=np.float64)[:, :3]
        col = OUTCOME_COLOURS.get(outcome, "#777777")
        label = html.escape(f"{uid} ({outcome}, {p.shape[0]} spans)")
        fig.add_trace(
            go.Scatter3d(
                x=p[:, 0],
                y=p[:, 1],
                z=p[:, 2],
                mode="lines+markers",
                line={"color": col, "width": 3},
                marker={
                    "size": [6] + [2] * max(0, p.shape[0] - 2) + ([6] if p.shape[0] > 1 else []),
                    "symbol": ["circle"] + ["circle"] * max(0, p.shape[0] - 2) + (["square"] if p.shape[0] > 1 else []),
                    "color": col,
                },
                name=html.escape(outcome),
                legendgroup=outcome,
                showlegend=outcome not in seen,
                hovertext=[f"{label}: span {i + 1}" for i in range(p.shape[0])],
                hoverinfo="text",
            )
        )
        seen.add(outcome)
    ev = ", ".join(f"PC{i + 1} {100 * v:.0f} %" for i, v in enumerate(explained)) if explained is not None else ""
    fig.update_layout(
        title=html.escape(f"{title} (circle: first span, square: last span{'; ' + ev if ev else ''})"),
        scene={"xaxis_title": "PC1", "yaxis_title": "PC2", "zaxis_title": "PC3"},
        margin={"l": 0, "r": 0, "t": 50, "b": 0},
    )
    atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True, config={"displaylogo": False}))
    return path


def trajectory_plots(
    result: Mapping[str, Any],
    chains: Sequence[Chain],
    out_dir: str | Path,
    *,
    per_outcome: int = 60,
) -> dict[str, Path]:
    """Draw the analysis: 3-D trajectories (PNG + interactive HTML), metric distributions, AUC, concentration.

    Args:
        result: From [`attrib.analysis.trajectories.analyse_chains`][attrib.analysis.trajectories.analyse_chains].
        chains: The chains it was computed from.
        out_dir: Output directory (created).
        per_outcome: At most this many chains per outcome in the trajectory pictures.

    Returns:
        Name -> path of every file written: ``trajectories_3d`` (PNG),
        ``trajectories_html``, ``metrics_by_outcome``, ``auc_by_progress``, ``concentration``.
    """
    from matplotlib.lines import Line2D
    from mpl_toolkits.mplot3d import Axes3D  # noqa: F401  (registers the 3-d projection)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = result.get("config", {})
    top, normalize = int(cfg.get("top", 32)), bool(cfg.get("normalize", True))
    eps = float(cfg.get("eps", EPS))
    known = [c for c in chains if c.outcome != "unknown"]
    files: dict[str, Path] = {}

    # 3-D trajectories.
    shown = _subsample(known, per_outcome)
    if shown:
        evs = [c.effect_vectors(top, normalize=normalize) for c in shown]
        pca = (
            TrajectoryPCA.from_dict(result["pca"])
            if "pca" in result and int(result["pca"]["n_components"]) >= 3
            else TrajectoryPCA(3).fit([c.effect_vectors(top, normalize=normalize) for c in known])
        )
        proj = [pca.transform(e)[:, :3] for e in evs]
        fig = _figure((12, 5.5))
        panels = (("success", ("success",)), ("failure", _FAILURES))
        for j, (name, kinds) in enumerate(panels):
            ax = fig.add_subplot(1, 2, j + 1, projection="3d")
            n = 0
            for c, p in zip(shown, proj, strict=True):
                if c.outcome not in kinds:
                    continue
                n += 1
                col = OUTCOME_COLOURS[c.outcome]
                ax.plot(p[:, 0], p[:, 1], p[:, 2], color=col, alpha=0.6, lw=1)
                ax.scatter(*p[0], color=col, marker="o", s=14)
                ax.scatter(*p[-1], color=col, marker="s", s=14)
            ax.set_title(f"{name} (n shown = {n})")
            ax.set_xlabel("PC1")
            ax.set_ylabel("PC2")
            ax.set_zlabel("PC3")
        handles = [
            Line2D([], [], color=OUTCOME_COLOURS[o], label=o)
            for o in OUTCOME_COLOURS
            if any(c.outcome == o for c in shown)
        ]
        handles += [
            Line2D([], [], color="k", marker="o", ls="", label="first span"),
            Line2D([], [], color="k", marker="s", ls="", label="last span"),
        ]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
        fig.suptitle("Reasoning trajectories in attribution space (PCA)")
        files["trajectories_3d"] = out / "trajectories_3d.png"
        fig.savefig(files["trajectories_3d"], dpi=120, bbox_inches="tight")
        files["trajectories_html"] = trajectories_html(
            [(c.uid, c.outcome, p) for c, p in zip(shown, proj, strict=True)],
            out / "trajectories_3d.html",
            explained=list(pca.explained_variance_ratio_[:3]),
        )

    # Path length and tortuosity by outcome.
    evs_all = {id(c): c.effect_vectors(top, normalize=normalize) for c in known}
    groups = [
        o for o in ("success", "reasoning_error", "hallucination", "failure") if any(c.outcome == o for c in known)
    ]
    fig = _figure((11, 4.2))
    axes = fig.subplots(1, 2)
    for ax, (label, fn) in zip(
        axes,
        (
            ("path length", path_length),
            ("log10 tortuosity", lambda e: _log10(tortuosity(e, eps=eps))),
        ),
        strict=True,
    ):
        data = []
        for g in groups:
            v = np.array([fn(evs_all[id(c)]) for c in known if c.outcome == g], dtype=np.float64)
            data.append(v[np.isfinite(v)])
        pos = [i + 1 for i, d in enumerate(data) if d.size]
        vio = [d for d in data if d.size]
        if any(np.unique(d).size >= 3 for d in vio):
            parts = ax.violinplot(
                [d if np.unique(d).size >= 3 else np.r_[d, d + 1e-9] for d in vio], positions=pos, showextrema=False
            )
            for body, i in zip(parts["bodies"], pos, strict=True):
                body.set_facecolor(OUTCOME_COLOURS[groups[i - 1]])
                body.set_alpha(0.35)
        if vio:
            ax.boxplot(vio, positions=pos, widths=0.18, showfliers=True)
        ax.set_xticks(range(1, len(groups) + 1))
        ax.set_xticklabels([f"{g}\n(n={d.size})" for g, d in zip(groups, data, strict=True)])
        ax.set_ylabel(label)
        key = "path_length" if label == "path length" else "tortuosity"
        p = result.get(key, {}).get("p_value_bonferroni")
        ax.set_title(f"{label}: success vs failure p = {p:.2g} (Bonferroni)" if p is not None else label)
    fig.tight_layout()
    files["metrics_by_outcome"] = out / "metrics_by_outcome.png"
    fig.savefig(files["metrics_by_outcome"], dpi=120, bbox_inches="tight")

    # AUC by progress.
    auc = result.get("auc_by_progress", {})
    xs = sorted(auc, key=float)
    fig = _figure((5.5, 4))
    ax = fig.add_subplot()
    x = np.array([100 * float(k) for k in xs])
    y = np.array([np.nan if auc[k]["auc"] is None else auc[k]["auc"] for k in xs], dtype=np.float64)
    lo = np.array([np.nan if auc[k]["ci_low"] is None else auc[k]["ci_low"] for k in xs], dtype=np.float64)
    hi = np.array([np.nan if auc[k]["ci_high"] is None else auc[k]["ci_high"] for k in xs], dtype=np.float64)
    ax.fill_between(x, lo, hi, color=OUTCOME_COLOURS["failure"], alpha=0.3, label="95 % bootstrap CI")
    ax.plot(x, y, "o-", color=OUTCOME_COLOURS["reasoning_error"], label="AUC")
    ax.axhline(0.5, color="gray", ls="--", lw=1, label="chance")
    ax.set_xlabel("reasoning progress (% of spans)")
    ax.set_ylabel("ROC AUC (prefix tortuosity -> failure)")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", frameon=False)
    ax.set_title("Early failure prediction")
    fig.tight_layout()
    files["auc_by_progress"] = out / "auc_by_progress.png"
    fig.savefig(files["auc_by_progress"], dpi=120, bbox_inches="tight")

    # Concentration over normalised steps.
    conc = result.get("concentration", {})
    prog = 100 * np.asarray(conc.get("progress", []), dtype=np.float64)
    fig = _figure((5.5, 4))
    ax = fig.add_subplot()
    for g, cv in conc.get("by_outcome", {}).items():
        if g == "failure" or not any(n for n in cv["n"]):
            continue
        m = np.array([np.nan if v is None else v for v in cv["mean"]], dtype=np.float64)
        s = np.array([np.nan if v is None else v for v in cv["sem"]], dtype=np.float64)
        ax.plot(prog, m, "-o", ms=3, color=OUTCOME_COLOURS[g], label=g)
        ax.fill_between(prog, m - s, m + s, color=OUTCOME_COLOURS[g], alpha=0.25)
    ax.set_xlabel("reasoning progress (%)")
    ax.set_ylabel("concentration (1 - normalised entropy)")
    ax.set_title("Attribution concentration (mean ± SEM)")
    ax.legend(frameon=False)
    fig.tight_layout()
    files["concentration"] = out / "concentration.png"
    fig.savefig(files["concentration"], dpi=120, bbox_inches="tight")
    return files
