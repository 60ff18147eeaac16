#!/usr/bin/env bash
# Installs so2ops + qhnetv2 into ./.venv on a fresh machine, compiling the
# extension (CPU kernels always; CUDA kernels when a CUDA toolkit is found,
# see setup.py). Idempotent: rerunning only rebuilds what changed.
#   PYTHON=python3.11 bash scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip setuptools wheel
# torch first: the extension is built against the installed torch, without
# build isolation (which would download another torch).
$PIP install -q "torch==2.14.1" "triton" numpy pybind11 ninja
MAX_JOBS=${MAX_JOBS:-2} $PIP install -q --no-build-isolation -e ".[test,data,bench]"
# fairchem (UMA / eSCN-MD) for tests/test_fairchem_compat.py and the fairchem baseline
# bench: without its dependencies, which pin another torch; so2ops.compat imports
# only its torch/e3nn-only model modules (so2ops/compat/_fairchem_import.py).
$PIP install -q --no-deps "fairchem-core==2.24.0"
.venv/bin/python -c "import so2ops; print('so2ops backends:', so2ops.backends())"
