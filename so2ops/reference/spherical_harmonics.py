"""Real spherical harmonics in e3nn's basis (polar axis +y), plain PyTorch.

For a unit vector ``u = (x, y, z)`` the polar angle is measured from +y and the
azimuth is ``phi = atan2(x, z)``.  With ``(z + i x)^m = C_m + i S_m`` and the
associated Legendre polynomials without the Condon-Shortley phase written as
``P_l^m(y) = (1-y^2)^{m/2} Q_l^m(y)``::

    Y_{l, 0}  = sqrt(2l+1) Q_l^0(y)
    Y_{l, +m} = sqrt(2 (2l+1) (l-m)!/(l+m)!) Q_l^m(y) C_m(z, x)
    Y_{l, -m} = sqrt(2 (2l+1) (l-m)!/(l+m)!) Q_l^m(y) S_m(z, x)

("component" normalization: ``sum_m Y_{l,m}^2 = 2l+1`` on the unit sphere).
Every factor is a polynomial in ``x, y, z``, so the harmonics and their
derivatives are finite everywhere, poles included.  ``tests/test_edge_wigner.py``
checks equality with ``e3nn.o3.spherical_harmonics``.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from ..layout import coeff_index, num_coeffs


@lru_cache(maxsize=None)
def sh_norms(lmax: int) -> tuple[tuple[float, ...], ...]:
    """``norms[l][m]`` for ``0 <= m <= l``: the factor in front of ``Q_l^m``."""
    out = []
    for l in range(lmax + 1):
        row = []
        for m in range(l + 1):
            f = (2 * l + 1) * math.factorial(l - m) / math.factorial(l + m)
            row.append(math.sqrt(f if m == 0 else 2.0 * f))
        out.append(tuple(row))
    return tuple(out)


def spherical_harmonics(u: torch.Tensor, lmax: int) -> torch.Tensor:
    """Real spherical harmonics of unit vectors.

    Args:
        u: ``[..., 3]`` unit vectors (not renormalised here).
        lmax: largest degree.
    Returns:
        ``[..., (lmax+1)**2]`` in the l-major layout of ``so2ops.layout``.
    """
    x, y, z = u.unbind(-1)
    norms = sh_norms(lmax)
    out = [None] * num_coeffs(lmax)
    # C_m + i S_m = (z + i x)^m, built up one power at a time.
    cm, sm = torch.ones_like(x), torch.zeros_like(x)
    q_mm = torch.ones_like(x)  # Q_m^m = (2m-1)!!
    for m in range(lmax + 1):
        if m > 0:
            cm, sm = z * cm - x * sm, x * cm + z * sm
            q_mm = q_mm * (2 * m - 1)
        q_prev, q_cur = None, q_mm
        for l in range(m, lmax + 1):
            if l == m + 1:
                q_prev, q_cur = q_cur, (2 * m + 1) * y * q_cur
            elif l > m + 1:
                q_prev, q_cur = q_cur, ((2 * l - 1) * y * q_cur - (l + m - 1) * q_prev) / (l - m)
            n = norms[l][m]
            if m == 0:
                out[coeff_index(l, 0)] = n * q_cur
            else:
                out[coeff_index(l, m)] = n * q_cur * cm
                out[coeff_index(l, -m)] = n * q_cur * sm
    return torch.stack(out, dim=-1)
