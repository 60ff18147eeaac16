"""Triton ``so2_message``: matches ``so2ops.reference.so2_message``.

Forward, one fused kernel (``_so2_message_fwd_kernel``); a program owns a tile
of edges x output channels and, one output degree ``l`` at a time:

1. for every order ``|m| <= min(l, mmax)`` and input degree ``l' >= m``
   gathers ``x[src]`` rows of degree ``l'`` one row ``j`` at a time
   (``[BLOCK_E, BLOCK_CI]``) and rotates them into the edge frame, keeping only
   the two rows ``+-m`` (``sum_j D_{l'}[+-m, j] x_j``), applies the modulation,
   and multiplies by the ``(l, l')`` tile of ``W1_m``/``W2_m`` with ``tl.dot``;
2. rotates the ``2*min(l,mmax)+1`` frame rows of degree ``l`` back
   (``out[l, a] += D_l[m, a] y[l, m]``) into a ``[BLOCK_E, 2l+1, BLOCK_CO]`` tile;
3. atomically adds the tile into ``out[tgt]`` (float32/float64 buffer), or,
   ``deterministic=True``, each program owns ``BLOCK_T`` consecutive target
   nodes, walks their edges (sorted by target with a stable argsort, CSR
   offsets) chunk by chunk in a fixed order, sums each chunk into its targets
   with a 0/1 matrix product and stores once without atomics: bitwise
   reproducible.

No ``[E, (lmax+1)**2, C]`` tensor exists in the forward; the price is that the
frame-rotated inputs are recomputed per output degree (cheap next to the GEMM).
On sm_90 this kernel still spills registers at every tile size tried
(``python -m bench.triton_aot --ptxas``); the cuda backend is the default on GPUs.

Backward (``so2_message_backward``): recomputes the per-edge tensors with the
``rotate`` and ``so2_linear`` Triton kernels (gradient of ``out = sum_e D^T
Lin(D x[src])``): ``gy = D g[tgt]``, ``gxr = Lin^T gy`` (+ modulation grad),
``dW = sum_e gy xr^T`` (deterministic split reduction), ``dD`` from both
rotations, and ``gx = scatter_src(D^T gxr)`` by atomics or, deterministic, by
a segmented sum over edges sorted by source.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..dispatch import register_impl
from ..layout import num_mod
from .rotate import acc_dtype, rotate_apply, rotate_grad_wigner, tl_acc
from .so2_linear import block_offsets, so2_apply, so2_grad_weight


@triton.constexpr_function
def _pow2(n):
    """Smallest power of two ``>= n``.  Builtins only: calling ``triton.next_power_of_2``
    (itself a constexpr function in Triton >= 3.5) from here fails when compiling for a GPU."""
    p = 1
    while p < n:
        p *= 2
    return p


@triton.constexpr_function
def _woff(l):
    return l * (2 * l - 1) * (2 * l + 1) // 3


@triton.constexpr_function
def _min(a, b):
    return min(a, b)


@triton.jit
def _degree_message(
    x_ptr, wig_ptr, W_ptr, woff_ptr, mod_ptr, e64, me, src, co, mco, CI, CO, NM,
    L: tl.constexpr, LMAX: tl.constexpr, MMAX: tl.constexpr, MOD: tl.constexpr, ACC: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
):
    """Contribution ``D_l^T (Lin(D x[src]))_l`` of the edges ``e64`` to output degree ``L``:
    ``[BLOCK_E, pow2(2L+1), BLOCK_CO]`` (rows ``a >= 2L+1`` are zero)."""
    K: tl.constexpr = (LMAX + 1) * (LMAX + 1)
    P: tl.constexpr = _woff(LMAX + 1)
    NL: tl.constexpr = 2 * L + 1
    a = tl.arange(0, _pow2(NL)).to(tl.int64)
    ma = a < NL
    wig_row = e64[:, None] * P
    m_ea = me[:, None] & ma[None, :]
    out = tl.zeros((BLOCK_E, _pow2(NL), BLOCK_CO), ACC)
    for m in tl.static_range(_min(L, MMAX) + 1):
        LM = LMAX - m + 1
        woff1 = tl.load(woff_ptr + m)
        woff2 = woff1 + (LM * LM * CI).to(tl.int64) * CO
        # Inside static loops, `X: tl.constexpr = ...` cannot be used (the compiler, unlike the
        # interpreter, rejects re-binding it on the next unrolled iteration) and a plain `X = ...`
        # turns into a scalar tensor: fine for index arithmetic, but every shape below is
        # therefore spelled inline from the static indices.
        moff = m * (LMAX + 1) - m * (m - 1) // 2
        y_p = tl.zeros((BLOCK_E, BLOCK_CO), ACC)
        y_n = tl.zeros((BLOCK_E, BLOCK_CO), ACC)
        for lp in tl.static_range(m, LMAX + 1):
            NJ = 2 * lp + 1
            # rows +-m of D_{l'} (the only frame coefficients this order needs), one column j at a
            # time: 2-D [BLOCK_E, BLOCK_CI] terms only.  The earlier [BLOCK_E, 2l'+1, BLOCK_CI] gather
            # and product summed over j spilled more on sm_90 (`python -m bench.triton_aot --ptxas`,
            # lmax 4 / C 128: 44 kB of spill stores per thread, now 33 kB; the kernel still spills).
            d_row_p = wig_ptr + e64 * P + _woff(lp) + (lp + m) * NJ
            d_row_n = wig_ptr + e64 * P + _woff(lp) + (lp - m) * NJ
            wrow = ((L - m) * CO + co)[None, :] * (LM * CI)  # W[(l-m)*CO + co, (l'-m)*CI + ci]
            for ci0 in range(0, CI, BLOCK_CI):
                ci = ci0 + tl.arange(0, BLOCK_CI).to(tl.int64)
                mci = ci < CI
                m_eci = me[:, None] & mci[None, :]
                x_row = x_ptr + src[:, None] * (K * CI) + ci[None, :]
                a_p = tl.zeros((BLOCK_E, BLOCK_CI), ACC)
                a_n = tl.zeros((BLOCK_E, BLOCK_CI), ACC)
                for j in tl.static_range(2 * lp + 1):
                    xj = tl.load(x_row + (lp * lp + j) * CI, mask=m_eci, other=0.0).to(ACC)
                    a_p += tl.load(d_row_p + j, mask=me, other=0.0).to(ACC)[:, None] * xj
                    if m > 0:
                        a_n += tl.load(d_row_n + j, mask=me, other=0.0).to(ACC)[:, None] * xj
                if MOD:
                    s = tl.load(
                        mod_ptr + e64[:, None] * (NM * CI) + ((moff + lp - m) * CI + ci)[None, :],
                        mask=me[:, None] & mci[None, :], other=0.0,
                    ).to(ACC)
                    a_p = a_p * s
                    if m > 0:
                        a_n = a_n * s
                widx = wrow + ((lp - m) * CI + ci)[:, None]
                m_w = mci[:, None] & mco[None, :]
                w1 = tl.load(W_ptr + woff1 + widx, mask=m_w, other=0.0)
                a_p = a_p.to(W_ptr.dtype.element_ty)
                y_p += tl.dot(a_p, w1, input_precision="ieee").to(ACC)
                if m > 0:
                    w2 = tl.load(W_ptr + woff2 + widx, mask=m_w, other=0.0)
                    a_n = a_n.to(W_ptr.dtype.element_ty)
                    y_p -= tl.dot(a_n, w2, input_precision="ieee").to(ACC)
                    y_n += tl.dot(a_p, w2, input_precision="ieee").to(ACC) + tl.dot(a_n, w1, input_precision="ieee").to(ACC)
        # back to the global frame: out[a] += D_l[m, a] y[m]  (out = D_l^T y)
        b_p = tl.load(wig_ptr + wig_row + (_woff(L) + (L + m) * NL + a)[None, :], mask=m_ea, other=0.0).to(ACC)
        out += b_p[:, :, None] * y_p[:, None, :]
        if m > 0:
            b_n = tl.load(wig_ptr + wig_row + (_woff(L) + (L - m) * NL + a)[None, :], mask=m_ea, other=0.0).to(ACC)
            out += b_n[:, :, None] * y_n[:, None, :]
    return out


@triton.jit
def _so2_message_fwd_kernel(
    x_ptr, wig_ptr, src_ptr, tgt_ptr, perm_ptr, rowptr_ptr, W_ptr, woff_ptr, mod_ptr, out_ptr,
    E, N, CI, CO, NM,
    LMAX: tl.constexpr, MMAX: tl.constexpr, MOD: tl.constexpr, SEGMENTED: tl.constexpr, ACC: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """``out[t] = sum_{e: tgt[e] = t} D_e^T Lin(D_e x[src[e]])``; see the module docstring."""
    K: tl.constexpr = (LMAX + 1) * (LMAX + 1)
    pid = tl.program_id(0)
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO).to(tl.int64)
    mco = co < CO
    if SEGMENTED:
        # program = BLOCK_T consecutive targets = one contiguous run of the target-sorted edges;
        # per chunk, a 0/1 [BLOCK_T, BLOCK_E] matrix sums the edges into their targets (fixed order)
        t = pid.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
        mt = t < N
        seg_lo = tl.load(rowptr_ptr + pid.to(tl.int64) * BLOCK_T)
        seg_hi = tl.load(rowptr_ptr + tl.minimum(pid.to(tl.int64) * BLOCK_T + BLOCK_T, N))
        for l in tl.static_range(LMAX + 1):
            # shapes spelled from the static index (see _degree_message for why no `NL: tl.constexpr`)
            NL = 2 * l + 1
            acc = tl.zeros((BLOCK_T, _pow2(2 * l + 1) * BLOCK_CO), ACC)
            for p0 in range(seg_lo, seg_hi, BLOCK_E):
                pos = p0 + tl.arange(0, BLOCK_E).to(tl.int64)
                me = pos < seg_hi
                e64 = tl.load(perm_ptr + pos, mask=me, other=0)
                src = tl.load(src_ptr + e64, mask=me, other=0)
                tgt = tl.load(tgt_ptr + e64, mask=me, other=-1)
                contrib = _degree_message(x_ptr, wig_ptr, W_ptr, woff_ptr, mod_ptr, e64, me, src, co, mco, CI, CO, NM,
                                          l, LMAX, MMAX, MOD, ACC, BLOCK_E, BLOCK_CO, BLOCK_CI)
                onehot = (tgt[None, :] == t[:, None]).to(ACC)
                acc += tl.dot(onehot, tl.reshape(contrib, (BLOCK_E, _pow2(2 * l + 1) * BLOCK_CO)), input_precision="ieee").to(ACC)
            f = tl.arange(0, _pow2(2 * l + 1) * BLOCK_CO).to(tl.int64)
            a = f // BLOCK_CO
            cf = tl.program_id(1) * BLOCK_CO + f % BLOCK_CO
            ptr = out_ptr + t[:, None] * (K * CO) + ((l * l + a) * CO + cf)[None, :]
            tl.store(ptr, acc.to(out_ptr.dtype.element_ty), mask=mt[:, None] & ((a < NL) & (cf < CO))[None, :])
    else:
        e = pid * BLOCK_E + tl.arange(0, BLOCK_E).to(tl.int64)
        me = e < E
        e64 = e.to(tl.int64)
        src = tl.load(src_ptr + e64, mask=me, other=0)
        tgt = tl.load(tgt_ptr + e64, mask=me, other=0)
        for l in tl.static_range(LMAX + 1):
            NL = 2 * l + 1
            a = tl.arange(0, _pow2(2 * l + 1)).to(tl.int64)
            contrib = _degree_message(x_ptr, wig_ptr, W_ptr, woff_ptr, mod_ptr, e64, me, src, co, mco, CI, CO, NM,
                                      l, LMAX, MMAX, MOD, ACC, BLOCK_E, BLOCK_CO, BLOCK_CI)
            ptr = out_ptr + tgt[:, None, None] * (K * CO) + ((l * l + a) * CO)[None, :, None] + co[None, None, :]
            msk = me[:, None, None] & (a < NL)[None, :, None] & mco[None, None, :]
            tl.atomic_add(ptr, contrib.to(out_ptr.dtype.element_ty), mask=msk)


@triton.jit
def _segment_sum_kernel(v_ptr, perm_ptr, rowptr_ptr, out_ptr, R, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """``out[t, :] = sum_{pos in [rowptr[t], rowptr[t+1])} v[perm[pos], :]`` in order (no atomics)."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mc = cols < R
    lo = tl.load(rowptr_ptr + t)
    hi = tl.load(rowptr_ptr + t + 1)
    acc = tl.zeros((BLOCK,), ACC)
    for pos in range(lo, hi):
        e = tl.load(perm_ptr + pos)
        acc += tl.load(v_ptr + e * R + cols, mask=mc, other=0.0).to(ACC)
    tl.store(out_ptr + t * R + cols, acc.to(out_ptr.dtype.element_ty), mask=mc)


def csr_by(index: torch.Tensor, n: int):
    """``(perm [E], rowptr [n+1])``: edges sorted by ``index`` (stable), segment offsets."""
    perm = torch.argsort(index, stable=True)
    # searchsorted, not bincount: bincount reads max(index) on the host (a GPU sync, and
    # CUDA-graph capture fails); this stays on the device and is deterministic
    rowptr = torch.searchsorted(index.index_select(0, perm), torch.arange(n + 1, dtype=index.dtype, device=index.device))
    return perm, rowptr


def segment_sum(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Deterministic ``out[i] = sum_{e: index[e] = i} values[e]`` for ``values [E, ...]`` -> ``[n, ...]``."""
    out = torch.empty((n,) + tuple(values.shape[1:]), dtype=values.dtype, device=values.device)
    if n == 0 or out.numel() == 0:  # a grid axis of size 0 is invalid on a GPU
        return out
    perm, rowptr = csr_by(index, n)
    r = math.prod(values.shape[1:])
    block = min(triton.next_power_of_2(max(r, 1)), 4096 if values.device.type == "cpu" else 1024)
    _segment_sum_kernel[(n, triton.cdiv(r, block))](
        values.contiguous(), perm, rowptr, out, r, ACC=tl_acc(values.dtype), BLOCK=block
    )
    return out


def _fwd_tiles(device: torch.device, lmax: int, ci: int, co: int):
    if device.type == "cpu":  # interpreter: few, fat programs
        return 64, max(16, min(triton.next_power_of_2(co), 64)), max(16, min(triton.next_power_of_2(ci), 64))
    bco = 32 if lmax <= 4 else 16
    return 16, max(16, min(triton.next_power_of_2(co), bco)), max(16, min(triton.next_power_of_2(ci), 32 if lmax <= 4 else 16))


def so2_message_forward(x, wigner, edge_index, weight, modulation, lmax, mmax, out_channels, deterministic):
    """``[N, K, C_in] -> [N, K, C_out]``; see the module docstring."""
    n, k, ci = x.shape
    co = out_channels
    e = wigner.shape[0]
    dev = x.device
    if e == 0:
        return torch.zeros(n, k, co, dtype=x.dtype, device=dev)
    src, tgt = edge_index[0].contiguous(), edge_index[1].contiguous()
    woff = block_offsets(lmax, mmax, ci, co, dev)
    be, bco, bci = _fwd_tiles(dev, lmax, ci, co)
    mod = modulation if modulation is not None else x
    common = dict(LMAX=lmax, MMAX=mmax, MOD=modulation is not None, ACC=tl_acc(x.dtype),
                  BLOCK_E=be, BLOCK_CO=bco, BLOCK_CI=bci)
    if deterministic:
        perm, rowptr = csr_by(tgt, n)
        out = torch.empty(n, k, co, dtype=x.dtype, device=dev)
        bt = 64 if dev.type == "cpu" else 16
        grid = (triton.cdiv(n, bt), triton.cdiv(co, bco))
        _so2_message_fwd_kernel[grid](x, wigner, src, tgt, perm, rowptr, weight, woff, mod, out,
                                      e, n, ci, co, num_mod(lmax, mmax), SEGMENTED=True, BLOCK_T=bt, **common)
        return out
    out = torch.zeros(n, k, co, dtype=acc_dtype(x.dtype), device=dev)
    grid = (triton.cdiv(e, be), triton.cdiv(co, bco))
    _so2_message_fwd_kernel[grid](x, wigner, src, tgt, src, src, weight, woff, mod, out,
                                  e, n, ci, co, num_mod(lmax, mmax), SEGMENTED=False, BLOCK_T=16, **common)
    return out.to(x.dtype)


def so2_message_backward(grad, x, wigner, edge_index, weight, modulation, lmax, mmax, out_channels, deterministic,
                         need_x, need_wigner, need_weight, need_mod):
    """``(grad_x [N,K,C_in], grad_wigner [E,P], grad_weight [W], grad_modulation [E,M,C_in])``,
    ``[0]`` tensors where not needed."""
    n, k, ci = x.shape
    co = out_channels
    e = wigner.shape[0]
    need_mod = need_mod and modulation is not None
    # four distinct placeholders: a custom op's outputs may not alias each other
    gx, gwig, gw, gm = (grad.new_empty(0) for _ in range(4))
    if e == 0:
        if need_x:
            gx = torch.zeros_like(x)
        if need_wigner:
            gwig = torch.zeros_like(wigner)
        if need_weight:
            gw = torch.zeros_like(weight)
        if need_mod:
            gm = torch.zeros_like(modulation)
        return gx, gwig, gw, gm
    src, tgt = edge_index[0].contiguous(), edge_index[1].contiguous()
    xr = rotate_apply(x, wigner, lmax, gather=src)  # edge-frame inputs  [E, K, C_in]
    gy = rotate_apply(grad, wigner, lmax, gather=tgt)  # d/dy of sum D^T y: D g[tgt]  [E, K, C_out]
    gxr = None
    if need_x or need_wigner or need_mod:
        gxr, gmod = so2_apply(gy, weight, modulation, lmax, mmax, ci, co, transpose=True, x=xr,
                              need_out=need_x or need_wigner, need_gmod=need_mod)
        if need_mod:
            gm = gmod
    if need_weight:
        gw = so2_grad_weight(gy, xr, modulation, lmax, mmax, ci, co)
    if need_wigner:
        y, _ = so2_apply(xr, weight, modulation, lmax, mmax, ci, co)
        # out = D^T y: dD[m, a] = sum_c y[m] g[tgt][a];  xr = D x[src]: dD[m, j] = sum_c gxr[m] x[src][j]
        gwig = rotate_grad_wigner(y, grad, lmax, e, b_index=tgt) + rotate_grad_wigner(gxr, x, lmax, e, b_index=src)
    if need_x:
        if deterministic:
            gx = segment_sum(rotate_apply(gxr, wigner, lmax, transpose=True), src, n)
        else:
            gx = rotate_apply(gxr, wigner, lmax, scatter=src, num_out=n, transpose=True)
    return gx, gwig, gw, gm


register_impl("so2_message", "triton", so2_message_forward, so2_message_backward)
