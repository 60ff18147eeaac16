"""eSCN-MD / UMA / EquiformerV2-style edge-wise message block built on so2ops ops.

Notation: ``N`` nodes, ``E`` edges, ``K = (lmax+1)**2`` coefficients (l-major,
e3nn basis, docs/conventions.md), ``C`` sphere channels, ``H`` hidden channels,
``L0 = lmax + 1`` (the ``m = 0`` rows ``(l, 0)``), ``NM = num_mod(lmax, mmax)``.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..dispatch import current_backend, use_backend
from ..layout import coeff_index, num_coeffs, num_mod, weight_size
from ..ops import rotate, so2_linear
from .so2_linear import init_so2_weight

_ops = torch.ops.so2ops

__all__ = ["RadialMLP", "SO2EdgeLinear", "SO2EdgewiseBlock", "m0_rows"]


def m0_rows(lmax: int) -> list[int]:
    """Rows ``(l, 0)``, ``l = 0..lmax``, of the l-major layout."""
    return [coeff_index(l, 0) for l in range(lmax + 1)]


def _degree_of_rows(lmax: int) -> list[int]:
    return [l for l in range(lmax + 1) for _ in range(2 * l + 1)]


class RadialMLP(nn.Sequential):
    """``Linear -> LayerNorm -> SiLU -> ... -> Linear`` over ``channels = [in, hidden..., out]``.

    Maps invariant edge features ``[E, channels[0]]`` to ``[E, channels[-1]]``
    (e.g. the per-``(m, l, channel)`` modulation of an SO(2) convolution).
    """

    def __init__(self, channels: Sequence[int], eps: float = 1e-5):
        channels = list(channels)
        if len(channels) < 2:
            raise ValueError(f"RadialMLP needs at least [in, out] channels, got {channels}")
        layers: list[nn.Module] = []
        for i in range(1, len(channels)):
            layers.append(nn.Linear(channels[i - 1], channels[i]))
            if i < len(channels) - 1:
                layers += [nn.LayerNorm(channels[i], eps=eps), nn.SiLU()]
        super().__init__(*layers)
        self.channels = channels


def _bias_rows(bias: torch.Tensor, lmax: int) -> torch.Tensor:
    """``[L0, C] -> [K, C]``: the bias on rows ``(l, 0)``, zero elsewhere (differentiable)."""
    return bias.new_zeros(num_coeffs(lmax), bias.shape[1]).index_copy(0, _m0_index(lmax, bias.device), bias)


# ---------------------------------------------------------------------- lean path
# Two autograd Functions that split the block at conv1's output: the producer
# (gather + rotate + conv1 + m = 0 extras) saves only its inputs and recomputes
# the two rotations in its backward; the consumer (gate + conv2 + rotate back +
# envelope + index_add) saves conv1's output and the gates and recomputes the
# gated features (elementwise) in its backward.  Both backwards are written
# with differentiable ops (the public so2ops ops and their ``*_backward`` custom
# ops, which have autograd formulas), so ``create_graph=True`` works.  Backward
# code uses in-place updates only when grad mode is off (no double backward).

def _rows(l: int) -> slice:
    return slice(l * l, (l + 1) * (l + 1))


@functools.lru_cache(maxsize=None)
def _m0_index(lmax: int, device: torch.device) -> torch.Tensor:
    """Rows ``(l, 0)`` as an int64 tensor on ``device``, built once per (lmax, device): no
    host-to-device copy per call (which would also break CUDA-graph capture)."""
    return torch.tensor(m0_rows(lmax), device=device)


def _m0_sum(g: torch.Tensor, lmax: int) -> torch.Tensor:
    """``[E, K, C] -> [lmax+1, C]``: the gradient of a bias added to the rows ``(l, 0)``."""
    return torch.stack([g[:, l * l + l].sum(0) for l in range(lmax + 1)])


def _add_m0_bias(y: torch.Tensor, bias: Optional[torch.Tensor], lmax: int) -> torch.Tensor:
    """``y`` plus ``bias[l]`` on the rows ``(l, 0)`` (in place without grad mode)."""
    if bias is None:
        return y
    if not torch.is_grad_enabled():
        for l in range(lmax + 1):
            y[:, l * l + l].add_(bias[l])
        return y
    return y.index_add(1, _m0_index(lmax, y.device), bias.unsqueeze(0).expand(y.shape[0], -1, -1))


def _gate_apply(hid: torch.Tensor, gates: Optional[torch.Tensor], lmax: int) -> torch.Tensor:
    """The gate activation (as ``SO2EdgewiseBlock.gate``) without expanding the gates to ``[E, K-1, H]``."""
    if gates is None:
        return torch.nn.functional.silu(hid[:, :1])
    if torch.is_grad_enabled():
        parts = [torch.nn.functional.silu(hid[:, :1])]
        parts += [hid[:, _rows(l)] * gates[:, l - 1 : l] for l in range(1, lmax + 1)]
        return torch.cat(parts, dim=1)
    g = torch.empty_like(hid)
    g[:, :1] = torch.nn.functional.silu(hid[:, :1])
    for l in range(1, lmax + 1):
        torch.mul(hid[:, _rows(l)], gates[:, l - 1 : l], out=g[:, _rows(l)])
    return g


#: Edges per slice inside the lean Functions (their forwards, and their backwards without
#: ``create_graph``): the ``[E, K, *]`` temporaries (rotated features and their gradients, gated
#: features, conv2's output and its gradient) exist for one slice at a time.  Nothing is recomputed
#: for this, it only bounds the workspace; ``create_graph`` backwards run as one slice.
LEAN_SLICE = 2048


def _slices(e: int, whole: bool = False) -> list:
    if whole or e <= LEAN_SLICE:
        return [slice(0, e)]
    return [slice(s, min(s + LEAN_SLICE, e)) for s in range(0, e, LEAN_SLICE)]


class _Rows:
    """Per-slice results along dim 0: one slice's tensor as is (it keeps its autograd history under
    ``create_graph``), several written into one preallocated tensor (no concatenation copy)."""

    def __init__(self, slices: list, total: int):
        self.single, self.total, self.t = len(slices) == 1, total, None

    def put(self, sl: slice, v: torch.Tensor) -> None:
        if self.single:
            self.t = v
            return
        if self.t is None:
            self.t = v.new_empty((self.total,) + tuple(v.shape[1:]))
        self.t[sl] = v

    def add(self, sl: slice, v: torch.Tensor) -> None:
        if self.single:
            self.t = v if self.t is None else self.t + v
            return
        if self.t is None:
            self.t = v.new_zeros((self.total,) + tuple(v.shape[1:]))
        self.t[sl] += v


def _acc(acc: Optional[torch.Tensor], v: torch.Tensor, grad_mode: bool) -> torch.Tensor:
    if acc is None:
        return v
    return acc + v if grad_mode else acc.add_(v)


def _half_rows(nm: int, c: int, device) -> tuple:
    """Output rows of the radial MLP's last layer (``[E, NM * 2C]`` viewed ``[E, NM, 2C]``) per input half."""
    rows = torch.arange(nm * 2 * c, device=device).view(nm, 2, c)
    return rows[:, 0].reshape(-1), rows[:, 1].reshape(-1)


class _LeanConv1(torch.autograd.Function):
    """``(hid, pre)``: conv1 of the rotated source and target features (+ m = 0 bias) and the gates' logits.

    ``mod = feat @ w_last^T + b_last`` (the radial MLP's last layer), split per input half ``s``/``t``;
    ``hid = so2_linear(D x[src], W_s, mod_s) + so2_linear(D x[dst], W_t, mod_t) + bias``;
    ``pre = flatten(cat(a_0 * mod_s0, b_0 * mod_t0)) @ w_gate^T + b_gate`` (``w_gate`` None: no gates).
    Saves only its inputs; the backward recomputes the modulation, the rotations and the gate input
    (per edge slice).
    """

    @staticmethod
    def forward(ctx, x, wigner, feat, w_last, b_last, w_s, w_t, bias, w_gate, b_gate, src, dst, lmax, mmax, hidden,
                backend):
        e, k, c, l0 = wigner.shape[0], x.shape[1], x.shape[2], lmax + 1
        nm = num_mod(lmax, mmax)
        m0 = _m0_index(lmax, x.device)
        halves = [(w_last.index_select(0, r), b_last.index_select(0, r)) for r in _half_rows(nm, c, x.device)]
        hid = x.new_empty(e, k, hidden)
        pre = x.new_empty(e, 0 if w_gate is None else w_gate.shape[0])
        with use_backend(backend):
            for sl in _slices(e):
                x0 = None
                for j, (w, idx, (wl, bl)) in enumerate(((w_s, src, halves[0]), (w_t, dst, halves[1]))):
                    m = torch.nn.functional.linear(feat[sl], wl, bl).view(-1, nm, c)
                    a = rotate(x, wigner[sl], lmax, index=idx[sl])
                    if w_gate is not None:
                        if x0 is None:
                            x0 = x.new_empty(a.shape[0], l0, 2 * c)
                        torch.mul(a.index_select(1, m0), m[:, :l0], out=x0[:, :, j * c : (j + 1) * c])
                    y = so2_linear(a, w, lmax, mmax, hidden, m)
                    del a, m
                    if j == 0:
                        hid[sl] = y
                    else:
                        hid[sl] += y
                    del y
                if w_gate is not None:
                    torch.addmm(b_gate, x0.view(x0.shape[0], -1), w_gate.t(), out=pre[sl])
                del x0
            _add_m0_bias(hid, bias, lmax)
        ctx.save_for_backward(x, wigner, feat, w_last, b_last, w_s, w_t, w_gate, src, dst)
        ctx.args = (lmax, mmax, hidden, backend)
        return hid, pre

    @staticmethod
    def backward(ctx, g_hid, g_pre):
        x, wigner, feat, w_last, b_last, w_s, w_t, w_gate, src, dst = ctx.saved_tensors
        lmax, mmax, hidden, backend = ctx.args
        nx, nwig, nfeat, nwl, nbl, nws, nwt, nb, nwg, nbg = ctx.needs_input_grad[:10]
        c, e, l0 = x.shape[2], wigner.shape[0], lmax + 1
        nm_rows = num_mod(lmax, mmax)
        grad_mode = torch.is_grad_enabled()
        need_a = nx or nwig
        need_m = nfeat or nwl or nbl
        gates = w_gate is not None and g_pre is not None
        slices = _slices(e, whole=grad_mode)
        gx = gb = g_b_gate = None
        gwig, gfeat = _Rows(slices, e), _Rows(slices, e)
        gw, gwl, gbl, gwg = [None, None], [None, None], [None, None], [None, None]
        with use_backend(backend):
            m0 = _m0_index(lmax, x.device)
            rows = _half_rows(nm_rows, c, x.device)
            g_hid = g_hid.contiguous()
            if nb:
                gb = _m0_sum(g_hid, lmax)
            if gates:
                wg3 = w_gate.view(w_gate.shape[0], l0, 2 * c)
                if nbg:
                    g_b_gate = g_pre.sum(0)
            sides = ((w_s, src, slice(0, c), nws), (w_t, dst, slice(c, 2 * c), nwt))
            for i, (w, idx, cs, nw) in enumerate(sides):
                if not (need_a or nw or need_m or (gates and nwg)):
                    continue
                wl, bl = w_last.index_select(0, rows[i]), b_last.index_select(0, rows[i])
                wgi = wg3[:, :, cs].reshape(w_gate.shape[0], l0 * c) if gates else None
                for sl in slices:
                    ii, ws, fs = idx[sl].contiguous(), wigner[sl], feat[sl]
                    ms = torch.nn.functional.linear(fs, wl, bl).view(-1, nm_rows, c)  # recomputed
                    a = rotate(x, ws, lmax, index=ii)  # recomputed (cheap), instead of saved
                    ga, gwi, gmi = _ops.so2_linear_backward(g_hid[sl], a, w, ms, lmax, mmax, hidden, need_a, nw,
                                                            need_m)
                    if gates:
                        a0 = a.index_select(1, m0)
                        gps = g_pre[sl]
                        if nwg:  # this half's columns of the gate weight's gradient
                            x0i = (a0 * ms[:, :l0]).reshape(a0.shape[0], -1)
                            gwg[i] = _acc(gwg[i], gps.t() @ x0i, grad_mode)
                            del x0i
                        gx0 = (gps @ wgi).view(-1, l0, c)
                        if need_a:
                            v = gx0 * ms[:, :l0]
                            ga = ga.index_add(1, m0, v) if grad_mode else ga.index_add_(1, m0, v)
                        if need_m:
                            v = gx0 * a0
                            if grad_mode:
                                gmi = torch.cat((gmi[:, :l0] + v, gmi[:, l0:]), dim=1)
                            else:
                                gmi[:, :l0].add_(v)
                        del a0, gx0
                    del a, ms
                    if need_a:
                        gxi, gwigi = _ops.rotate_backward(ga.contiguous(), x, ws, lmax, ii, False, nx, nwig)
                        del ga
                        if nx:
                            gx = _acc(gx, gxi, grad_mode)
                        if nwig:
                            gwig.add(sl, gwigi)
                    if nw:
                        gw[i] = _acc(gw[i], gwi, grad_mode)
                    if need_m:
                        gmf = gmi.reshape(gmi.shape[0], -1)
                        if nfeat:
                            gfeat.add(sl, gmf @ wl)
                        if nwl:
                            gwl[i] = _acc(gwl[i], gmf.t() @ fs, grad_mode)
                        if nbl:
                            gbl[i] = _acc(gbl[i], gmf.sum(0), grad_mode)
                        del gmi, gmf
            g_w_last = g_b_last = g_w_gate = None
            if nwl:
                g_w_last = torch.zeros_like(w_last).index_add(0, rows[0], gwl[0]).index_add(0, rows[1], gwl[1])
            if nbl:
                g_b_last = torch.zeros_like(b_last).index_add(0, rows[0], gbl[0]).index_add(0, rows[1], gbl[1])
            if gates and nwg:
                g_w_gate = torch.cat([g.view(-1, l0, c) for g in gwg], dim=2).reshape(w_gate.shape)
        return (gx, gwig.t if nwig else None, gfeat.t if nfeat else None, g_w_last, g_b_last,
                gw[0], gw[1], gb, g_w_gate, g_b_gate if nbg else None) + (None,) * 6


class _LeanConv2(torch.autograd.Function):
    """``out[t] += env * D^T (conv2(gate(hid, gates)) + bias)``, saving ``hid`` and ``gates`` only."""

    @staticmethod
    def forward(ctx, hid, gates, w2, b2, wigner, env, dst, num_nodes, lmax, mmax, channels, backend):
        e = wigner.shape[0]
        out = hid.new_zeros(num_nodes, hid.shape[1], channels)
        with use_backend(backend):
            for sl in _slices(e):
                g = _gate_apply(hid[sl], None if gates is None else gates[sl], lmax)
                y = so2_linear(g, w2, lmax, mmax, channels)
                del g
                _add_m0_bias(y, b2, lmax)
                if env is not None:
                    y.mul_(env[sl].view(-1, 1, 1))
                msg = rotate(y, wigner[sl], lmax, inverse=True)
                del y
                out.index_add_(0, dst[sl], msg)
                del msg
        ctx.save_for_backward(hid, gates, w2, b2, wigner, env, dst)
        ctx.args = (lmax, mmax, channels, backend)
        return out

    @staticmethod
    def backward(ctx, g_out):
        hid, gates, w2, b2, wigner, env, dst = ctx.saved_tensors
        lmax, mmax, channels, backend = ctx.args
        nh, ngates, nw2, nb2, nwig, nenv = ctx.needs_input_grad[:6]
        nenv = nenv and env is not None
        nb2 = nb2 and b2 is not None
        ngates = ngates and gates is not None
        grad_mode = torch.is_grad_enabled()
        e = wigner.shape[0]
        slices = _slices(e, whole=grad_mode)
        ghid, ggates, genv, gwig = (_Rows(slices, e) for _ in range(4))
        gw2 = gb2 = None
        need_g = nh or ngates
        with use_backend(backend):
            g_out = g_out.contiguous()
            for sl in slices:
                hs, ws, ds = hid[sl], wigner[sl], dst[sl].contiguous()
                gs = None if gates is None else gates[sl]
                es = None if env is None else env[sl].view(-1, 1, 1)
                # d out / d msg is a gather at the targets; d msg / d y is D (fused gather + rotate)
                g_y = rotate(g_out, ws, lmax, index=ds)
                g = _gate_apply(hs, gs, lmax)  # recomputed (elementwise), instead of saved
                if nwig or nenv:
                    y = _add_m0_bias(so2_linear(g, w2, lmax, mmax, channels), b2, lmax)
                    if nenv:
                        genv.put(sl, (g_y * y).sum(dim=(1, 2)))
                    if nwig:
                        yenv = y if es is None else y * es
                        gwig.put(sl, _ops.rotate_backward(yenv.contiguous(), g_out, ws, lmax, ds, False, False, True)[1])
                        del yenv
                    del y
                if es is not None:
                    g_y = g_y * es if grad_mode else g_y.mul_(es)
                if nb2:
                    gb2 = _acc(gb2, _m0_sum(g_y, lmax), grad_mode)
                gg, gw2i, _ = _ops.so2_linear_backward(g_y.contiguous(), g, w2, None, lmax, mmax, channels,
                                                       need_g, nw2, False)
                del g, g_y
                if nw2:
                    gw2 = _acc(gw2, gw2i, grad_mode)
                if need_g:
                    # gate backward: silu' on row (0, 0), the gate on degree l >= 1 rows
                    if ngates:
                        ggates.put(sl, torch.stack([(gg[:, _rows(l)] * hs[:, _rows(l)]).sum(1)
                                                    for l in range(1, lmax + 1)], dim=1))
                    h0 = hs[:, :1]
                    sg = torch.sigmoid(h0)
                    dsilu = sg * (1 + h0 * (1 - sg))
                    if grad_mode:
                        parts = [gg[:, :1] * dsilu]
                        if gs is not None:
                            parts += [gg[:, _rows(l)] * gs[:, l - 1 : l] for l in range(1, lmax + 1)]
                        gg = torch.cat(parts, dim=1)
                    else:
                        gg[:, :1].mul_(dsilu)
                        if gs is not None:
                            for l in range(1, lmax + 1):
                                gg[:, _rows(l)].mul_(gs[:, l - 1 : l])
                    if nh:
                        ghid.put(sl, gg)
                    del gg
        return (ghid.t if nh else None, ggates.t if ngates else None, gw2 if nw2 else None, gb2,
                gwig.t if nwig else None, genv.t if nenv else None) + (None,) * 6


class SO2EdgeLinear(nn.Module):
    """SO(2) linear layer in the edge frame with the eSCN extras.

    ``y = so2_linear(x * mod) + b``: the packed SO(2) weight (``so2ops.layout``),
    a bias on the ``m = 0`` rows ``(l, 0)`` only (a bias elsewhere would break
    the roll equivariance), an optional radial modulation
    ``mod = radial(edge_attr)`` per ``(m, l, in-channel)`` and optional extra
    invariant outputs ``extra = Linear_extra(flatten(x_0 * mod_0))`` from the
    ``m = 0`` rows (fairchem's ``extra_m0_output_channels``, used as gates).

    Args:
        lmax, mmax, in_channels, out_channels: as in ``so2_linear``.
        bias: add the ``m = 0`` bias ``[lmax+1, out_channels]``.
        edge_channels_list: ``[edge_attr_dim, hidden...]``; a ``RadialMLP`` to
            ``num_mod * in_channels`` outputs is built from it.  ``None``: no
            internal radial function (``modulation`` may still be passed).  A
            ``modulation`` passed to ``forward`` is used as is (the radial
            function is then skipped: precomputed radials).
        extra_m0_channels: number of extra invariant outputs (0: none).
    Shapes:
        ``forward(x[E, K, C_in], edge_attr[E, D] = None, modulation[E, NM, C_in] = None)
        -> y[E, K, C_out]`` or ``(y, extra[E, extra_m0_channels])``.
    """

    def __init__(self, lmax: int, mmax: int, in_channels: int, out_channels: int, bias: bool = True,
                 edge_channels_list: Optional[Sequence[int]] = None, extra_m0_channels: int = 0):
        super().__init__()
        self.lmax, self.mmax, self.in_channels, self.out_channels = lmax, mmax, in_channels, out_channels
        self.extra_m0_channels = int(extra_m0_channels)
        self.weight = nn.Parameter(torch.empty(weight_size(lmax, mmax, in_channels, out_channels)))
        init_so2_weight(self.weight, lmax, mmax, in_channels, out_channels)
        self.bias = nn.Parameter(torch.zeros(lmax + 1, out_channels)) if bias else None
        self.radial = (RadialMLP(list(edge_channels_list) + [num_mod(lmax, mmax) * in_channels])
                       if edge_channels_list is not None else None)
        self.extra = nn.Linear((lmax + 1) * in_channels, self.extra_m0_channels) if self.extra_m0_channels else None

    def forward(self, x: torch.Tensor, edge_attr: Optional[torch.Tensor] = None,
                modulation: Optional[torch.Tensor] = None):
        e = x.shape[0]
        if modulation is None and self.radial is not None:
            if edge_attr is None:
                raise ValueError("edge_attr (or a precomputed modulation) is required: "
                                 "this SO2EdgeLinear has a radial function")
            modulation = self.radial(edge_attr).view(e, num_mod(self.lmax, self.mmax), self.in_channels)
        y = so2_linear(x, self.weight, self.lmax, self.mmax, self.out_channels, modulation)
        if self.bias is not None:
            y = y + _bias_rows(self.bias, self.lmax)
        if self.extra is None:
            return y
        x0 = x[:, m0_rows(self.lmax), :]
        if modulation is not None:
            x0 = x0 * modulation[:, : self.lmax + 1, :]
        return y, self.extra(x0.reshape(e, -1))

    def extra_repr(self) -> str:
        return (f"lmax={self.lmax}, mmax={self.mmax}, in_channels={self.in_channels}, "
                f"out_channels={self.out_channels}, extra_m0_channels={self.extra_m0_channels}")


class SO2EdgewiseBlock(nn.Module):
    """The eSCN-MD / UMA ``Edgewise`` message (EquiformerV2 without attention).

    For every edge ``e = (s -> t)`` with frame ``D_e`` (``so2ops.edge_wigner``)::

        a, b  = D_e x[s], D_e x[t]                         # [K, C] each, edge frame
        mod   = radial(edge_attr_e)                         # [NM, 2C], per (m, l, channel)
        h     = conv1(cat(a, b) * mod) + bias1              # SO(2) linear 2C -> H, bias on m = 0
        gates = sigmoid(W_g flatten(cat(a_0, b_0) * mod_0) + b_g)   # [lmax, H], extra m = 0 outputs
        g     = [silu(h_00), h_l * gates[l - 1] for l >= 1] # gate activation per degree and channel
        y     = conv2(g) + bias2                            # SO(2) linear H -> C, bias on m = 0
        out[t] += envelope_e * D_e^T y

    ``conv1`` applied to ``cat(a, b)`` is computed as ``so2_linear(a, W_src) +
    so2_linear(b, W_dst)`` (the weight split by input channel), so no
    ``[E, K, 2C]`` tensor is built.  Rows ``|m| > mmax`` are dropped by the
    SO(2) layers (the truncated eSCN layout).

    Args:
        lmax, mmax: degrees of the node features and orders kept on edges.
        sphere_channels: ``C`` (input and output channels).
        hidden_channels: ``H``.
        edge_channels_list: ``[edge_attr_dim, hidden...]`` of the radial MLP
            (fairchem: ``[num_distance_basis + 2 * edge_channels, edge_channels,
            edge_channels]``); its output has ``NM * 2C`` entries.
        edge_chunk: if set, edges are processed ``edge_chunk`` at a time under
            ``torch.utils.checkpoint``: the ``[E, K, *]`` intermediates kept for
            the backward (the rotated ``a``, ``b``, the result of ``conv1``, the
            expanded gates, the gated features and the message: about
            ``K (3 C + 3 H)`` numbers per edge) exist for one chunk at a time
            instead of for the whole graph, at the cost
            of recomputing the block's forward during backward (one extra
            forward pass of the block per training step) and one ``index_add_``
            per chunk.  Results equal the unchunked ones up to summation order.
        lean: (default) keep only ``conv1``'s output and the gates for the
            backward (about ``K H + lmax H`` numbers per edge instead of
            ``K (4 C + 3 H) + 2 NM C + 2 (lmax+1) C``): the block is split at
            conv1's output into two autograd Functions.  The first applies the
            radial MLP's last layer, the two rotations, conv1 and the gates'
            linear layer and saves only its inputs; its backward recomputes the
            modulation, the rotated ``x[src]``, ``x[dst]`` and the gate input
            (cheap: no SO(2) layer is recomputed).  The
            second (gate, conv2, rotation back, envelope, ``index_add``) saves
            conv1's output and the gates and recomputes the gated features
            (elementwise; ``conv2``'s output only when the Wigner blocks or the
            envelope need gradients).  Both work through the edges in slices of
            ``LEAN_SLICE`` (forward, and backward without ``create_graph``), so
            their ``[E, K, *]`` workspace is one slice's; the gates multiply per
            degree (no ``[E, K-1, H]`` expansion) and the biases go to the
            ``m = 0`` rows in place.  Same values and gradients as
            ``lean=False`` (the composition of differentiable ops) up to
            rounding; double backward works (the backwards are written with
            differentiable ops).  With ``edge_chunk`` the lean path runs
            inside each checkpointed chunk.
    Shapes:
        ``forward(x[N, K, C], edge_index[2, E], wigner[E, wigner_size(lmax)],
        edge_attr[E, edge_attr_dim], envelope[E] or [E, 1] or None) -> [N, K, C]``:
        the summed messages (no residual, no normalisation).
    """

    def __init__(self, lmax: int, mmax: int, sphere_channels: int, hidden_channels: int,
                 edge_channels_list: Sequence[int], edge_chunk: Optional[int] = None, lean: bool = True):
        super().__init__()
        self.lmax, self.mmax = lmax, mmax
        self.sphere_channels, self.hidden_channels = sphere_channels, hidden_channels
        self.edge_chunk = edge_chunk
        self.lean = bool(lean)
        c, h, l0 = sphere_channels, hidden_channels, lmax + 1
        self.radial = RadialMLP(list(edge_channels_list) + [num_mod(lmax, mmax) * 2 * c])
        ws = weight_size(lmax, mmax, c, h)
        self.weight1_source = nn.Parameter(torch.empty(ws))
        self.weight1_target = nn.Parameter(torch.empty(ws))
        # cat(a, b) has 2C inputs: fan-in init of the 2C-wide layer, split in two
        for w in (self.weight1_source, self.weight1_target):
            init_so2_weight(w, lmax, mmax, c, h, gain=1.0 / math.sqrt(2.0))
        self.bias1 = nn.Parameter(torch.zeros(l0, h))
        self.gate_linear = nn.Linear(l0 * 2 * c, lmax * h) if lmax > 0 else None
        self.conv2 = SO2EdgeLinear(lmax, mmax, h, c, bias=True)
        self.register_buffer("_m0_rows", torch.tensor(m0_rows(lmax)), persistent=False)
        self.register_buffer("_gate_index", torch.tensor(_degree_of_rows(lmax)[1:]) - 1, persistent=False)

    # ------------------------------------------------------------------ pieces
    def gate(self, h: torch.Tensor, gates: Optional[torch.Tensor]) -> torch.Tensor:
        """``[E, K, H]``: SiLU on row ``(0, 0)``, degree ``l >= 1`` rows times ``gates[:, l - 1]``."""
        s = torch.nn.functional.silu(h[:, :1, :])
        if gates is None:
            return s
        return torch.cat((s, h[:, 1:, :] * gates.index_select(1, self._gate_index)), dim=1)

    def edge_messages(self, x: torch.Tensor, wigner: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                      edge_attr: torch.Tensor, envelope: Optional[torch.Tensor]) -> torch.Tensor:
        """Per-edge messages in the global frame, ``[E, K, C]`` (before the sum over targets)."""
        lmax, mmax, c, h = self.lmax, self.mmax, self.sphere_channels, self.hidden_channels
        e = wigner.shape[0]
        mod = self.radial(edge_attr).view(e, num_mod(lmax, mmax), 2 * c)
        mod_s, mod_t = mod[..., :c], mod[..., c:]
        a = rotate(x, wigner, lmax, index=src)
        b = rotate(x, wigner, lmax, index=dst)
        hid = so2_linear(a, self.weight1_source, lmax, mmax, h, mod_s)
        hid = hid + so2_linear(b, self.weight1_target, lmax, mmax, h, mod_t)
        hid = hid + _bias_rows(self.bias1, lmax)
        gates = None
        if self.gate_linear is not None:
            x0 = torch.cat((a.index_select(1, self._m0_rows), b.index_select(1, self._m0_rows)), dim=2)
            x0 = x0 * mod[:, : lmax + 1, :]
            gates = torch.sigmoid(self.gate_linear(x0.reshape(e, -1))).view(e, lmax, h)
        y = self.conv2(self.gate(hid, gates))
        if envelope is not None:
            y = y * envelope.reshape(e, 1, 1)
        return rotate(y, wigner, lmax, inverse=True)

    def summed_messages(self, x: torch.Tensor, wigner: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                        edge_attr: torch.Tensor, envelope: Optional[torch.Tensor]) -> torch.Tensor:
        """The messages summed at their targets, ``[N, K, C]`` (lean or plain path, see ``lean``)."""
        if not self.lean:
            msg = self.edge_messages(x, wigner, src, dst, edge_attr, envelope)
            return x.new_zeros(x.shape[0], x.shape[1], self.sphere_channels).index_add_(0, dst, msg)
        lmax, mmax, c, h = self.lmax, self.mmax, self.sphere_channels, self.hidden_channels
        e = wigner.shape[0]
        backend = current_backend()
        # the radial MLP up to its last layer; that layer is applied per input half and edge slice
        # inside _LeanConv1 (the [E, NM, 2C] modulation is never stored for the backward)
        *body, last = list(self.radial)
        feat = edge_attr
        for layer in body:
            feat = layer(feat)
        gl = self.gate_linear
        hid, pre = _LeanConv1.apply(x, wigner, feat, last.weight, last.bias, self.weight1_source,
                                    self.weight1_target, self.bias1, None if gl is None else gl.weight,
                                    None if gl is None else gl.bias, src, dst, lmax, mmax, h, backend)
        gates = None if gl is None else torch.sigmoid(pre).view(e, lmax, h)
        return _LeanConv2.apply(hid, gates, self.conv2.weight, self.conv2.bias, wigner, envelope, dst,
                                x.shape[0], lmax, mmax, c, backend)

    def _chunk(self, backend, *args):
        # checkpoint recomputes on the autograd thread: keep the forward's backend choice
        with use_backend(backend):
            return self.summed_messages(*args) if self.lean else self.edge_messages(*args)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, wigner: torch.Tensor, edge_attr: torch.Tensor,
                envelope: Optional[torch.Tensor] = None) -> torch.Tensor:
        src, dst = edge_index[0], edge_index[1]
        e = wigner.shape[0]
        if envelope is not None:
            envelope = envelope.reshape(e)
        chunk = self.edge_chunk
        if chunk is None or e <= chunk:
            return self.summed_messages(x, wigner, src, dst, edge_attr, envelope)
        out = x.new_zeros(x.shape[0], x.shape[1], self.sphere_channels)
        backend = current_backend()
        for s in range(0, e, chunk):
            sl = slice(s, min(s + chunk, e))
            env = None if envelope is None else envelope[sl]
            part = checkpoint(self._chunk, backend, x, wigner[sl], src[sl], dst[sl], edge_attr[sl], env,
                              use_reentrant=False)
            if self.lean:  # summed at the targets already
                out.add_(part)
            else:
                out.index_add_(0, dst[sl], part)
        return out

    def extra_repr(self) -> str:
        return (f"lmax={self.lmax}, mmax={self.mmax}, sphere_channels={self.sphere_channels}, "
                f"hidden_channels={self.hidden_channels}, edge_chunk={self.edge_chunk}, lean={self.lean}")
