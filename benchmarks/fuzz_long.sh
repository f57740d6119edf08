#!/usr/bin/env bash
# The long fuzz run (random, not derandomised): RLE, CSV, file-name parser and the PNG/TIFF/NIfTI/DICOM
# readers on damaged files. Usage: bash benchmarks/fuzz_long.sh [EXAMPLES per property, default 100000]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100000}"
GITSEG_FUZZ_EXAMPLES="$N" .venv/bin/python -m pytest -q --disable-warnings tests/test_io_fuzz.py \
  --hypothesis-show-statistics 2>&1 | grep -E "passing examples|passed|failed|error|Stopped because" || true
