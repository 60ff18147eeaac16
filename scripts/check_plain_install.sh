#!/usr/bin/env bash
# The plain install route, for real: `pip install .` of this checkout with the base
# dependencies only (torch, numpy; no [data] extra) into a fresh virtual environment,
# then what a user of that install meets:
#   * `qhnetv2 --help` works; every sub-command that needs the data extra prints ONE
#     line naming the pip command and exits non-zero, never a traceback;
#   * the pip command it names resolves without reinstalling so2ops (pip --dry-run);
#   * so2ops and the QHNetV2 Python API (target full, explicit basis layout) work
#     without PySCF.
# tests/qhnetv2/test_packaging.py checks the same in the dev venv with the extra hidden;
# this script checks the packaging itself (metadata, package data, entry point).
# CPU kernels only (SO2OPS_NO_CUDA=1): the CUDA build is scripts/install.sh's.
# About 5-6 min on 2 cores (torch download ~1 min, compile ~4 min); CI runs it (.ci/run).
#   PYTHON=python3.11 bash scripts/check_plain_install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
t0=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/so2ops-plain.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# Build from a copy of the tracked (and new, not ignored) files: a non-editable build
# writes build/ and *.egg-info, which must not mix with the editable install's.
mkdir "$WORK/src"
git ls-files -z --cached --others --exclude-standard \
    | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$WORK/src"

"$PYTHON" -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
$PY -m pip install -q --upgrade pip setuptools wheel
# the base dependencies (pyproject.toml [project] dependencies) + ninja to build; no
# build isolation, which would download another torch into the build environment
$PY -m pip install -q "torch==2.14.1" numpy ninja
t_deps=$SECONDS
(cd "$WORK/src" && SO2OPS_NO_CUDA=1 MAX_JOBS=${MAX_JOBS:-2} $PY -m pip install -q --no-build-isolation .)
t_build=$SECONDS

# Everything below runs outside the source tree: imports come from the installed package.
cd "$WORK"
QH="$WORK/venv/bin/qhnetv2"
fail() { echo "check_plain_install: FAILED: $*" >&2; exit 1; }

$PY - <<'EOF' || fail "the data extra is installed in the plain venv"
import importlib.util, sys
present = [m for m in ("pyscf", "lmdb", "ase", "rdkit", "yaml", "tqdm") if importlib.util.find_spec(m)]
sys.exit(f"present: {present}" if present else 0)
EOF

"$QH" --help >/dev/null || fail "qhnetv2 --help"
"$QH" demo --help >/dev/null || fail "qhnetv2 demo --help"

commands=(
    "demo --out $WORK/demo"
    "train --config tiny --data d --split s.json --out run"
    "evaluate --checkpoint c.pt --data d"
    "predict --checkpoint c.pt --geometry g.xyz --out o.npz"
    "data build --geometries g.xyz --out d"
    "data merge a --out b"
    "data split d --out s.json"
    "data import qh9-stable f.db --out d"
    "data scf-bench d"
    "data recipe --out g"
)
for cmd in "${commands[@]}"; do
    set +e
    # shellcheck disable=SC2086  # word splitting of $cmd is intended
    out=$("$QH" $cmd 2>&1)
    rc=$?
    set -e
    lines=$(printf '%s\n' "$out" | grep -c .)
    [ "$rc" -ne 0 ] || fail "qhnetv2 $cmd exited 0 without the data extra"
    [ "$lines" -eq 1 ] || fail "qhnetv2 $cmd printed $lines lines (want 1): $out"
    case "$out" in *Traceback*) fail "qhnetv2 $cmd: traceback: $out" ;; esac
    case "$out" in *'pip install "so2ops[data]"'*) ;; *) fail "qhnetv2 $cmd: no pip command: $out" ;; esac
done
echo "plain install: $("$QH" demo --out "$WORK/demo" 2>&1)"

# the command the message names adds the extra without reinstalling so2ops
$PY -m pip install -q --dry-run --report "$WORK/report.json" "so2ops[data]" 2>/dev/null \
    || fail 'pip install --dry-run "so2ops[data]"'
$PY - "$WORK/report.json" <<'EOF' || fail 'pip install "so2ops[data]" would not install the extra as expected'
import json, sys
names = {i["metadata"]["name"].lower() for i in json.load(open(sys.argv[1]))["install"]}
sys.exit(0 if {"pyscf", "lmdb", "ase", "rdkit"} <= names and "so2ops" not in names else f"would install {sorted(names)}")
EOF

$PY - <<'EOF' || fail "so2ops / the QHNetV2 Python API without the data extra"
import sys
import so2ops
from qhnetv2.model import QHNetV2
print("so2ops backends:", so2ops.backends())
m = QHNetV2(basis="sto-3g", elements=[1, 8], layout=so2ops.BasisLayout({1: [0], 8: [0, 0, 1]}),
            channels=8, layers=1, mmax=1, num_rbf=8, body_order=2)
h = m.predict([8, 1, 1], [[0, 0, 0.1], [0.76, 0, -0.47], [-0.76, 0, -0.47]])
assert h.shape == (7, 7) and "pyscf" not in sys.modules, (h.shape, "pyscf" in sys.modules)
EOF

echo "check_plain_install: passed in $((SECONDS - t0)) s (venv + torch/numpy $((t_deps - t0)) s," \
     "pip install . $((t_build - t_deps)) s, checks $((SECONDS - t_build)) s)"
