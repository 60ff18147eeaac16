#!/usr/bin/env bash
# The oldest supported torch, for real: builds so2ops against torch 2.11.0 / Triton 3.6.0
# (what the lent GPU machine has, with Python 3.12) in a separate virtual environment and
# runs a fast subset of the tests there:
#   * the CPU backend and the reference of every op (forward, backward, opcheck, bad input,
#     torch.compile capture), and the Triton kernels under TRITON_INTERPRET=1;
#   * the ptxas lowering of the Triton forward for sm_90 with Triton 3.6's own ptxas
#     (tests/test_triton_aot.py, no GPU needed).
# pyproject.toml declares the supported range (torch>=2.11); scripts/install.sh pins the
# newest. The tested files are a copy of the tracked (and new, not ignored) files, so the
# checkout's own build (.venv, build/, so2ops/_C*.so) is never touched.
#
#   bash scripts/check_torch_range.sh            # CPU kernels + Triton (6-11 min on 2 cores with the venv present)
#   bash scripts/check_torch_range.sh --cuda     # also compile csrc/cuda/*.cu for sm_90 against torch 2.11
#   bash scripts/check_torch_range.sh --fresh    # recreate the venv (cold: ~2 min, 4.9 GB of torch + CUDA wheels)
#   bash scripts/check_torch_range.sh --ptxas-table FILE   # also write every Triton kernel's ptxas
#       table (lmax 4, C 128) with Triton 3.6; a relative FILE is relative to the checkout
#
# Environment:
#   TORCH_RANGE_VENV  the venv (default: ../venv-torch211 beside the checkout, outside it)
#   PYTHON            the interpreter for the venv (default: a Python 3.12 as on the device;
#                     falls back to python3.11 with a warning when no 3.12 is found)
#   TORCH_VERSION / TRITON_VERSION   default 2.11.0 / 3.6.0
#   CUDA_HOME         toolkit for --cuda (default /usr/local/cuda-13.0): bin/ must hold the real nvcc
#   MAX_JOBS          parallel compile jobs (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
TORCH_VERSION=${TORCH_VERSION:-2.11.0}
TRITON_VERSION=${TRITON_VERSION:-3.6.0}
VENV=${TORCH_RANGE_VENV:-$(dirname "$REPO")/venv-torch211}
FRESH=0 CUDA=0 PTXAS_TABLE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --fresh) FRESH=1 ;;
        --cuda) CUDA=1 ;;
        --ptxas-table) PTXAS_TABLE=$(realpath -m "$2"); shift ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "check_torch_range: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
fail() { echo "check_torch_range: FAILED: $*" >&2; exit 1; }
# pip, without this machine's "Location ... is ignored" notices about absent local indexes
pipq() {
    local rc=0 log
    log=$(mktemp)
    "$PY" -m pip "$@" >"$log" 2>&1 || rc=$?
    grep -v "^WARNING: Location '" "$log" || true
    rm -f "$log"
    return $rc
}
t0=$SECONDS
declare -a TIMES=()
mark() { TIMES+=("$1 $(($SECONDS - ${2}))s"); }

# --- the interpreter: Python 3.12 as on the device --------------------------------------
is_py() { "$1" -c "import sys; sys.exit(sys.version_info[:2] != ($2))" >/dev/null 2>&1; }
find_python() {
    if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
    local c
    for c in python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do
        if is_py "$c" "3, 12"; then command -v "$c"; return; fi
    done
    echo "check_torch_range: WARNING: no Python 3.12 found; using python3.11 (the device has 3.12)" >&2
    command -v python3.11 || command -v python3
}
PY_BASE=$(find_python)

# --- the venv: torch / Triton at the bottom of the supported range ------------------------
ts=$SECONDS
PY="$VENV/bin/python"
want="$TORCH_VERSION $TRITON_VERSION numpy<2.4"
have=$("$PY" -c "import torch, triton, numpy; print(torch.__version__.split('+')[0], triton.__version__, \
'numpy<2.4' if tuple(map(int, numpy.__version__.split('.')[:2])) < (2, 4) else 'numpy>=2.4')" 2>/dev/null || true)
if [ "$FRESH" = 1 ] || [ "$have" != "$want" ]; then
    echo "check_torch_range: creating $VENV with $("$PY_BASE" --version) (had: ${have:-nothing})"
    rm -rf "$VENV"
    "$PY_BASE" -m venv "$VENV"
    pipq install -q --upgrade pip setuptools wheel
    # one resolve: torch and triton pinned together (torch 2.11 requires triton 3.6 on Linux);
    # the build tools (ninja; no build isolation, which would fetch the newest torch) and the
    # test dependencies (e3nn for the test helpers).  numpy<2.4: Triton 3.6's interpreter
    # converts 1-element arrays with int(), which numpy 2.4 turned from a warning into a
    # TypeError (every Triton kernel with a runtime loop bound fails under TRITON_INTERPRET=1;
    # Triton 3.8 squeezes first).  Only the interpreter is affected, not the GPU.
    pipq install -q "torch==$TORCH_VERSION" "triton==$TRITON_VERSION" "numpy<2.4" ninja pybind11 \
        pytest hypothesis scipy e3nn
    mark "venv+install" "$ts"
    echo "check_torch_range: venv $(du -sh "$VENV" | cut -f1) after $((SECONDS - ts)) s"
else
    mark "venv(reused)" "$ts"
fi
"$PY" - "$TORCH_VERSION" "$TRITON_VERSION" <<'EOF' || fail "the venv does not hold the wanted torch / Triton"
import sys, platform, torch, triton
print(f"check_torch_range: Python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"Triton {triton.__version__}")
sys.exit(0 if (torch.__version__.split("+")[0], triton.__version__) == tuple(sys.argv[1:3]) else 1)
EOF

# --- a copy of the checkout, built in place (editable) against that torch ------------------
# The copy lives in the venv (outside the checkout); pip's editable build compiles in a fresh
# temporary folder, so every run is a full build (CPU ~1-2 min, --cuda ~4 min on 2 cores).
ts=$SECONDS
SRC="$VENV/src"
mkdir -p "$SRC"
find "$SRC" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
git ls-files -z --cached --others --exclude-standard \
    | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$SRC"
if [ "$CUDA" = 1 ]; then
    export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda-13.0}
    [ -x "$CUDA_HOME/bin/nvcc" ] || fail "--cuda: no nvcc in CUDA_HOME=$CUDA_HOME/bin"
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
    unset SO2OPS_NO_CUDA
else
    export SO2OPS_NO_CUDA=1
fi
(cd "$SRC" && MAX_JOBS=${MAX_JOBS:-2} pipq install -q --no-build-isolation --no-deps -e .) \
    || fail "pip install --no-build-isolation --no-deps -e . against torch $TORCH_VERSION"
mark "build($([ "$CUDA" = 1 ] && echo "cpu+cuda sm_$TORCH_CUDA_ARCH_LIST" || echo cpu))" "$ts"
cd "$SRC"
"$PY" -c "import so2ops, so2ops._C as C; print('check_torch_range: so2ops backends:', so2ops.backends(), \
'compiled_with_cuda:', C.compiled_with_cuda())" || fail "import so2ops"
if [ "$CUDA" = 1 ]; then
    "$PY" -c "import so2ops._C as C, sys; sys.exit(0 if C.compiled_with_cuda() else 1)" || fail "--cuda: no CUDA kernels built"
fi

# --- the fast test subset ---------------------------------------------------------------
# Every op's test file (reference, cpu, and triton under the interpreter: conftest sets
# TRITON_INTERPRET=1 without a GPU), torch.compile / opcheck / autocast / determinism, the
# extension's registration (test_build: its CMake part is torch-independent and skipped
# here), and the sm_90 lowering with Triton's ptxas. The slow files stay in the main run.
ts=$SECONDS
TESTS=(tests/test_backends.py tests/test_bad_input.py tests/test_edge_wigner.py tests/test_rotate.py
       tests/test_so2_linear.py tests/test_so2_message.py tests/test_so2_frame_linear.py
       tests/test_so2_tensor_product.py tests/test_assemble_blocks.py tests/test_double_backward.py
       tests/test_autocast.py tests/test_deterministic.py tests/test_capture.py tests/test_build.py
       tests/test_triton_aot.py)
# a failure is reported at the end, after the optional ptxas table
TESTS_OK=1
"$PY" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning "${TESTS[@]}" -k "not cmake and not ctest" \
    || TESTS_OK=0
mark "tests" "$ts"

# --- optional: the ptxas table of the Triton kernels with this Triton ----------------------
if [ -n "$PTXAS_TABLE" ]; then
    ts=$SECONDS
    {
        echo "# ptxas (sm_90) of the Triton kernels: Triton $TRITON_VERSION, torch $TORCH_VERSION"
        echo
        echo "\`python -m bench.triton_aot --all --lmax 4 --mmax 2 --channels 128\` (no TRITON_INTERPRET)," \
             "run $(date -u '+%Y-%m-%d %H:%M UTC') by scripts/check_torch_range.sh on the files on disk then."
        echo
        env -u TRITON_INTERPRET timeout 1500 "$PY" -m bench.triton_aot --all --lmax 4 --mmax 2 --channels 128 \
            --jobs "${MAX_JOBS:-2}" 2>&1 || echo "FAILED: python -m bench.triton_aot --all (exit $?)"
    } > "$PTXAS_TABLE"
    cat "$PTXAS_TABLE"
    mark "ptxas-table" "$ts"
fi

[ "$TESTS_OK" = 1 ] || fail "tests against torch $TORCH_VERSION / Triton $TRITON_VERSION (after $((SECONDS - t0)) s: ${TIMES[*]})"
echo "check_torch_range: passed in $((SECONDS - t0)) s (${TIMES[*]})"
