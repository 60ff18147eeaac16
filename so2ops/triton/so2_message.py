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
On sm_90 the GPU launch (``_fwd_launch``: 16 x 16 x 16 tiles, 8 warps, no
software pipelining) needs no register spills at lmax 4, C 128
(``python -m bench.triton_aot --all``); the cuda backend is the default on GPUs.

Backward (``so2_message_backward``): recomputes the per-edge tensors with the
``rotate`` and ``so2_linear`` Triton kernels (gradient of ``out = sum_e D^T
Lin(D x[src])``): ``gy = D g[tgt]``, ``gxr = Lin^T gy`` (+ modulation grad),
``dW = sum_e gy xr^T`` (deterministic split reduction), ``dD`` from both
rotations, and ``gx = scatter_src(D^T gxr)`` by atomics or, deterministic, by
a segmented sum over edges sorted by source.  It materialises per-edge
``[E, K, C]`` tensors (``xr``, ``gy``, ``y`` for the Wigner gradient, ``gxr``,
and ``D^T gxr`` when deterministic), ordered so that at most three are alive
at once; the cuda backend's tiled backward keeps none.

Index entries outside ``[0, N)`` read zeros and receive nothing (no
out-of-bounds access when value checks are off); with value checks on the
launchers raise an ``IndexError`` naming ``edge_index``.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..dispatch import register_impl
from ..layout import num_mod
from ._launch import check_rows, on_device
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
    x_ptr, wig_ptr, W_ptr, woff_ptr, mod_ptr, e64, me, src, mx, co, mco, CI, CO, NM,
    L: tl.constexpr, LMAX: tl.constexpr, MMAX: tl.constexpr, MOD: tl.constexpr, ACC: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
):
    """Contribution ``D_l^T (Lin(D x[src]))_l`` of the edges ``e64`` to output degree ``L``:
    ``[BLOCK_E, pow2(2L+1), BLOCK_CO]`` (rows ``a >= 2L+1`` are zero).  ``mx``: the edges whose
    ``src`` row exists (the others read zeros)."""
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
            # and product summed over j spilled more on sm_90 (`python -m bench.triton_aot`, lmax 4 /
            # C 128: 44 kB of spill stores per thread, then 33 kB; none now, see _fwd_launch).
            d_row_p = wig_ptr + e64 * P + _woff(lp) + (lp + m) * NJ
            d_row_n = wig_ptr + e64 * P + _woff(lp) + (lp - m) * NJ
            wrow = ((L - m) * CO + co)[None, :] * (LM * CI)  # W[(l-m)*CO + co, (l'-m)*CI + ci]
            for ci0 in range(0, CI, BLOCK_CI):
                ci = ci0 + tl.arange(0, BLOCK_CI).to(tl.int64)
                mci = ci < CI
                m_eci = mx[:, None] & mci[None, :]
                x_row = x_ptr + src[:, None] * (K * CI) + ci[None, :]
                a_p = tl.zeros((BLOCK_E, BLOCK_CI), ACC)
                a_n = tl.zeros((BLOCK_E, BLOCK_CI), ACC)
                # a runtime loop, not unrolled: the Wigner entries it loads do not depend on ci, and unrolled
                # they were all hoisted out of the ci loop and held in registers (spills on sm_90)
                for j in range(2 * lp + 1):
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
                ok = (src >= 0) & (src < N)  # a bad src reads zeros; a bad tgt is in no segment
                src = tl.where(ok, src, 0)
                tgt = tl.load(tgt_ptr + e64, mask=me, other=-1)
                contrib = _degree_message(x_ptr, wig_ptr, W_ptr, woff_ptr, mod_ptr, e64, me, src, me & ok, co, mco,
                                          CI, CO, NM,
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
        # rows outside [0, N): a bad src reads zeros, a bad tgt receives nothing (never out of bounds)
        ok_s = (src >= 0) & (src < N)
        ok_t = (tgt >= 0) & (tgt < N)
        src = tl.where(ok_s, src, 0)
        tgt = tl.where(ok_t, tgt, 0)
        for l in tl.static_range(LMAX + 1):
            NL = 2 * l + 1
            a = tl.arange(0, _pow2(2 * l + 1)).to(tl.int64)
            contrib = _degree_message(x_ptr, wig_ptr, W_ptr, woff_ptr, mod_ptr, e64, me, src, me & ok_s, co, mco,
                                      CI, CO, NM, l, LMAX, MMAX, MOD, ACC, BLOCK_E, BLOCK_CO, BLOCK_CI)
            ptr = out_ptr + tgt[:, None, None] * (K * CO) + ((l * l + a) * CO)[None, :, None] + co[None, None, :]
            msk = (me & ok_t)[:, None, None] & (a < NL)[None, :, None] & mco[None, None, :]
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


def _segment_block(device: torch.device, r: int) -> int:
    """``BLOCK`` (columns per program) of ``_segment_sum_kernel`` for rows of ``r`` values."""
    return min(triton.next_power_of_2(max(r, 1)), 4096 if device.type == "cpu" else 1024)


def segment_sum(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Deterministic ``out[i] = sum_{e: index[e] = i} values[e]`` for ``values [E, ...]`` -> ``[n, ...]``."""
    out = torch.empty((n,) + tuple(values.shape[1:]), dtype=values.dtype, device=values.device)
    if n == 0 or out.numel() == 0:  # a grid axis of size 0 is invalid on a GPU
        return out
    perm, rowptr = csr_by(index, n)
    r = math.prod(values.shape[1:])
    block = _segment_block(values.device, r)
    with on_device(values):
        _segment_sum_kernel[(n, triton.cdiv(r, block))](
            values.contiguous(), perm, rowptr, out, r, ACC=tl_acc(values.dtype), BLOCK=block
        )
    return out


def _fwd_tiles(device: torch.device, lmax: int, ci: int, co: int):
    """``(BLOCK_E, BLOCK_CO, BLOCK_CI)`` of the fused forward (see ``_fwd_launch``)."""
    return _fwd_launch(device, lmax, ci, co)[:3]


def _fwd_launch(device: torch.device, lmax: int, ci: int, co: int, segmented: bool = False):
    """``(BLOCK_E, BLOCK_CO, BLOCK_CI, num_warps, num_stages)`` of ``_so2_message_fwd_kernel``
    (``num_stages`` ``None``: Triton's default)."""
    if device.type == "cpu":  # interpreter: few, fat programs
        return 64, max(16, min(triton.next_power_of_2(co), 64)), max(16, min(triton.next_power_of_2(ci), 64)), 4, None
    # sm_90, fp32, lmax 4, mmax 2, C 128 (`python -m bench.triton_aot --all --only so2_message`): [16, 16, 16]
    # at 8 warps and 1 stage needs 255 registers and no spills; at 4 warps it spilled 0.8 KB, [16, 32, 32]
    # 2-5 KB (4 or 8 warps), and the former [16, 32, 32] at 4 warps and 3 stages 33 KB.  Every tl.dot
    # operand needs >= 16 rows / columns, so these are the smallest tiles.
    return 16, 16, 16, 8, 1


def _seg_targets(device: torch.device) -> int:
    """``BLOCK_T``: target nodes per program of the deterministic (segmented) forward."""
    return 64 if device.type == "cpu" else 16


def so2_message_forward(x, wigner, edge_index, weight, modulation, lmax, mmax, out_channels, deterministic):
    """``[N, K, C_in] -> [N, K, C_out]``; see the module docstring."""
    n, k, ci = x.shape
    check_rows("edge_index", edge_index, n)
    co = out_channels
    e = wigner.shape[0]
    dev = x.device
    if e == 0:
        return torch.zeros(n, k, co, dtype=x.dtype, device=dev)
    src, tgt = edge_index[0].contiguous(), edge_index[1].contiguous()
    woff = block_offsets(lmax, mmax, ci, co, dev)
    be, bco, bci, nw, ns = _fwd_launch(dev, lmax, ci, co, deterministic)
    mod = modulation if modulation is not None else x
    common = dict(LMAX=lmax, MMAX=mmax, MOD=modulation is not None, ACC=tl_acc(x.dtype),
                  BLOCK_E=be, BLOCK_CO=bco, BLOCK_CI=bci, num_warps=nw)
    if ns is not None:
        common["num_stages"] = ns
    if deterministic:
        perm, rowptr = csr_by(tgt, n)
        out = torch.empty(n, k, co, dtype=x.dtype, device=dev)
        bt = _seg_targets(dev)
        grid = (triton.cdiv(n, bt), triton.cdiv(co, bco))
        with on_device(x):
            _so2_message_fwd_kernel[grid](x, wigner, src, tgt, perm, rowptr, weight, woff, mod, out,
                                          e, n, ci, co, num_mod(lmax, mmax), SEGMENTED=True, BLOCK_T=bt, **common)
        return out
    out = torch.zeros(n, k, co, dtype=acc_dtype(x.dtype), device=dev)
    grid = (triton.cdiv(e, be), triton.cdiv(co, bco))
    with on_device(x):
        _so2_message_fwd_kernel[grid](x, wigner, src, tgt, src, src, weight, woff, mod, out,
                                      e, n, ci, co, num_mod(lmax, mmax), SEGMENTED=False, BLOCK_T=16, **common)
    return out.to(x.dtype)


def so2_message_backward(grad, x, wigner, edge_index, weight, modulation, lmax, mmax, out_channels, deterministic,
                         need_x, need_wigner, need_weight, need_mod):
    """``(grad_x [N,K,C_in], grad_wigner [E,P], grad_weight [W], grad_modulation [E,M,C_in])``,
    ``[0]`` tensors where not needed."""
    n, k, ci = x.shape
    check_rows("edge_index", edge_index, n)
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
    # ordered so that at most three [E, K, C] tensors are alive at once (xr, gy and y or gxr)
    xr = rotate_apply(x, wigner, lmax, gather=src)  # edge-frame inputs  [E, K, C_in]
    gy = rotate_apply(grad, wigner, lmax, gather=tgt)  # d/dy of sum D^T y: D g[tgt]  [E, K, C_out]
    if need_weight:
        gw = so2_grad_weight(gy, xr, modulation, lmax, mmax, ci, co)
    if need_wigner:
        # out = D^T y: dD[m, a] = sum_c y[m] g[tgt][a]
        y, _ = so2_apply(xr, weight, modulation, lmax, mmax, ci, co)
        gwig = rotate_grad_wigner(y, grad, lmax, e, b_index=tgt)
        del y
    gxr = None
    if need_x or need_wigner or need_mod:
        gxr, gmod = so2_apply(gy, weight, modulation, lmax, mmax, ci, co, transpose=True, x=xr,
                              need_out=need_x or need_wigner, need_gmod=need_mod)
        if need_mod:
            gm = gmod
    del xr, gy
    if need_wigner:  # xr = D x[src]: dD[m, j] = sum_c gxr[m] x[src][j]
        gwig += rotate_grad_wigner(gxr, x, lmax, e, b_index=src)
    if need_x:
        if deterministic:
            gx = segment_sum(rotate_apply(gxr, wigner, lmax, transpose=True), src, n)
        else:
            gx = rotate_apply(gxr, wigner, lmax, scatter=src, num_out=n, transpose=True)
    return gx, gwig, gw, gm


register_impl("so2_message", "triton", so2_message_forward, so2_message_backward)
