"""``attrib trajectories``: reasoning trajectories in attribution space on a collected dataset.

Each collected example becomes a :class:`Chain`: its per-span region scores
(from the fitted estimator, or the leave-one-out drops when no estimator is
given) and an outcome label:

- ``success``: the answer is right;
- ``hallucination``: the answer is wrong and the trace names an object that is
  not in the image (benchmark examples only; see :func:`names_absent_object`);
- ``reasoning_error``: the answer is wrong and every object the trace names
  is in the image;
- ``failure``: the answer is wrong, and the scene is unknown (not a benchmark
  example), so the kind of failure cannot be told;
- ``unknown``: correctness is unknown (no reference answer); left out.

:func:`analyse_chains` compares path length, tortuosity and concentration of
successes and failures, scores early failure prediction by reasoning progress,
contrasts fixation (hallucination) with wandering (reasoning error), and
calibrates an online :class:`~metrics.trajectory.TortuosityFlagger`.
:func:`write_plots` draws the results. The metrics themselves live in
:mod:`metrics.trajectory`.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from metrics.trajectory import (
    DEFAULT_FRACTIONS,
    EPS,
    TortuosityFlagger,
    TrajectoryPCA,
    auc_by_progress,
    bonferroni,
    compare_outcomes,
    concentration,
    effect_vectors,
    path_length,
    progress_curve,
    three_outcome,
    tortuosity,
)

if TYPE_CHECKING:
    from attrib.shapes.scene import Scene

__all__ = [
    "COLOURS",
    "Chain",
    "add_parser",
    "analyse",
    "analyse_chains",
    "load_chains",
    "names_absent_object",
    "object_mentions",
    "outcome_of",
    "run",
    "scene_for",
    "trajectories_html",
    "write_plots",
]

logger = logging.getLogger(__name__)

#: Plot colour per outcome (colour-blind safe; successes orange as in the paper's figures).
COLOURS: dict[str, str] = {
    "success": "#e69f00",
    "failure": "#56b4e9",
    "reasoning_error": "#0072b2",
    "hallucination": "#cc79a7",
}
_FAILURES = ("failure", "reasoning_error", "hallucination")
_UID = re.compile(r"^(train|validation|test)-(\d+)$")


class RegionScorer(Protocol):
    """Anything with the estimator's ``region_scores`` (e.g. :class:`estimators.linear.LinearHeadEstimator`)."""

    def region_scores(self, features: np.ndarray) -> np.ndarray:
        """``(n_spans, K, L, H)`` features -> ``(n_spans, K)`` scores."""
        ...


class ExampleSource(Protocol):
    """Anything with :meth:`attrib.collect.Collection.examples`."""

    def examples(self) -> Iterator[dict[str, Any]]:
        """Yield example records (see :class:`attrib.collect.Collection`)."""
        ...


# ---------------------------------------------------------------------------- hallucination
_SIZE_WORDS = ("small", "large")
_COLOUR_WORDS = ("red", "green", "blue", "yellow", "purple", "orange")
_SHAPE_WORDS = ("circle", "square", "triangle")
_ADJ = "|".join(_SIZE_WORDS + _COLOUR_WORDS)
# One singular shape noun with up to three size/colour words before it. Plural
# nouns ("red circles") name groups, not objects, and do not match.
_MENTION = re.compile(rf"\b((?:(?:{_ADJ})\s+){{0,3}})({'|'.join(_SHAPE_WORDS)})\b", re.IGNORECASE)
# Sentences that name an object without claiming it is there: the plan
# ("I need to find a red circle.") and negations ("There is no red circle.").
_NOT_ASSERTED = re.compile(r"^\s*i need to\b|\b(?:no|none|not|without)\b", re.IGNORECASE)
_SENTENCE = re.compile(r"[^.!?]+[.!?]?")


def _think_text(output: str) -> str:
    """The reasoning part of an output: inside ``<think>...</think>``, or after an unclosed ``<think>``."""
    start = output.find("<think>")
    body = output[start + len("<think>") :] if start >= 0 else output
    end = body.find("</think>")
    return body[:end] if end >= 0 else body


def object_mentions(output_text: str) -> list[dict[str, str | None]]:
    """The objects a trace *asserts*: singular shape nouns with their size and colour words.

    Only the reasoning part is read (``<think>...</think>``; the whole text
    when there is no think tag; the final answer line is ignored). Planning
    sentences (``I need to ...``) and negations (``no``, ``none``, ``not``,
    ``without``) assert nothing and are skipped; a trailing unfinished sentence
    is read too.

    Args:
        output_text: Decoded model output.

    Returns:
        Per mention ``{"size", "colour", "shape", "text"}``; ``size`` and
        ``colour`` are ``None`` when not said (a repeated word of one kind that
        disagrees, e.g. ``red blue circle``, gives ``"?"``).
    """
    out: list[dict[str, str | None]] = []
    for sent in _SENTENCE.findall(_think_text(output_text)):
        if not sent.strip() or _NOT_ASSERTED.search(sent):
            continue
        for m in _MENTION.finditer(sent):
            words = m.group(1).lower().split()
            sizes = {w for w in words if w in _SIZE_WORDS}
            colours = {w for w in words if w in _COLOUR_WORDS}
            out.append(
                {
                    "size": None if not sizes else (sizes.pop() if len(sizes) == 1 else "?"),
                    "colour": None if not colours else (colours.pop() if len(colours) == 1 else "?"),
                    "shape": m.group(2).lower(),
                    "text": m.group(0),
                }
            )
    return out


def names_absent_object(output_text: str, scene: Scene) -> bool:
    """Whether the trace asserts an object that the scene does not hold.

    A mention (see :func:`object_mentions`) is present when some object of
    the scene agrees with every attribute it states (shape always; size and
    colour when said). Positions are not checked: naming a present object at
    a wrong place is a localisation error, not an absent object.

    Args:
        output_text: Decoded model output (``<think> ... </think> The answer is X.``).
        scene: The example's scene (:func:`attrib.shapes.make_example` rebuilds it).

    Returns:
        True when at least one asserted object matches no object of the scene.
    """
    for m in object_mentions(output_text):
        if not any(
            o.shape == m["shape"]
            and (m["colour"] is None or o.colour == m["colour"])
            and (m["size"] is None or o.size == m["size"])
            for o in scene.objects
        ):
            return True
    return False


def scene_for(uid: str, question: str | None = None, *, dataset: str | None = None) -> Scene | None:
    """Rebuild the scene of a benchmark example from its uid (``"test-17"``), or ``None``.

    Args:
        uid: Example uid.
        question: The collected question; when given and it differs from the
            rebuilt example's, the rebuild is refused (another benchmark seed
            or difficulty made the collection).
        dataset: The collection's dataset spec; only ``shapes:<split>`` (or
            ``None``) allows a rebuild.

    Returns:
        The scene, or ``None`` when the example is not a reproducible benchmark example.
    """
    if dataset is not None and not dataset.startswith("shapes:"):
        return None
    m = _UID.match(uid)
    if not m:
        return None
    from attrib.shapes import make_example

    ex = make_example(m.group(1), int(m.group(2)))
    if question is not None and ex.question.text != question:
        logger.warning("example %s: collected question differs from the benchmark's; scene not used", uid)
        return None
    return ex.scene


# ---------------------------------------------------------------------------- chains
@dataclass(frozen=True)
class Chain:
    """One reasoning chain in attribution space.

    Attributes:
        uid: Example uid.
        scores: ``(n_spans, K)`` raw per-span region scores.
        outcome: ``success``, ``reasoning_error``, ``hallucination``, ``failure`` or ``unknown``.
    """

    uid: str
    scores: np.ndarray
    outcome: str

    @property
    def n_spans(self) -> int:
        """Number of spans (points)."""
        return int(self.scores.shape[0])

    @property
    def failed(self) -> bool:
        """Whether the answer was wrong."""
        return self.outcome in _FAILURES

    def effect_vectors(self, top: int = 32, *, normalize: bool = True) -> np.ndarray:
        """:func:`metrics.trajectory.effect_vectors` of the scores."""
        return effect_vectors(self.scores, top, normalize=normalize)


def outcome_of(ex: Mapping[str, Any], scene: Scene | None) -> str:
    """The outcome label of one collected example (see the module docstring)."""
    correct = ex.get("correct")
    if correct is None:
        return "unknown"
    if correct:
        return "success"
    if scene is None:
        return "failure"
    return "hallucination" if names_absent_object(str(ex.get("output", "")), scene) else "reasoning_error"


def load_chains(
    collection: ExampleSource,
    estimator: RegionScorer | None = None,
    *,
    limit: int | None = None,
) -> list[Chain]:
    """Chains of a collection, with outcome labels.

    Args:
        collection: An opened :class:`attrib.collect.Collection` (or anything
            with ``examples()``; a ``manifest`` with ``config.dataset`` decides
            whether benchmark scenes can be rebuilt).
        estimator: Scores spans with ``region_scores(features)``; when ``None``,
            the leave-one-out drops ``loo_deltas`` are the scores.
        limit: Read at most this many examples.

    Returns:
        The chains, in collection order (examples without spans are skipped).

    Raises:
        ValueError: Without an estimator, for an example that has no
            ``loo_deltas`` (collect with ``--loo`` or pass an estimator).
    """
    manifest = getattr(collection, "manifest", None) or {}
    dataset = manifest.get("config", {}).get("dataset")
    chains: list[Chain] = []
    for i, ex in enumerate(collection.examples()):
        if limit is not None and i >= limit:
            break
        if estimator is not None:
            scores = np.asarray(estimator.region_scores(ex["features"]), dtype=np.float64)
        else:
            if "loo_deltas" not in ex:
                raise ValueError(
                    f"example {ex.get('uid')} has no leave-one-out drops; pass an estimator "
                    "or use a collection made with --loo"
                )
            scores = np.asarray(ex["loo_deltas"], dtype=np.float64)
        if scores.ndim != 2 or scores.shape[0] == 0:
            logger.info("example %s has no spans; skipped", ex.get("uid"))
            continue
        uid = str(ex.get("uid", i))
        scene = None
        if ex.get("correct") is False:
            scene = scene_for(uid, ex.get("question"), dataset=dataset)
        chains.append(Chain(uid=uid, scores=scores, outcome=outcome_of(ex, scene)))
    return chains


# ---------------------------------------------------------------------------- analysis
def _jsonable(obj: Any) -> Any:
    """NaN/inf -> None, numpy -> Python, tuple -> list, keys -> str (valid strict JSON)."""
    if isinstance(obj, Mapping):
        return {(f"{k:g}" if isinstance(k, float) else str(k)): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer | int):
        return int(obj)
    if isinstance(obj, np.floating | float):
        x = float(obj)
        return x if math.isfinite(x) else None
    return obj


def _mean_conc(scores: np.ndarray) -> float:
    c = concentration(scores)
    c = c[np.isfinite(c)]
    return float(c.mean()) if c.size else float("nan")


def _flagger_block(
    chains: Sequence[Chain], *, fpr: float, min_spans: int, top: int, normalize: bool, eps: float, seed: int
) -> tuple[dict[str, Any], list[int | None]]:
    """Calibrate on all successes; held-out FPR by 2-fold cross-fitting; flag rates on failures."""
    flagged: list[int | None] = [None] * len(chains)
    succ = [i for i, c in enumerate(chains) if c.outcome == "success" and c.n_spans >= min_spans]
    out: dict[str, Any] = {"fpr_target": fpr, "min_spans": min_spans, "n_reference": len(succ)}
    if len(succ) < 2:
        out["error"] = f"need >= 2 successful chains with >= {min_spans} spans to calibrate; got {len(succ)}"
        return out, flagged
    fl = TortuosityFlagger(fpr=fpr, min_spans=min_spans, top=top, normalize=normalize, eps=eps)
    fl.fit([chains[i].scores for i in succ])
    for i, c in enumerate(chains):
        if c.n_spans >= min_spans and c.outcome != "unknown":
            flagged[i] = fl.run(c.scores)
    # 2-fold cross-fitting: a threshold fit on one half of the successes, false positives counted on the other.
    perm = np.random.default_rng(seed).permutation(len(succ))
    folds = [[succ[j] for j in perm[: len(succ) // 2]], [succ[j] for j in perm[len(succ) // 2 :]]]
    held = []
    for a, b in ((0, 1), (1, 0)):
        fa = TortuosityFlagger(fpr=fpr, min_spans=min_spans, top=top, normalize=normalize, eps=eps)
        fa.fit([chains[i].scores for i in folds[a]])
        held += [fa.run(chains[i].scores) is not None for i in folds[b]]

    def rate(kinds: Iterable[str]) -> tuple[float, int]:
        idx = [i for i, c in enumerate(chains) if c.outcome in kinds and c.n_spans >= min_spans]
        if not idx:
            return float("nan"), 0
        return float(np.mean([flagged[i] is not None for i in idx])), len(idx)

    progress = [(f + 1) / c.n_spans for f, c in zip(flagged, chains, strict=True) if c.failed and f is not None]
    out.update(
        {
            "threshold": fl.threshold_,
            "fpr_reference": rate(["success"])[0],
            "fpr_heldout": float(np.mean(held)),
            "flagged_rate_failure": rate(_FAILURES)[0],
            "n_failure": rate(_FAILURES)[1],
            "flagged_rate_reasoning_error": rate(["reasoning_error"])[0],
            "flagged_rate_hallucination": rate(["hallucination"])[0],
            "median_flag_progress": float(np.median(progress)) if progress else float("nan"),
            "state": fl.to_dict(),
        }
    )
    return out, flagged


def analyse_chains(
    chains: Sequence[Chain],
    *,
    fpr: float = 0.1,
    top: int = 32,
    normalize: bool = True,
    min_spans: int = 3,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    n_boot: int = 1000,
    seed: int = 0,
    n_bins: int = 10,
    n_components: int = 3,
    eps: float = EPS,
) -> dict[str, Any]:
    """The trajectory analysis of labelled chains, as a JSON-ready dict.

    Args:
        chains: From :func:`load_chains`; ``unknown`` outcomes are left out.
        fpr: Target false-positive rate of the flagger.
        top: Effect-vector entries kept per span (:func:`metrics.trajectory.effect_vectors`).
        normalize: L2-normalise effect vectors.
        min_spans: Spans before the flagger may raise.
        fractions: Reasoning progress values for the AUC curve.
        n_boot: Bootstrap resamples of the AUC intervals.
        seed: Seed of the bootstrap and of the flagger's cross-fitting split.
        n_bins: Progress bins of the concentration curves.
        n_components: PCA components stored for the pictures.
        eps: See :func:`metrics.trajectory.tortuosity`.

    Returns:
        See ``docs/trajectories.md`` for the schema. NaN is written as ``null``.
    """
    known = [c for c in chains if c.outcome != "unknown"]
    evs = [c.effect_vectors(top, normalize=normalize) for c in known]
    failed = np.array([c.failed for c in known], dtype=bool)
    pl = np.array([path_length(e) for e in evs])
    tt = np.array([tortuosity(e, eps=eps) for e in evs])
    conc = np.array([_mean_conc(c.scores) for c in known])
    comps = {name: compare_outcomes(v[~failed], v[failed]) for name, v in (("path_length", pl), ("tortuosity", tt))}
    comps["concentration"] = compare_outcomes(conc[~failed], conc[failed])
    for name, pb in zip(comps, bonferroni([comps[n]["p_value"] for n in comps]), strict=True):
        comps[name]["p_value_bonferroni"] = pb
    groups = {
        "success": [c for c in known if c.outcome == "success"],
        "failure": [c for c in known if c.failed],
        "reasoning_error": [c for c in known if c.outcome == "reasoning_error"],
        "hallucination": [c for c in known if c.outcome == "hallucination"],
    }
    curves = {g: progress_curve([concentration(c.scores) for c in cs], n_bins) for g, cs in groups.items()}
    progress = curves["success"]["progress"]
    for cv in curves.values():
        cv.pop("progress")
    flag, flagged_at = _flagger_block(
        known, fpr=fpr, min_spans=min_spans, top=top, normalize=normalize, eps=eps, seed=seed
    )
    result: dict[str, Any] = {
        "config": {
            "top": top,
            "normalize": normalize,
            "fpr": fpr,
            "min_spans": min_spans,
            "n_boot": n_boot,
            "seed": seed,
            "eps": eps,
            "concentration": "1 - H(|s|/sum|s|) / log K",
        },
        "n_chains": len(chains),
        "n_unknown": len(chains) - len(known),
        "n_success": len(groups["success"]),
        "n_failure": len(groups["failure"]),
        "n_reasoning_error": len(groups["reasoning_error"]),
        "n_hallucination": len(groups["hallucination"]),
        "n_failure_untyped": sum(c.outcome == "failure" for c in known),
        "path_length": comps["path_length"],
        "tortuosity": comps["tortuosity"],
        "concentration": {"progress": progress, "by_outcome": curves, "comparison": comps["concentration"]},
        "auc_by_progress": auc_by_progress(evs, failed, fractions, n_boot=n_boot, seed=seed, eps=eps),
        "three_outcome": three_outcome(
            [c.scores for c in known], [c.outcome for c in known], top=top, normalize=normalize, eps=eps
        ),
        "flagger": flag,
        "chains": [
            {
                "uid": c.uid,
                "outcome": c.outcome,
                "n_spans": c.n_spans,
                "path_length": pl[i],
                "tortuosity": tt[i],
                "concentration": conc[i],
                "flagged_at": flagged_at[i],
            }
            for i, c in enumerate(known)
        ],
    }
    if evs:
        result["pca"] = TrajectoryPCA(n_components).fit(evs).to_dict()
    return dict(_jsonable(result))


def analyse(
    collection: ExampleSource,
    estimator: RegionScorer | None = None,
    *,
    limit: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`load_chains`, then :func:`analyse_chains` (keyword arguments go to the latter)."""
    return analyse_chains(load_chains(collection, estimator, limit=limit), **kwargs)


# ---------------------------------------------------------------------------- plots
def _log10(x: float) -> float:
    return math.log10(x) if math.isfinite(x) and x > 0 else math.nan


def _subsample(chains: Sequence[Chain], per_outcome: int, seed: int = 0) -> list[Chain]:
    rng = np.random.default_rng(seed)
    out: list[Chain] = []
    for o in COLOURS:
        cs = [c for c in chains if c.outcome == o]
        if len(cs) > per_outcome:
            cs = [cs[i] for i in sorted(rng.choice(len(cs), per_outcome, replace=False))]
        out += cs
    return out


def _script_json(obj: Any) -> str:
    """JSON safe inside a ``<script>`` element (no ``</script>`` or HTML comment can close it)."""
    s = json.dumps(_jsonable(obj), separators=(",", ":"), allow_nan=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


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
    from attrib.io import atomic_write_text

    try:
        import plotly.graph_objects as go
    except ImportError:
        go = None
    if go is not None:
        return _plotly_html(go, projected, Path(path), title=title, explained=explained)
    logger.info("plotly not installed: writing the built-in canvas 3-D view instead")
    data = {
        "colours": COLOURS,
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
    text = _HTML.format(title=html.escape(title), explained=html.escape(ev), data=_script_json(data))
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
    """The plotly version of :func:`trajectories_html`: plotly.js is inlined, so the file works offline."""
    from attrib.io import atomic_write_text

    fig = go.Figure()
    seen: set[str] = set()
    for uid, outcome, pts in projected:
        p = np.asarray(pts, dtype=np.float64)[:, :3]
        col = COLOURS.get(outcome, "#777777")
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


def write_plots(
    result: Mapping[str, Any],
    chains: Sequence[Chain],
    out_dir: str | Path,
    *,
    per_outcome: int = 60,
) -> dict[str, Path]:
    """Draw the analysis: 3-D trajectories (PNG + interactive HTML), metric distributions, AUC, concentration.

    Args:
        result: From :func:`analyse_chains`.
        chains: The chains it was computed from.
        out_dir: Output directory (created).
        per_outcome: At most this many chains per outcome in the trajectory pictures.

    Returns:
        Name -> path of every file written: ``trajectories_3d`` (PNG),
        ``trajectories_html``, ``metrics_by_outcome``, ``auc_by_progress``, ``concentration``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

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
        fig = plt.figure(figsize=(12, 5.5))
        panels = (("success", ("success",)), ("failure", _FAILURES))
        for j, (name, kinds) in enumerate(panels):
            ax = fig.add_subplot(1, 2, j + 1, projection="3d")
            n = 0
            for c, p in zip(shown, proj, strict=True):
                if c.outcome not in kinds:
                    continue
                n += 1
                col = COLOURS[c.outcome]
                ax.plot(p[:, 0], p[:, 1], p[:, 2], color=col, alpha=0.6, lw=1)
                ax.scatter(*p[0], color=col, marker="o", s=14)
                ax.scatter(*p[-1], color=col, marker="s", s=14)
            ax.set_title(f"{name} (n shown = {n})")
            ax.set_xlabel("PC1")
            ax.set_ylabel("PC2")
            ax.set_zlabel("PC3")
        handles = [Line2D([], [], color=COLOURS[o], label=o) for o in COLOURS if any(c.outcome == o for c in shown)]
        handles += [
            Line2D([], [], color="k", marker="o", ls="", label="first span"),
            Line2D([], [], color="k", marker="s", ls="", label="last span"),
        ]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
        fig.suptitle("Reasoning trajectories in attribution space (PCA)")
        files["trajectories_3d"] = out / "trajectories_3d.png"
        fig.savefig(files["trajectories_3d"], dpi=120, bbox_inches="tight")
        plt.close(fig)
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
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
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
                body.set_facecolor(COLOURS[groups[i - 1]])
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
    plt.close(fig)

    # AUC by progress.
    auc = result.get("auc_by_progress", {})
    xs = sorted(auc, key=float)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    x = np.array([100 * float(k) for k in xs])
    y = np.array([np.nan if auc[k]["auc"] is None else auc[k]["auc"] for k in xs], dtype=np.float64)
    lo = np.array([np.nan if auc[k]["ci_low"] is None else auc[k]["ci_low"] for k in xs], dtype=np.float64)
    hi = np.array([np.nan if auc[k]["ci_high"] is None else auc[k]["ci_high"] for k in xs], dtype=np.float64)
    ax.fill_between(x, lo, hi, color=COLOURS["failure"], alpha=0.3, label="95 % bootstrap CI")
    ax.plot(x, y, "o-", color=COLOURS["reasoning_error"], label="AUC")
    ax.axhline(0.5, color="gray", ls="--", lw=1, label="chance")
    ax.set_xlabel("reasoning progress (% of spans)")
    ax.set_ylabel("ROC AUC (prefix tortuosity -> failure)")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", frameon=False)
    ax.set_title("Early failure prediction")
    fig.tight_layout()
    files["auc_by_progress"] = out / "auc_by_progress.png"
    fig.savefig(files["auc_by_progress"], dpi=120, bbox_inches="tight")
    plt.close(fig)

    # Concentration over normalised steps.
    conc = result.get("concentration", {})
    prog = 100 * np.asarray(conc.get("progress", []), dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for g, cv in conc.get("by_outcome", {}).items():
        if g == "failure" or not any(n for n in cv["n"]):
            continue
        m = np.array([np.nan if v is None else v for v in cv["mean"]], dtype=np.float64)
        s = np.array([np.nan if v is None else v for v in cv["sem"]], dtype=np.float64)
        ax.plot(prog, m, "-o", ms=3, color=COLOURS[g], label=g)
        ax.fill_between(prog, m - s, m + s, color=COLOURS[g], alpha=0.25)
    ax.set_xlabel("reasoning progress (%)")
    ax.set_ylabel("concentration (1 - normalised entropy)")
    ax.set_title("Attribution concentration (mean ± SEM)")
    ax.legend(frameon=False)
    fig.tight_layout()
    files["concentration"] = out / "concentration.png"
    fig.savefig(files["concentration"], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return files


# ---------------------------------------------------------------------------- CLI
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``trajectories`` subcommand on an ``argparse`` subparsers object.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers()``.

    Returns:
        The subcommand's parser (its ``fn`` default is :func:`run`).
    """
    p: argparse.ArgumentParser = subparsers.add_parser(
        "trajectories",
        help="reasoning trajectories in attribution space: success vs failure, early failure flagging",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="collection directory (attrib collect)")
    p.add_argument(
        "--estimator",
        default=None,
        metavar="PATH",
        help="estimator path stem (attrib fit); without it the leave-one-out drops are the scores",
    )
    p.add_argument("--json", default=None, metavar="FILE", help="write the results here")
    p.add_argument("--plots", default=None, metavar="DIR", help="write the figures here")
    p.add_argument("--fpr", type=float, default=0.1, help="flagger false-positive rate on successful chains")
    p.add_argument("--top", type=int, default=32, help="effect-vector entries kept per span")
    p.add_argument("--min-spans", dest="min_spans", type=int, default=3, help="spans before the flagger may raise")
    p.add_argument("--n-boot", dest="n_boot", type=int, default=1000, help="bootstrap resamples of the AUC intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="read at most this many examples")
    p.add_argument(
        "--save-flagger",
        dest="save_flagger",
        default=None,
        metavar="FILE",
        help="write the flagger calibrated on this collection's successful chains (JSON; "
        "`attrib stream/serve --flagger FILE`)",
    )
    p.set_defaults(fn=run)
    return p


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.3g}"


def run(args: argparse.Namespace) -> int:
    """Run the ``trajectories`` subcommand.

    Returns:
        0 on success.

    Raises:
        ValueError: On unusable input (no scores, too few chains).
        OSError: When the collection or estimator cannot be read or outputs cannot be written.
    """
    from rich.console import Console
    from rich.table import Table

    from attrib.collect import Collection
    from attrib.io import atomic_write_json

    coll = Collection.open(args.data)
    est = None
    if args.estimator:
        from estimators.linear import LinearHeadEstimator

        est = LinearHeadEstimator.load(args.estimator)
        meta = getattr(est, "metadata_", {})
        region_method = coll.manifest.get("config", {}).get("region_method")
        if meta.get("region_method") not in (None, region_method):
            logger.warning("estimator fit on %r regions, collection uses %r", meta.get("region_method"), region_method)
    chains = load_chains(coll, est, limit=args.limit)
    if not chains:
        raise ValueError(f"collection {args.data} holds no chains with spans")
    res = analyse_chains(
        chains, fpr=args.fpr, top=args.top, min_spans=args.min_spans, n_boot=args.n_boot, seed=args.seed
    )
    res["collection"] = str(args.data)
    res["scores"] = f"estimator {args.estimator}" if args.estimator else "leave-one-out drops"
    if args.json:
        atomic_write_json(args.json, res)
    if args.plots:
        write_plots(res, chains, args.plots)
    if args.save_flagger:
        state = res["flagger"].get("state")
        if state is None:
            raise ValueError(f"the flagger could not be calibrated: {res['flagger'].get('error')}")
        atomic_write_json(args.save_flagger, state)
    console = Console(stderr=True)
    t = Table(
        title=f"trajectories: {res['n_success']} success, {res['n_failure']} failure "
        f"({res['n_hallucination']} hallucination, {res['n_reasoning_error']} reasoning error)"
    )
    for col in ("metric", "success median", "failure median", "p (Bonferroni)"):
        t.add_column(col, justify="right")
    for name in ("path_length", "tortuosity"):
        r = res[name]
        t.add_row(name, _fmt(r["success_median"]), _fmt(r["failure_median"]), _fmt(r["p_value_bonferroni"]))
    c = res["concentration"]["comparison"]
    t.add_row("concentration", _fmt(c["success_median"]), _fmt(c["failure_median"]), _fmt(c["p_value_bonferroni"]))
    console.print(t)
    a30 = res["auc_by_progress"].get("0.3", {})
    fl = res["flagger"]
    console.print(
        f"failure AUC at 30 % of the reasoning: {_fmt(a30.get('auc'))} "
        f"[{_fmt(a30.get('ci_low'))}, {_fmt(a30.get('ci_high'))}]; flagger at FPR {args.fpr}: "
        f"threshold {_fmt(fl.get('threshold'))}, held-out FPR {_fmt(fl.get('fpr_heldout'))}, "
        f"failures flagged {_fmt(fl.get('flagged_rate_failure'))}"
    )
    if args.json:
        console.print(f"wrote {args.json}")
    if args.plots:
        console.print(f"wrote figures to {args.plots}")
    return 0
