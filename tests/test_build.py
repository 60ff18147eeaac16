"""The compiled extension and the native build.

* ``so2ops._C`` imports, reports its lmax, and registers every op schema;
* ``compiled_with_cuda()`` agrees with the CUDA kernels actually registered,
  and a CUDA build contains device code for each targeted architecture;
* the CMake project builds the header-math tests of ``csrc/tests`` and they
  pass under ctest (no libtorch or GPU needed).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
OPS = (
    "edge_wigner_forward",
    "edge_wigner_backward",
    "rotate_forward",
    "rotate_backward",
    "so2_linear_forward",
    "so2_linear_backward",
    "so2_message_forward",
    "so2_message_backward",
)


def _ext():
    return pytest.importorskip("so2ops._C", reason="so2ops._C not built (pip install --no-build-isolation -e .)")


def _has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"so2ops_C::{op}", key)


def test_extension_imports():
    ext = _ext()
    import so2ops

    assert ext.lmax_supported() == so2ops.LMAX_SUPPORTED
    assert isinstance(ext.compiled_with_cuda(), bool)
    for op in OPS:
        assert hasattr(torch.ops.so2ops_C, op), op


@pytest.mark.parametrize("op", OPS[:4])
def test_cpu_kernels_registered(op):
    _ext()
    assert _has_kernel(op, "CPU"), f"no CPU kernel for so2ops_C::{op}"


def test_compiled_with_cuda_matches_registered_kernels():
    ext = _ext()
    for op in OPS[:4]:
        assert _has_kernel(op, "CUDA") == ext.compiled_with_cuda(), op


def _expected_archs() -> list[str]:
    """The sm_XY targets setup.py asked for (same defaults as setup.py)."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if not archs:
        if torch.cuda.is_available():
            return sorted({"sm_%d%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        archs = "8.0;9.0"
    out = []
    for a in re.split(r"[;\s]+", archs.strip()):
        m = re.match(r"^(\d+)\.(\d+)([af]?)", a)
        if m:
            out.append(f"sm_{m.group(1)}{m.group(2)}{m.group(3)}")
    return out


def test_cuda_object_code_targets_archs():
    ext = _ext()
    if not ext.compiled_with_cuda():
        pytest.skip("CPU-only build")
    cuobjdump = shutil.which("cuobjdump") or next(
        (str(p) for p in (Path(os.environ.get("CUDA_HOME", "/usr/local/cuda-13.0")) / "bin" / "cuobjdump",) if p.exists()),
        None,
    )
    if cuobjdump is None:
        pytest.skip("cuobjdump not found")
    listing = subprocess.run([cuobjdump, "--list-elf", ext.__file__], capture_output=True, text=True, check=True).stdout
    found = set(re.findall(r"\bsm_\d+[af]?\b", listing))
    for arch in _expected_archs():
        assert arch in found, f"{arch} missing from {ext.__file__} (found {sorted(found)})"


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_ctest_header_math(tmp_path):
    build = tmp_path / "build"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    env = dict(os.environ)

    def run(*cmd):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}"
        return r.stdout

    run("cmake", "-S", str(ROOT), "-B", str(build), *gen, f"-DPython3_EXECUTABLE={sys.executable}")
    run("cmake", "--build", str(build), "-j", os.environ.get("MAX_JOBS", "2"))
    out = run("ctest", "--test-dir", str(build), "--output-on-failure")
    assert "100% tests passed" in out, out
