#!/usr/bin/env bash
# One GPU session's checks, in one run of at most about 8 minutes (the device tool's limit on one
# command is 10): every GPU test, then every GPU figure the docs leave open (`reasonrl bench gpu`).
# Runs from the repository root with nothing installed but torch, transformers and triton (the
# device image): PYTHONPATH=. . Writes to $OUT (default runs/gpu): device.txt, tests-*.log (full
# logs), bench-gpu.json, bench-gpu.log; exits non-zero if a step failed.
#
#   OUT=runs/gpu bash recipes/gpu/check.sh
#
# Test files are named, not collected by directory: some test modules import the server's
# dependencies (fastapi, uvicorn) at collection, which a bare device image may lack. The kernel
# evaluator's tests run first (its GPU sandbox has never passed on a GPU); each group has its own
# time limit, so a slow compile in one does not cut the others.
set -u -o pipefail
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
run_tests() {  # name, seconds, files...
  local name=$1 seconds=$2
  shift 2
  timeout "$seconds" "$PY" -m pytest -q -p no:cacheprovider -m gpu "$@" > "$OUT/tests-$name.log" 2>&1 || status=1
  tail -15 "$OUT/tests-$name.log"
}
run_tests kernels-eval 80 tests/kernels_eval/test_experts.py tests/kernels_eval/test_timing.py
run_tests kernels 60 tests/kernels/test_paged_attention.py tests/kernels/test_kv_quant.py tests/kernels/test_kv_spark.py
run_tests compiled 120 tests/engine/test_compiled.py tests/spec/test_draft_graphs.py
run_tests training 90 tests/rl/test_gpu_training.py
"$PY" -m reasonrl.cli bench gpu --budget-s "${BUDGET_S:-220}" --parts engine kv-decode spec april kernels \
  --json "$OUT/bench-gpu.json" 2>&1 | tee "$OUT/bench-gpu.log" || status=1
exit $status
