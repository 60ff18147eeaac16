"""Triton ``so2_frame_linear``: matches ``so2ops.reference.so2_frame_linear``.

Built on the Triton ``rotate`` and ``so2_linear`` kernels, with the backward
written out (no autograd replay), so that ``deterministic`` is honoured:

* gather (``to_nodes=False``), ``out[e] = s_e (Lin(D_e x[index[e]]) + bias)``:
  forward ``rotate`` (gather) then ``so2_apply``; backward ``gL = Lin^T(s g)``
  and ``grad_x = sum_{e: index[e] = n} D_e^T gL[e]``, by atomics or, when
  ``deterministic``, rotated per edge and summed by ``segment_sum`` over the
  edges sorted by index (fixed order: bitwise reproducible);
* scatter (``to_nodes=True``), ``out[n] = sum_{e: index[e] = n} D_e^T w_e`` with
  ``w_e = s_e (Lin(x[e]) + bias)``: the forward's sum is the atomic scatter
  fused into the rotation kernel (no ``[E, K, C_out]`` rotated messages) or,
  ``deterministic``, the rotated messages summed by ``segment_sum``; the
  backward only gathers (``D_e g[index[e]]``), which needs no reduction.

The weight gradient (split reduction summed in a fixed order), the Wigner
gradient (a plain per-edge reduction) and the bias / scale gradients (torch
reductions over edges) are deterministic in every mode.  Not fused: one
``[E, K, C]`` edge-frame tensor exists during the op (the fused form is the
cpu / cuda tiled driver).
"""
from __future__ import annotations

import torch

from ..dispatch import register_impl
from ._launch import check_rows
from .rotate import rotate_apply, rotate_grad_wigner
from .so2_linear import so2_apply, so2_linear_grads
from .so2_message import segment_sum


def _add_bias(y: torch.Tensor, bias, lmax: int) -> torch.Tensor:
    """``y[:, (l, 0), :] += bias[l]`` in place (plain slices: no index kernels, no atomics)."""
    if bias is not None:
        for l in range(lmax + 1):
            y[:, l * l + l, :] += bias[l]
    return y


def _edge_out(inp, weight, modulation, bias, lmax, mmax, out_channels):
    """``Lin(inp) + bias``: ``[E, K, C_in] -> [E, K, C_out]``."""
    y, _ = so2_apply(inp, weight, modulation, lmax, mmax, inp.shape[2], out_channels)
    return _add_bias(y, bias, lmax)


def _scatter_rotated(y, wigner, lmax, index, num_nodes, deterministic):
    """``out[n] = sum_{e: index[e] = n} D_e^T y[e]`` -> ``[num_nodes, K, C]``."""
    if deterministic:
        return segment_sum(rotate_apply(y, wigner, lmax, transpose=True), index, num_nodes)
    return rotate_apply(y, wigner, lmax, scatter=index, num_out=num_nodes, transpose=True)


def _forward(x, wigner, index, weight, modulation, bias, scale, lmax, mmax, out_channels, num_nodes, to_nodes,
             deterministic):
    """Gather: ``[N, K, C_in] -> [E, K, C_out]``; scatter: ``[E, K, C_in] -> [num_nodes, K, C_out]``."""
    check_rows("index", index, num_nodes if to_nodes else x.shape[0])
    local = x if to_nodes else rotate_apply(x, wigner, lmax, gather=index)
    y = _edge_out(local, weight, modulation, bias, lmax, mmax, out_channels)
    if scale is not None:
        y = y * scale.view(-1, 1, 1)
    if not to_nodes:
        return y
    return _scatter_rotated(y, wigner, lmax, index, num_nodes, deterministic)


def _backward(grad, x, wigner, index, weight, modulation, bias, scale, lmax, mmax, out_channels, num_nodes, to_nodes,
              deterministic, need_x, need_wigner, need_weight, need_mod, need_bias, need_scale):
    """``(grad_x, grad_wigner, grad_weight, grad_modulation, grad_bias, grad_scale)``, ``[0]`` tensors where
    not needed (see the module docstring for the formulas)."""
    check_rows("index", index, num_nodes if to_nodes else x.shape[0])
    cin = x.shape[2]
    e = wigner.shape[0]
    need_mod = need_mod and modulation is not None
    need_bias = need_bias and bias is not None
    need_scale = need_scale and scale is not None
    gx, gwig, gb, gs = (grad.new_empty(0) for _ in range(4))  # gw, gm: from so2_linear_grads below
    # g_edge: the gradient wrt the op's per-edge output  s_e (Lin(local_e) + bias)
    g_edge = rotate_apply(grad, wigner, lmax, gather=index) if to_nodes else grad
    # local: the SO(2) layer's input (the rotated gather, or x itself)
    need_local = need_weight or need_mod or need_scale
    local = None
    if need_local:
        local = x if to_nodes else rotate_apply(x, wigner, lmax, gather=index)
    z = None  # Lin(local) + bias, recomputed only where needed
    if need_scale or (need_wigner and to_nodes):
        z = _edge_out(local if local is not None else x, weight, modulation, bias, lmax, mmax, out_channels)
    if need_scale:
        gs = (g_edge * z).sum(dim=(1, 2))
    gz = g_edge * scale.view(-1, 1, 1) if scale is not None else g_edge
    if need_bias:
        gb = torch.stack([gz[:, l * l + l, :].sum(0) for l in range(lmax + 1)])
    need_glocal = need_x or (need_wigner and not to_nodes)
    # the SO(2) layer's own backward on the edge frame: glocal = Lin^T(gz) and the weight / modulation grads
    glocal, gw, gm = so2_linear_grads(gz, local, weight, modulation, lmax, mmax, cin, out_channels, need_glocal,
                                      need_weight, need_mod)
    if to_nodes:
        if need_x:
            gx = glocal
        if need_wigner:  # out = sum D^T w:  dD[m, a] = sum_c w[m] g[index][a]
            w = z * scale.view(-1, 1, 1) if scale is not None else z
            gwig = rotate_grad_wigner(w, grad, lmax, e, b_index=index)
    else:
        if need_x:
            gx = _scatter_rotated(glocal, wigner, lmax, index, x.shape[0], deterministic)
        if need_wigner:  # local = D x[index]:  dD[m, j] = sum_c glocal[m] x[index][j]
            gwig = rotate_grad_wigner(glocal, x, lmax, e, b_index=index)
    return gx, gwig, gw, gm, gb, gs


register_impl("so2_frame_linear", "triton", _forward, _backward)
