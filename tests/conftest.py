"""Shared test configuration.

Triton kernels run in the CPU interpreter when no GPU is present: the variable
must be set before triton (or so2ops.triton) is first imported.

On a machine with a GPU, every test parametrised over a ``backend`` also runs its
``cuda`` cases under ``so2ops.testing.tile_size(n)`` for each ``n`` in
``CUDA_TILES`` (ids ``tile<n>``; the kernels' own tiles: ``tile-auto``): with
their own choice every test input fits one tile, and the multi-tile,
split-segment, multi-slab and grid-stride paths of the CUDA kernels would not
run.  ``SO2OPS_TEST_CUDA_TILES=7,1`` picks other sizes, ``=`` (empty) none.
The cpu backend's tiles are exercised by targeted tests (test_edgewise.py,
test_deterministic.py, test_so2_frame_linear.py), not by doubling every cpu case.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

#: Forced tile sizes the cuda cases also run with (see the module docstring).
CUDA_TILES = tuple(int(t) for t in os.environ.get("SO2OPS_TEST_CUDA_TILES", "4").split(",") if t.strip())


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (runs whenever one is present)")
    config.addinivalue_line("markers", "slow: longer cases, still run in CI")


def pytest_generate_tests(metafunc):
    # Only where the cuda cases can run: elsewhere the ids stay as they are and nothing is added.
    if CUDA_TILES and torch.cuda.is_available() and "backend" in metafunc.fixturenames:
        metafunc.parametrize("so2ops_tile", (None,) + CUDA_TILES, indirect=True,
                             ids=["tile-auto"] + [f"tile{t}" for t in CUDA_TILES])


@pytest.fixture(autouse=True)
def so2ops_tile(request):
    """The forced tile size of this test (None: the kernels' own); see the module docstring."""
    n = getattr(request, "param", None)
    if n is None:
        yield None
        return
    import so2ops.testing

    with so2ops.testing.tile_size(n):
        yield n


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        # the forced tiles are for the cuda backend's cases only
        keep, drop = [], []
        for item in items:
            params = getattr(getattr(item, "callspec", None), "params", {})
            tiled = params.get("so2ops_tile") is not None
            (drop if tiled and params.get("backend") != "cuda" else keep).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
        return
    skip = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
