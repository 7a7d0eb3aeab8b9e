#!/usr/bin/env bash
# The collections behind docs/benchmarks.md ("Faithfulness" and "Trajectories"), run in sequence on the
# bundled model. data/train-a is `attrib collect --dataset shapes:train --n 400 --out data/train-a`.
set -euo pipefail
cd "$(dirname "$0")/.."
A=".venv/bin/attrib"
t() { local s=$(date +%s); "$@"; echo "WALL $(( $(date +%s) - s )) s: $*"; }
t $A collect --dataset shapes:train --start 400 --n 600 --out data/train-b
t $A collect --dataset shapes:test --n 200 --loo --subsets 64 --out data/test
t $A collect --dataset shapes:train --n 120 --regions color,voronoi,blocks --k 16,32,64 --threads 1 --out data/cmp-train
t $A collect --dataset shapes:test --n 24 --loo --subsets 32 --regions color,voronoi,blocks --k 16,32,64 --threads 1 \
    --out data/cmp-test
t $A collect --dataset shapes:validation --n 800 --subsets 2 --threads 1 --out data/validation
echo CHAIN DONE
