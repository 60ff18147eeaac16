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
import struct
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
        m = re.match(r"^(\d+)\.(\d+)", a)
        if m:
            out.append(f"sm_{m.group(1)}{m.group(2)}")
    return out


def fatbin_archs(path: str) -> list[set[str]]:
    """Architectures of the device code in each CUDA fat binary embedded in ``path``.

    Reads the fat-binary container directly (cuobjdump is not always
    installed): a header ``<magic 0xBA55ED50, u16 version, u16 header size,
    u64 payload size>`` followed by entries ``<u16 kind (1 PTX, 2 cubin), u16,
    u32 header size, u64 payload size, ..., u32 arch at byte 28>``.
    """
    data = Path(path).read_bytes()
    magic = struct.pack("<I", 0xBA55ED50)
    found = []
    pos = data.find(magic)
    while pos >= 0:
        _, _, hsize, size = struct.unpack_from("<IHHQ", data, pos)
        archs, entry, end = set(), pos + hsize, pos + hsize + size
        while entry + 32 <= min(end, len(data)):
            kind, _, ehsize, esize = struct.unpack_from("<HHIQ", data, entry)
            if ehsize < 32 or kind not in (1, 2):
                break
            arch = struct.unpack_from("<I", data, entry + 28)[0]
            archs.add(("sm_%d" if kind == 2 else "compute_%d") % arch)
            entry += ehsize + esize
        found.append(archs)
        pos = data.find(magic, max(end, pos + 4))
    return found


def test_cuda_object_code_targets_archs():
    ext = _ext()
    if not ext.compiled_with_cuda():
        pytest.skip("CPU-only build")
    fatbins = fatbin_archs(ext.__file__)
    assert fatbins, f"no CUDA fat binary in {ext.__file__}"
    want = set(_expected_archs())
    for i, archs in enumerate(fatbins):  # one per .cu translation unit
        assert want <= archs, f"fat binary {i} of {ext.__file__} has {sorted(archs)}, expected {sorted(want)}"
    cuobjdump = shutil.which("cuobjdump") or shutil.which(
        "cuobjdump", path=os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda-13.0"), "bin")
    )
    if cuobjdump:  # cross-check the parser where the tool exists
        listing = subprocess.run([cuobjdump, "--list-elf", ext.__file__], capture_output=True, text=True).stdout
        assert want <= set(re.findall(r"\bsm_\d+[af]?\b", listing)), listing


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
