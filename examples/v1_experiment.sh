#!/usr/bin/env bash
# Issue 9, end to end: train the v1 point-and-copy model (same examples, steps, batch, schedule and
# size as the bundled base), evaluate answer and pointing accuracy, collect on it, fit and evaluate
# its estimator, and run the v1-vs-base analyses. The figures behind docs/benchmarks.md
# ("v1 point-and-copy"). Needs the base model's collections from examples/rebuild_faithfulness.sh
# (data/test, data/validation, models/estimator). About 2 h on 2 cores (training 67 min, the rest 34 min).
# Two single-thread collection jobs run side by side (two cores; never two 2-thread jobs).
set -euo pipefail
cd "$(dirname "$0")/.."
A=".venv/bin/attrib"
M="attrib/shapes/bundled/shapes-qwen25vl-v1"
t() { local s=$(date +%s); "$@"; echo "WALL $(( $(date +%s) - s )) s: $*"; }
mkdir -p data out runs/v1
if [ ! -f "$M/pointcopy.json" ]; then
    t $A shapes train --benchmark shapes --variant v1 --out runs/v1/shapes-qwen25vl-v1 > runs/v1/train.log 2>&1
    rm -rf "$M" && cp -r runs/v1/shapes-qwen25vl-v1 "$M"
fi
# answer and pointing accuracy, beside the base model's on the same 1,000 test examples
t $A shapes eval --model shapes-qwen25vl-v1 --split test --n 1000 --json out/eval_v1.json --outcomes
t $A shapes eval --model shapes-qwen25vl --split test --n 1000 --json out/eval_base.json --outcomes
.venv/bin/python examples/paired_accuracy.py out/eval_base.json out/eval_v1.json --json out/v1_paired.json > /dev/null
# interventions on what a copy feeds back: the image's mean embedding, or the bare <|copy|> token
for f in mean token; do
    t $A shapes eval --model shapes-qwen25vl-v1 --split test --n 1000 --json out/eval_v1_copy_$f.json --outcomes \
        --copy-feed $f
    .venv/bin/python examples/paired_accuracy.py out/eval_v1.json out/eval_v1_copy_$f.json \
        --json out/v1_paired_copy_$f.json > /dev/null
done
# collections: 1,350 training examples, held-out test 0-199 with LOO, validation 0-799 (analyses)
t $A collect --model $M --dataset shapes:train --n 675 --threads 1 --out data/v1-train-a > out/v1_collect_a.log 2>&1 &
t $A collect --model $M --dataset shapes:train --start 675 --n 675 --threads 1 --out data/v1-train-b \
    > out/v1_collect_b.log 2>&1
wait
t $A collect --model $M --dataset shapes:test --n 200 --loo --subsets 64 --threads 1 --out data/v1-test \
    > out/v1_collect_test.log 2>&1 &
t $A collect --model $M --dataset shapes:validation --n 800 --subsets 2 --threads 1 --out data/v1-validation \
    > out/v1_collect_val.log 2>&1
wait
TRAIN="data/v1-train-a data/v1-train-b"
t $A fit --train $TRAIN --out models/v1-estimator
t $A evaluate --test data/v1-test --estimator models/v1-estimator --train $TRAIN --sizes "" \
    --methods estimator,raw_attention,best_layer,contextcite,leave_one_out \
    --json out/faithfulness_v1.json --figures out/figures/v1 --record-validation
# analyses: held-out test (with the per-layer copy attention), then the larger validation split; each
# with the direct-only control (--v1-train: the estimator refit on total and on direct-only features)
t $A v1 --base-test data/test --v1-test data/v1-test --base-estimator models/estimator \
    --v1-estimator models/v1-estimator --v1-model shapes-qwen25vl-v1 --v1-train $TRAIN \
    --json out/v1_analysis.json --figures out/figures/v1
t $A v1 --base-test data/validation --v1-test data/v1-validation --base-estimator models/estimator \
    --v1-estimator models/v1-estimator --v1-train $TRAIN --json out/v1_analysis_validation.json \
    --figures out/figures/v1-validation
.venv/bin/python examples/publish_results.py out/eval_base.json out/eval_v1.json out/v1_paired.json \
    out/eval_v1_copy_mean.json out/eval_v1_copy_token.json out/v1_paired_copy_mean.json out/v1_paired_copy_token.json \
    out/faithfulness_v1.json out/v1_analysis.json out/v1_analysis_validation.json
cp models/v1-estimator.safetensors "$M/estimator.safetensors"
cp models/v1-estimator.json "$M/estimator.json"
echo V1 DONE
