#!/usr/bin/env bash
# bench/device_check.sh: the one check of gpuflat's CUDA path on a GPU machine, offline,
# in under 8 minutes on a fresh machine.
#
#   bash bench/device_check.sh            # on the GPU machine, from any directory
#   bash bench/device_check.sh --fetch-wheels   # here (with a package registry): fill
#                                               # bench/wheels/ for the GPU machine
#
# Steps, in the order they run (each under its own time limit; a step that fails does not
# stop the later ones; when the overall budget, DEVICE_CHECK_BUDGET seconds (default 470),
# runs short the remaining steps are skipped and count as failed). After the three that
# need no numba, most important first:
#   1 env         the GPU, driver, CuPy, NVRTC; gpuflat's available() must say yes
#   2 compile     every kernel through CuPy as the backend compiles it: registers, local
#                 memory, and CuPy's cached cubins through cuobjdump: no .FTZ instruction
#   3 sanitizer   compute-sanitizer memcheck over small launches of every kernel (if present)
#   4 gpu-tests   tests/test_cuda_gpu.py, the kernel tests; a skipped test counts as a failure
#   5 pipeline    gpuflat.combine(..., backend="cuda") vs "cpu" over several bands:
#                 image, uncertainty, count, mask, rejected, scales bit for bit
#   6 throughput  kernel alone with and without rejected counters, H2D pageable/pinned,
#                 frame level of an 8192^2 frame, W1/W2-sized end to end from FITS files
#   7 fast        the fast kernels and their lists against the general kernel, n = 15, 24,
#                 40 on 4096^2 pixels clipping as flats do: G samples/s, share of the memory
#                 bandwidth, bit for bit (bench/device_check_fast.py; issue 25)
#   8 level       the median of an 8192^2 frame upload included, and its parts
#   9 subnormal   subnormal samples, scaled values, levels and conversions kept
#  10 index64     combine and level kernels past 2**31 (and 2**32) elements
#  11 gpu-pipeline  tests/test_cuda_gpu.py, the end-to-end tests (a skip fails, likewise)
#  12 cli         fresh-process `gpuflat run --device cuda` vs `--device cpu` on W1 and W2
#                 FITS files, cold (empty caches; the CPU's only while the budget allows)
#                 and warm, the products the same bits
# Steps 4-9 compare with the numba backend, whose cold compile takes minutes. It is built
# in the background from the start ("warm", two groups of steps, see step_warm) while
# steps 1-3, which need no numba, run; a step waits for its group (the wait counts against
# the budget, not the step's limit).
#
# Output: the log (device_check.log), a summary (summary.txt), the figures (figures.json) and
# the GPU tests' reports (gpu_tests.xml, gpu_pipeline.xml) go to $OUT when it is set, else
# to a new temporary folder (printed at the start and the end). The figures and the log are
# also copied into the checkout's docs/device/ as <date>-<gpu>-figures.json and
# <date>-<gpu>.log (DEVICE_CHECK_DOCS=0: not).
#
# Exit status:
#   0  every step passed
#   1  a step failed, timed out or was skipped for time (see summary.txt)
#   2  bad usage
#   3  no GPU here: stopped cleanly before anything ran on a device (the message says why)
#   4  set-up failed: Python packages missing and not installable from bench/wheels/
#
# Offline installs. The GPU machine reaches no package registry. Its image has Python 3.12
# with CuPy for CUDA 13 (NVRTC included), numba, numpy, matplotlib, tqdm, pytest and
# hypothesis, but not astropy. What it lacks travels as wheels in bench/wheels/, installed
# with pip --no-index --no-deps into a scratch folder put first on PYTHONPATH; gpuflat itself
# runs from this checkout. The folder is git-ignored: whatever copies the checkout to the GPU
# machine must be told to take it along (about 13 MB). Fill it here with
#   bash bench/device_check.sh --fetch-wheels
# which runs
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d bench/wheels astropy pyerfa astropy-iers-data
# (astropy's other needs, numpy, PyYAML and packaging, are in the image; add names with
# DEVICE_CHECK_WHEELS="astropy pyerfa ...").
#
# Environment: PYTHON (default python3), OUT, DEVICE_CHECK_BUDGET (seconds),
# DEVICE_CHECK_STEPS (a space-separated subset of the step names, in the order above),
# DEVICE_CHECK_PADS (the stack depths the warm-up races, default "0 37 74").
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
WHEELS="$REPO/bench/wheels"

if [ "${1:-}" = "--fetch-wheels" ]; then
  mkdir -p "$WHEELS"
  # shellcheck disable=SC2086
  exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$WHEELS" \
    ${DEVICE_CHECK_WHEELS:-astropy pyerfa astropy-iers-data}
fi
if [ $# -gt 0 ]; then
  echo "usage: bash bench/device_check.sh [--fetch-wheels]" >&2
  exit 2
fi

OUT_DIR=${OUT:-}
if [ -z "$OUT_DIR" ]; then
  OUT_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gpuflat-device-check.XXXXXX")
fi
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG="$OUT_DIR/device_check.log"
SUMMARY="$OUT_DIR/summary.txt"
: >"$LOG"
: >"$SUMMARY"
exec > >(tee -a "$LOG") 2>&1

BUDGET=${DEVICE_CHECK_BUDGET:-470}
T0=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpuflat-dc-work.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
export DEVICE_CHECK_OUT="$OUT_DIR" DEVICE_CHECK_WORK="$WORK" PYTHONUNBUFFERED=1
export CUPY_CACHE_DIR="$WORK/cupy-cache" NUMBA_CACHE_DIR="$WORK/numba-cache"

echo "gpuflat device check: $(date -u +%Y-%m-%dT%H:%M:%SZ), checkout $REPO"
echo "  commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')" \
  "$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo '(with local changes)')"
echo "  output in $OUT_DIR"

# -- 0: is there a GPU at all? (nothing below runs without one) ---------------------------
gpu_list=""
if command -v nvidia-smi >/dev/null 2>&1; then
  gpu_list=$(nvidia-smi -L 2>&1 | grep '^GPU ' || true)
  why="nvidia-smi lists no GPU: $(nvidia-smi -L 2>&1 | head -3 | tr '\n' ' ')"
else
  why="nvidia-smi is not installed and /dev/nvidia0 does not exist (no NVIDIA driver)"
  [ -e /dev/nvidia0 ] && why="nvidia-smi is not installed (/dev/nvidia0 exists)"
fi
if [ -z "$gpu_list" ]; then
  echo
  echo "NO GPU: $why."
  # what gpuflat itself says, when it can say it (CuPy missing, no driver, no device, ...)
  if reason=$(cd "$REPO" && PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" timeout 60 "$PY" -c \
    'from gpuflat.backends._cuda import available; print(available()[1])' 2>/dev/null); then
    echo "gpuflat's available(): $reason"
  fi
  echo "Stopped cleanly before any step: nothing was run on a device. Run this script on a"
  echo "machine with an NVIDIA GPU (exit status 3 means: no GPU here)."
  echo "no-gpu: $why" >>"$SUMMARY"
  exit 3
fi
echo "$gpu_list"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.max.sm \
  --format=csv,noheader 2>&1 || true

# -- set-up: what the image lacks, from bench/wheels ----------------------------------------
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  echo "installing $(ls "$WHEELS"/*.whl | wc -l) wheel(s) from bench/wheels into $WORK/site"
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/site" "$WHEELS"/*.whl; then
    echo "SET-UP FAILED: pip could not install bench/wheels/*.whl"
    echo "setup: pip install of bench/wheels failed" >>"$SUMMARY"
    exit 4
  fi
  export PYTHONPATH="$WORK/site:$PYTHONPATH"
fi
missing=$("$PY" - <<'EOF'
import importlib
need = ["numpy", "numba", "astropy", "cupy", "pytest", "matplotlib", "tqdm"]
bad = []
for m in need:
    try:
        importlib.import_module(m)
    except Exception as exc:
        bad.append(f"{m} ({type(exc).__name__}: {exc})")
print("; ".join(bad))
EOF
)
if [ -n "$missing" ]; then
  echo "SET-UP FAILED: cannot import $missing."
  echo "Fill bench/wheels/ where a package registry is reachable (bash bench/device_check.sh"
  echo "--fetch-wheels, see the header of this script) and carry it with the tree."
  echo "setup: missing $missing" >>"$SUMMARY"
  exit 4
fi

# -- the steps --------------------------------------------------------------------------------
STEPS=${DEVICE_CHECK_STEPS:-env compile sanitizer gpu-tests pipeline throughput fast level subnormal index64 gpu-pipeline cli}
failures=0
declare -A LIMIT=([env]=60 [compile]=90 [gpu-tests]=180 [gpu-pipeline]=120 [pipeline]=120
  [index64]=90 [subnormal]=60 [throughput]=150 [sanitizer]=120 [fast]=90 [level]=60
  [cli]=240)
declare -A MIN=([env]=10 [compile]=20 [gpu-tests]=60 [gpu-pipeline]=30 [pipeline]=30
  [index64]=30 [subnormal]=15 [throughput]=60 [sanitizer]=40 [fast]=30 [level]=15 [cli]=40)

run_step() {  # name, command...: run under the smaller of its limit and the time left
  local name=$1
  shift
  local left=$((BUDGET - (SECONDS - T0)))
  local limit=${LIMIT[$name]:-60}
  if [ "$left" -lt "${MIN[$name]:-10}" ]; then
    echo
    echo "== $name: SKIPPED, ${left}s of the ${BUDGET}s budget left"
    printf '%-11s %-8s %5s\n' "$name" "skipped" "-" >>"$SUMMARY"
    failures=$((failures + 1))
    return
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  export DEVICE_CHECK_STEP_LEFT=$limit
  echo
  echo "== $name (limit ${limit}s, $((SECONDS - T0))s elapsed)"
  local t=$SECONDS rc=0
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  local status=passed
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status=timeout
  elif [ "$rc" -ne 0 ]; then
    status="failed($rc)"
  fi
  [ "$status" = passed ] || failures=$((failures + 1))
  printf '%-11s %-8s %4ss\n' "$name" "$status" "$((SECONDS - t))" >>"$SUMMARY"
  echo "== $name: $status in $((SECONDS - t))s"
}

# numba's cold compile, in the background: each group of steps' code (see step_warm in
# device_check.py) at a few Python stack depths raced, each into its own cache folder; the
# first of a group to finish is kept, and its steps run with NUMBA_CACHE_DIR set to it
declare -A GROUP=([gpu-tests]=kernels [index64]=kernels [subnormal]=kernels [fast]=kernels
  [level]=kernels [gpu-pipeline]=pipeline [pipeline]=pipeline [throughput]=pipeline
  [cli]=pipeline)
declare -A WARM_PID=() WARM_DIR=()
PADS=${DEVICE_CHECK_PADS:-0 37 74}
for group in kernels pipeline; do
  for pad in $PADS; do
    NUMBA_CACHE_DIR="$WORK/numba-$group-$pad" "$PY" "$REPO/bench/device_check.py" warm \
      --group "$group" --pad "$pad" >"$WORK/warm-$group-$pad.log" 2>&1 &
    WARM_PID[$group-$pad]=$!
  done
done

use_warm() {  # group: wait (within the budget) for its first warm to finish; use its cache
  local group=$1 t=$SECONDS winner="" alive pad
  if [ -z "${WARM_DIR[$group]:-}" ]; then
    echo
    echo "== waiting for numba's background compile of the $group group ($((SECONDS - T0))s elapsed)"
    while [ -z "$winner" ] && [ $((SECONDS - T0)) -lt "$BUDGET" ]; do
      alive=0
      for pad in $PADS; do
        [ -e "$WORK/numba-$group-$pad/warm-done" ] && winner=$pad
        kill -0 "${WARM_PID[$group-$pad]}" 2>/dev/null && alive=1
      done
      [ -n "$winner" ] || [ "$alive" -eq 1 ] || break
      [ -n "$winner" ] || sleep 1
    done
    for pad in $PADS; do
      kill "${WARM_PID[$group-$pad]}" 2>/dev/null
      wait "${WARM_PID[$group-$pad]}" 2>/dev/null
    done
    if [ -n "$winner" ]; then
      WARM_DIR[$group]="$WORK/numba-$group-$winner"
      cat "$WORK/warm-$group-$winner.log"
      echo "== warm $group: the compile at pad $winner finished first; waited $((SECONDS - t))s"
      printf '%-11s %-8s %4ss\n' "warm" "$group" "$((SECONDS - t))" >>"$SUMMARY"
    else
      WARM_DIR[$group]="$WORK/numba-$group-cold"
      tail -n 3 "$WORK"/warm-"$group"-*.log
      echo "== warm $group: no compile finished (its steps compile as they go)"
      printf '%-11s %-8s %4ss\n' "warm" "$group:no" "$((SECONDS - t))" >>"$SUMMARY"
    fi
  fi
  export NUMBA_CACHE_DIR=${WARM_DIR[$group]}
}

for step in $STEPS; do
  [ -n "${GROUP[$step]:-}" ] && use_warm "${GROUP[$step]}"
  case $step in
    env | compile | sanitizer | gpu-tests | gpu-pipeline | pipeline | index64 | subnormal | \
      throughput | fast | level | cli)
      run_step "$step" "$PY" "$REPO/bench/device_check.py" "$step" ;;
    *) echo "unknown step $step" ; exit 2 ;;
  esac
  if [ "$step" = env ] && [ "$failures" -gt 0 ]; then
    echo "the CUDA backend cannot run here (see env above): the device steps are not run"
    break
  fi
done

echo
echo "== summary ($((SECONDS - T0))s; output in $OUT_DIR)"
cat "$SUMMARY"
if [ "${DEVICE_CHECK_DOCS:-1}" != 0 ] && [ -e "$OUT_DIR/figures.json" ]; then
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 |
    tr 'A-Z' 'a-z' | sed -e 's/nvidia//' -e 's/[^a-z0-9]\+/-/g' -e 's/^-*//' -e 's/-*$//')
  stem="$REPO/docs/device/$(date -u +%Y-%m-%d)-${gpu:-gpu}"
  mkdir -p "$REPO/docs/device"
  cp "$OUT_DIR/figures.json" "$stem-figures.json" && cp "$LOG" "$stem.log" &&
    echo "figures and log copied to $stem-figures.json and $stem.log"
fi
if [ "$failures" -gt 0 ]; then
  echo "device check: $failures step(s) did not pass"
  exit 1
fi
echo "device check: all steps passed"
exit 0
