"""Build of the compiled extension ``so2ops._C`` (metadata is in pyproject.toml).

``pip install --no-build-isolation -e .`` compiles ``csrc/module.cpp``,
``csrc/cpu/*.cpp`` and, when a CUDA toolkit is found, ``csrc/cuda/*.cu`` with
torch.utils.cpp_extension (ninja, ``MAX_JOBS`` parallel jobs, default 2).

Environment:
    SO2OPS_NO_CUDA=1        build the CPU kernels only (fast; no nvcc needed).
    CUDA_HOME               the toolkit; defaults to /usr/local/cuda-13.0 when
                            that exists (``nvcc`` on PATH may be a wrapper).
    TORCH_CUDA_ARCH_LIST    defaults to "8.0;9.0" when no GPU is visible
                            (with a GPU, torch targets the visible one).
    MAX_JOBS                parallel compile jobs (default 2).
"""
from __future__ import annotations

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_HOME = "/usr/local/cuda-13.0"
DEFAULT_ARCHS = "8.0;9.0"


def _want_cuda() -> bool:
    return os.environ.get("SO2OPS_NO_CUDA", "0") != "1"


# torch.utils.cpp_extension reads CUDA_HOME when it is imported: set it first.
if _want_cuda() and not os.environ.get("CUDA_HOME") and os.path.isdir(DEFAULT_CUDA_HOME):
    os.environ["CUDA_HOME"] = DEFAULT_CUDA_HOME
os.environ.setdefault("MAX_JOBS", "2")

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402


def _cuda_toolkit() -> str | None:
    """The CUDA toolkit to build with, or None for a CPU-only build."""
    if not _want_cuda():
        return None
    home = cpp_extension.CUDA_HOME
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return home
    return None


def _pip_cuda_include_dirs(cuda_home: str) -> list[str]:
    """Header folders of the pip CUDA wheels (nvidia/*/include), when the toolkit lacks the library headers.

    A minimal toolkit (nvcc + cudart only) has no cusparse.h / cublas_v2.h, which
    ATen/cuda/CUDAContext.h includes; torch's pip wheels ship them.  They are
    searched after every other folder (-idirafter), so the toolkit's own headers win.
    """
    if os.path.exists(os.path.join(cuda_home, "include", "cusparse.h")):
        return []
    try:
        import nvidia  # namespace package of the pip CUDA wheels
    except ImportError:
        return []
    return sorted({os.path.dirname(h) for p in nvidia.__path__ for h in glob.glob(os.path.join(p, "*", "include", "cusparse.h"))})


def _rel(paths):
    # setuptools wants source paths relative to setup.py
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def _extension():
    cuda_home = _cuda_toolkit()
    sources = _rel([os.path.join(ROOT, "csrc", "module.cpp")] + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    cxx_flags = ["-O3", "-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
    link_flags = ["-fopenmp"]
    if cuda_home is None:
        print("so2ops: building the CPU kernels only "
              f"({'SO2OPS_NO_CUDA=1' if not _want_cuda() else 'no CUDA toolkit found'})", file=sys.stderr)
        return cpp_extension.CppExtension(
            "so2ops._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags,
        )
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
    print(f"so2ops: building CPU + CUDA kernels with {cuda_home} for archs "
          f"{os.environ.get('TORCH_CUDA_ARCH_LIST', '(visible GPU)')}", file=sys.stderr)
    sources += _rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-Xcompiler=-Wno-unknown-pragmas"]
    for d in _pip_cuda_include_dirs(cuda_home):
        cxx_flags += ["-idirafter", d]
        nvcc_flags += [f"-Xcompiler=-idirafter,{d}"]
    return cpp_extension.CUDAExtension(
        "so2ops._C", sources, include_dirs=include_dirs,
        define_macros=[("SO2OPS_WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}, extra_link_args=link_flags,
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
