#!/usr/bin/env bash
# The direct-only control of the v1 figures (docs/pointcopy.md, "Direct-only control"): attention that
# reaches a region through a copy token counts for that region, so v1's pointing, LDS and late-chain
# figures are reported again on the direct part alone (features minus the stored via-copy part).
#
# Collects what the analysis needs (a finished collection is resumed, i.e. left as it is):
#   base  shapes:test 0-199 --loo --subsets 64 (data/test), shapes:validation 0-799 --subsets 2 (data/validation)
#   v1    the same two splits (data/v1-test, data/v1-validation) and shapes:train 0-1,349 for the refit
#         (data/v1-train-a, data/v1-train-b), the sizes of examples/v1_experiment.sh
# then runs `attrib v1` on both splits with --v1-train (the estimator refit on total and on direct-only
# features), publishes both JSONs to docs/results/ (v1_analysis.json, v1_analysis_validation.json) and
# rebuilds docs/benchmarks.md's blocks from them (examples/publish_results.py; renderer: examples/v1_tables.py).
# The estimators with fixed weights are the bundled ones (attrib/shapes/bundled/<name>/estimator.*).
#
# Every step runs in sequence with $THREADS threads (default 2); set ATTRIB_LOCK to a lock file to run
# each step under `flock` (a machine shared with timed benchmarks). About 25 min on 2 cores; with the
# argument `collect` it stops after the collections.
set -euo pipefail
cd "$(dirname "$0")/.."
A=".venv/bin/attrib"
PY=".venv/bin/python"
BASE="attrib/shapes/bundled/shapes-qwen25vl"
V1="attrib/shapes/bundled/shapes-qwen25vl-v1"
THREADS="${THREADS:-2}"
timed() { local s=$(date +%s); "$@"; echo "WALL $(( $(date +%s) - s )) s: $*"; }
t() {  # timed, under the lock when there is one (the wait for it is not counted)
    if [ -z "${ATTRIB_LOCK:-}" ]; then timed "$@"; return; fi
    exec 9>>"$ATTRIB_LOCK"; flock 9; timed "$@"; flock -u 9; exec 9>&-
}
collect() {  # collect OUT ARGS...: skipped when OUT holds a finished collection of the same settings
    local out=$1; shift
    t $A collect "$@" --threads "$THREADS" --out "$out" > "out/collect_$(basename "$out").log" 2>&1
}
mkdir -p data out models
collect data/v1-test --model $V1 --dataset shapes:test --n 200 --loo --subsets 64
collect data/test --model $BASE --dataset shapes:test --n 200 --loo --subsets 64
collect data/v1-train-a --model $V1 --dataset shapes:train --n 675
collect data/v1-train-b --model $V1 --dataset shapes:train --start 675 --n 675
collect data/v1-validation --model $V1 --dataset shapes:validation --n 800 --subsets 2
collect data/validation --model $BASE --dataset shapes:validation --n 800 --subsets 2
echo COLLECT DONE
[ "${1:-}" = collect ] && exit 0  # `bash examples/v1_direct_only.sh collect`: the collections only
TRAIN="data/v1-train-a data/v1-train-b"
t $A v1 --base-test data/test --v1-test data/v1-test --base-estimator $BASE/estimator \
    --v1-estimator $V1/estimator --v1-model $V1 --v1-train $TRAIN --json out/v1_direct_only.json
t $A v1 --base-test data/validation --v1-test data/v1-validation --base-estimator $BASE/estimator \
    --v1-estimator $V1/estimator --v1-train $TRAIN --json out/v1_direct_only_validation.json
$PY examples/publish_results.py out/v1_direct_only.json out/v1_direct_only_validation.json \
    --as v1_analysis.json v1_analysis_validation.json
echo V1 DIRECT-ONLY DONE
