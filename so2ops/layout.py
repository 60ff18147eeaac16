"""Index bookkeeping shared by every backend.

Conventions (see docs/conventions.md):

* Irreps features ``x[N, (lmax+1)**2, C]``: l-major, ``m = -l..l`` inside each
  degree, in e3nn's real spherical-harmonics basis (polar axis = +y).
  Coefficient ``(l, m)`` sits at row ``l*l + l + m``.
* Packed Wigner-D ``wigner[E, P]`` with ``P = wigner_size(lmax)``: for
  ``l = 0..lmax`` the ``(2l+1)x(2l+1)`` block ``D^l[m, m']`` row-major.
* SO(2) "m-major" index: for ``m = 0..mmax`` and ``l = m..lmax`` (``num_mod``
  entries); it indexes the radial modulation ``modulation[E, num_mod, C_in]``
  which is shared by ``+m`` and ``-m``.
* Packed SO(2) weights ``weight[weight_size(...)]``: the ``m = 0`` block
  ``W0[L0*C_out, L0*C_in]`` then, for ``m = 1..mmax``, ``W1_m`` and ``W2_m``,
  each ``[Lm*C_out, Lm*C_in]`` with ``Lm = lmax - m + 1``; rows are
  ``(l - m)*C_out + c_out``, columns ``(l - m)*C_in + c_in``.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from ._tensor_cache import tensor_cache

#: Largest degree the compiled kernels and the constant tables support.
LMAX_SUPPORTED = 8


def num_coeffs(lmax: int) -> int:
    """Number of irreps coefficients ``(lmax+1)**2``."""
    return (lmax + 1) ** 2


def coeff_index(l: int, m: int) -> int:
    """Row of coefficient ``(l, m)`` in the l-major layout."""
    return l * l + l + m


@tensor_cache()
def m0_index(lmax: int, device: torch.device) -> torch.Tensor:
    """Rows ``(l, 0)``, ``l = 0..lmax``, as an int64 tensor on ``device``, built once per
    (lmax, device): no host-to-device copy per call (which would also break CUDA-graph capture)."""
    return torch.tensor([coeff_index(l, 0) for l in range(lmax + 1)], device=device)


def wigner_offset(l: int) -> int:
    """Offset of block ``D^l`` inside a packed Wigner row: ``sum_{k<l} (2k+1)^2``."""
    return l * (2 * l - 1) * (2 * l + 1) // 3


def wigner_size(lmax: int) -> int:
    """Packed Wigner size ``sum_{l<=lmax} (2l+1)^2``."""
    return wigner_offset(lmax + 1)


def num_mod(lmax: int, mmax: int) -> int:
    """Number of (m, l) pairs with ``0 <= m <= mmax`` and ``m <= l <= lmax``."""
    return sum(lmax - m + 1 for m in range(mmax + 1))


def mod_offset(lmax: int, m: int) -> int:
    """Index of pair ``(m, l=m)`` in the m-major list."""
    return sum(lmax - k + 1 for k in range(m))


@lru_cache(maxsize=None)
def m_major_pairs(lmax: int, mmax: int) -> tuple[tuple[int, int], ...]:
    """The (m, l) pairs of the m-major index, in order."""
    return tuple((m, l) for m in range(mmax + 1) for l in range(m, lmax + 1))


def weight_blocks(lmax: int, mmax: int, in_channels: int, out_channels: int):
    """``[(m, kind, offset, rows, cols)]`` for every packed weight block.

    ``kind`` is ``"w0"`` for ``m = 0`` and ``"w1"`` / ``"w2"`` otherwise.
    """
    blocks = []
    off = 0
    for m in range(mmax + 1):
        L = lmax - m + 1
        rows, cols = L * out_channels, L * in_channels
        for kind in (("w0",) if m == 0 else ("w1", "w2")):
            blocks.append((m, kind, off, rows, cols))
            off += rows * cols
    return blocks


def weight_size(lmax: int, mmax: int, in_channels: int, out_channels: int) -> int:
    """Number of packed SO(2) weights."""
    b = weight_blocks(lmax, mmax, in_channels, out_channels)[-1]
    return b[2] + b[3] * b[4]


# ---------------------------------------------------------------- so2_tensor_product
def spectral_size(mmax: int) -> int:
    """Rows of a spectral (circle-function) tensor: orders ``m = -mmax..mmax``, row ``m + mmax``."""
    return 2 * mmax + 1


def tp_grid_size(mmax: int, body_order: int) -> int:
    """Points of the uniform angle grid of ``so2_tensor_product``.

    A product of ``body_order`` band-limited functions of order ``<= mmax`` has
    orders up to ``body_order * mmax``.  On ``G`` uniform points order ``k``
    aliases onto ``|k - G|``, so with ``G = (body_order + 1) * mmax + 1`` every
    alias lands above ``mmax``: the projection onto orders ``|m| <= mmax`` is
    exact (the smallest such grid; docs/math.md section 5).
    """
    return (body_order + 1) * mmax + 1


def tp_in_blocks(lmax: int, mmax: int, in_channels: int, hidden: int):
    """``[(m, kind, offset, rows, cols)]`` of one packed input-mixing weight.

    Per order ``m``: ``W0[hidden, L0*C_in]`` (``m = 0``) or ``W1_m, W2_m``
    ``[hidden, Lm*C_in]``; columns ``(l - m)*C_in + c``.
    """
    blocks, off = [], 0
    for m in range(mmax + 1):
        cols = (lmax - m + 1) * in_channels
        for kind in (("w0",) if m == 0 else ("w1", "w2")):
            blocks.append((m, kind, off, hidden, cols))
            off += hidden * cols
    return blocks


def tp_out_blocks(lmax: int, mmax: int, hidden: int, out_channels: int):
    """``[(m, kind, offset, rows, cols)]`` of the packed output weight: ``[Lm*C_out, hidden]`` per block."""
    blocks, off = [], 0
    for m in range(mmax + 1):
        rows = (lmax - m + 1) * out_channels
        for kind in (("w0",) if m == 0 else ("w1", "w2")):
            blocks.append((m, kind, off, rows, hidden))
            off += rows * hidden
    return blocks


def tp_in_size(lmax: int, mmax: int, in_channels: int, hidden: int) -> int:
    """Size of one factor's packed input-mixing weight (``w_in`` is ``[body_order, tp_in_size]``)."""
    b = tp_in_blocks(lmax, mmax, in_channels, hidden)[-1]
    return b[2] + b[3] * b[4]


def tp_out_size(lmax: int, mmax: int, hidden: int, out_channels: int) -> int:
    """Size of the packed output weight ``w_out`` of ``so2_tensor_product``."""
    b = tp_out_blocks(lmax, mmax, hidden, out_channels)[-1]
    return b[2] + b[3] * b[4]
