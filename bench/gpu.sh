#!/usr/bin/env bash
# SUPERSEDED for a first run on a lent GPU by scripts/gpu_first_run.sh (one command of at most
# 9 minutes, each phase under its own timeout, everything under $OUT; docs/gpu_first_run.md).
# This script stays the full benchmark sweep: it has no time limits and a full sweep takes far
# longer than one 10-minute device command (rerun it: --resume continues where it stopped).
#
# The full GPU suite on a fresh GPU machine that has torch, triton and nvcc but no network:
#
#   bash bench/gpu.sh            # build, GPU tests, every benchmark (full sweeps)
#   bash bench/gpu.sh --quick    # same with the quick sweeps (extra args go to `python -m bench`)
#
# 1. builds so2ops._C (CPU + CUDA kernels) against the installed torch with
#    `pip install --no-build-isolation --no-deps --no-index -e .` (no download,
#    no torch re-resolution), falling back to `setup.py build_ext --inplace`;
# 2. runs the tests marked `gpu`;
# 3. runs `python -m bench all --device cuda --resume`, writing JSON, Markdown and plots
#    to $OUT/<gpu-name>/ when OUT is set (the device tool's folder, whose contents come
#    back), else to $BENCH_OUT/<gpu-name>/, else bench/results/<gpu-name>/.  The finished
#    cases are checkpointed as they go, so rerunning the script after a
#    time-out continues where the last run stopped.
#
# Environment: PYTHON (default python3), MAX_JOBS (default: all cores),
# WHEELS (a folder of .whl files to install first, e.g. e3nn where missing),
# OUT, BENCH_OUT, LOG (default <results root>/gpu-suite.log).
# Exit status: 0 when the build, the tests and the benchmark's correctness
# checks all passed; the benchmark still runs when the tests fail.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
# $OUT first: the device tool collects only what is written under it (BENCH_OUT used to win and
# sent the log and results to bench/results/, which does not come back)
OUT=${OUT:-${BENCH_OUT:-bench/results}}
mkdir -p "$OUT"
LOG=${LOG:-$OUT/gpu-suite.log}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export PYTHONUNBUFFERED=1
exec > >(tee "$LOG") 2>&1
status=0

echo "== environment"
"$PY" - <<'PY' || { echo "gpu.sh: torch cannot see a CUDA device"; exit 2; }
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda)
assert torch.cuda.is_available(), "no CUDA device"
print("device", torch.cuda.get_device_name(0), "| capability", torch.cuda.get_device_capability(0))
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton absent: the triton backend will not run")
PY
command -v nvcc >/dev/null && nvcc --version | tail -n 1 || echo "nvcc not on PATH (setup.py looks in CUDA_HOME)"

WHEELS=${WHEELS:-.whl}
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  echo "== installing carried wheels from $WHEELS"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/bench-site "$WHEELS"/*.whl \
    && export PYTHONPATH=/tmp/bench-site${PYTHONPATH:+:$PYTHONPATH}
fi

echo "== build (MAX_JOBS=$MAX_JOBS)"
t0=$SECONDS
if ! "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . ; then
  echo "pip editable install failed; trying an in-place build"
  "$PY" setup.py build_ext --inplace || { echo "gpu.sh: build failed"; exit 3; }
fi
echo "build took $((SECONDS - t0)) s"
"$PY" -c "import so2ops, json; print(json.dumps(so2ops.backends()))" || { echo "gpu.sh: so2ops does not import"; exit 3; }

echo "== GPU tests"
"$PY" -m pytest tests -m gpu -q -p no:cacheprovider --continue-on-collection-errors || status=1

echo "== benchmarks"
# --resume: rerunning this script after a time-out or a lost machine continues the
# sweep from bench/results/<gpu>/<name>.partial.json instead of timing it again
# (a run with other options stops with an error naming the option that differs).
"$PY" -m bench all --device cuda --resume --out "$OUT" "$@" || status=1

echo "== done (status $status); results in $OUT"
exit $status
