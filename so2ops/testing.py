"""Test hooks of the compiled kernels.

``tile_size(n)`` forces small tiles in the compiled (cpu and cuda) kernels, so that tests on
small inputs run the paths that otherwise only production sizes reach: several tiles of the
tiled driver of ``so2_linear`` / ``so2_message`` / ``so2_frame_linear`` (on CUDA, destination
segments cut across tiles; on CPU, several tiles per pass), and on CUDA the multi-slab Wigner
gradient, grid-stride loops with several steps per thread and fewer ``edge_wigner`` edges per
block (``csrc/include/so2ops/tile_knob.h`` lists them).  Results must not change beyond rounding::

    with so2ops.testing.tile_size(4):
        out = so2ops.so2_message(x, wigner, edge_index, weight, lmax, mmax, c_out)

The reference and Triton backends have no such tiles and ignore it.  The setting is process-wide
(every thread, every device) and meant for tests and debugging, not for tuning.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

from .dispatch import _extension

__all__ = ["TILE_ENV", "tile_override", "tile_size"]

#: Environment variable with the same effect, read by the kernels on every call (for processes
#: that cannot call ``tile_size``, e.g. a compute-sanitizer target); ``tile_size`` wins over it.
TILE_ENV = "SO2OPS_TILE_EDGES"


def _setter():
    ext = _extension()
    return getattr(ext, "set_tile_override", None) if ext is not None else None


def tile_override() -> int:
    """The forced tile size the compiled kernels use now, 0 when none (``tile_size`` or ``SO2OPS_TILE_EDGES``)."""
    ext = _extension()
    if ext is not None and hasattr(ext, "tile_override"):
        return int(ext.tile_override())
    try:
        return max(0, int(os.environ.get(TILE_ENV, "0")))
    except ValueError:
        return 0


@contextlib.contextmanager
def tile_size(n: Optional[int]) -> Iterator[None]:
    """Force at most ``n`` edges per tile (and the smaller CUDA units above) inside the block.

    Args:
        n: a positive int, or None: no forced tile from here (also inside an outer ``tile_size``;
            ``SO2OPS_TILE_EDGES``, if set, still applies).
    Restores the previous setting on exit.  With an extension built before the knob existed, it
    sets ``SO2OPS_TILE_EDGES`` instead (the driver's edges per tile only).
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"tile_size: n must be a positive int or None, got {n!r}")
    value = 0 if n is None else n
    setter = _setter()
    if setter is not None:
        previous = setter(value)
        try:
            yield
        finally:
            setter(previous)
        return
    old = os.environ.get(TILE_ENV)
    if value:
        os.environ[TILE_ENV] = str(value)
    else:
        os.environ.pop(TILE_ENV, None)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(TILE_ENV, None)
        else:
            os.environ[TILE_ENV] = old
