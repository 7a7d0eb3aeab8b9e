#!/usr/bin/env bash
# The v2 model's collections, estimator, flagger and evaluations (shapes2-qwen25vl on benchmark v2):
# the first pass of rebuilding every figure on the v2 model. Two single-thread jobs run side by side
# (two cores; never two 2-thread jobs). Collections resume where they stopped (attrib collect is
# resumable), so a killed run is restarted by running this script again.
set -euo pipefail
cd "$(dirname "$0")/.."
A=".venv/bin/attrib"
M="--model shapes2-qwen25vl --max-new-tokens 256 --threads 1"
D=data2
t() { local s=$(date +%s); "$@"; echo "WALL $(( $(date +%s) - s )) s: $*"; }
mkdir -p $D out models/v2
( t $A collect --dataset shapes2:train --n 500 $M --out $D/train-a
  t $A collect --dataset shapes2:validation --n 800 --subsets 2 $M --out $D/validation ) > out/v2_collect_a.log 2>&1 &
( t $A collect --dataset shapes2:train --start 500 --n 500 $M --out $D/train-b
  t $A collect --dataset shapes2:test --n 200 --loo --subsets 64 $M --out $D/test ) > out/v2_collect_b.log 2>&1
wait
# the validation split of the estimator's design choices and of ContextCite's Lasso penalty
t $A collect --dataset shapes2:validation --n 100 --loo --subsets 64 --model shapes2-qwen25vl --max-new-tokens 256 \
    --threads 2 --out $D/validation-loo > out/v2_collect_validation_loo.log 2>&1
echo COLLECT DONE
TRAIN="$D/train-a $D/train-b"
t .venv/bin/python examples/estimator_variants.py --train $TRAIN --validation $D/validation-loo \
    --json out/estimator_variants.json
t $A fit --train $TRAIN --out models/v2/estimator       # with the per-span scale head (the default)
t $A evaluate --test $D/validation-loo --estimator models/v2/estimator --methods estimator --auc-steps 0 --sizes '' \
    --seeds 0 --record-validation --json out/estimator_validation_v2.json   # the shipped validation figures
t $A trajectories --data $D/validation --estimator models/v2/estimator --json out/trajectories_v2.json \
    --plots out/trajectories_v2 --flag-statistic stillness --save-flagger models/v2/flagger.json
t $A trajectories --data $D/test --estimator models/v2/estimator --check-flagger models/v2/flagger.json \
    --json out/trajectories_v2_test.json
# the test split, once: all 200 held-out examples (about 2.5 h on the 2 cores)
t $A evaluate --test $D/test --estimator models/v2/estimator --train $TRAIN --sizes 100,250,500,700 \
    --contextcite-validation $D/validation-loo --json out/faithfulness_v2.json --figures out/figures_v2
cp models/v2/estimator.safetensors models/v2/estimator.json models/v2/flagger.json attrib/shapes/bundled/shapes2-qwen25vl/
echo V2 DONE
