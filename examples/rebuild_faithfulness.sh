#!/usr/bin/env bash
# Every collection, fit and evaluation behind docs/benchmarks.md ("Faithfulness" and "Trajectories"),
# on the first bundled model (shapes-qwen25vl, benchmark v1; the v2 pipeline is examples/rebuild_v2.sh),
# then bundle the estimator and the failure flagger with it. Two single-thread
# collection jobs run side by side (two cores; never two 2-thread jobs). About 50 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
A=".venv/bin/attrib"
t() { local s=$(date +%s); "$@"; echo "WALL $(( $(date +%s) - s )) s: $*"; }
mkdir -p data out
# 2,700 training examples: enough correct ones for the data-efficiency point at 2,000
t $A collect --model shapes-qwen25vl --dataset shapes:train --n 1350 --threads 1 --out data/train-a > out/collect_train_a.log 2>&1 &
t $A collect --model shapes-qwen25vl --dataset shapes:train --start 1350 --n 1350 --threads 1 --out data/train-b > out/collect_train_b.log 2>&1
wait
( t $A collect --model shapes-qwen25vl --dataset shapes:test --n 200 --loo --subsets 64 --threads 1 --out data/test
  t $A collect --model shapes-qwen25vl --dataset shapes:validation --n 800 --subsets 2 --threads 1 --out data/validation ) \
    > out/collect_test_val.log 2>&1 &
( t $A collect --model shapes-qwen25vl --dataset shapes:train --n 120 --regions color,voronoi,blocks --k 16,32,64 --threads 1 --out data/cmp-train
  t $A collect --model shapes-qwen25vl --dataset shapes:test --n 24 --loo --subsets 32 --regions color,voronoi,blocks --k 16,32,64 --threads 1 \
    --out data/cmp-test ) > out/collect_cmp.log 2>&1
wait
echo COLLECT DONE
bash examples/faithfulness_pipeline.sh
