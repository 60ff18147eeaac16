#!/usr/bin/env bash
# The first run on a lent GPU machine: one command, at most 9 minutes by construction.
#
#   bash scripts/gpu_first_run.sh                 # everything, reports under $OUT
#   bash scripts/gpu_first_run.sh --dry-run       # the whole flow on the CPU: GPU commands printed, not run,
#                                                 # the Python drivers' dry runs executed (tests/test_gpu_first_run.py)
#   bash scripts/gpu_first_run.sh --phases check,timing   # a subset (a rerun on the same warm machine)
#   bash scripts/gpu_first_run.sh --list          # the phases and their time limits
#
# With the device tool (docs/gpu_first_run.md):
#   run(command="bash scripts/gpu_first_run.sh", timeout_s=600)
#
# Phases, each under its own `timeout` (the limits and their kill grace sum to at most TOTAL_S = 540 s,
# checked at start; each limit is also cut to the time left, so the script ends within TOTAL_S):
#   env                environment: nvidia-smi, python / torch / CUDA / Triton / nvcc / compute-sanitizer
#   build              so2ops._C for sm_90 only against the installed torch
#                      (pip install --no-build-isolation --no-deps -e ., else setup.py build_ext --inplace)
#   sanitize_memcheck  compute-sanitizer memcheck of every CUDA op, fwd + bwd, tiny shapes, tile forced to
#   sanitize_racecheck   $TILE edges (multi-tile and split-segment paths): scripts/gpu_smoke.py sanitize-target
#   sanitize_synccheck
#   sanitize_triton    memcheck of the Triton so2_message (lmax 1, one cold compile)
#   check              every op against the reference (float64 1e-10, float32), lmax sweep, forced tiles,
#                      bf16 autocast, one forward past 2^31 elements, determinism with/without
#                      CUBLAS_WORKSPACE_CONFIG: $OUT/check.tsv, check.md
#   pytest_cuda        the gpu-marked tests, cuda (every test not about triton)
#   pytest_triton      the gpu-marked Triton tests, lmax <= 4, cheapest lmax first
#   timing             $OUT/timing.md: so2_message and the Edgewise block, lmax 4, mmax 2 / 4, C 128,
#                      2e5 / 1e6 edges, cuda vs reference / eSCN dense / FAIR-Chem / GEMM floor, TF32 off / on
#
# Everything is written under $OUT (the device tool's folder when set, else ./out/gpu-first-run):
# first.log (the whole console), phases.tsv (phase, status, seconds, timeout), env.json, build.log,
# sanitize_<tool>.log / .tsv, check.tsv / .md, pytest_<backend>.log / .xml / .tsv (outcome per test, as it
# goes) / .selection.tsv (the selected tests in run order), timing.md / .json.
# A failed or timed-out phase is recorded and the next one runs.  Exit status: 0 when every phase
# passed, 1 otherwise (2: bad arguments).
#
# Environment: PYTHON (default python3), OUT, TILE (forced edges per tile, default 7),
# MAX_JOBS (default nproc), SANITIZER (default compute-sanitizer), PYTEST_ARGS (extra pytest arguments),
# LIMITS (e.g. "build=200,timing=20": other phase limits; refused when the sum exceeds TOTAL_S).
set -uo pipefail

TOTAL_S=540   # the whole script: 9 minutes, inside the device tool's 10-minute command limit
GRACE_S=5     # timeout -k: a phase ignoring SIGTERM is killed this much later
SUMMARY_S=5   # kept for the summary after the last phase
# name:limit_s, in run order; sum(limit + GRACE_S) + SUMMARY_S <= TOTAL_S (checked below)
PHASES=(
  env:20
  build:140
  sanitize_memcheck:40
  sanitize_racecheck:30
  sanitize_synccheck:25
  sanitize_triton:25
  check:55
  pytest_cuda:50
  pytest_triton:45
  timing:55
)

# LIMITS="check=70,timing=40": other limits for some phases (the sum is still checked against TOTAL_S)
if [[ -n ${LIMITS:-} ]]; then
  for kv in ${LIMITS//,/ }; do
    for i in "${!PHASES[@]}"; do
      [[ ${PHASES[$i]%%:*} == "${kv%%=*}" ]] && PHASES[i]="${kv%%=*}:${kv#*=}"
    done
  done
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/scripts/gpu_first_run.sh"
SMOKE="$ROOT/scripts/gpu_smoke.py"

budget_sum() {
  local s=$SUMMARY_S spec
  for spec in "${PHASES[@]}"; do s=$((s + ${spec#*:} + GRACE_S)); done
  echo "$s"
}

# ------------------------------------------------------------------ the phases (run in a child: __phase NAME)
say() { printf '%s\n' "$*"; }

# run a command, or on a dry run print it
gpu() {
  if [[ $DRY == 1 ]]; then
    say "[dry-run] would run: $*"
    return 0
  fi
  say "+ $*"
  "$@"
}

# the epoch second by which a phase's Python driver stops starting cases (its timeout minus a margin)
py_deadline() { echo $(( $(date +%s) + ${PHASE_LIMIT:-60} - ${1:-6} )); }

phase_env() {
  say "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(hostname)  cores: $(nproc)  root: $ROOT"
  if command -v nvidia-smi >/dev/null; then
    timeout 5 nvidia-smi || say "nvidia-smi failed"
    timeout 5 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  else
    say "nvidia-smi: not on PATH"
  fi
  command -v nvcc >/dev/null && nvcc --version | tail -n 2 || say "nvcc: not on PATH (setup.py looks in CUDA_HOME)"
  command -v "$SANITIZER" >/dev/null && "$SANITIZER" --version | tail -n 1 || say "$SANITIZER: not on PATH"
  free -g 2>/dev/null | head -2 || true
  "$PY" - "$OUT/env.json" <<'PY'
import json, os, platform, sys
info = {"python": platform.python_version(), "executable": sys.executable}
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=str(torch.version.cuda), cuda_available=torch.cuda.is_available(),
                cudnn=str(torch.backends.cudnn.version()))
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                    sms=p.multi_processor_count)
except Exception as exc:  # noqa: BLE001
    info["torch"] = f"import failed: {exc!r}"
from importlib import metadata, util
# installed distributions, without importing them (fast; fairchem-core may be carried as a wheel)
for dist in ("triton", "e3nn", "numpy", "scipy", "pytest", "pybind11", "ninja", "setuptools", "wheel", "pip",
             "pyscf", "lmdb", "ase", "fairchem-core", "cuequivariance-torch"):
    try:
        info[dist] = metadata.version(dist)
    except metadata.PackageNotFoundError:
        info[dist] = "absent"
info["so2ops_importable_from_tree"] = util.find_spec("so2ops") is not None
for k in ("CUDA_HOME", "TORCH_CUDA_ARCH_LIST", "CUBLAS_WORKSPACE_CONFIG", "SO2OPS_BACKEND", "TRITON_INTERPRET"):
    info["env_" + k] = os.environ.get(k)
print(json.dumps(info, indent=1))
open(sys.argv[1], "w").write(json.dumps(info, indent=1) + "\n")
PY
}

phase_build() {
  local jobs=${MAX_JOBS:-$(nproc)}
  local so2="import so2ops, json; print(json.dumps(so2ops.backends())); import so2ops._C as c; print('so2ops._C', c.__file__, 'cuda', c.compiled_with_cuda())"
  if [[ $DRY == 1 ]]; then
    gpu env TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS="$jobs" "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .
    gpu env TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS="$jobs" "$PY" setup.py build_ext --inplace   # the fallback
    say "[dry-run] the extension already here:"
    "$PY" -c "$so2" || say "[dry-run] so2ops._C does not import here"
    return 0
  fi
  export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=$jobs
  local t0=$SECONDS
  # the device has no network: --no-index; against the installed torch: --no-build-isolation --no-deps
  say "+ $PY -m pip install --no-build-isolation --no-deps --no-index -v -e .  (TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=$jobs)"
  # the verbose compiler output goes to build.log only (its tail is shown)
  if ! "$PY" -m pip install --no-build-isolation --no-deps --no-index -v -e . >"$OUT/build.log" 2>&1; then
    tail -n 40 "$OUT/build.log"
    say "pip editable install failed (build.log); falling back to setup.py build_ext --inplace"
    if ! "$PY" setup.py build_ext --inplace >>"$OUT/build.log" 2>&1; then
      tail -n 40 "$OUT/build.log"
      say "build failed"
      return 3
    fi
  fi
  tail -n 5 "$OUT/build.log"
  say "build took $((SECONDS - t0)) s"
  "$PY" -c "$so2" || return 4
  "$PY" -c "import so2ops._C as c, sys; sys.exit(0 if c.compiled_with_cuda() else 5)" || { say "built without CUDA"; return 5; }
}

sanitizer_flags() {
  # only the project's kernels are instrumented when this compute-sanitizer can filter by name (faster)
  local flags=(--error-exitcode 86 --print-limit 50)
  if [[ -n ${SANITIZER_KERNEL_FILTER-kns=so2ops} ]] && "$SANITIZER" --help 2>/dev/null | grep -q -- "--kernel-name"; then
    flags+=(--kernel-name "${SANITIZER_KERNEL_FILTER-kns=so2ops}")
  fi
  echo "${flags[@]}"
}

run_sanitizer() {  # tool, driver arguments...
  local tool=$1; shift
  local tag=$tool${SAN_TAG:-}
  # the deadline leaves the sanitizer time to write its report after the target exits
  local args=(sanitize-target --tag "$tag" --out "$OUT" --tile "$TILE" --deadline "$(py_deadline 8)" "$@")
  if [[ $DRY == 1 ]]; then
    say "[dry-run] would run: $SANITIZER --tool $tool --error-exitcode 86 ... $PY $SMOKE ${args[*]}"
    if [[ ${SAN_DRY_EXEC:-0} == 1 ]]; then
      "$PY" "$SMOKE" "${args[@]}" --dry-run
    fi
    return $?
  fi
  if ! command -v "$SANITIZER" >/dev/null; then say "$SANITIZER not found"; return 127; fi
  local flags rc
  read -r -a flags <<<"$(sanitizer_flags)"
  say "+ $SANITIZER --tool $tool ${flags[*]} $PY $SMOKE ${args[*]}"
  "$SANITIZER" --tool "$tool" "${flags[@]}" "$PY" "$SMOKE" "${args[@]}" 2>&1 | tee "$OUT/sanitize_$tag.log"
  rc=${PIPESTATUS[0]}
  if [[ $rc != 0 && $rc != 86 ]] && ! grep -q "^sanitize-target:" "$OUT/sanitize_$tag.log" \
     && [[ " ${flags[*]} " == *" --kernel-name "* ]]; then
    # the driver never started: most likely this compute-sanitizer does not take the name filter as written
    say "compute-sanitizer failed before the target started (exit $rc); again without --kernel-name"
    "$SANITIZER" --tool "$tool" --error-exitcode 86 --print-limit 50 "$PY" "$SMOKE" "${args[@]}" 2>&1 \
      | tee -a "$OUT/sanitize_$tag.log"
    rc=${PIPESTATUS[0]}
  fi
  [[ $rc == 86 ]] && say "compute-sanitizer $tool reported errors (sanitize_$tag.log)"
  return "$rc"
}

phase_sanitize_memcheck() { SAN_DRY_EXEC=1 run_sanitizer memcheck; }
# shared-memory hazards and barriers do not depend on the element type beyond its size: float32 and float64
phase_sanitize_racecheck() { run_sanitizer racecheck --lmax 2,4 --dtypes float32,float64; }
phase_sanitize_synccheck() { run_sanitizer synccheck --lmax 2,4 --dtypes float32,float64; }
phase_sanitize_triton() {
  # unfiltered: Triton kernels are not in the so2ops namespace
  SANITIZER_KERNEL_FILTER="" SAN_TAG=_triton SAN_DRY_EXEC=1 run_sanitizer memcheck --backends triton --ops so2_message --lmax 1
}

phase_check() {
  local args=(check --out "$OUT" --deadline "$(py_deadline 6)")
  [[ $DRY == 1 ]] && args+=(--dry-run)
  say "+ $PY $SMOKE ${args[*]}"
  "$PY" "$SMOKE" "${args[@]}"
}

run_pytest() {  # backend, extra pytest arguments (the selection)...
  local backend=$1; shift
  local select=(-m gpu "$@")
  local common=(-p gpu_smoke -q -rfE -p no:cacheprovider --continue-on-collection-errors -o faulthandler_timeout=60)
  # shellcheck disable=SC2206
  [[ -n ${PYTEST_ARGS:-} ]] && common+=($PYTEST_ARGS)
  export PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}"   # -p gpu_smoke: scripts/gpu_smoke.py
  export GPU_SMOKE_RESULTS="$OUT/pytest_$backend.tsv" GPU_SMOKE_SELECTION="$OUT/pytest_$backend.selection.tsv"
  local cmd=("$PY" -m pytest tests "${select[@]}" "${common[@]}" --junitxml="$OUT/pytest_$backend.xml")
  if [[ $DRY == 1 ]]; then
    say "[dry-run] would run: ${cmd[*]}"
    [[ ${COLLECT_DRY:-0} == 1 ]] || return 0
    # the selection a GPU machine would make, collected here from one file (CUDA pretended)
    say "[dry-run] its selection in tests/test_so2_message.py, collected with CUDA pretended:"
    GPU_SMOKE_PRETEND_CUDA=1 "$PY" -m pytest tests/test_so2_message.py \
      "${select[@]}" -p gpu_smoke -q -p no:cacheprovider --collect-only >"$OUT/pytest_$backend.log" 2>&1
    local rc=$?
    grep -v "^$" "$OUT/pytest_$backend.log" | tail -n 1
    return "$rc"
  fi
  say "+ ${cmd[*]}"
  "${cmd[@]}" 2>&1 | tee "$OUT/pytest_$backend.log"
  return "${PIPESTATUS[0]}"
}

phase_pytest_cuda() { run_pytest cuda -k "not triton"; }
# the dry run collects this phase's selection (the plugin's lmax filter and order): one collection is enough
phase_pytest_triton() { COLLECT_DRY=1 GPU_SMOKE_MAX_LMAX=4 GPU_SMOKE_SORT_LMAX=1 run_pytest triton -k "triton"; }

phase_timing() {
  local args=(timing --out "$OUT" --deadline "$(py_deadline 5)")
  [[ $DRY == 1 ]] && args+=(--dry-run)
  say "+ $PY $SMOKE ${args[*]}"
  "$PY" "$SMOKE" "${args[@]}"
}

if [[ ${1:-} == __phase ]]; then
  cd "$ROOT" || exit 2
  "phase_$2"
  exit $?
fi

# ------------------------------------------------------------------ main
# by construction: refuse limits that could add up past TOTAL_S
for spec in "${PHASES[@]}"; do
  [[ ${spec#*:} =~ ^[0-9]+$ ]] || { echo "gpu_first_run.sh: bad limit in '$spec' (LIMITS=${LIMITS:-})" >&2; exit 2; }
done
if (( $(budget_sum) > TOTAL_S )); then
  echo "gpu_first_run.sh: the phase limits sum to $(budget_sum) s > $TOTAL_S s; shorten PHASES" >&2
  exit 2
fi
DRY=0
SELECT=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --phases) SELECT=${2:-}; shift ;;
    --phases=*) SELECT=${1#--phases=} ;;
    --list)
      for spec in "${PHASES[@]}"; do printf '%s\t%s\n' "${spec%%:*}" "${spec#*:}"; done
      printf 'grace_s\t%s\nsummary_s\t%s\ntotal_s\t%s\nsum_s\t%s\n' "$GRACE_S" "$SUMMARY_S" "$TOTAL_S" "$(budget_sum)"
      exit 0 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "gpu_first_run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

known=" $(for spec in "${PHASES[@]}"; do printf '%s ' "${spec%%:*}"; done)"
for p in ${SELECT//,/ }; do
  [[ $known == *" $p "* ]] || { echo "gpu_first_run.sh: unknown phase $p (phases:$known)" >&2; exit 2; }
done

OUT=${OUT:-$ROOT/out/gpu-first-run}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || { echo "cannot create OUT=$OUT" >&2; exit 2; }
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || { echo "gpu_first_run.sh: no $PY (set PYTHON)" >&2; exit 2; }
PY=$(command -v "$PY")
[[ $PY == /* ]] || PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"   # absolute: phases cd to ROOT
export OUT PY DRY ROOT TILE=${TILE:-7} SANITIZER=${SANITIZER:-compute-sanitizer} PYTHONUNBUFFERED=1
cd "$ROOT" || exit 2

exec > >(tee -a "$OUT/first.log") 2>&1
TEE_PID=$!

START=$SECONDS
DEADLINE=$((START + TOTAL_S - SUMMARY_S))
TSV="$OUT/phases.tsv"
printf 'phase\tstatus\tseconds\ttimeout_s\tnote\n' >"$TSV"
say "== gpu_first_run.sh $(date -u +%Y-%m-%dT%H:%M:%SZ): OUT=$OUT PYTHON=$PY TILE=$TILE${SELECT:+ phases=$SELECT}$([[ $DRY == 1 ]] && echo ' [DRY RUN]')"
say "   phase limits sum to $(budget_sum) s of $TOTAL_S s"

failed=0
for spec in "${PHASES[@]}"; do
  name=${spec%%:*}
  limit=${spec#*:}
  if [[ -n $SELECT && ",$SELECT," != *",$name,"* ]]; then
    printf '%s\tskipped\t0\t0\tnot selected (--phases)\n' "$name" >>"$TSV"
    continue
  fi
  left=$((DEADLINE - SECONDS - GRACE_S))
  if (( limit > left )); then limit=$left; fi
  if (( limit < 1 || (limit == left && left < 3) )); then  # not worth starting
    printf '%s\tskipped\t0\t0\tno time left\n' "$name" >>"$TSV"
    failed=1
    continue
  fi
  say ""
  say "== phase $name (timeout ${limit} s)"
  t0=$(date +%s.%N)
  PHASE_LIMIT=$limit timeout -k "$GRACE_S" "$limit" bash "$SELF" __phase "$name"
  rc=$?
  dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  case $rc in
    0) status=ok; note="" ;;
    124) status=timeout; note="killed after ${limit} s" ;;
    137) status=timeout; note="killed (SIGKILL) after ${limit}+${GRACE_S} s" ;;
    86) status=failed; note="compute-sanitizer reported errors" ;;
    *) status=failed; note="exit status $rc" ;;
  esac
  [[ $DRY == 1 && $rc == 0 ]] && note="dry run"
  [[ $status != ok ]] && failed=1
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$dt" "$limit" "$note" >>"$TSV"
  say "== phase $name: $status ($dt s)${note:+ $note}"
done

say ""
say "== summary ($((SECONDS - START)) s; reports in $OUT)"
column -t -s $'\t' "$TSV" 2>/dev/null || cat "$TSV"
[[ -f $OUT/check.md ]] && say "   check: $(grep -m1 '^Status counts' "$OUT/check.md")  ($OUT/check.md)"
[[ -f $OUT/timing.md ]] && say "   timing: $(grep -c '| ok |' "$OUT/timing.md") rows timed ($OUT/timing.md)"
# let tee flush first.log before the device tool collects $OUT
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null || sleep 1
exit $failed
