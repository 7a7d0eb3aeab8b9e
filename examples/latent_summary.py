"""One JSON from the latent experiment's outputs (examples/latent_experiment_v2.sh), for docs/benchmarks.md.

Reads the selection, every fine-tuning run's ``latent_train_log.json``, every probe, the table across seeds,
the norms, the attribution shares and the base model's accuracy on the probed examples, and writes what the
docs table needs (the probes' per-example outcomes are left out; their intervals are kept).

    python examples/latent_summary.py --out-dir out/latent_v2 --runs runs/latent_v2 --json out/latent_v2.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

MODES = ("raw", "ema", "pca")


def _read(p: Path) -> Any:
    return json.loads(p.read_text())


def summary(out_dir: Path, runs: Path) -> dict[str, Any]:
    """The summary of one experiment directory pair.

    Raises:
        FileNotFoundError: If the selection, the table or the base evaluation is missing (the run is not done).
    """
    sel = _read(out_dir / "selection.json")
    acc = list(sel["accuracy"].values())
    base = _read(out_dir / "base-eval.json")
    doc: dict[str, Any] = {
        "benchmark": sel.get("benchmark", "shapes"),
        "base": str(sel["base"]).rstrip("/").split("/")[-1],
        "selection": {
            "pool_n": len(acc),
            "samples": sel["samples"],
            "mean_sampled_accuracy": sum(acc) / len(acc),
            "n_hard": sum(a <= 0.5 for a in acc),
        },
        "base_eval": {k: base[k] for k in ("accuracy", "accuracy_ci", "parse_rate", "n", "split", "start")},
        "runs": [],
        "table": _read(out_dir / "table.json"),
        "norms": {},
        "attribution": {},
    }
    for probe in sorted(out_dir.glob("*-[0-9]*.json")):
        m = re.fullmatch(r"(raw|ema|pca)-(\d+)\.json", probe.name)
        if not m:
            continue
        r = _read(probe)
        log = _read(runs / probe.stem / "latent_train_log.json")
        doc["runs"].append(
            {
                "mode": m.group(1),
                "seed": int(m.group(2)),
                "train_seconds": log["seconds"],
                "steps": log["config"]["steps"],
                "batch_size": log["config"]["batch_size"],
                "n_hard": log["n_hard"],
                "n": r["n"],
                "blocks_per_example": r["blocks_per_example"],
                "latent_norms": r["latent_norms"],
                "interventions": {
                    k: {f: v[f] for f in ("accuracy", "parse_rate", "delta", "delta_ci", "n_latents")}
                    for k, v in r["interventions"].items()
                },
            }
        )
    for f in sorted(out_dir.glob("norms-*.json")):
        d = _read(f)
        doc["norms"][f.stem.removeprefix("norms-")] = {
            "model": str(d["model"]).rstrip("/").split("/")[-1],
            "n_inputs": d["n_inputs"],
            "ratios": d["ratios"],
            "mean_norm_first_last": {t: [v["mean_norm"][0], v["mean_norm"][-1]] for t, v in d["types"].items()},
        }
    for mode in MODES:
        f = out_dir / f"attribution-{mode}.json"
        if f.is_file():
            doc["attribution"][mode] = {k: v for k, v in _read(f).items() if k != "model"}
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=Path("out/latent_v2"))
    ap.add_argument("--runs", type=Path, default=Path("runs/latent_v2"))
    ap.add_argument("--json", type=Path, required=True)
    a = ap.parse_args(argv)
    try:
        doc = summary(a.out_dir, a.runs)
    except FileNotFoundError as e:
        print(f"error: {e.filename} is missing: finish examples/latent_experiment_v2.sh first", file=sys.stderr)
        return 2
    a.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.json.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
