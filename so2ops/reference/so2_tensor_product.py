"""Reference ``so2_tensor_product``: the continuous SO(2) tensor product in a local frame.

Three stages (docs/math.md, section 5):

1. ``to_spectral``: per order ``m``, a roll-equivariant mixing of the degrees
   ``l = m..lmax`` and channels of ``x`` into ``H`` hidden circle functions, one
   set per body-order factor ``k = 1..nu``: ``s[N, nu, 2*mmax+1, H]``.
2. ``grid_product``: evaluate every factor on a uniform grid of angles, form
   the products ``p_1 = f_1, p_k = p_{k-1} f_k``, combine them per node and
   channel with ``coeffs[N, nu, H]``, project back to orders ``|m| <= mmax``.
3. ``from_spectral``: per order ``m``, a roll-equivariant map from the ``H``
   hidden channels back to degrees ``l = m..lmax`` and ``C_out`` channels.
"""
from __future__ import annotations

import math

import torch

from ..layout import coeff_index, num_coeffs, spectral_size, tp_in_blocks, tp_out_blocks


def _block(weight: torch.Tensor, off: int, rows: int, cols: int) -> torch.Tensor:
    return weight[off : off + rows * cols].view(rows, cols)


def _rows(lmax: int, m: int) -> list:
    return [coeff_index(l, m) for l in range(abs(m), lmax + 1)]


def to_spectral(x: torch.Tensor, w_in: torch.Tensor, lmax: int, mmax: int, hidden: int) -> torch.Tensor:
    """``[N, (lmax+1)**2, C]`` local-frame features -> ``[N, nu, 2*mmax+1, hidden]`` circle functions.

    Row ``mmax + m`` holds the ``cos(m theta)`` coefficient, row ``mmax - m`` the
    ``sin(m theta)`` one; per ``m > 0`` the pair is mixed by ``W1 + i W2``
    exactly as ``so2_linear`` mixes ``(x_{+m}, x_{-m})``.  The ``nu`` factors share
    one GEMM per block (their weights stacked along the output rows).
    """
    n, _, c = x.shape
    nu = w_in.shape[0]
    blocks = {(m, kind): (o, r, cc) for m, kind, o, r, cc in tp_in_blocks(lmax, mmax, c, hidden)}

    def w(m, kind):  # [nu * hidden, cols]: factor k's rows are k*hidden .. (k+1)*hidden
        o, r, cc = blocks[(m, kind)]
        return w_in[:, o : o + r * cc].reshape(nu * r, cc)

    def spread(y):  # [N, nu*hidden] -> [N, nu, hidden]
        return y.view(n, nu, hidden)

    def gather(m):  # rows (l, m), l = |m|..lmax, as [N, L*C] (explicit size: N may be 0)
        rows = _rows(lmax, m)
        return x[:, rows, :].reshape(n, len(rows) * c)

    cols = [spread(gather(0) @ w(0, "w0").T)]
    pos, neg = [], []
    for m in range(1, mmax + 1):
        xp, xn = gather(m), gather(-m)
        w1, w2 = w(m, "w1"), w(m, "w2")
        pos.append(spread(xp @ w1.T - xn @ w2.T))
        neg.append(spread(xp @ w2.T + xn @ w1.T))
    # rows m = -mmax..mmax
    return torch.stack(neg[::-1] + cols + pos, dim=2)


def grid_basis(mmax: int, grid: int, dtype, device) -> torch.Tensor:
    """``[grid, 2*mmax+1]``: column ``mmax+m`` is ``cos(m theta_j)``, ``mmax-m`` is ``sin(m theta_j)``."""
    theta = torch.arange(grid, dtype=torch.float64, device=device) * (2.0 * math.pi / grid)
    basis = torch.empty(grid, spectral_size(mmax), dtype=torch.float64, device=device)
    basis[:, mmax] = 1.0
    for m in range(1, mmax + 1):
        basis[:, mmax + m] = torch.cos(m * theta)
        basis[:, mmax - m] = torch.sin(m * theta)
    return basis.to(dtype)


def grid_product(spectral: torch.Tensor, coeffs: torch.Tensor, mmax: int, grid: int) -> torch.Tensor:
    """Products of circle functions, projected back to orders ``|m| <= mmax``.

    Args:
        spectral: ``[N, nu, 2*mmax+1, H]`` factor coefficients.
        coeffs: ``[N, nu, H]`` weight of the body-order-``k+1`` product.
        grid: number of uniform angles (``>= tp_grid_size(mmax, nu)`` for exactness).
    Returns:
        ``[N, 2*mmax+1, H]``: the Fourier coefficients (orders ``|m| <= mmax``) of
        ``g = sum_k coeffs_k * f_1 * ... * f_{k+1}``.
    """
    basis = grid_basis(mmax, grid, spectral.dtype, spectral.device)  # [G, S]
    f = torch.einsum("gs,nksh->nkgh", basis, spectral)  # [N, nu, G, H]
    p = f[:, 0]
    g = coeffs[:, 0, None, :] * p
    for k in range(1, spectral.shape[1]):
        p = p * f[:, k]
        g = g + coeffs[:, k, None, :] * p
    # projection: the discrete Fourier transform is exact for alias-free grids
    scale = torch.full((spectral_size(mmax),), 2.0 / grid, dtype=spectral.dtype, device=spectral.device)
    scale[mmax] = 1.0 / grid
    return torch.einsum("gs,ngh->nsh", basis, g) * scale[None, :, None]


def from_spectral(s: torch.Tensor, w_out: torch.Tensor, lmax: int, mmax: int, out_channels: int) -> torch.Tensor:
    """``[N, 2*mmax+1, H]`` -> ``[N, (lmax+1)**2, out_channels]`` (rows ``|m| > mmax`` are zero)."""
    n, _, hidden = s.shape
    blocks = {(m, kind): (o, r, cc) for m, kind, o, r, cc in tp_out_blocks(lmax, mmax, hidden, out_channels)}
    w = lambda m, kind: _block(w_out, *blocks[(m, kind)])  # noqa: E731
    out = s.new_zeros(n, num_coeffs(lmax), out_channels)

    def put(y, m):
        rows = _rows(lmax, m)
        out[:, rows, :] = y.reshape(n, len(rows), out_channels)

    put(s[:, mmax] @ w(0, "w0").T, 0)
    for m in range(1, mmax + 1):
        sp, sn = s[:, mmax + m], s[:, mmax - m]
        w1, w2 = w(m, "w1"), w(m, "w2")
        put(sp @ w1.T - sn @ w2.T, m)
        put(sp @ w2.T + sn @ w1.T, -m)
    return out


def so2_tensor_product(
    x: torch.Tensor,
    w_in: torch.Tensor,
    coeffs: torch.Tensor,
    w_out: torch.Tensor,
    lmax: int,
    mmax: int,
    out_channels: int,
    grid: int,
) -> torch.Tensor:
    """The continuous SO(2) tensor product (see the module docstring).

    Args:
        x: ``[N, (lmax+1)**2, C]`` features in each node's local frame.
        w_in: ``[nu, tp_in_size(lmax, mmax, C, H)]`` one input mixing per factor.
        coeffs: ``[N, nu, H]`` per-node, per-channel weights of the products
            (invariant: e.g. from the element embedding).
        w_out: ``[tp_out_size(lmax, mmax, H, out_channels)]``.
        grid: number of angles (``tp_grid_size(mmax, nu)`` by default in the op).
    Returns:
        ``[N, (lmax+1)**2, out_channels]``.
    """
    hidden = coeffs.shape[2]
    s = to_spectral(x, w_in, lmax, mmax, hidden)
    return from_spectral(grid_product(s, coeffs, mmax, grid), w_out, lmax, mmax, out_channels)
