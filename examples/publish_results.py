"""Publish result JSONs: copy them into docs/results/ and rebuild docs/benchmarks.md's generated blocks.

Usage:
    python examples/publish_results.py out/faithfulness.json out/eval_base.json ... [--as NAME ...]

Each file is copied under its own name (or the matching ``--as`` name) into ``docs/results/``, with
the per-example ``outcomes`` of ``attrib shapes eval --outcomes`` left out (hundreds of kB, read only
by ``examples/paired_accuracy.py``, whose own JSON is published instead). Then
``examples/bench_docs.py --write docs/benchmarks.md`` rebuilds every block whose JSONs exist.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DROP = ("outcomes",)


def publish(src: Path, dest: Path) -> None:
    """Copy one result JSON, without the keys in ``DROP``."""
    d = json.loads(src.read_text())
    if isinstance(d, dict):
        for k in DROP:
            d.pop(k, None)
    tmp = dest.with_suffix(".tmp")
    tmp.write_text(json.dumps(d, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(dest)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path, help="result JSONs (the --json outputs)")
    ap.add_argument("--as", dest="names", nargs="*", default=None, help="names under docs/results/, in order")
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "results")
    ap.add_argument("--page", type=Path, default=ROOT / "docs" / "benchmarks.md")
    a = ap.parse_args(argv)
    names = a.names or [f.name for f in a.files]
    if len(names) != len(a.files):
        print("error: --as needs one name per file", file=sys.stderr)
        return 2
    a.results.mkdir(parents=True, exist_ok=True)
    for f, n in zip(a.files, names, strict=True):
        publish(f, a.results / n)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_docs

    return int(bench_docs.main(["--results", str(a.results), "--write", str(a.page)]))


if __name__ == "__main__":
    raise SystemExit(main())
