"""The two GEMM stages of ``so2_tensor_product``: forward and hand-written backward.

Same math as ``so2ops.reference.so2_tensor_product.to_spectral`` /
``from_spectral`` (the readable oracle; tests/test_so2_tensor_product.py checks
these functions against autograd through it), arranged so that every order
``m`` costs one gather, one GEMM per product and nothing of full size that is
zero-filled and then overwritten.  Used by the op on every backend: the
backends differ only in the fused grid stage.

The complex structure
---------------------
For ``m > 0`` the pair ``(+m, -m)`` is mixed as a complex product
``(W1 + i W2)(a_+ + i a_-)``.  Stacking the pair along the rows of one GEMM
operand (``[N, 2, ...]`` viewed as ``[2N, ...]``: node-major, ``+m`` first)
turns the four real products into one GEMM per operand:

* forward ``to_spectral``: ``Y = [x_+; x_-] @ [W1; W2]^T``, then
  ``s_{+m} = x_+ W1^T - x_- W2^T``, ``s_{-m} = x_+ W2^T + x_- W1^T`` are two
  elementwise ops on ``Y``;
* backward: with ``A[n] = [[g_+, g_-], [g_-, -g_+]]`` (rows: ``+m``, ``-m``;
  columns: the ``W1``, ``W2`` blocks) built by ONE gather of the incoming
  gradient and one negation,
  ``dx = A @ [W1; W2]`` and ``d[W1; W2] = A^T @ [x_+; x_-]``: the gradient of
  both weight blocks comes out of one GEMM, written straight into its place in
  the packed layout (a strided ``out=`` view: no per-block buffers, no ``cat``).

Row bookkeeping: the l-major rows of order ``+m`` then ``-m`` (``l = m..lmax``)
are one cached index tensor per ``(lmax, mmax, device)`` (no host-to-device copy
per call); a gradient or output in the l-major layout is ``empty`` + one
``index_copy_`` per order, and only the rows ``|m| > mmax`` (which the op never
reads and never writes) are zero-filled.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .._tensor_cache import tensor_cache
from ..layout import coeff_index, num_coeffs, tp_in_blocks, tp_out_blocks


def _l_rows(lmax: int, m: int) -> List[int]:
    return [coeff_index(l, m) for l in range(abs(m), lmax + 1)]


@tensor_cache()
def _tables(lmax: int, mmax: int, device: torch.device):
    """Index tensors of one ``(lmax, mmax)`` on ``device``, built once.

    Returns ``(pair, quad, spec, spec4, trunc)``:

    * ``pair[m]``: l-major rows of ``+m`` then ``-m`` (``m = 0``: rows of order 0);
    * ``quad[m]`` (``m > 0``): rows ``+m, -m, -m, +m``: the output gradient laid out
      as the backward's complex matrix ``A`` (before the sign of its last block);
    * ``spec[m]`` (``m > 0``): spectral rows ``[mmax+m, mmax-m]``;
    * ``spec4[m]`` (``m > 0``): spectral rows ``[mmax+m, mmax-m, mmax-m, mmax+m]``;
    * ``trunc``: the l-major rows with ``|m| > mmax`` (maybe empty).
    """
    pair, quad, spec, spec4 = [], [], [], []
    for m in range(mmax + 1):
        p, n = _l_rows(lmax, m), (_l_rows(lmax, -m) if m else [])
        pair.append(torch.tensor(p + n, dtype=torch.long, device=device))
        quad.append(torch.tensor(p + n + n + p, dtype=torch.long, device=device))
        spec.append(torch.tensor([mmax + m, mmax - m], dtype=torch.long, device=device))
        spec4.append(torch.tensor([mmax + m, mmax - m, mmax - m, mmax + m], dtype=torch.long, device=device))
    trunc = [coeff_index(l, m) for l in range(lmax + 1) for m in range(-l, l + 1) if abs(m) > mmax]
    return tuple(pair), tuple(quad), tuple(spec), tuple(spec4), torch.tensor(trunc, dtype=torch.long, device=device)


def _block_offsets(blocks) -> List[int]:
    """Offset of the first block of every order ``m`` (for ``m > 0`` the ``W1``, ``W2`` blocks are adjacent)."""
    first = {}
    for m, _kind, off, _r, _c in blocks:
        first.setdefault(m, off)
    return [first[m] for m in sorted(first)]


def _l_major_like(n: int, lmax: int, c: int, trunc: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[n, (lmax+1)**2, c]`` uninitialised except the rows ``|m| > mmax``, which are zero."""
    out = like.new_empty(n, num_coeffs(lmax), c)
    if trunc.numel():
        out.index_fill_(1, trunc, 0)
    return out


# ------------------------------------------------------------------ to_spectral: x [N, K, C] -> s [N, nu, S, H]
def to_spectral(x: torch.Tensor, w_in: torch.Tensor, lmax: int, mmax: int, hidden: int) -> torch.Tensor:
    """``[N, (lmax+1)**2, C]`` -> ``[N, nu, 2*mmax+1, hidden]``; equals the reference ``to_spectral``."""
    return to_spectral_gathered(x, w_in, lmax, mmax, hidden)[0]


def to_spectral_gathered(x: torch.Tensor, w_in: torch.Tensor, lmax: int, mmax: int, hidden: int):
    """``to_spectral``, also returning the gathered rows of ``x`` per order (``[kinds*N, L*C]``),
    which ``to_spectral_backward`` reuses for the ``w_in`` gradient instead of gathering them again."""
    n, _, c = x.shape
    nu = w_in.shape[0]
    pair = _tables(lmax, mmax, x.device)[0]
    offs = _block_offsets(tp_in_blocks(lmax, mmax, c, hidden))
    s = x.new_empty(n, nu, 2 * mmax + 1, hidden)
    gathered = []
    for m in range(mmax + 1):
        lc = (lmax - m + 1) * c
        kinds = 1 if m == 0 else 2
        xm = x.index_select(1, pair[m]).view(kinds * n, lc)  # rows (node, +m / -m)
        gathered.append(xm)
        # w_in[k, block] is [kinds*H, L*C] for every factor k (a strided batch: no copy of the weights)
        w = w_in[:, offs[m] : offs[m] + kinds * hidden * lc].view(nu, kinds * hidden, lc)
        y = torch.matmul(xm, w.transpose(1, 2))  # [nu, kinds*N, kinds*H]
        if m == 0:
            s[:, :, mmax].copy_(y.transpose(0, 1))
            continue
        y = y.view(nu, n, 2, 2, hidden)  # (factor, node, x_+ / x_-, W1 / W2, h)
        torch.sub(y[:, :, 0, 0], y[:, :, 1, 1], out=s[:, :, mmax + m].transpose(0, 1))
        torch.add(y[:, :, 0, 1], y[:, :, 1, 0], out=s[:, :, mmax - m].transpose(0, 1))
    return s, gathered


def to_spectral_backward(
    grad_s: torch.Tensor, x: torch.Tensor, w_in: torch.Tensor, lmax: int, mmax: int, need_x: bool, need_w_in: bool,
    gathered: Optional[List[torch.Tensor]] = None,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of ``to_spectral`` w.r.t. ``x`` and ``w_in`` (None where not needed).

    Args:
        grad_s: ``[N, nu, 2*mmax+1, H]``.
        gathered: the rows of ``x`` per order from ``to_spectral_gathered`` (gathered here when None).
    Returns:
        ``grad_x [N, (lmax+1)**2, C]`` (rows ``|m| > mmax`` are zero: ``to_spectral``
        never reads them), ``grad_w_in [nu, tp_in_size]``.
    """
    n, _, c = x.shape
    nu, hidden = grad_s.shape[1], grad_s.shape[3]
    pair, _, _, spec4, trunc = _tables(lmax, mmax, x.device)
    offs = _block_offsets(tp_in_blocks(lmax, mmax, c, hidden))
    grad_x = _l_major_like(n, lmax, c, trunc, x) if need_x else None
    # every element of grad_w_in is written by exactly one GEMM below (its output is a strided view of it)
    grad_w = w_in.new_empty(w_in.shape) if need_w_in else None
    for m in range(mmax + 1):
        lc = (lmax - m + 1) * c
        kinds = 1 if m == 0 else 2
        if m == 0:
            a = grad_s[:, :, mmax].reshape(n, nu * hidden)  # columns (factor, h)
        else:
            a = grad_s.index_select(2, spec4[m]).view(n, nu, 2, 2, hidden)  # (node, factor, +m/-m row, W1/W2, h)
            a[:, :, 1, 1].neg_()
            a = a.transpose(1, 2).reshape(2 * n, nu * 2 * hidden)  # rows (node, +m/-m), columns (factor, W1/W2, h)
        w = w_in[:, offs[m] : offs[m] + kinds * hidden * lc].view(nu, kinds * hidden, lc)
        if need_x:
            # sum over the factors as accumulating GEMMs: w_in's factors are a strided batch, and
            # one [nu*kinds*H, L*C] matrix of them would be a copy of the weights
            kh = kinds * hidden
            gx = torch.mm(a[:, :kh], w[0])
            for k in range(1, nu):
                gx.addmm_(a[:, k * kh : (k + 1) * kh], w[k])
            grad_x.index_copy_(1, pair[m], gx.view(n, kinds * (lmax - m + 1), c))
        if need_w_in:
            xm = gathered[m] if gathered is not None else x.index_select(1, pair[m]).view(kinds * n, lc)
            # d[W1; W2] of factor k = A[:, k]^T @ [x_+; x_-]: one batched GEMM over the factors, written
            # straight into the packed layout (rows (W1/W2, h), columns (l, c): packed order)
            kh = kinds * hidden
            dst = grad_w[:, offs[m] : offs[m] + kh * lc].view(nu, kh, lc)
            torch.bmm(a.t().view(nu, kh, kinds * n), xm.expand(nu, kinds * n, lc), out=dst)
    return grad_x, grad_w


# ------------------------------------------------------------------ from_spectral: q [N, S, H] -> out [N, K, C_out]
def from_spectral(q: torch.Tensor, w_out: torch.Tensor, lmax: int, mmax: int, out_channels: int) -> torch.Tensor:
    """``[N, 2*mmax+1, H]`` -> ``[N, (lmax+1)**2, out_channels]``; equals the reference ``from_spectral``."""
    n, _, hidden = q.shape
    pair, _, spec, _, trunc = _tables(lmax, mmax, q.device)
    offs = _block_offsets(tp_out_blocks(lmax, mmax, hidden, out_channels))
    out = _l_major_like(n, lmax, out_channels, trunc, q)
    for m in range(mmax + 1):
        lc = (lmax - m + 1) * out_channels
        if m == 0:
            y = q[:, mmax] @ w_out[offs[0] : offs[0] + lc * hidden].view(lc, hidden).t()
            out.index_copy_(1, pair[0], y.view(n, lmax + 1, out_channels))
            continue
        qm = q.index_select(1, spec[m]).view(2 * n, hidden)  # rows (node, +m / -m)
        y = (qm @ w_out[offs[m] : offs[m] + 2 * lc * hidden].view(2 * lc, hidden).t()).view(n, 2, 2, lc)
        blk = q.new_empty(n, 2, lc)  # (node, +m / -m, (l, c))
        torch.sub(y[:, 0, 0], y[:, 1, 1], out=blk[:, 0])
        torch.add(y[:, 0, 1], y[:, 1, 0], out=blk[:, 1])
        out.index_copy_(1, pair[m], blk.view(n, 2 * (lmax - m + 1), out_channels))
    return out


def from_spectral_backward(
    grad: torch.Tensor, q: Optional[torch.Tensor], w_out: torch.Tensor, lmax: int, mmax: int, hidden: int,
    need_q: bool, need_w_out: bool,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of ``from_spectral`` w.r.t. ``q`` and ``w_out`` (None where not needed).

    Args:
        grad: ``[N, (lmax+1)**2, C_out]``; rows ``|m| > mmax`` are never read.
        q: ``[N, 2*mmax+1, H]``, only read when ``need_w_out`` (the op is linear in ``q``).
    Returns:
        ``grad_q [N, 2*mmax+1, H]``, ``grad_w_out [tp_out_size]``.
    """
    n, _, cout = grad.shape
    pair, quad, spec, _, _ = _tables(lmax, mmax, grad.device)
    offs = _block_offsets(tp_out_blocks(lmax, mmax, hidden, cout))
    grad_q = grad.new_empty(n, 2 * mmax + 1, hidden) if need_q else None
    grad_w = w_out.new_empty(w_out.shape) if need_w_out else None  # every element written by one GEMM below
    for m in range(mmax + 1):
        lc = (lmax - m + 1) * cout
        kinds = 1 if m == 0 else 2
        w = w_out[offs[m] : offs[m] + kinds * lc * hidden].view(kinds * lc, hidden)
        if m == 0:
            a = grad.index_select(1, pair[0]).view(n, lc)
            qm = q[:, mmax] if need_w_out else None
            if need_q:
                torch.mm(a, w, out=grad_q[:, mmax])
        else:
            # A[n] = [[g+, g-], [g-, -g+]]: rows the q rows (+m, -m), columns the W1 / W2 blocks
            a = grad.index_select(1, quad[m]).view(n, 2, 2, lc)
            a[:, 1, 1].neg_()
            a = a.view(2 * n, 2 * lc)
            qm = q.index_select(1, spec[m]).view(2 * n, hidden) if need_w_out else None
            if need_q:
                grad_q.index_copy_(1, spec[m], (a @ w).view(n, 2, hidden))
        if need_w_out:  # rows (W1/W2, l, c): the packed order
            torch.mm(a.t(), qm, out=grad_w[offs[m] : offs[m] + kinds * lc * hidden].view(kinds * lc, hidden))
    return grad_q, grad_w


__all__ = ["from_spectral", "from_spectral_backward", "to_spectral", "to_spectral_backward", "to_spectral_gathered"]
