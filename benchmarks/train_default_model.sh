#!/usr/bin/env bash
# Train the bundled default model: resources/models/default.safetensors + default.json.
#
# Everything it learns from is made here: procedural phantom cases (`gitseg phantom`), no download.
# About 10-15 minutes on 2 CPU cores (the `cpu` preset: U-Net / MobileNetV3, 2.5D k=3 stride=2,
# slices letterboxed to 160 px). The commands below are stored in the bundle's JSON ("notes"; the
# train command line is also in training.command), so the model says how it was made.
#
# Usage:  benchmarks/train_default_model.sh            (from the repository root)
#         PYTHON=/path/to/python benchmarks/train_default_model.sh
set -euo pipefail

cd "$(dirname "$0")/.."
GITSEG="${GITSEG:-.venv/bin/gitseg}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gitseg-default-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

CASES=8
SEED=7
PHANTOM_CMD="gitseg phantom DATA --cases $CASES --seed $SEED --days 1 --slices 144 --size 266"
TRAIN_CMD="gitseg train DATA --out OUT --name default --preset cpu --epochs 16 --max-steps 60 --seed 0"

echo "[$(date +%T)] $PHANTOM_CMD" >&2
"$GITSEG" phantom "$WORK/data" --cases "$CASES" --seed "$SEED" --days 1 --slices 144 --size 266

echo "[$(date +%T)] $TRAIN_CMD" >&2
"$GITSEG" train "$WORK/data" --out "$WORK/out" --name default --preset cpu --epochs 16 --max-steps 60 --seed 0 \
    --notes "default model, made by benchmarks/train_default_model.sh: $PHANTOM_CMD && $TRAIN_CMD" \
    | tee "$WORK/summary.json"

# install: old JSON out, weights in, then the JSON that describes them (never a JSON describing other weights)
mkdir -p resources/models
rm -f resources/models/default.json
cp "$WORK/out/default.safetensors" resources/models/.default.safetensors.tmp
mv resources/models/.default.safetensors.tmp resources/models/default.safetensors
cp "$WORK/out/default.json" resources/models/.default.json.tmp
mv resources/models/.default.json.tmp resources/models/default.json
echo "[$(date +%T)] wrote resources/models/default.json ($(du -h resources/models/default.safetensors | cut -f1))" >&2
