"""The memory-lean autograd path of ``SO2EdgewiseBlock`` (one ``torch.autograd.Function``).

Notation as in ``so2ops.nn.edgewise``: ``N`` nodes, ``E`` edges, ``K = (lmax+1)**2``,
``R`` = rows ``|m| <= mmax`` of the l-major layout, ``C`` sphere channels, ``H``
hidden channels, ``L0 = lmax + 1``, ``NM = num_mod(lmax, mmax)``, ``G = lmax * H``
gate logits.

The block is computed slice by slice (``LEAN_SLICE`` edges).  The forward keeps,
for the backward, only its inputs, conv1's output on the rows that can be nonzero
(``[E, R, H]``: rows ``|m| > mmax`` of an SO(2) layer's output are zero) and the
gates' logits (``[E, G]``).  The backward walks the slices once, each end to end:

    consumer backward (one fused ``so2_frame_linear`` backward: gout[dst] gathered and
    rotated into the frame, conv2^T, conv2's bias / envelope / Wigner / weight
    gradients; then gate^T)
      -> gradient of conv1's output for this slice only
      -> producer backward (conv1^T, modulation, rotations back, scatter)

so no ``[E, K, *]`` tensor and no full-size gradient of conv1's output exists;
everything per edge that is not saved (rotated features, modulation, gated
features, conv2's output when the Wigner or envelope need it) is recomputed
from the inputs per slice.  No SO(2) layer is recomputed except conv2's forward
for the Wigner / envelope gradients.

Double backward (``create_graph=True``): the backward is written with
differentiable ops (the public so2ops ops and their ``*_backward`` custom ops,
which have autograd formulas) and then recomputes conv1's output and the gate
logits from the inputs (the saved ``[E, R, H]`` copy is not connected to the
inputs' graph), in one slice.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.nn import functional as F

from .._tensor_cache import tensor_cache
from ..dispatch import use_backend
from ..layout import coeff_index, m0_index, num_mod
from ..ops import rotate, so2_linear

_ops = torch.ops.so2ops

__all__ = ["LEAN_SLICE", "lean_block_messages"]

#: Edges per slice, forward and backward (without ``create_graph``): bounds the
#: ``[slice, K, *]`` workspace.  Nothing is recomputed for the slicing itself.
LEAN_SLICE = 1024


def _rows(l: int) -> slice:
    return slice(l * l, (l + 1) * (l + 1))


@tensor_cache()
def _kept_index(lmax: int, mmax: int, device: torch.device) -> torch.Tensor:
    """Rows ``(l, m)`` with ``|m| <= mmax`` (l-major order): the rows an SO(2) layer can write."""
    return torch.tensor([coeff_index(l, m) for l in range(lmax + 1) for m in range(-min(l, mmax), min(l, mmax) + 1)],
                        device=device)


def _m0_sum(g: torch.Tensor, lmax: int) -> torch.Tensor:
    """``[n, K, C] -> [lmax+1, C]``: the gradient of a bias added to the rows ``(l, 0)``."""
    return torch.stack([g[:, l * l + l].sum(0) for l in range(lmax + 1)])


def _add_m0_bias(y: torch.Tensor, bias: Optional[torch.Tensor], lmax: int) -> torch.Tensor:
    """``y`` plus ``bias[l]`` on the rows ``(l, 0)`` (in place without grad mode)."""
    if bias is None:
        return y
    if not torch.is_grad_enabled():
        for l in range(lmax + 1):
            y[:, l * l + l].add_(bias[l])
        return y
    return y.index_add(1, m0_index(lmax, y.device), bias.unsqueeze(0).expand(y.shape[0], -1, -1))


def _gate_apply(hid: torch.Tensor, gates: Optional[torch.Tensor], lmax: int) -> torch.Tensor:
    """The gate activation (SiLU on row (0, 0), degree ``l >= 1`` rows times ``gates[:, l - 1]``)
    without expanding the gates to ``[n, K-1, H]``; ``gates`` None: only row (0, 0) (lmax = 0)."""
    if gates is None:
        return F.silu(hid[:, :1])
    if torch.is_grad_enabled():
        parts = [F.silu(hid[:, :1])]
        parts += [hid[:, _rows(l)] * gates[:, l - 1 : l] for l in range(1, lmax + 1)]
        return torch.cat(parts, dim=1)
    g = torch.empty_like(hid)
    g[:, :1] = F.silu(hid[:, :1])
    for l in range(1, lmax + 1):
        torch.mul(hid[:, _rows(l)], gates[:, l - 1 : l], out=g[:, _rows(l)])
    return g


def _slices(e: int, whole: bool = False) -> list:
    if whole or e <= LEAN_SLICE:
        return [slice(0, e)]
    return [slice(s, min(s + LEAN_SLICE, e)) for s in range(0, e, LEAN_SLICE)]


class _Rows:
    """Per-slice results along dim 0: one slice's tensor as is (it keeps its autograd history under
    ``create_graph``), several written into one preallocated tensor (no concatenation copy)."""

    def __init__(self, slices: list, total: int):
        self.single, self.total, self.t = len(slices) == 1, total, None

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


@tensor_cache()
def _half_rows(nm: int, c: int, device: torch.device) -> tuple:
    """Output rows of the radial MLP's last layer (``[E, NM * 2C]`` viewed ``[E, NM, 2C]``) per input half."""
    rows = torch.arange(nm * 2 * c, device=device).view(nm, 2, c)
    return rows[:, 0].reshape(-1), rows[:, 1].reshape(-1)


class _Spec:
    """Sizes and per-call constants of one block call."""

    def __init__(self, x, wigner, w_last, b_last, w_gate, lmax, mmax, hidden):
        self.lmax, self.mmax, self.hidden = lmax, mmax, hidden
        self.e, self.k, self.c, self.l0 = wigner.shape[0], x.shape[1], x.shape[2], lmax + 1
        self.nm = num_mod(lmax, mmax)
        self.gated = w_gate is not None
        self.m0 = m0_index(lmax, x.device)
        self.kept = _kept_index(lmax, mmax, x.device)
        self.all_kept = mmax >= lmax  # every row can be nonzero: keep hid as is, no row selection
        self.half_rows = _half_rows(self.nm, self.c, x.device)
        # the radial MLP's last layer split per input half (source / target channels)
        self.halves = [(w_last.index_select(0, r), b_last.index_select(0, r)) for r in self.half_rows]


def _keep_rows(s: _Spec, hid: torch.Tensor, out: torch.Tensor) -> None:
    """``out[n, R, H] = hid[n, K, H]`` on the rows that can be nonzero (all of them when mmax >= lmax)."""
    if s.all_kept:
        out.copy_(hid)
    else:
        torch.index_select(hid, 1, s.kept, out=out)


def _restore_rows(s: _Spec, kept: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_keep_rows``: ``[n, R, H] -> [n, K, H]`` (the other rows zero)."""
    if s.all_kept:
        return kept
    return kept.new_zeros(kept.shape[0], s.k, kept.shape[2]).index_copy_(1, s.kept, kept)


# ------------------------------------------------------------------ the producer: rotations, conv1, gate logits
def _conv1(s: _Spec, x, ws, fs, w_s, w_t, bias1, w_gate, b_gate, ss, ds):
    """One slice: ``hid[n, K, H]`` (conv1 of the rotated, modulated ``x[src]``, ``x[dst]``, plus the m = 0
    bias) and the gate logits ``pre[n, G]`` (None without gates).  Differentiable in grad mode."""
    grad_mode = torch.is_grad_enabled()
    hid, x0 = None, []
    for w, idx, (wl, bl) in ((w_s, ss, s.halves[0]), (w_t, ds, s.halves[1])):
        m = F.linear(fs, wl, bl).view(-1, s.nm, s.c)
        a = rotate(x, ws, s.lmax, index=idx)
        if s.gated:
            x0.append(a.index_select(1, s.m0) * m[:, : s.l0])
        y = so2_linear(a, w, s.lmax, s.mmax, s.hidden, m)
        del a, m
        hid = y if hid is None else (hid + y if grad_mode else hid.add_(y))
    hid = _add_m0_bias(hid, bias1, s.lmax)
    pre = F.linear(torch.cat(x0, dim=2).reshape(hid.shape[0], -1), w_gate, b_gate) if s.gated else None
    return hid, pre


def _conv1_backward(s: _Spec, need, acc, g_hid, g_pre, x, ws, fs, w_s, w_t, w_gate, ss, ds, sl, grad_mode):
    """Gradients of ``_conv1`` for one slice, accumulated into ``acc`` (dict of tensors / _Rows)."""
    nx, nwig, nfeat, nwl, nbl, nws, nwt, nb, nwg, nbg = need
    need_a, need_m = nx or nwig, nfeat or nwl or nbl
    gates = s.gated and g_pre is not None
    lmax, mmax, c, l0 = s.lmax, s.mmax, s.c, s.l0
    g_hid = g_hid.contiguous()
    if nb:
        acc["b1"] = _acc(acc.get("b1"), _m0_sum(g_hid, lmax), grad_mode)
    if gates:
        wg3 = w_gate.view(w_gate.shape[0], l0, 2 * c)
        if nbg:
            acc["bg"] = _acc(acc.get("bg"), g_pre.sum(0), grad_mode)
    for i, (w, idx, cs, nw) in enumerate(((w_s, ss, slice(0, c), nws), (w_t, ds, slice(c, 2 * c), nwt))):
        if not (need_a or nw or need_m or (gates and nwg)):
            continue
        wl, bl = s.halves[i]
        ms = F.linear(fs, wl, bl).view(-1, s.nm, c)  # recomputed
        a = rotate(x, ws, lmax, index=idx)  # recomputed (cheap), instead of saved
        ga, gwi, gmi = _ops.so2_linear_backward(g_hid, a, w, ms, lmax, mmax, s.hidden, need_a, nw, need_m)
        if gates:
            a0 = a.index_select(1, s.m0)
            if nwg:  # this half's columns of the gate weight's gradient
                x0i = (a0 * ms[:, :l0]).reshape(a0.shape[0], -1)
                acc[f"wg{i}"] = _acc(acc.get(f"wg{i}"), g_pre.t() @ x0i, grad_mode)
                del x0i
            gx0 = (g_pre @ wg3[:, :, cs].reshape(w_gate.shape[0], l0 * c)).view(-1, l0, c)
            if need_a:
                v = gx0 * ms[:, :l0]
                ga = ga.index_add(1, s.m0, v) if grad_mode else ga.index_add_(1, s.m0, v)
            if need_m:
                v = gx0 * a0
                if grad_mode:
                    gmi = torch.cat((gmi[:, :l0] + v, gmi[:, l0:]), dim=1)
                else:
                    gmi[:, :l0].add_(v)
            del a0, gx0
        del a, ms
        if need_a:
            ga = ga.contiguous()
            if grad_mode:
                # create_graph: one slice (``_slices(whole=True)``), so one node-sized gradient; the
                # fused custom op has the autograd formula the double backward needs.
                gxi, gwigi = _ops.rotate_backward(ga, x, ws, lmax, idx, False, nx, nwig)
                if nx:
                    acc["x"] = _acc(acc.get("x"), gxi, grad_mode)
                if nwig:
                    acc["wig"].add(sl, gwigi)
            else:
                # Not rotate_backward with the index for x's gradient: that returns a fresh
                # zero-filled [N, K, C] sum per call (and sorts the edges by node, O(N)), so per
                # slice it would cost O(N) and the whole backward O(N E / LEAN_SLICE).  Instead the
                # per-edge gradient D^T ga (a rotation, O(slice)) is scattered into the one node
                # gradient allocated at the first slice.  index_add_ is deterministic under
                # torch.use_deterministic_algorithms, like the forward's scatter.
                if nwig:
                    _, gwigi = _ops.rotate_backward(ga, x, ws, lmax, idx, False, False, True)
                    acc["wig"].add(sl, gwigi)
                if nx:
                    gxe = _ops.rotate(ga, ws, lmax, None, True)
                    if acc.get("x") is None:
                        acc["x"] = gxe.new_zeros(x.shape)
                    acc["x"].index_add_(0, idx, gxe)
                    del gxe
            del ga
        if nw:
            acc[f"w{i}"] = _acc(acc.get(f"w{i}"), gwi, grad_mode)
        if need_m:
            gmf = gmi.reshape(gmi.shape[0], -1)
            if nfeat:
                acc["feat"].add(sl, gmf @ wl)
            if nwl:
                acc[f"wl{i}"] = _acc(acc.get(f"wl{i}"), gmf.t() @ fs, grad_mode)
            if nbl:
                acc[f"bl{i}"] = _acc(acc.get(f"bl{i}"), gmf.sum(0), grad_mode)
            del gmi, gmf


# ------------------------------------------------------------------ the consumer: gate, conv2, rotation back, sum
def _conv2_into(s: _Spec, out, hid, gates, w2, b2, ws, es, ds):
    """One slice (no grad mode): ``out[dst] += env * D^T (conv2(gate(hid)) + b2)``.

    Not ``so2_linear_scatter``: that op returns a fresh ``[N, K, C]`` sum per call, which per slice
    would cost O(N) each (O(N E / LEAN_SLICE) per step on large graphs)."""
    g = _gate_apply(hid, gates, s.lmax)
    y = so2_linear(g, w2, s.lmax, s.mmax, s.c)
    del g
    _add_m0_bias(y, b2, s.lmax)
    if es is not None:
        y.mul_(es.view(-1, 1, 1))
    msg = rotate(y, ws, s.lmax, inverse=True)
    del y
    out.index_add_(0, ds, msg)


def _conv2_backward(s: _Spec, need, acc, g_out, hs, gs, w2, b2, ws, es, ds, sl, grad_mode):
    """Gradients of ``_conv2_into`` for one slice (one fused ``so2_frame_linear`` backward: gather +
    rotate of ``g_out[dst]``, conv2^T, the bias, envelope, Wigner and weight gradients); returns the
    gradients of ``hid`` and of the gates (None where not needed).
    ``need = (need_hid_or_gates, nw2, nb2, nwig, nenv)``."""
    need_g, nw2, nb2, nwig, nenv = need
    lmax = s.lmax
    g = _gate_apply(hs, gs, lmax)  # recomputed (elementwise), instead of saved
    gg, gwig, gw2i, _, gb2, genv = _ops.so2_frame_linear_backward(
        g_out, g, ws, ds, w2, None, b2, es, lmax, s.mmax, s.c, g_out.shape[0], True, False,
        need_g, nwig, nw2, False, nb2, nenv)
    del g
    if nenv:
        acc["env"].add(sl, genv)
    if nwig:
        acc["wig"].add(sl, gwig)
    if nb2:
        acc["b2"] = _acc(acc.get("b2"), gb2, grad_mode)
    if nw2:
        acc["w2"] = _acc(acc.get("w2"), gw2i, grad_mode)
    if not need_g:
        return None, None
    # gate backward: silu' on row (0, 0), the gate on degree l >= 1 rows
    ggates = None
    if gs is not None:
        ggates = torch.stack([(gg[:, _rows(l)] * hs[:, _rows(l)]).sum(1) for l in range(1, lmax + 1)], dim=1)
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
    return gg, ggates


class _LeanBlock(torch.autograd.Function):
    """``out[N, K, C]``: the whole edgewise block (see the module docstring); saves its inputs,
    conv1's output on the ``R`` rows ``|m| <= mmax`` and the gate logits."""

    @staticmethod
    def forward(ctx, x, wigner, feat, w_last, b_last, w_s, w_t, bias1, w_gate, b_gate, w2, b2, env, src, dst, lmax,
                mmax, hidden, backend):
        s = _Spec(x, wigner, w_last, b_last, w_gate, lmax, mmax, hidden)
        out = x.new_zeros(x.shape[0], s.k, s.c)
        keep = any(ctx.needs_input_grad)  # inference: nothing to keep for a backward
        hid_kept = x.new_empty(s.e if keep else 0, s.kept.numel(), hidden)
        pre = x.new_empty(s.e if keep else 0, w_gate.shape[0] if s.gated else 0)
        with use_backend(backend):
            for sl in _slices(s.e):
                ws, ds = wigner[sl], dst[sl]
                hid, pre_s = _conv1(s, x, ws, feat[sl], w_s, w_t, bias1, w_gate, b_gate, src[sl], ds)
                if keep:
                    _keep_rows(s, hid, hid_kept[sl])
                gates = None
                if s.gated:
                    if keep:
                        pre[sl] = pre_s
                    gates = torch.sigmoid(pre_s).view(-1, lmax, hidden)
                del pre_s
                _conv2_into(s, out, hid, gates, w2, b2, ws, None if env is None else env[sl], ds)
                del hid, gates
        ctx.save_for_backward(x, wigner, feat, w_last, b_last, w_s, w_t, bias1, w_gate, b_gate, w2, b2, env, src,
                              dst, hid_kept, pre)
        ctx.args = (lmax, mmax, hidden, backend)
        return out

    @staticmethod
    def backward(ctx, g_out):
        (x, wigner, feat, w_last, b_last, w_s, w_t, bias1, w_gate, b_gate, w2, b2, env, src, dst, hid_kept,
         pre) = ctx.saved_tensors
        lmax, mmax, hidden, backend = ctx.args
        s = _Spec(x, wigner, w_last, b_last, w_gate, lmax, mmax, hidden)
        n_in = ctx.needs_input_grad
        need1 = tuple(n_in[:8]) + (s.gated and n_in[8], s.gated and n_in[9])  # conv1 side
        need2_params = (n_in[10], b2 is not None and n_in[11])
        nwig, nenv = n_in[1], env is not None and n_in[12]
        need_g = any(need1)
        grad_mode = torch.is_grad_enabled()
        slices = _slices(s.e, whole=grad_mode)
        acc = {"wig": _Rows(slices, s.e), "feat": _Rows(slices, s.e), "env": _Rows(slices, s.e)}
        with use_backend(backend):
            g_out = g_out.contiguous()
            for sl in slices:
                ws, fs, ss, ds = wigner[sl], feat[sl], src[sl].contiguous(), dst[sl].contiguous()
                es = None if env is None else env[sl]
                if grad_mode:  # create_graph: recompute from the inputs so the graph reaches them
                    hs, pre_s = _conv1(s, x, ws, fs, w_s, w_t, bias1, w_gate, b_gate, ss, ds)
                else:
                    hs = _restore_rows(s, hid_kept[sl])
                    pre_s = pre[sl] if s.gated else None
                gs = torch.sigmoid(pre_s).view(-1, lmax, hidden) if s.gated else None
                ghid, ggates = _conv2_backward(s, (need_g,) + need2_params + (nwig, nenv), acc, g_out, hs, gs, w2,
                                               b2, ws, es, ds, sl, grad_mode)
                del hs
                if not need_g:
                    continue
                gpre = None
                if s.gated:
                    gpre = (ggates * gs * (1 - gs)).reshape(ggates.shape[0], -1)
                del ggates, gs
                _conv1_backward(s, need1, acc, ghid, gpre, x, ws, fs, w_s, w_t, w_gate, ss, ds, sl, grad_mode)
                del ghid, gpre
        rows = s.half_rows
        g_w_last = g_b_last = g_w_gate = None
        if need1[3]:
            g_w_last = torch.zeros_like(w_last).index_add(0, rows[0], acc["wl0"]).index_add(0, rows[1], acc["wl1"])
        if need1[4]:
            g_b_last = torch.zeros_like(b_last).index_add(0, rows[0], acc["bl0"]).index_add(0, rows[1], acc["bl1"])
        if need1[8]:
            l0, c = s.l0, s.c
            g_w_gate = torch.cat([acc[f"wg{i}"].view(-1, l0, c) for i in (0, 1)], dim=2).reshape(w_gate.shape)
        return (acc.get("x"), acc["wig"].t if nwig else None, acc["feat"].t if need1[2] else None, g_w_last, g_b_last,
                acc.get("w0"), acc.get("w1"), acc.get("b1"), g_w_gate, acc.get("bg"), acc.get("w2"), acc.get("b2"),
                acc["env"].t if nenv else None) + (None,) * 6


def lean_block_messages(x: torch.Tensor, wigner: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                        feat: torch.Tensor, w_last: torch.Tensor, b_last: torch.Tensor, w_src: torch.Tensor,
                        w_dst: torch.Tensor, bias1: torch.Tensor, w_gate: Optional[torch.Tensor],
                        b_gate: Optional[torch.Tensor], w2: torch.Tensor, b2: Optional[torch.Tensor],
                        envelope: Optional[torch.Tensor], lmax: int, mmax: int, hidden: int,
                        backend: str) -> torch.Tensor:
    """The block's messages summed at their targets, ``[N, K, C]``.

    ``x[N, K, C]``, ``wigner[E, P]``, ``src``/``dst[E]``, ``feat[E, D]`` (the radial MLP up to its
    last layer), ``w_last[NM * 2C, D]``/``b_last[NM * 2C]`` (that layer), ``w_src``/``w_dst`` (conv1's
    packed weight per input half), ``bias1[L0, H]``, ``w_gate[G, L0 * 2C]``/``b_gate[G]`` (None when
    lmax = 0), ``w2`` (conv2's packed weight), ``b2[L0, C]`` or None, ``envelope[E]`` or None.
    """
    return _LeanBlock.apply(x, wigner, feat, w_last, b_last, w_src, w_dst, bias1, w_gate, b_gate, w2, b2, envelope,
                            src, dst, lmax, mmax, hidden, backend)

