"""Constant tables for the Wigner-D construction, shared by every backend.

``D^l(R)`` is recovered from spherical harmonics at ``K = 3*lmax + 3`` fixed
sample points ``p_i`` (a Fibonacci sphere): since ``Y^l(R p) = D^l(R) Y^l(p)``,
``D^l(R) = [Y^l(R p_1) .. Y^l(R p_K)] B_l`` with ``B_l = pinv([Y^l(p_i)])``.
The sample matrices have condition number below 7 for every ``l <= 8``, so the
construction loses no accuracy, and it is a polynomial in the frame matrix:
smooth, with no Euler-angle singularity (docs/math.md).
"""
from __future__ import annotations

import math

import torch

from ._tensor_cache import tensor_cache
from .layout import num_coeffs, wigner_offset, wigner_size


def num_points(lmax: int) -> int:
    """Number of sample points used for degree ``lmax``."""
    return 3 * lmax + 3


@tensor_cache()
def _tables_f64(lmax: int):
    from .reference.spherical_harmonics import spherical_harmonics

    k = num_points(lmax)
    i = torch.arange(k, dtype=torch.float64) + 0.5
    y = 1.0 - 2.0 * i / k
    r = (1.0 - y * y).clamp_min(0).sqrt()
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    points = torch.stack([r * torch.sin(phi), y, r * torch.cos(phi)], dim=-1)
    ysh = spherical_harmonics(points, lmax)  # [K, (lmax+1)^2]
    # pinv[i, packed (l, m')] : B_l[i, m'] stored l after l, so a kernel reads
    # B_l[i, :] as a contiguous (2l+1) row at pinv[i, l*l : (l+1)^2].
    pinv = torch.empty(k, num_coeffs(lmax), dtype=torch.float64)
    for l in range(lmax + 1):
        s = slice(l * l, (l + 1) ** 2)
        pinv[:, s] = torch.linalg.pinv(ysh[:, s].T)  # [K, 2l+1]
    return points.contiguous(), pinv.contiguous()


def wigner_tables(lmax: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(points[K, 3], pinv[K, (lmax+1)**2])`` in ``dtype`` on ``device``."""
    return _cached(lmax, dtype, str(torch.device(device)))


@tensor_cache()
def _cached(lmax: int, dtype: torch.dtype, device: str):
    points, pinv = _tables_f64(lmax)
    return points.to(device=device, dtype=dtype), pinv.to(device=device, dtype=dtype)


__all__ = ["num_points", "wigner_tables", "wigner_offset", "wigner_size"]
