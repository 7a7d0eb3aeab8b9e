#!/usr/bin/env bash
# v1 point-and-copy on benchmark v2 (issue 19: "rebuild everything on it"): train the v1 model with the
# v2 model's recipe (same examples, canvases, steps, batch, schedule and size: TrainConfig.v2(variant="v1")),
# evaluate answer and pointing accuracy beside the bundled v2 model, collect on it, fit and evaluate its
# estimator, and run the v1-vs-base analyses against the v2 model's collections of examples/rebuild_v2.sh
# (data2/test, data2/validation, models/v2/estimator). Training takes about 100 min on 2 cores and resumes
# from its last checkpoint (every 250 steps) when the script is run again; collections resume too.
# Two single-thread collection jobs run side by side (two cores; never two 2-thread jobs).
# Results go to out/*_v1v2.json (not published by this script: the v1 sections of docs/benchmarks.md are
# the benchmark-v1 experiment's until the v2 one is complete).
set -euo pipefail
cd "$(dirname "$0")/.."
A=".venv/bin/attrib"
M="runs/v2/shapes2-qwen25vl-v1"
D=data2
t() { local s=$(date +%s); "$@"; echo "WALL $(( $(date +%s) - s )) s: $*"; }
mkdir -p $D out runs/v2 models/v2
if [ ! -f "$M/pointcopy.json" ]; then
    t $A shapes train --benchmark shapes2 --variant v1 --out "$M" >> runs/v2/train_v1.log 2>&1
fi
# answer and pointing accuracy, beside the v2 model's on the same 1,000 test examples
t $A shapes eval --model "$M" --split test --n 1000 --json out/eval_v1v2.json --outcomes
t $A shapes eval --model shapes2-qwen25vl --split test --n 1000 --json out/eval_v2_base.json --outcomes
.venv/bin/python examples/paired_accuracy.py out/eval_v2_base.json out/eval_v1v2.json --json out/v1v2_paired.json \
    > /dev/null
# collections, as the v2 model's: 1,000 training examples, held-out test 0-199 with LOO, validation 0-799
V="--model $M --max-new-tokens 256 --threads 1"
t $A collect --dataset shapes2:train --n 500 $V --out $D/v1-train-a > out/v1v2_collect_a.log 2>&1 &
t $A collect --dataset shapes2:train --start 500 --n 500 $V --out $D/v1-train-b > out/v1v2_collect_b.log 2>&1
wait
t $A collect --dataset shapes2:test --n 200 --loo --subsets 64 $V --out $D/v1-test > out/v1v2_collect_test.log 2>&1 &
t $A collect --dataset shapes2:validation --n 800 --subsets 2 $V --out $D/v1-validation \
    > out/v1v2_collect_val.log 2>&1
wait
TRAIN="$D/v1-train-a $D/v1-train-b"
t $A fit --train $TRAIN --out models/v2/v1-estimator
# the first 100 held-out examples, as the v2 model's faithfulness run
t $A evaluate --test $D/v1-test --estimator models/v2/v1-estimator --train $TRAIN --sizes "" --limit 100 \
    --methods estimator,raw_attention,best_layer,contextcite,leave_one_out \
    --json out/faithfulness_v1v2.json --figures out/figures/v1v2 --record-validation
t $A v1 --base-test $D/test --v1-test $D/v1-test --base-estimator models/v2/estimator \
    --v1-estimator models/v2/v1-estimator --v1-model "$M" --v1-train $TRAIN \
    --json out/v1v2_analysis.json --figures out/figures/v1v2
t $A v1 --base-test $D/validation --v1-test $D/v1-validation --base-estimator models/v2/estimator \
    --v1-estimator models/v2/v1-estimator --v1-train $TRAIN --json out/v1v2_analysis_validation.json \
    --figures out/figures/v1v2-validation
echo V1V2 DONE
