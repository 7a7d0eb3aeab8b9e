"""Renderers of docs/benchmarks.md's measured tables, from the result JSONs in docs/results/.

Registered with ``examples/bench_docs.py`` through ``BLOCKS`` (block name -> (JSON file or files,
renderer)); ``python examples/bench_docs.py --write docs/benchmarks.md`` rebuilds every block. Each
JSON is the ``--json`` output of the command the page shows beside the block (the per-example
``outcomes`` of ``attrib shapes eval`` are left out of the published copy; ``paired_accuracy.py``
reads them before that).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

# --- formatting -------------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return (f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}").replace("-", "−")


def _meets(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _ci(m: dict[str, Any] | None, digits: int = 3, ci_digits: int = 2, key: str = "value", sign: bool = False) -> str:
    """``value [low, high]`` of a metric dict (``value``/``ci_low``/``ci_high``)."""
    if not m:
        return "—"
    return f"{_f(m[key], digits, sign)} [{_f(m['ci_low'], ci_digits, sign)}, {_f(m['ci_high'], ci_digits, sign)}]"


def _p(p: float) -> str:
    """A p-value: one significant figure below 0.001, three decimals above."""
    if p < 1e-3:
        m, e = f"{p:.0e}".split("e")
        return f"{m}e{int(e)}"
    return f"{p:.3f}" if p < 0.995 else "1"


def _n(x: int) -> str:
    return f"{x:,}"


def _ms(s: float) -> str:
    return f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.2f} s"


# --- the bundled model's accuracy (attrib shapes eval --json) ----------------------------------------


def bundled_eval(d: dict[str, Any]) -> list[str]:
    """Accuracy, blank-image control, failures and per-family accuracy of one evaluation."""
    lo, hi = d["accuracy_ci"]
    blo, bhi = d["blank_image_accuracy_ci"]
    kinds = d.get("failure_kinds", {})
    fk = ", ".join(f"{v} {k.replace('_', ' ')}s" for k, v in sorted(kinds.items()))
    lines = [
        (f"`{d['model'].rstrip('/').split('/')[-1]}`, " if d.get("model") else "")
        + f"`{d.get('benchmark', 'shapes')}:{d['split']}` {d['start']}–{d['start'] + d['n'] - 1} "
        f"(n = {_n(d['n'])}): accuracy **{_f(d['accuracy'])}** (95 % CI {_f(lo)}–{_f(hi)}), blank-image "
        f"accuracy **{_f(d['blank_image_accuracy'])}** (CI {_f(blo)}–{_f(bhi)}), a gap of "
        f"**{_f(d['accuracy'] - d['blank_image_accuracy'])}**; failures **{d['n_failures']}**"
        + (f" ({fk})" if fk else "")
        + f"; parse rate **{_f(d['parse_rate'])}**; {_ms(d['seconds_per_example'])} per example (greedy).",
        "",
        "| family | n | accuracy | blank image |",
        "|---|---|---|---|",
    ]
    for fam, r in sorted(d["per_family"].items()):
        lines.append(f"| {fam} | {r['n']} | {_f(r['accuracy'])} | {_f(r['blank_image_accuracy'])} |")
    return lines


#: The v2 model's acceptance lines (issue "Yardstick v2").
V2_TARGETS = {"accuracy": (0.60, 0.92), "blank_gap": 0.25, "parse_rate": 0.95, "position": 0.85, "object": 0.85}


def v2_eval(d: dict[str, Any]) -> list[str]:
    """A benchmark v2 evaluation: accuracy, grounding (object and position words), chain lengths, failures."""
    lines = bundled_eval(d)[:2]
    t = V2_TARGETS
    gap = d["accuracy"] - d["blank_image_accuracy"]
    long = [f for f, r in d["per_family"].items() if r["chain_length_median"] >= 10]
    kinds = d.get("failure_kinds", {})
    nf = max(1, d["n_failures"])
    lines += [
        f"Grounding: when the model names an object, the object is in the image **{_f(d['object_accuracy'])}** of the "
        f"time (`object_accuracy`, {_n(d['object_mentions'])} mentions), and when it names a real object its position "
        f"words are right **{_f(d['position_accuracy'])}** of the time (`position_accuracy`, "
        f"{_n(d['positioned_mentions'])} mentions). Median chain **{d['chain_length_median']:g}** sentences "
        f"(reference traces {d['reference_chain_length_median']:g}).",
        "",
        "| family | n | accuracy | blank image | object_accuracy | position_accuracy | median chain (reference) |",
        "|---|---|---|---|---|---|---|",
    ]
    for fam, r in sorted(d["per_family"].items()):
        lines.append(
            f"| {fam} | {r['n']} | {_f(r['accuracy'])} | {_f(r['blank_image_accuracy'])} | "
            f"{_f(r['object_accuracy'])} | {_f(r['position_accuracy'])} | {r['chain_length_median']:g} "
            f"({r['reference_chain_length_median']:g}) |"
        )
    lo, hi = t["accuracy"]
    lines += [
        "",
        f"Targets: accuracy in [{lo}, {hi}]: {_meets(lo <= d['accuracy'] <= hi)}; blank-image accuracy at least "
        f"{t['blank_gap']} lower: {_meets(gap >= t['blank_gap'])} ({_f(gap)}); parse rate ≥ {t['parse_rate']}: "
        f"{_meets(d['parse_rate'] >= t['parse_rate'])}; position words ≥ {t['position']}: "
        f"{_meets(d['position_accuracy'] >= t['position'])}; object descriptions ≥ {t['object']}: "
        f"{_meets(d['object_accuracy'] >= t['object'])}; median chain ≥ 10 on at least two families: "
        f"{_meets(len(long) >= 2)} ({', '.join(sorted(long)) or 'none'}); hallucinations and reasoning errors each "
        f"≥ 10 % of failures: {_meets(all(kinds.get(k, 0) / nf >= 0.1 for k in ('hallucination', 'reasoning_error')))}"
        f" ({', '.join(f'{k.replace(chr(95), chr(32))} {kinds.get(k, 0) / nf:.0%}' for k in sorted(kinds))}).",
    ]
    return lines


# --- faithfulness (attrib evaluate --json) ----------------------------------------------------------

#: What the estimator is asked to reach (the project's targets).
TARGETS = {"lds": 0.80, "r2": 0.65, "top5_drop_normalized": 0.95, "pointing": 0.90}
SPEEDUP_TARGET = 100.0


def _label(name: str, d: dict[str, Any]) -> str:
    return {
        "estimator": "**estimator (L×H)**",
        "raw_attention": "raw attention",
        "best_layer": f"best single layer (layer {d.get('best_layer', '?')})",
        "input_x_gradient": "input × gradient",
        "integrated_gradients": "integrated gradients",
        "contextcite": "ContextCite (Lasso)",
        "leave_one_out": "leave-one-out",
    }.get(name, name)


def _plain(name: str, d: dict[str, Any]) -> str:
    return _label(name, d).replace("**", "")


def _interval_note(d: dict[str, Any]) -> str:
    unit = d.get("interval_unit", "span")
    return f"95 % bootstrap intervals in brackets, resampling {unit}s" + (
        " (each with all its spans)" if unit == "example" else ""
    )


def faithfulness(d: dict[str, Any]) -> list[str]:
    """Every method's LDS, R², top-5 drop, pointing and cost, and the estimator against the targets."""
    ms = d["methods"]
    lines = [
        f"Held out: {d['n_examples']} examples, {_n(d['n_spans'])} spans; {_interval_note(d)}.",
        "",
        "| method | LDS | R² vs LOO | top-5 drop | top-5 drop / LOO | pointing | s / token |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in ms.items():
        lines.append(
            f"| {_label(name, d)} | {_ci(m['lds'])} | {_ci(m['r2'])} | {_f(m['top5_drop']['value'], 2)} | "
            f"{_ci(m['top5_drop_normalized'])} | {_f(m['pointing']['value'])} | {m['seconds_per_token']:.1e} |"
        )
    est = ms.get("estimator")
    if not est:
        return lines
    names = {"lds": "LDS", "r2": "R²", "top5_drop_normalized": "top-5 drop / LOO", "pointing": "pointing"}
    met = [f"{names[k]} {_f(est[k]['value'])} ≥ {t:.2f}" for k, t in TARGETS.items() if est[k]["value"] >= t]
    missed = [f"{names[k]} {_f(est[k]['value'])} < {t:.2f}" for k, t in TARGETS.items() if est[k]["value"] < t]
    lines += [
        "",
        "Against the targets: " + "; ".join([*(f"{x} (met)" for x in met), *(f"{x} (not met)" for x in missed)]),
    ]
    others = [n for n in ms if n != "estimator"]
    for k in TARGETS:
        if est[k]["value"] >= TARGETS[k]:
            also = [f"{_plain(n, d)} {_f(ms[n][k]['value'])}" for n in others if ms[n][k]["value"] >= TARGETS[k]]
            if also:
                lines[-1] += f". The {names[k]} target is met by other methods too: {', '.join(also)}"
    loo = ms.get("leave_one_out")
    if loo:
        ratio = loo["seconds_per_token"] / est["seconds_per_token"]
        lines[-1] += (
            f". Per token the estimator costs {est['seconds_per_token']:.1e} s against leave-one-out's "
            f"{loo['seconds_per_token']:.1e} s: {ratio:,.0f}× cheaper (target ≥ {SPEEDUP_TARGET:.0f}×: "
            f"{'met' if ratio >= SPEEDUP_TARGET else 'not met'})"
        )
    order = sorted(ms, key=lambda n: -ms[n]["lds"]["value"])
    above = [f"{_plain(n, d)} {_f(ms[n]['lds']['value'])}" for n in order[: order.index("estimator")]]
    below = [f"{_plain(n, d)} {_f(ms[n]['lds']['value'])}" for n in order[order.index("estimator") + 1 :]]
    lines[-1] += (
        f". On LDS the estimator ({_f(est['lds']['value'])}) ranks below {', '.join(above) or 'no method'}"
        f" and above {', '.join(below) or 'no method'}."
    )
    return lines


def faithfulness_protocol(d: dict[str, Any]) -> list[str]:
    """The rest of the evaluation protocol: LDS by span population, insertion and deletion areas, the
    estimator's paired differences against every method, its spread over seeds and its data efficiency."""
    ms = list(d["methods"])
    pops = d.get("populations", {})
    order = [p for p in ("all", "image_dependent", "planning", "object", "relation", "summary") if p in pops]
    order += [p for p in pops if p not in order]
    lines: list[str] = []
    if pops:
        rule = pops.get("image_dependent", {}).get("rule", "")
        lines += [
            "LDS by span population (spans of the same held-out examples; "
            + (f"image-dependent: {rule}" if rule else "")
            + "; 95 % intervals resampling examples):",
            "",
            "| method | " + " | ".join(f"{p.replace('_', '-')} (n = {_n(pops[p]['n_spans'])})" for p in order) + " |",
            "|---|" + "---|" * len(order),
        ]
        for name in ms:
            cells = [_ci(pops[p]["methods"].get(name, {}).get("lds")) for p in order]
            lines.append(f"| {_label(name, d)} | " + " | ".join(cells) + " |")
    allm = d["methods"]
    if any("deletion_auc" in allm[n] for n in ms):
        lines += [
            "",
            f"Deletion and insertion curves ({d.get('protocol', {}).get('auc_steps', '?')} steps; mean log-prob of "
            "the span along the curve: remove the method's top regions first, lower is better; keep only its top "
            "regions, higher is better), all spans:",
            "",
            "| method | deletion area ↓ | insertion area ↑ |",
            "|---|---|---|",
        ]
        for name in ms:
            lines.append(
                f"| {_label(name, d)} | {_ci(allm[name].get('deletion_auc'), 2)} | "
                f"{_ci(allm[name].get('insertion_auc'), 2)} |"
            )
    paired = d.get("paired", {})
    if paired.get("all"):
        ppops = [p for p in ("all", "image_dependent") if p in paired]
        lines += [
            "",
            "The estimator minus each method on the same spans (paired; 95 % intervals resampling examples):",
            "",
            "| method | " + " | ".join(f"ΔLDS, {p.replace('_', '-')}" for p in ppops) + " | ΔR², all |",
            "|---|" + "---|" * (len(ppops) + 1),
        ]
        for name in paired["all"]:
            cells = [_ci(paired[p].get(name), sign=True) for p in ppops]
            cells.append(_ci(paired["all"][name].get("r2"), sign=True))
            lines.append(f"| {_label(name, d)} | " + " | ".join(cells) + " |")
    seeds = d.get("estimator_seeds", {})
    if seeds.get("populations"):
        sp = seeds["populations"]
        parts = [
            f"{p.replace('_', '-')} {_f(sp[p]['lds']['mean'])} (SD {sp[p]['lds']['sd']:.1e})" for p in order if p in sp
        ]
        lines += [
            "",
            f"Estimator refit with seeds {', '.join(str(x) for x in seeds['seeds'])} "
            f"({_n(seeds['n_train'])} training examples): LDS " + ", ".join(parts) + ".",
        ]
    eff = [r for r in d.get("data_efficiency", []) if "lds" in r]
    if eff:
        lines += [
            "",
            "Data efficiency (the estimator refit on n correctly answered training examples, "
            f"{eff[0].get('n_resamples', '?')} random draws per size; mean over draws, interval the mean of the draws' "
            "intervals, SD across draws):",
            "",
            "| n train | LDS | SD over draws | LDS, image-dependent | top-5 drop / LOO |",
            "|---|---|---|---|---|",
        ]
        for r in eff:
            lines.append(
                f"| {_n(r['n_train'])} | {_ci(r['lds'])} | {r['lds'].get('sd_resamples', 0.0):.3f} | "
                f"{_ci(r.get('lds_image_dependent'))} | {_ci(r.get('top5_drop_normalized'))} |"
            )
    return lines


REGION_NAMES = {"color": "colour (semantic)", "voronoi": "Voronoi", "blocks": "random blocks", "grid": "grid"}


def regions_faithfulness(d: dict[str, Any]) -> list[str]:
    """One estimator per region method and K (``attrib evaluate --compare-train/--compare-test``)."""
    rows = d["region_comparison"]
    order = list(REGION_NAMES)
    rows = sorted(rows, key=lambda r: (order.index(r["region_method"]) if r["region_method"] in order else 99, r["k"]))
    lines = [
        f"Training examples per configuration: {', '.join(sorted({_n(r['n_train']) for r in rows}))}; held-out "
        f"spans scored: {', '.join(sorted({_n(r['lds']['n']) for r in rows if 'n' in r['lds']})) or '?'}; "
        f"{_interval_note(d)}.",
        "",
        "| regions | K | LDS | R² | top-5 drop / LOO | pointing |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {REGION_NAMES.get(r['region_method'], r['region_method'])} | {r['k']} | {_ci(r['lds'])} | "
            f"{_f(r['r2']['value'])} | {_f(r['top5_drop_normalized']['value'])} | {_f(r['pointing']['value'], 2)} |"
        )
    return lines


# --- v1 point-and-copy -------------------------------------------------------------------------------


def v1_accuracy(data: dict[str, Any]) -> list[str]:
    """Base and v1 answer accuracy on the same examples, with their paired difference."""
    a, b, p = data["eval_base.json"], data["eval_v1.json"], data["v1_paired.json"]
    al = p["all"]

    def name(e: dict[str, Any], default: str) -> str:
        return str(e.get("model") or default).rstrip("/").split("/")[-1]

    bench = "shapes2" if a.get("benchmark") == "shapes2" else "shapes"
    lines = [
        f"| | base `{name(a, 'shapes-qwen25vl')}` | v1 `{name(b, 'shapes-qwen25vl-v1')}` |",
        "|---|---|---|",
        f"| answer accuracy | {_f(a['accuracy'])} [{_f(a['accuracy_ci'][0])}, {_f(a['accuracy_ci'][1])}] | "
        f"**{_f(b['accuracy'])}** [{_f(b['accuracy_ci'][0])}, {_f(b['accuracy_ci'][1])}] |",
        f"| blank-image accuracy | {_f(a['blank_image_accuracy'])} | {_f(b['blank_image_accuracy'])} |",
        f"| parse rate | {_f(a['parse_rate'])} | {_f(b['parse_rate'])} |",
        f"| failures | {a['n_failures']} | {b['n_failures']} |",
        f"| **pointing accuracy** | — | **{_f(b.get('pointing_accuracy'))}** "
        f"({_n(b.get('pointing_copies', 0))} copies in region blocks) |",
        f"| s / example (eval) | {a['seconds_per_example']:.3f} | {b['seconds_per_example']:.3f} |",
        "",
        f"`{bench}:{a['split']}` {a['start']}–{a['start'] + a['n'] - 1}, n = {_n(al['n'])} paired examples. "
        f"Difference v1 − base **{_f(al['difference'], sign=True)} [{_f(al['ci_low'], sign=True)}, "
        f"{_f(al['ci_high'], sign=True)}]** (paired bootstrap over examples); {al['only_b_right']} examples only "
        f"v1 answers right, {al['only_a_right']} only the base (McNemar p = {_p(al['mcnemar_p'])}).",
        "",
        "| family | base | v1 | v1 − base | McNemar p | v1 pointing |",
        "|---|---|---|---|---|---|",
    ]
    for fam, r in p["per_family"].items():
        pt = p.get("pointing_per_family", {}).get(fam)
        lines.append(
            f"| {fam} | {_f(r['accuracy_a'])} | {_f(r['accuracy_b'])} | {_f(r['difference'], sign=True)} "
            f"[{_f(r['ci_low'], sign=True)}, {_f(r['ci_high'], sign=True)}] | {_p(r['mcnemar_p'])} | "
            f"{_f(pt['accuracy']) if pt else '—'} |"
        )
    return lines


def v1_copy_feed(data: dict[str, Any]) -> list[str]:
    """v1 with what a copy feeds back replaced, paired against the unchanged v1."""
    v1 = data["eval_v1.json"]
    lines = [
        f"`{v1['model'].rstrip('/').split('/')[-1]}`, `shapes:{v1['split']}` {v1['start']}–{v1['start'] + v1['n'] - 1} "
        f"(n = {_n(v1['n'])}), each intervention paired against the unchanged model on the same examples: accuracy "
        "with its 95 % interval over examples, the difference with a paired bootstrap interval over examples, "
        "McNemar's exact test on the discordant pairs.",
        "",
        "| copy feeds back | accuracy | v1 − intervention | only unchanged right / only intervention right | "
        "McNemar p | pointing | copies |",
        "|---|---|---|---|---|---|---|",
        f"| the copied patch (unchanged) | {_f(v1['accuracy'])} | — | — | — | {_f(v1.get('pointing_accuracy'))} | "
        f"{_n(v1.get('pointing_copies', 0))} |",
    ]
    labels = {"mean": "the image's mean embedding", "token": "the `<|copy|>` token embedding alone"}
    for f, label in labels.items():
        e, pr = data[f"eval_v1_copy_{f}.json"], data[f"v1_paired_copy_{f}.json"]["all"]
        lines.append(
            f"| {label} | {_f(e['accuracy'])} [{_f(e['accuracy_ci'][0])}, {_f(e['accuracy_ci'][1])}] | "
            f"{_f(-pr['difference'], sign=True)} [{_f(-pr['ci_high'], sign=True)}, {_f(-pr['ci_low'], sign=True)}] | "
            f"{pr['only_a_right']} / {pr['only_b_right']} | {_p(pr['mcnemar_p'])} | {_f(e.get('pointing_accuracy'))} | "
            f"{_n(e.get('pointing_copies', 0))} |"
        )
    fams = sorted(v1["per_family"])
    per = "; ".join(
        f"{fam} {_f(v1['per_family'][fam]['accuracy'])} → "
        + " / ".join(_f(data[f"eval_v1_copy_{f}.json"]["per_family"][fam]["accuracy"]) for f in labels)
        for fam in fams
    )
    lines += ["", f"Per family, unchanged → mean / token: {per}."]
    return lines


def v1_faithfulness(data: dict[str, Any]) -> list[str]:
    """The estimator and baselines on the v1 model, beside the base model's figures."""
    v, b = data["faithfulness_v1.json"], data["faithfulness_first.json"]
    lines = [
        f"v1 held out: {v['n_examples']} examples, {_n(v['n_spans'])} spans; base: {b['n_examples']} examples, "
        f"{_n(b['n_spans'])} spans; {_interval_note(v)}.",
        "",
        "| method | v1 LDS | v1 R² vs LOO | v1 top-5 / LOO | v1 pointing | v1 s / token | base LDS | base R² | "
        "base top-5 / LOO | base pointing |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in v["methods"].items():
        bm = b["methods"].get(name)
        base = (
            f"{_ci(bm['lds'])} | {_f(bm['r2']['value'])} | {_f(bm['top5_drop_normalized']['value'])} | "
            f"{_f(bm['pointing']['value'])}"
            if bm
            else "— | — | — | —"
        )
        lines.append(
            f"| {_label(name, v)} | {_ci(m['lds'])} | {_f(m['r2']['value'])} | {_ci(m['top5_drop_normalized'])} | "
            f"{_f(m['pointing']['value'])} | {m['seconds_per_token']:.1e} | {base} |"
        )
    return lines


def _v1_tables() -> Any:
    f = Path(__file__).resolve().parent / "v1_tables.py"
    spec = importlib.util.spec_from_file_location("v1_tables", f)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def v1_direct_only(data: dict[str, Any]) -> list[str]:
    """The direct-only control (examples/v1_tables.py), test and validation."""
    text: str = _v1_tables().tables(data["v1_analysis.json"], data["v1_analysis_validation.json"])
    return text.rstrip("\n").split("\n")


def v1v2_direct_only(data: dict[str, Any]) -> list[str]:
    """The direct-only control on benchmark v2 (the v1 model's estimator fit by examples/v1_experiment_v2.sh)."""
    text: str = _v1_tables().tables(
        data["v1v2_analysis.json"],
        data["v1v2_analysis_validation.json"],
        benchmark="shapes2",
        base_name="shapes2-qwen25vl",
        weights="fit weights",
    )
    return text.rstrip("\n").split("\n")


def _length(row: dict[str, Any]) -> str:
    lo, hi = row["chain_len"]
    return f"≥ {lo}" if hi >= 100 else f"{lo}–{hi}"


def v1_decay(data: dict[str, Any]) -> list[str]:
    """Attention decay along the chain (v1 Fig. 3), copy share by position, copy vs source attention (Fig. 5)."""
    lines = [
        "| split | model | spans | slope of image mass | slope of ground-truth mass | "
        "ground-truth mass, positions 2–8 |",
        "|---|---|---|---|---|---|",
    ]
    for split, f in (("test", "v1_analysis.json"), ("validation", "v1_analysis_validation.json")):
        for name in ("base", "v1"):
            dd = data[f]["decay"][name]
            gt = [r for r in dd["by_position"] if r["position"] >= 2 and "gt_mass" in r]
            lines.append(
                f"| {split} | {name} | {_n(dd['n_spans'])} | {_f(dd['image_mass_slope']['slope'])} | "
                f"{_f(dd['gt_mass_slope']['slope'])} | {' '.join(_f(r['gt_mass']) for r in gt)} |"
            )
    t = data["v1_analysis.json"]
    cs = t["copy_share"]
    lines += [
        "",
        "Copies' share of each v1 span's image attention (`span_copy_share`, mean over spans) by span position "
        f"0–{len(cs['by_position']) - 1} (last: that and later), test: "
        + ", ".join(_f(r["mean"], 2) for r in cs["by_position"])
        + f"; {_f(cs['overall'])} over all {_n(cs['n_spans'])} spans (validation: "
        f"{_f(data['v1_analysis_validation.json']['copy_share']['overall'])} over "
        f"{_n(data['v1_analysis_validation.json']['copy_share']['n_spans'])}).",
    ]
    ca = t.get("copy_attention")
    if ca:
        lines += ["", *_copy_attention(ca)]
    return lines


def _copy_attention(ca: dict[str, Any]) -> list[str]:
    """Per layer, attention of tokens generated after a copy to the copy tokens and to their source image
    tokens (``attrib v1 --v1-model``: ``copy_mass``, ``source_mass``, ``n_tokens``)."""
    copy, source = ca["copy_mass"], ca["source_mass"]
    where = f"`{ca['dataset']}` 0–{ca['n_examples'] - 1}, " if "n_examples" in ca else ""
    out = [
        f"Copy vs source attention (Fig. 5): {_n(ca['n_tokens'])} tokens generated after at least one copy "
        f"({where}mean over those tokens and the heads):",
        "",
        "| layer | to the copy tokens | to their source image tokens | ratio |",
        "|---|---|---|---|",
    ]
    more = []
    for layer, (c, src) in enumerate(zip(copy, source, strict=True)):
        out.append(f"| {layer} | {_f(c)} | {_f(src)} | {_f(c / src if src else float('nan'), 2)} |")
        more.append(c > src)
    if more:
        up = [str(i) for i, m in enumerate(more) if m]
        down = [str(i) for i, m in enumerate(more) if not m]
        out += [
            "",
            f"More attention to the copies than to their sources in layer{'s' if len(up) != 1 else ''} "
            f"{', '.join(up) or 'none'}; less in layer{'s' if len(down) != 1 else ''} {', '.join(down) or 'none'}.",
        ]
    return out


def v1_late_chain_checks(data: dict[str, Any]) -> list[str]:
    """The late-chain comparison's multiple-testing count and its copy-token check, total features."""
    splits = (("validation", "v1_analysis_validation.json"), ("test", "v1_analysis.json"))
    tests = [
        (split, label, row)
        for split, f in splits
        for key, label in (("late_chain", "estimator"), ("late_chain_attention", "attention"))
        for row in data[f][key]["buckets"]
        if row.get("comparison")
    ]
    m = len(tests)
    lost = [
        f"{split}, {_length(row)} spans, {label}: p = {_p(row['comparison']['p_value'])}, corrected "
        f"{_p(min(1.0, row['comparison']['p_value'] * m))}"
        for split, label, row in tests
        if row["comparison"]["p_value"] * m >= 0.05
    ]
    lines = [
        f"- {m - len(lost)} of the {m} v1 − base comparisons on total features (both splits, both scores, three "
        f"chain lengths) survive a Bonferroni correction for {m} tests"
        + (f" (not: {'; '.join(lost)})" if lost else "")
        + "."
    ]
    for split, f in splits:
        d, parts, rows = data[f], [], []
        for key, label in (
            ("late_chain_no_own_copies", "estimator"),
            ("late_chain_attention_no_own_copies", "attention"),
        ):
            rows = [r for r in d.get(key, {}).get("buckets", []) if r.get("comparison")]
            if rows:
                c = rows[-1]["comparison"]
                parts.append(
                    f"{label} {_f(c['difference'], sign=True)} [{_f(c['examples_ci_low'], sign=True)}, "
                    f"{_f(c['examples_ci_high'], sign=True)}], δ {c['cliffs_delta']:.2f}"
                )
        if parts:
            lines.append(
                f"- Leaving out late spans that hold copy tokens themselves ({split}, chains of {_length(rows[-1])} "
                f"spans, v1 − base, examples resampled): {', '.join(parts)}."
            )
    return lines


# --- regions, Ray, norms --------------------------------------------------------------------------------


def regions_bench(d: dict[str, Any]) -> list[str]:
    """Purity, object recall and clustering time of the region methods (examples/bench_regions.py)."""
    ks = list(d["purity"])
    base = sorted({m for k in ks for m in d["baselines"][k]})
    lines = [
        f"`{d.get('benchmark', 'shapes')}:{d['split']}` images: {d['n_images']}; method `{d['method']}` against the "
        "geometric baselines; "
        f"{d['machine']}, {d['torch_threads']} torch threads.",
        "",
        "| K | purity (color) | object recall (color) | " + " | ".join(f"{m} purity / recall" for m in base) + " |",
        "|---|---|---|" + "---|" * len(base),
    ]
    for k in ks:
        row = f"| {k} | {_f(d['purity'][k])} | {_f(d['object_recall'][k])} | "
        row += " | ".join(
            f"{_f(d['baselines'][k][m]['purity'])} / {_f(d['baselines'][k][m]['object_recall'])}" for m in base
        )
        lines.append(row + " |")
    cs = d["cluster_seconds"]
    kk = list(next(iter(cs.values())))
    lines += [
        "",
        "Ward clustering of D = 384 feature maps, median seconds:",
        "",
        "| patches | " + " | ".join(f"K={k}" for k in kk) + " |",
        "|---|" + "---|" * len(kk),
    ]
    for n, row in cs.items():
        lines.append(f"| {n} | " + " | ".join(f"{row[k] * 1e3:.1f} ms" for k in kk) + " |")
    rs = d["region_share"]
    lines += [
        "",
        f"Regions (colour features + Ward, K = 32, plus token assignment) {rs['region_seconds_median'] * 1e3:.1f} ms "
        f"per image against {rs['generation_seconds_median'] * 1e3:.0f} ms to generate the trace with the "
        f"{rs['model']} model (medians, n = {rs['n']}): {100 * rs['share']:.0f} % of the pair.",
    ]
    return lines


def collections(d: dict[str, Any]) -> list[str]:
    """What the collections hold (examples/collection_summary.py)."""
    cols = d["collections"]
    lines = [
        "| collection | model | examples | spans | answered right | failed | removal sets | leave-one-out | "
        "MB on disk |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cols:
        span = f"{c['start']:,}–{c['start'] + c['n'] - 1:,}"
        lines.append(
            f"| `{c['dataset']}` {span} | {c['model']} | {c['n_examples']:,} | {c['n_spans']:,} | {_f(c['correct'])} "
            f"| {c['n_failed']} | {c['n_subsets']} | {'yes' if c['loo'] else 'no'} | {c['mb_on_disk']:.0f} |"
        )
    first = cols[0]
    lines += [
        "",
        f"All with `{first['region_method']}` regions, K = {first['k']}, `{first['ablation_mode']}` ablation, up to "
        f"{first['max_new_tokens']} generated tokens"
        + ("" if all(c["complete"] for c in cols) else "; **not all complete**")
        + "; created "
        + ", ".join(sorted({str(c["created"])[:10] for c in cols}))
        + ".",
    ]
    return lines


def ray(d: dict[str, Any]) -> list[str]:
    """Local backend against a two-node Ray cluster on loopback (examples/bench_ray.py)."""
    lines = [
        f"{d['model']}, {d['n_examples']} `{d['dataset']}` examples, K = {d['k']}, {d['n_subsets']} removal sets, "
        f"shards of {d['shard_size']}; {d['nodes']} Ray nodes of {d['cpus_per_node']} CPU, "
        f"{d['torch_threads_per_replica']} torch thread per replica, on a {d['machine_cpus']}-CPU machine"
        + (" (quick run)" if d.get("quick") else "")
        + (f"; measured on {d['date']}" if d.get("date") else "")
        + (f", torch {d['torch']}" if d.get("torch") else "")
        + (f", 1-minute load average {d['load_average_start']:.1f} at the start" if "load_average_start" in d else "")
        + ".",
        "",
        "| run | wall time | examples per hour | once workers are up | largest difference from local |",
        "|---|---|---|---|---|",
        f"| local backend, 1 thread | {d['local_seconds']:.1f} s | {d['local_examples_per_hour']:,.0f} | | |",
    ]
    for r in d["ray"]:
        lines.append(
            f"| Ray, {r['workers']} worker{'s' if r['workers'] > 1 else ''} | {r['seconds']:.1f} s | "
            f"{r['examples_per_hour']:,.0f} | {r['examples_per_hour_steady']:,.0f} | {r['max_abs_diff_vs_local']} |"
        )
    lines += [
        "",
        f"Scaling efficiency (throughput with 2 workers / twice that with 1): {d['scaling_efficiency']:.2f} end to "
        f"end, {d['scaling_efficiency_steady']:.2f} once the workers are up.",
    ]
    return lines


def norms(d: dict[str, Any]) -> list[str]:
    """Input and last-layer hidden norms by token type (attrib norms --json)."""
    ts = d["types"]
    parts = [
        f"{t}: input norm {v['mean_norm'][0]:.3g}, last-layer hidden norm {v['mean_norm'][-1]:.3g}, "
        f"ratio {d['ratios'][t]:.3g} ({_n(v['n_tokens'])} tokens)"
        for t, v in ts.items()
    ]
    return [
        f"`attrib norms` on `{d['model'].rstrip('/').split('/')[-1]}` ({d['n_inputs']} inputs, "
        f"{d['n_layers']} layers): " + "; ".join(parts) + "."
    ]


def latent(d: dict[str, Any]) -> list[str]:
    """The latent-visual-token comparison (examples/latent_summary.py over examples/latent_experiment_v2.sh)."""
    sel, be, tab = d["selection"], d["base_eval"], d["table"]
    kinds = ("zeros", "noise", "mean", "shuffle")
    runs = sorted(d["runs"], key=lambda r: (r["mode"], r["seed"]))
    blocks = {m: [r["blocks_per_example"] for r in runs if r["mode"] == m] for m in tab}
    lines = [
        f"Base `{d['base']}`; selection on `{d['benchmark']}:train` 0–{sel['pool_n'] - 1} ({sel['samples']} samples "
        f"at temperature 1): mean sampled accuracy {_f(sel['mean_sampled_accuracy'])}, {sel['n_hard']} of "
        f"{sel['pool_n']} examples ({sel['n_hard'] / sel['pool_n']:.0%}) at most 0.5, which get latent traces. "
        f"Probed on `{d['benchmark']}:{be['split']}` {be['start']}–{be['start'] + be['n'] - 1} (n = {be['n']}); the "
        f"base model answers {_f(be['accuracy'])} [{_f(be['accuracy_ci'][0])}, {_f(be['accuracy_ci'][1])}] of them.",
        "",
        "| mode | seeds | accuracy (mean ± sd; per seed) | latent blocks per example | latent / image input norm "
        "| latent / text input norm | " + " | ".join(f"Δ {k}" for k in kinds) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(kinds),
    ]
    for m, v in tab.items():
        per = ", ".join(_f(a) for a in v["accuracy_per_seed"])
        bl = sum(blocks[m]) / len(blocks[m]) if blocks.get(m) else float("nan")
        lines.append(
            f"| {m} | {v['seeds']} | {_f(v['accuracy_mean'])} ± {_f(v['accuracy_std'])} ({per}) | {bl:.2f} | "
            f"{v['ratio_to_image_input']:.3g} | {v['ratio_to_text_input']:.3g} | "
            + " | ".join(_f(v.get(f"delta_{k}"), sign=True) for k in kinds)
            + " |"
        )
    lines += [
        "",
        "Per run: accuracy unchanged and each intervention's paired difference with its 95 % interval (bootstrap "
        "over examples), and the fine-tuning's wall time.",
        "",
        "| run | accuracy | " + " | ".join(f"Δ {k}" for k in kinds) + " | fine-tuning |",
        "|---|---|" + "---|" * len(kinds) + "---|",
    ]
    for r in runs:
        iv = r["interventions"]
        cells = [
            f"{_f(iv[k]['delta'], sign=True)} [{_f(iv[k]['delta_ci'][0], sign=True)}, "
            f"{_f(iv[k]['delta_ci'][1], sign=True)}]"
            for k in kinds
        ]
        lines.append(
            f"| {r['mode']}-{r['seed']} | {_f(iv['none']['accuracy'])} | " + " | ".join(cells) + " | "
            f"{r['train_seconds']:.0f} s ({r['steps']} steps × {r['batch_size']}) |"
        )
    if d["norms"]:
        lines += ["", "Layer-wise norms (`attrib norms`, first and last layer, mean over tokens):", ""]
        for name, v in d["norms"].items():
            parts = [
                f"{t} {fl[0]:.3g} → {fl[1]:.3g} (ratio {v['ratios'][t]:.3g})"
                for t, fl in v["mean_norm_first_last"].items()
            ]
            lines.append(f"- {name} (`{v['model']}`, {v['n_inputs']} inputs): " + "; ".join(parts) + ".")
    if d["attribution"]:
        lines += [
            "",
            "| seed-0 model | spans | latent share, all spans | in spans holding a latent block | in later spans |",
            "|---|---|---|---|---|",
        ]
        for m, a in d["attribution"].items():
            lines.append(
                f"| {m} | {_n(a['n_spans'])} ({a['n_examples']} examples) | {_f(a['latent_share_mean'])} | "
                f"{_f(a['latent_share_spans_with_latents'])} ({_n(a['n_spans_with_latents'])} spans) | "
                f"{_f(a['latent_share_later_spans'])} ({_n(a['n_later_spans'])} spans) |"
            )
    return lines


# --- training of the bundled models (their train_log.json) and its reproducibility check ---------------


def training(model: str) -> Any:
    """A renderer of one bundled model's ``train_log.json`` (``attrib shapes train`` writes it beside the weights)."""

    def render(d: dict[str, Any]) -> list[str]:
        c, losses, digests = d["config"], d["losses"], d["checkpoint_digests"]
        on = {True: "on", False: "off"}
        first_step, first = digests[0]
        return [
            f"`{model}` (its `train_log.json`; variant `{c.get('variant', 'base')}`): {_n(c['steps'])} steps at batch "
            f"{c['batch_size']} (learning rate {c['lr']:g}, {c['warmup']} warm-up steps, weight decay "
            f"{c['weight_decay']:g}, seed {c['seed']}), {c['threads']} threads, torch {d['torch']}, `torch.compile` "
            f"{on[bool(c.get('compile'))]}, denormal flushing {on[bool(c.get('flush_denormal'))]}, "
            f"{c.get('workers', 0)} prefetch worker{'s' if c.get('workers', 0) != 1 else ''}; "
            f"{_n(d['parameters'])} parameters ({d['parameters'] / 1e6:.2f} M).",
            "",
            f"**{_n(round(d['train_seconds']))} s in the training loop** "
            f"({'compilation included; ' if c.get('compile') else ''}wall time is not "
            f"recorded): {d['train_seconds'] / c['steps']:.2f} s per step on average. Loss {losses[0][1]:.2f} at step "
            f"{losses[0][0]}, **{losses[-1][1]:.3f}** at the last logged step ({_n(losses[-1][0])}; logged every "
            f"{losses[1][0] - losses[0][0]} steps). {len(digests)} checkpoint weight digests, every "
            f"{c['ckpt_every']} steps (step {first_step}: `{first[:8]}…`); final training-loop weights digest "
            f"`{d['final_digest'][:16]}…`.",
        ]

    return render


def reproducibility(d: dict[str, Any]) -> list[str]:
    """The first checkpoints of a recorded run, rerun and compared bitwise (examples/check_reproducibility.py)."""
    rows = d["checkpoints"]
    when = f" on {d['date']}" if d.get("date") else ""

    def env(e: dict[str, Any]) -> str:
        parts = [
            f"torch {e['torch']}" if e.get("torch") else "",
            f"transformers {e['transformers']}" if e.get("transformers") else "",
            f"CPU {e['cpu']}" if e.get("cpu") else "",
        ]
        return ", ".join(p for p in parts if p)

    here = env(d)
    parts = [
        f"step {r['step']}: recorded `{(r['recorded'] or '—')[:8]}…`, rerun `{r['rerun'][:8]}…` "
        + ("(equal)" if r["equal"] else "(**different**)")
        for r in rows
    ]
    verdict = "bit for bit equal" if d["all_equal"] else "**not equal**"
    lines = [
        f"`check_reproducibility.py {d.get('train_log', 'train_log.json')} --steps {d.get('steps', rows[-1]['step'])}`"
        f"{when} ({here + ', ' if here else ''}{d.get('threads', d['config'].get('threads'))} threads; "
        f"{_n(round(d['seconds']))} s): {'; '.join(parts)}: {verdict}."
    ]
    if "recorded_environment" in d:
        rec = env(d["recorded_environment"])
        missing = [k for k in ("torch", "transformers", "cpu") if not d["recorded_environment"].get(k)]
        lines[0] += f" The recorded run's environment: {rec or 'not recorded'}" + (
            f" ({', '.join(missing)} not recorded)." if rec and missing else "."
        )
    return lines


# --- a saved flagger applied to another split (attrib trajectories --check-flagger) ---------------------


def flagger_check(d: dict[str, Any]) -> list[str]:
    """The shipped flagger on chains it was not calibrated on: false-positive rate and recall, with Wilson
    intervals (chains are independent examples)."""
    from statsmodels.stats.proportion import proportion_confint

    ck = d["flagger_check"]

    def ci(rate: float, n: int) -> str:
        if not n or rate is None:
            return "—"
        lo, hi = proportion_confint(round(rate * n), n, method="wilson")
        return f"{rate:.3f} [{lo:.2f}, {hi:.2f}]"

    return [
        f"`{ck['file']}` ({ck['statistic']}, threshold {ck['threshold']:.3g}) applied unchanged to "
        f"{d.get('collection', '?')}: {ck['n_success']} successful and {ck['n_failure']} failed chains; "
        "95 % Wilson intervals.",
        "",
        "| false-positive rate | failures flagged | reasoning errors flagged | hallucinations flagged | "
        "median progress at the flag |",
        "|---|---|---|---|---|",
        f"| {ci(ck['fpr'], ck['n_success'])} | {ci(ck['recall'], ck['n_failure'])} | "
        f"{ci(ck['recall_reasoning_error'], ck['n_reasoning_error'])} | "
        f"{ci(ck['recall_hallucination'], ck['n_hallucination'])} | {_f(ck.get('median_flag_progress'), 2)} |",
    ]


# --- trajectories (attrib trajectories --json) ----------------------------------------------------------


def trajectories(d: dict[str, Any]) -> list[str]:
    """Chain counts, success-vs-failure statistics, failure prediction, the flagger and the three outcomes."""
    spans = sorted(c["n_spans"] for c in d.get("chains", []))
    med = spans[len(spans) // 2] if spans else None
    lines = [
        f"{d['n_success']} successful and {d['n_failure']} failed chains ({d['n_hallucination']} hallucinations, "
        f"{d['n_reasoning_error']} reasoning errors)"
        + (f"; chains of {spans[0]}–{spans[-1]} spans, median {med}" if spans else "")
        + f"; scores: {d.get('scores', '?')}.",
        "",
        "| statistic | success median | failure median | p (Mann–Whitney) | p (Bonferroni, 3 tests) |",
        "|---|---|---|---|---|",
    ]
    names = {
        "path_length": "path length",
        "tortuosity": "tortuosity",
        "concentration": "mean concentration (1 − normalised entropy)",
    }
    for key, label in names.items():
        c = d[key]["comparison"] if key == "concentration" else d[key]
        lines.append(
            f"| {label} | {c['success_median']:.3g} | {c['failure_median']:.3g} | {_p(c['p_value'])} | "
            f"{_p(c['p_value_bonferroni'])} |"
        )
    auc = d["auc_by_progress"]
    parts = [
        f"{_f(auc[k]['auc'], 2)} [{_f(auc[k]['ci_low'], 2)}, {_f(auc[k]['ci_high'], 2)}] at {float(k):.0%}"
        for k in sorted(auc, key=float)
        if k in ("0.3", "1.0") or float(k) in (0.3, 1.0)
    ]
    lines += [
        "",
        "Failure prediction from prefix tortuosity (ROC AUC, 95 % interval resampling chains): "
        + ", ".join(parts)
        + ".",
    ]
    fl = d.get("flagger", {})
    fls = d.get("flaggers")
    if fls:
        rules = {
            "tortuosity": "prefix tortuosity above the threshold (wandering)",
            "stillness": "prefix mean step size below the threshold (stillness)",
        }
        lines += [
            "",
            f"Flaggers calibrated on the successful chains at a {fl.get('fpr_target', 0.1):.0%} per-chain "
            "false-positive rate (held-out false-positive rate by 2-fold cross-fitting; failures never enter "
            "calibration):",
            "",
            "| flag when | threshold | held-out FPR | failures flagged | reasoning errors | hallucinations | "
            "median progress at the flag |",
            "|---|---|---|---|---|---|---|",
        ]
        for st, b in fls.items():
            if "threshold" not in b:
                continue
            lines.append(
                f"| {rules.get(st, st)} | {b['threshold']:.3g} | {b['fpr_heldout']:.3f} | "
                f"{100 * b['flagged_rate_failure']:.1f} % | {100 * b['flagged_rate_reasoning_error']:.1f} % | "
                f"{100 * b['flagged_rate_hallucination']:.1f} % | {_f(b.get('median_flag_progress'), 2)} |"
            )
        fl = {}
    if "threshold" in fl:
        lines[-1] += (
            f" The flagger calibrated at a {fl['fpr_target']:.0%} false-positive rate "
            f"(threshold {fl['threshold']:.3g}; "
            f"held-out false-positive rate {fl['fpr_heldout']:.3f}) flags {100 * fl['flagged_rate_failure']:.1f} % of "
            f"failed chains ({100 * fl['flagged_rate_reasoning_error']:.1f} % of reasoning errors, "
            f"{100 * fl['flagged_rate_hallucination']:.1f} % of hallucinations)."
        )
    pw = d.get("power", {})
    if pw.get("failure"):
        labels = {"failure": "all failures", "reasoning_error": "reasoning errors", "hallucination": "hallucinations"}
        f = pw["failure"]
        lines += [
            "",
            f"Power (two-sided Mann–Whitney at p < {f['alpha']:g}; simulated under a binormal model, "
            f"{int(f['n_sim'])} samples, beside the normal approximation): the probability of detecting a "
            f"true AUC of {f['auc']:g}, and the AUC detected with {f['target_power']:.0%} probability.",
            "",
            "| successes against | n | power (simulated) | power (normal) | detectable AUC |",
            "|---|---|---|---|---|",
        ]
        for k, lab in labels.items():
            if k in pw:
                r = pw[k]
                lines.append(
                    f"| {lab} | {int(r['n_success'])} / {int(r['n_failure'])} | {r['power_simulated']:.3f} | "
                    f"{r['power_normal']:.3f} | {_f(r['detectable_auc'], 3)} |"
                )
    adj = d.get("length_adjusted", {})
    if adj.get("tortuosity"):
        lines += [
            "",
            "At equal chain length (logistic regression of failure on standardised log metric and log span count; "
            "log-odds per SD, 95 % interval):",
            "",
            "| metric | outcome vs success | n | log-odds per SD, length held | p | unadjusted | p (unadjusted) |",
            "|---|---|---|---|---|---|---|",
        ]
        for metric in ("tortuosity", "path_length"):
            for k, r in adj.get(metric, {}).items():
                if r.get("coef_metric") is None:
                    continue
                lines.append(
                    f"| {metric.replace('_', ' ')} | {k.replace('_', ' ')} | {int(r['n'])} | "
                    f"{r['coef_metric']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] | {_p(r['p_value'])} | "
                    f"{r['coef_metric_unadjusted']:+.2f} | {_p(r['p_value_unadjusted'])} |"
                )
    t3 = d["three_outcome"]
    by, tests = t3["by_outcome"], t3["tests"]
    m = sum(len(v) for v in tests.values())
    lines += [
        "",
        f"Three outcomes (medians; Mann–Whitney, Bonferroni over {m} tests):",
        "",
        "| statistic | success | reasoning error | hallucination | hallucination vs reasoning error | "
        "reasoning error vs success | hallucination vs success |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in (
        ("tortuosity", "tortuosity"),
        ("path_length", "path length"),
        ("concentration", "concentration"),
        ("persistence", "top-region persistence"),
        ("step_size", "step size"),
    ):
        row = f"| {label} | " + " | ".join(
            f"{by[o][key]['median']:.3g}" for o in ("success", "reasoning_error", "hallucination")
        )
        for pair in ("hallucination_vs_reasoning_error", "reasoning_error_vs_success", "hallucination_vs_success"):
            row += f" | {_p(tests[pair][key]['p_value_bonferroni'])}"
        lines.append(row + " |")
    return lines


# --- estimator variants on the validation split (examples/estimator_variants.py) -----------------------

_VARIANT_LABELS = {
    "shared": "one weight vector, one calibration (the paper's)",
    "span_scale": "**+ per-span scale head (shipped)**",
    "span_scale_alpha1": "+ scale head, weight decay ×10⁴",
    "nonneg": "non-negative head weights + scale head",
    "gated_2": "gated mixture of 2 weight vectors + scale head",
    "gated_4": "gated mixture of 4 weight vectors + scale head",
    "prior_0.5": "shipped direction + 0.5 × raw attention's, own scale head",
    "prior_1": "shipped direction + 1 × raw attention's, own scale head",
    "raw_attention": "*raw attention (reference)*",
    "leave_one_out": "*leave-one-out (reference)*",
}


def estimator_variants(d: dict[str, Any]) -> list[str]:
    """The variant table: LDS, R² and pointing, overall and on image-dependent spans, and LDS on relation spans."""
    rule = d.get("rules", {}).get("image_dependent", "")
    lines = [
        f"Fit on {_n(d['n_train_examples'])} correctly answered examples of {', '.join(d['train'])}; scored on "
        f"`{d['validation_dataset']}` ({d['validation']}: {_n(d['n_examples'])} examples, {_n(d['n_spans'])} spans; "
        f"the second half of each example's removal sets; 95 % intervals resample examples). Image-dependent: {rule}.",
        "",
        "| variant | LDS | LDS, image-dependent | R² | R², image-dependent | pointing | top region = LOO's "
        "| LDS, relation spans | fit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [*d["variants"].items(), *d.get("references", {}).items()]
    for name, v in rows:
        a, dep, rel = v["all"], v.get("image_dependent", {}), v.get("relation", {})
        fit = f"{v['fit_s']:.0f} s" if "fit_s" in v else "—"
        top = "1" if name == "leave_one_out" else _ci(a.get("loo_top_agreement"))
        lines.append(
            f"| {_VARIANT_LABELS.get(name, name)} | {_ci(a.get('lds'))} | {_ci(dep.get('lds'))} | {_ci(a.get('r2'))} | "
            f"{_ci(dep.get('r2'))} | {_ci(a.get('pointing'))} | {top} | {_ci(rel.get('lds'))} | {fit} |"
        )
    lines += [
        "",
        "*Top region = LOO's*: on the spans the pointing game scores, the share whose top-scoring region is the "
        "region whose removal alone costs the span most (leave-one-out's top region).",
    ]
    return lines


def _reading(fn: Any, files: dict[str, str]) -> Any:
    """``fn`` (a block written for the benchmark-v1 experiment's files) reading other files in their place:
    ``files`` maps the name ``fn`` reads to the file it gets."""

    def block(data: dict[str, Any]) -> list[str]:
        out: list[str] = fn({old: data[new] for old, new in files.items()})
        return out

    return block


_V1V2_ANALYSIS = {
    "v1_analysis.json": "v1v2_analysis.json",
    "v1_analysis_validation.json": "v1v2_analysis_validation.json",
}

BLOCKS = {
    "bundled-eval": ("eval_base.json", bundled_eval),
    "estimator-variants": ("estimator_variants.json", estimator_variants),
    "v2-eval": ("eval_v2.json", v2_eval),
    "training-v2": ("train_log_v2.json", training("shapes2-qwen25vl")),
    "faithfulness": ("faithfulness.json", faithfulness),
    "faithfulness-protocol": ("faithfulness.json", faithfulness_protocol),
    "faithfulness-first": ("faithfulness_first.json", faithfulness),
    "faithfulness-first-protocol": ("faithfulness_first.json", faithfulness_protocol),
    "regions-faithfulness": ("faithfulness_regions.json", regions_faithfulness),
    "v1-accuracy": (("eval_base.json", "eval_v1.json", "v1_paired.json"), v1_accuracy),
    "v1-copy-feed": (
        (
            "eval_v1.json",
            "eval_v1_copy_mean.json",
            "eval_v1_copy_token.json",
            "v1_paired_copy_mean.json",
            "v1_paired_copy_token.json",
        ),
        v1_copy_feed,
    ),
    "v1-faithfulness": (("faithfulness_v1.json", "faithfulness_first.json"), v1_faithfulness),
    "v1-direct-only": (("v1_analysis.json", "v1_analysis_validation.json"), v1_direct_only),
    "v1-decay": (("v1_analysis.json", "v1_analysis_validation.json"), v1_decay),
    "v1-late-chain-checks": (("v1_analysis.json", "v1_analysis_validation.json"), v1_late_chain_checks),
    # v1 point-and-copy on benchmark v2 (examples/v1_experiment_v2.sh), beside the bundled v2 model
    "training-v1v2": ("train_log_v1v2.json", training("shapes2-qwen25vl-v1")),
    "v1v2-accuracy": (
        ("eval_v2_base.json", "eval_v1v2.json", "v1v2_paired.json"),
        _reading(
            v1_accuracy,
            {
                "eval_base.json": "eval_v2_base.json",
                "eval_v1.json": "eval_v1v2.json",
                "v1_paired.json": "v1v2_paired.json",
            },
        ),
    ),
    "v1v2-faithfulness": (
        ("faithfulness_v1v2.json", "faithfulness.json"),
        _reading(
            v1_faithfulness,
            {"faithfulness_v1.json": "faithfulness_v1v2.json", "faithfulness_first.json": "faithfulness.json"},
        ),
    ),
    "v1v2-direct-only": (tuple(_V1V2_ANALYSIS.values()), v1v2_direct_only),
    "v1v2-decay": (tuple(_V1V2_ANALYSIS.values()), _reading(v1_decay, _V1V2_ANALYSIS)),
    "v1v2-late-chain-checks": (tuple(_V1V2_ANALYSIS.values()), _reading(v1_late_chain_checks, _V1V2_ANALYSIS)),
    "regions-bench": ("bench_regions.json", regions_bench),
    "ray": ("bench_ray.json", ray),
    "collections-v2": ("collections_v2.json", collections),
    "norms": ("norms_bundled.json", norms),
    "latent-v2": ("latent_v2.json", latent),
    "trajectories": ("trajectories.json", trajectories),
    "trajectories-v2": ("trajectories_v2.json", trajectories),
    "flagger-check-v2": ("trajectories_v2_test.json", flagger_check),
    "training-base": ("train_log_base.json", training("shapes-qwen25vl")),
    "training-v1": ("train_log_v1.json", training("shapes-qwen25vl-v1")),
    "reproducibility": ("reproducibility.json", reproducibility),
}

#: blocks that live on another page than docs/benchmarks.md (file name under docs/)
PAGES = {"estimator-variants": "estimator.md"}
