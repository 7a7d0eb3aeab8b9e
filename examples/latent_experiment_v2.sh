#!/usr/bin/env bash
# The latent-visual-token comparison of examples/latent_experiment.sh, on benchmark v2 with the bundled v2
# model (shapes2-qwen25vl) as base: the same protocol, writing to out/latent_v2/ and runs/latent_v2/.
#   1. capacity-guided selection: the base model's sampled accuracy (4 samples, temperature 1, 256 tokens)
#      on shapes2:train 0-799; examples it gets right at most half the time get latent traces;
#   2. three modes (raw, ema, pca) x three seeds, each fine-tuned from the base with the same pool,
#      selection, steps (300), batch (8) and schedule; the seed sets the example order;
#   3. each probed on shapes2:test 0-199: unchanged and with latents replaced by zeros, noise, the mean
#      and another example's (budget 340 positions: v2 traces name every object, each with a latent block);
#   4. the side-by-side table across seeds, the layer-wise norms (the base's and each mode's seed-0
#      model's, shapes2:test 0-15) and the attribution share through latents (seed 0, 30 test examples,
#      weighted by the v2 model's bundled estimator, `--estimator bundled`);
#   5. the base model's greedy accuracy on the probed examples, and one summary JSON (examples/latent_summary.py)
#      that docs/benchmarks.md's block is generated from (publish it as docs/results/latent_v2.json).
# Every `attrib latent` command is given --benchmark shapes2, so a v1 base, selection or model is refused
# before any work. Every step is resumable: finished outputs are skipped, and an interrupted fine-tuning run
# resumes from its last checkpoint (every 100 steps). Commands run one at a time with 2 torch threads
# (the default of `attrib latent`). Wall time alone on this project's CPU machine: selection about 6 min, each
# mode x seed about 7 min of fine-tuning and 3 min of probing, the rest under 5 min: about 1.6 h in all.
# SEEDS="0 1" runs two seeds (the first published run, 2026-12-01).
set -euo pipefail
cd "$(dirname "$0")/.."
A=".venv/bin/attrib"
BASE=shapes2-qwen25vl
B="--benchmark shapes2"
O=out/latent_v2
R=runs/latent_v2
N=${N:-200}
SEEDS=${SEEDS:-"0 1 2"}
mkdir -p "$O" "$R"
t() { local s=$(date +%s); "$@"; echo "WALL $(( $(date +%s) - s )) s: $*"; }
# 1. selection on shapes2:train 0-799
[ -f "$O/selection.json" ] || t $A latent select --base $BASE $B --pool-n 800 --samples 4 --threads 2 \
    --out "$O/selection.json"
# 2-3. fine-tune each mode x seed, then probe it on shapes2:test 0-(N-1)
for seed in $SEEDS; do
  for mode in raw ema pca; do
    d="$R/$mode-$seed"
    [ -f "$d/latent.json" ] || t $A latent train --base $BASE $B --selection "$O/selection.json" --mode "$mode" \
        --seed "$seed" --threads 2 --out "$d"
    [ -f "$O/$mode-$seed.json" ] || t $A latent probe --model "$d" $B --split test --start 0 --n "$N" --threads 2 \
        --json "$O/$mode-$seed.json"
  done
done
# 4. the table (remade whenever a probe is newer than it), norms and attribution share
probes=("$O"/{raw,ema,pca}-[0-9].json)
if [ ! -f "$O/table.json" ] || [ -n "$(find "${probes[@]}" -newer "$O/table.json")" ]; then
  t $A latent table "${probes[@]}" --json "$O/table.json"
fi
[ -f "$O/norms-base.json" ] || t $A norms --model $BASE --dataset shapes2:test --n 16 --json "$O/norms-base.json"
for mode in raw ema pca; do
  [ -f "$O/norms-$mode.json" ] || t $A norms --model "$R/$mode-0" --dataset shapes2:test --n 16 \
      --json "$O/norms-$mode.json"
  [ -f "$O/attribution-$mode.json" ] || t $A latent attribution --model "$R/$mode-0" $B \
      --estimator bundled --n 30 --threads 2 --json "$O/attribution-$mode.json"
done
# 5. the base on the probed examples, then the summary
[ -f "$O/base-eval.json" ] || t $A shapes eval --model $BASE --split test --start 0 --n "$N" --no-blank --threads 2 \
    --json "$O/base-eval.json"
.venv/bin/python examples/latent_summary.py --out-dir "$O" --runs "$R" --json out/latent_v2.json
echo LATENT V2 DONE
