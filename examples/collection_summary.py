"""What a set of collections holds: examples, spans, answers right, failures, size on disk, settings.

Usage:
    python examples/collection_summary.py DIR [DIR ...] --json OUT

Reads each collection's manifest and its shards' records (not the arrays), and writes
``{"collections": [{"path", "model", "dataset", "start", "n", "n_examples", "n_spans", "correct",
"n_failed", "mb_on_disk", "k", "n_subsets", "loo", "region_method", "ablation_mode", "max_new_tokens",
"created", "complete"}]}``; ``correct`` is the share of examples answered right.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from attrib.collect import Collection
from attrib.io import atomic_write_json


def summarise(path: Path) -> dict[str, Any]:
    """One collection's summary (see the module docstring)."""
    col = Collection.open(path)
    cfg = col.config
    n_examples = n_spans = n_correct = 0
    for s in col.manifest["shards"]:
        recs = json.loads((path / f"{s['name']}.json").read_text())["examples"]
        n_examples += len(recs)
        n_spans += sum(len(r["spans"]) for r in recs)
        n_correct += sum(bool(r.get("correct")) for r in recs)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return {
        "path": str(path),
        "model": cfg.get("model"),
        "dataset": cfg.get("dataset"),
        "start": cfg.get("start", 0),
        "n": cfg.get("n"),
        "n_examples": n_examples,
        "n_spans": n_spans,
        "correct": n_correct / n_examples if n_examples else float("nan"),
        "n_failed": len(col.failures),
        "mb_on_disk": size / 2**20,
        "k": cfg.get("k"),
        "n_subsets": cfg.get("n_subsets"),
        "loo": bool(cfg.get("loo")),
        "region_method": cfg.get("region_method"),
        "ablation_mode": cfg.get("ablation_mode"),
        "max_new_tokens": cfg.get("max_new_tokens"),
        "created": col.manifest.get("created"),
        "complete": bool(col.manifest.get("complete")),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="collection directories")
    ap.add_argument("--json", required=True, type=Path)
    a = ap.parse_args(argv)
    atomic_write_json(a.json, {"collections": [summarise(d) for d in a.dirs]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
