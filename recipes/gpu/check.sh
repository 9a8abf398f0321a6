#!/usr/bin/env bash
# One GPU session's checks, in one run (about 9 minutes on an H200): every GPU test, then every
# GPU figure the docs leave open (`reasonrl bench gpu`, all parts). Runs from the repository root
# with nothing installed but torch, transformers and triton (the device image): PYTHONPATH=. .
# Writes to $OUT (default runs/gpu): tests.log, bench-gpu.json, bench-gpu.log.
#
#   OUT=runs/gpu bash recipes/gpu/check.sh
#
# Test files are named, not collected by directory: some test modules import the server's
# dependencies (fastapi, uvicorn) at collection, which a bare device image may lack.
set -u
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -m gpu \
  tests/engine/test_compiled.py tests/kernels/test_paged_attention.py tests/kernels/test_kv_quant.py \
  tests/kernels/test_kv_spark.py tests/kernels_eval/test_experts.py tests/kernels_eval/test_timing.py \
  2>&1 | tail -40 | tee "$OUT/tests.log"
"$PY" -m reasonrl.cli bench gpu --budget-s "${BUDGET_S:-300}" --parts engine kv-decode spec april kernels \
  --json "$OUT/bench-gpu.json" 2>&1 | tee "$OUT/bench-gpu.log"
