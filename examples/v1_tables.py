"""The direct-only tables of docs/benchmarks.md ("v1 point-and-copy"), from `attrib v1` JSON outputs.

Usage::

    python examples/v1_tables.py out/v1_direct_only.json out/v1_direct_only_validation.json
    python examples/v1_tables.py TEST.json VALIDATION.json --write docs/benchmarks.md

The first file is the held-out test split (with leave-one-out targets: pointing, LDS, R²), the
second the validation split (pointing and the late-chain analysis). Without ``--write`` the tables
are printed; with it they replace the lines between ``<!-- v1-direct-only:start -->`` and
``<!-- v1-direct-only:end -->`` in that file (nothing else is touched; the markers must exist).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

START, END = "<!-- v1-direct-only:start -->", "<!-- v1-direct-only:end -->"
KINDS = (("total", "total"), ("direct_only", "direct only"))
SCORES = (
    ("estimator", "late_chain", "estimator (bundled weights)"),
    ("estimator_refit", "late_chain_refit", "estimator refit"),
    ("raw_attention", "late_chain_attention", "raw attention"),
)


def _f(x: float, digits: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return (f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}").replace("-", "−")


def _ci(m: dict[str, Any] | None, key: str = "value", sign: bool = False) -> str:
    if not m:
        return "—"
    return f"{_f(m[key], sign=sign)} [{_f(m['ci_low'], sign=sign)}, {_f(m['ci_high'], sign=sign)}]"


def _p(p: float) -> str:
    return f"{p:.0e}" if p < 1e-3 else f"{p:.3f}"


def faithfulness_table(
    res: dict[str, Any], split: str, *, base_name: str = "shapes-qwen25vl", weights: str = "bundled weights"
) -> list[str]:
    """Pointing, LDS and R² of the v1 model on total and direct-only features, and v1 − base."""
    f = res["faithfulness"]
    v1, base, vs = f["v1"], f["base"], f["v1_minus_base"]
    refit = f.get("refit", {})
    has_lds = any("lds" in m["total"] for m in v1["methods"].values())
    lines = [
        f"`{split}`: v1 {v1['n_examples']} examples, {v1['n_spans']:,} spans (pointing: the spans that name one "
        f"object); base {base['n_examples']} examples, {base['n_spans']:,} spans; via-copy share of the v1 "
        f"model's region attention {v1['via_share']:.3f}. Intervals resample examples.",
        "",
    ]
    head = "| score | features | v1 pointing | direct − total | v1 − base pointing |"
    sep = "|---|---|---|---|---|"
    if has_lds:
        head += " v1 LDS | direct − total | v1 − base LDS | v1 R² |"
        sep += "---|---|---|---|"
    lines += [head, sep]
    for name, m in v1["methods"].items():
        label = {"estimator": f"estimator ({weights})", "raw_attention": "raw attention"}.get(name, name)
        if name == "estimator_refit":
            label = f"estimator refit ({refit.get('n_train_examples', '?'):,} train examples)"
        for kind, kind_label in KINDS:
            mk, d, v = m[kind], m["direct_minus_total"], vs.get(name, {}).get(kind, {})
            row = f"| {label} | {kind_label} | {_ci(mk.get('pointing'))} | "
            row += f"{_ci(d.get('pointing'), 'difference', True) if kind != 'total' else '—'} | "
            row += f"{_ci(v.get('pointing'), 'difference', True)} |"
            if has_lds:
                row += f" {_ci(mk.get('lds'))} | {_ci(d.get('lds'), 'difference', True) if kind != 'total' else '—'} | "
                row += f"{_ci(v.get('lds'), 'difference', True)} | {_f(mk['r2']['value']) if 'r2' in mk else '—'} |"
            lines.append(row)
    b = base["methods"]
    ref = f"base `{base_name}` (its features are all direct): pointing estimator "
    ref += _ci(b["estimator"].get("pointing"))
    ref += f", raw attention {_ci(b['raw_attention'].get('pointing'))}"
    if has_lds:
        ref += f"; LDS estimator {_ci(b['estimator'].get('lds'))}, raw attention {_ci(b['raw_attention'].get('lds'))}"
        ref += (
            f"; R² estimator {_f(b['estimator']['r2']['value'])}, raw attention {_f(b['raw_attention']['r2']['value'])}"
        )
    lines += ["", ref + "."]
    return lines


def late_chain_table(results: list[tuple[str, dict[str, Any]]], *, weights: str = "bundled weights") -> list[str]:
    """Late-chain ground-truth share, v1 vs base, on total and direct-only v1 features."""
    lines = [
        "| split | chain length | score | v1 features | base (n) | v1 (n) | v1 − base [examples resampled] | "
        "Cliff's δ | p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for split, res in results:
        for _, key, label in SCORES:
            label = label.replace("bundled weights", weights)
            for kind, kind_label in KINDS:
                block = res.get(key) if kind == "total" else res.get("direct_only", {}).get(key)
                if not block:
                    continue
                if key == "late_chain_refit" and kind == "total" and _same_shares(block, res.get("late_chain")):
                    notes.append(split)  # the refit on total features reproduces the bundled weights' shares
                    continue
                for row in block["buckets"]:
                    lo, hi = row["chain_len"]
                    length = f"≥ {lo}" if hi >= 100 else f"{lo}–{hi}"
                    c = row.get("comparison")
                    if not c:
                        continue
                    diff = f"{_f(c['difference'], sign=True)} [{_f(c['examples_ci_low'], sign=True)}, "
                    diff += f"{_f(c['examples_ci_high'], sign=True)}]"
                    lines.append(
                        f"| {split} | {length} | {label} | {kind_label} | {_f(row['base']['mean'])} "
                        f"({row['base']['n']}) | {_f(row['v1']['mean'])} ({row['v1']['n']}) | {diff} | "
                        f"{c['cliffs_delta']:.2f} | {_p(c['p_value'])} |"
                    )
    if notes:
        lines += [
            "",
            f"({', '.join(notes)}: the estimator refit on total features gives the {weights}' shares "
            "to three decimals, so its total rows are left out.)",
        ]
    return lines


def _same_shares(a: dict[str, Any], b: dict[str, Any] | None, tol: float = 5e-4) -> bool:
    """Whether two late-chain results agree on every bucket's mean share (within ``tol``)."""
    if not b:
        return False
    for ra, rb in zip(a["buckets"], b["buckets"], strict=True):
        for side in (a["reference"], a["other"]):
            if ra[side]["n"] != rb[side]["n"] or abs(ra[side]["mean"] - rb[side]["mean"]) > tol:
                return False
    return True


def tables(
    test: dict[str, Any],
    validation: dict[str, Any] | None,
    *,
    benchmark: str = "shapes",
    base_name: str = "shapes-qwen25vl",
    weights: str = "bundled weights",
) -> str:
    """Every direct-only table, as Markdown (``benchmark``, ``base_name`` and ``weights`` name the splits, the
    base model and the v1 estimator in the text)."""
    kw = {"base_name": base_name, "weights": weights}
    lines = [
        "**Pointing, LDS and R² (held-out test).**",
        "",
        *faithfulness_table(test, f"{benchmark}:test 0–199", **kw),
    ]
    if validation is not None:
        lines += [
            "",
            "**Pointing (validation).**",
            "",
            *faithfulness_table(validation, f"{benchmark}:validation 0–799", **kw),
        ]
    lines += ["", "**Late-chain ground-truth share.**", ""]
    splits = [("test", test)] + ([("validation", validation)] if validation is not None else [])
    lines += late_chain_table(splits, weights=weights)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the tables, or write them between the markers of a Markdown file."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("test", help="`attrib v1 --json` output on the test split")
    p.add_argument("validation", nargs="?", default=None, help="the same on the validation split")
    p.add_argument("--write", default=None, help="Markdown file whose marked block is replaced")
    args = p.parse_args(argv)
    test = json.loads(Path(args.test).read_text())
    val = json.loads(Path(args.validation).read_text()) if args.validation else None
    text = tables(test, val)
    if not args.write:
        print(text, end="")
        return 0
    doc = Path(args.write)
    src = doc.read_text()
    if src.count(START) != 1 or src.count(END) != 1 or src.index(START) > src.index(END):
        raise SystemExit(f"{doc} needs one {START} ... {END} block")
    head, rest = src.split(START)
    _, tail = rest.split(END)
    doc.write_text(f"{head}{START}\n{text}{END}{tail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
