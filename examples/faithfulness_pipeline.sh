#!/usr/bin/env bash
# Fit and evaluate on the collections written by examples/rebuild_faithfulness.sh (which runs this
# script last; the figures in docs/benchmarks.md), then bundle the estimator and the failure flagger
# with the model.
set -euo pipefail
cd "$(dirname "$0")/.."
A=".venv/bin/attrib"
TRAIN="data/train-b data/train-a"
t() { local s=$(date +%s); "$@"; echo "WALL $(( $(date +%s) - s )) s: $*"; }
t $A fit --train $TRAIN --out models/estimator
t $A fit --train $TRAIN --out models/estimator-ridge --loss ridge
t $A evaluate --test data/test --estimator models/estimator --train $TRAIN \
    --sizes 100,250,500,700,1000,2000 --json out/faithfulness.json --figures out/figures --record-validation
t $A evaluate --test data/test --estimator models/estimator --methods estimator --sizes "" \
    --compare-train data/cmp-train --compare-test data/cmp-test --json out/faithfulness_regions.json \
    --figures out/figures
t $A evaluate --test data/test --estimator models/estimator-ridge --methods estimator --sizes "" \
    --json out/faithfulness_ridge.json
t $A trajectories --data data/validation --estimator models/estimator --json out/trajectories.json \
    --plots out/trajectories --save-flagger models/flagger.json
cp models/estimator.safetensors models/estimator.json models/flagger.json attrib/shapes/bundled/shapes-qwen25vl/
echo PIPELINE DONE
