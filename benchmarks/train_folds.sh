#!/usr/bin/env bash
# The leave-patient-out folds of the default recipe, for benchmarks/bench_real.py and bench_real_loop.py:
# stage B of benchmarks/train_default_model.sh once per fold, each without the fold's real patients,
# continued from one shared stage A (which sees no real image). Every one of the 9 real patients of
# ../shared/data (4 volumes, 5 patients of isolated slices) is left out by exactly one fold; each
# bundle's JSON lists the real patients it saw, and the benchmarks pick per patient one that did not.
#
# Usage: STAGE_A=path/default.json benchmarks/train_folds.sh OUT_FOLDER    (about 4 x 25 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_ROOT="${1:?usage: STAGE_A=stageA.json benchmarks/train_folds.sh OUT_FOLDER}"
: "${STAGE_A:?set STAGE_A to the stage-A bundle (train_default_model.sh writes it first)}"
mkdir -p "$OUT_ROOT"
FOLDS=("case6,case11,case101" "case16,case110,case117" "case102,case125" "case146")
for fold in "${FOLDS[@]}"; do
  name="fold-${fold//,/-}"
  if [ -f "$OUT_ROOT/$name/default.json" ]; then
    echo "[$(date +%T)] $name: done before, kept" >&2
    continue
  fi
  LEAVE_OUT="$fold" OUT="$OUT_ROOT/$name" STAGE_A="$STAGE_A" benchmarks/train_default_model.sh > "$OUT_ROOT/$name.log" 2>&1
  echo "[$(date +%T)] $name: $OUT_ROOT/$name/default.json" >&2
done
