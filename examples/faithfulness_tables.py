"""Print the Markdown tables of docs/benchmarks.md ("Faithfulness", "Trajectories") from the JSON outputs.

Usage: python examples/faithfulness_tables.py [OUT_DIR]   (default: out)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def ci(m: dict[str, Any], digits: int = 3) -> str:
    return f"{m['value']:.{digits}f} [{m['ci_low']:.2f}, {m['ci_high']:.2f}]"


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "out")
    f = json.loads((out / "faithfulness.json").read_text())
    print(f"held-out: {f['n_examples']} examples, {f['n_spans']} spans; best layer {f['best_layer']}\n")
    print("| method | LDS | R² vs LOO | top-5 drop | top-5 drop / LOO | pointing | s / token |")
    print("|---|---|---|---|---|---|---|")
    for name, m in f["methods"].items():
        print(
            f"| {name} | {ci(m['lds'])} | {m['r2']['value']:.3f} | {m['top5_drop']['value']:.2f} | "
            f"{ci(m['top5_drop_normalized'])} | {m['pointing']['value']:.3f} | {m['seconds_per_token']:.1e} |"
        )
    print("\n| training examples | LDS | R² | top-5 drop / LOO | pointing |\n|---|---|---|---|---|")
    for r in f.get("data_efficiency", []):
        print(
            f"| {r['n_train']:,} | {ci(r['lds'])} | {r['r2']['value']:.3f} | {ci(r['top5_drop_normalized'])} | "
            f"{r['pointing']['value']:.3f} |"
        )
    ridge = out / "faithfulness_ridge.json"
    if ridge.is_file():
        m = json.loads(ridge.read_text())["methods"]["estimator"]
        print(
            f"\nridge: LDS {ci(m['lds'])}, R² {ci(m['r2'])}, top-5/LOO {ci(m['top5_drop_normalized'])}, "
            f"pointing {m['pointing']['value']:.3f}"
        )
    regions = out / "faithfulness_regions.json"
    if regions.is_file():
        r = json.loads(regions.read_text())
        comp = r.get("region_comparison", r.get("regions", {}))
        print("\nregion comparison:", json.dumps(comp)[:3000])
    traj = out / "trajectories.json"
    if traj.is_file():
        print("\ntrajectories:", json.dumps(json.loads(traj.read_text()))[:4000])


if __name__ == "__main__":
    main()
