#!/usr/bin/env bash
# The collections behind docs/benchmarks.md (faithfulness section), run in sequence.
set -euo pipefail
cd "$(dirname "$0")/.."
A=".venv/bin/attrib"
t() { local s=$(date +%s); "$@"; echo "WALL $(( $(date +%s) - s )) s: $*"; }
t $A collect --dataset shapes:train --n 300 --regions color,voronoi,blocks --k 16,32,64 --out data/cmp-train
t $A collect --dataset shapes:test --n 100 --loo --subsets 64 --regions color,voronoi,blocks --k 16,32,64 --out data/cmp-test
t $A collect --dataset shapes:train --start 300 --n 1700 --out data/train-b
t $A collect --dataset shapes:test --n 300 --loo --subsets 64 --out data/test
t $A collect --dataset shapes:validation --n 800 --subsets 4 --out data/validation
echo CHAIN DONE
