#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: run gpuflat's GPU tests and the combine_band benchmark.
#
#   bash bench/gpu.sh                 # CUDA 12 driver stack (cupy-cuda12x)
#   CUPY=cupy-cuda13x bash bench/gpu.sh
#
# Creates .venv-gpu (once) with gpuflat[test] and CuPy, runs the tests marked `gpu`
# (tests/test_cuda_gpu.py: CUDA results bit for bit equal to the numba backend), then
# bench/bench_gpu.py (15 frames x 4096 x 4096 float32 by default; extra arguments are
# passed on, e.g. `bash bench/gpu.sh --frames 30 --size 2048`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-gpu
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e ".[test]" "${CUPY:-cupy-cuda12x}"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -m gpu -rs tests/test_cuda_gpu.py
"$VENV/bin/python" bench/bench_gpu.py "$@"
