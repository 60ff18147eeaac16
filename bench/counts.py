"""Analytic work counts shared by the per-op modules.

Conventions (every op follows them, ``tests/test_bench.py`` checks them
against a brute-force count of the reference):

* ``flops`` counts the contractions only, 2 per multiply-add, of the op's
  math as the reference writes it (dense per-degree Wigner blocks, the SO(2)
  block matmuls).  Element-wise scaling and the scatter-sum are a few percent
  and are left out, as ``torch.utils.flop_counter`` does.  The backward counts
  the gradients that are actually requested (see each op's ``GRAD``), with the
  forward's activations assumed available: a kernel that recomputes them does
  extra, uncounted work.
* ``bytes`` is the compulsory DRAM traffic: every input read once, every
  output (and requested gradient) written once.  A kernel reading less than
  this is impossible; ``bytes / time`` is therefore a lower bound on the
  achieved bandwidth.
"""
from __future__ import annotations

from dataclasses import dataclass

from so2ops.layout import num_coeffs, weight_size, wigner_size


@dataclass(frozen=True)
class Count:
    """Work of one call: ``flops`` (2 x multiply-adds) and compulsory ``bytes``."""

    flops: int
    bytes: int

    def __add__(self, other: "Count") -> "Count":
        return Count(self.flops + other.flops, self.bytes + other.bytes)


def combine(fwd: Count, bwd: Count, mode: str) -> Count:
    """The count of ``mode`` from the forward and backward counts."""
    if mode == "fwd":
        return fwd
    if mode == "bwd":
        return bwd
    if mode == "fwdbwd":
        return fwd + bwd
    raise ValueError(f"unknown mode {mode!r}")


def rotate_macs(lmax: int) -> int:
    """Multiply-adds per edge and channel of one block-diagonal rotation: ``sum_l (2l+1)^2``."""
    return wigner_size(lmax)


def so2_macs(lmax: int, mmax: int) -> int:
    """Multiply-adds per edge and (C_in x C_out) of the SO(2) linear map.

    ``m = 0``: one ``L0 x L0`` block; ``m > 0``: four ``Lm x Lm`` blocks
    (``W1 x+``, ``W2 x-``, ``W2 x+``, ``W1 x-``), ``Lm = lmax - m + 1``.
    """
    return (lmax + 1) ** 2 + 4 * sum((lmax - m + 1) ** 2 for m in range(1, mmax + 1))


def irreps_numel(n: int, lmax: int, c: int) -> int:
    """Elements of an ``[n, (lmax+1)^2, c]`` feature tensor."""
    return n * num_coeffs(lmax) * c


def weight_numel(lmax: int, mmax: int, cin: int, cout: int) -> int:
    return weight_size(lmax, mmax, cin, cout)
