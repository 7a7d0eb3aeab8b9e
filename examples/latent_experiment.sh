#!/usr/bin/env bash
# The latent-visual-token comparison behind docs/benchmarks.md ("Latent visual tokens"): capacity-guided
# selection on the bundled base model, then three modes x three seeds fine-tuned with the same data and
# budget, each probed with the four interventions, then the side-by-side table, the norms and the
# attribution share. Every step is resumable (finished outputs are skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
A=".venv/bin/attrib"
N=${N:-200}
SEEDS=${SEEDS:-"0 1 2"}
mkdir -p out/latent runs/latent
t() { local s=$(date +%s); "$@"; echo "WALL $(( $(date +%s) - s )) s: $*"; }
[ -f out/latent/selection.json ] || t $A latent select --pool-n 800 --samples 4 --out out/latent/selection.json
for seed in $SEEDS; do
  for mode in raw ema pca; do
    d="runs/latent/$mode-$seed"
    [ -f "$d/latent.json" ] || t $A latent train --selection out/latent/selection.json --mode "$mode" --seed "$seed" --out "$d"
    [ -f "out/latent/$mode-$seed.json" ] || t $A latent probe --model "$d" --n "$N" --json "out/latent/$mode-$seed.json"
  done
done
t $A latent table out/latent/{raw,ema,pca}-[0-9].json --json out/latent/table.json
for mode in raw ema pca; do
  t $A norms --model "runs/latent/$mode-0" --n 16 --json "out/latent/norms-$mode.json"
  t $A latent attribution --model "runs/latent/$mode-0" --estimator models/estimator --n 30 \
      --json "out/latent/attribution-$mode.json"
done
echo LATENT DONE
