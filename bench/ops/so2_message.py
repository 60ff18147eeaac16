"""``so2_message``: the fused SO(2) message-passing op, against everything users would run instead.

Implementations timed: every so2ops backend that runs on the device (the
``reference`` backend is the plain-PyTorch baseline), ``escn_dense``
(eSCN/EquiformerV2 style: dense Wigner bmm, per-m Linear, index_add),
``e3nn_tp`` (channel-wise CG tensor-product convolution) and, when
importable, ``cueq_tp``.

Gradients are taken w.r.t. ``x``, ``weight`` and ``modulation`` (a training
step without autograd forces; the Wigner blocks need no gradient).
"""
from __future__ import annotations

import torch

import so2ops
from so2ops.layout import num_coeffs, num_mod, weight_size, wigner_size

from .. import inputs as inp
from ..baselines import e3nn_tp, escn_dense, optional
from ..counts import Count, combine, rotate_macs, so2_macs
from ..registry import Entry, Impl, Shape, Workload, register, standard_cases
from ..so2_backends import backend_impls, leaves

GRAD = ("x", "weight", "modulation")

#: The configuration the issue's targets are stated for (GPU), and its CPU-sized twin.
HEADLINE_GPU = dict(lmax=4, mmax=4, C=128, E=200_000)
HEADLINE_CPU = dict(lmax=4, mmax=4, C=128, E=20_000)


def shapes(quick: bool, gpu: bool) -> Shape:
    """Sweeps: headline, lmax (2..8) x mmax (2, lmax), channels (32..256), edges (1e3..1e6)."""
    sh = Shape()

    def add(tag, lmax, mmax, C, E):
        sh.add(tag, lmax=lmax, mmax=mmax, C=C, E=E, N=inp.default_nodes(E))

    if quick:
        add("lmax", 2, 2, 32, 2000)
        for tag in ("headline", "lmax", "edges"):
            add(tag, 4, 4, 32, 2000)
        add("edges", 4, 4, 32, 500)
        return sh
    head = HEADLINE_GPU if gpu else HEADLINE_CPU
    add("headline", **head)
    c_sweep, e_fixed = (128, 100_000) if gpu else (64, 10_000)
    for lmax in (2, 4, 6, 8):
        for mmax in sorted({2, lmax}):
            add("lmax", lmax, mmax, c_sweep, e_fixed)
    for c in (32, 64, 128, 256):
        add("channels", 4, 4, c, e_fixed)
    for e in (1_000, 10_000, 100_000, 1_000_000):
        add("edges", 4, 4, c_sweep, e)
    return sh


def message_count(lmax, mmax, cin, cout, e, n, itemsize, need_wigner=False):
    """``(fwd, bwd)`` analytic counts of ``so2_message`` (see ``bench.counts``).

    Forward MACs per edge: rotate in ``S*C_in``, SO(2) map ``Q*C_in*C_out``,
    rotate out ``S*C_out`` with ``S = sum_l (2l+1)^2``, ``Q = so2_macs``.
    Backward (grads of x, weight, modulation): rotate-out and rotate-in once
    (grad of the features), the SO(2) map twice (grad of input and weight);
    ``need_wigner`` adds the Wigner gradients of both rotations.
    """
    s, q = rotate_macs(lmax), so2_macs(lmax, mmax)
    k, nm, w = num_coeffs(lmax), num_mod(lmax, mmax), weight_size(lmax, mmax, cin, cout)
    f = 2 * e * (s * cin + q * cin * cout + s * cout)
    b = 2 * e * (s * cout + 2 * q * cin * cout + s * cin)
    if need_wigner:
        b += 2 * e * s * (cin + cout)
    ins = n * k * cin + e * wigner_size(lmax) + w + e * nm * cin
    fwd_bytes = itemsize * (ins + n * k * cout) + 16 * e
    grads = n * k * cin + w + e * nm * cin + (e * wigner_size(lmax) if need_wigner else 0)
    bwd_bytes = itemsize * (n * k * cout + ins + grads) + 16 * e
    return Count(f, fwd_bytes), Count(b, bwd_bytes)


class SO2Message(Entry):
    name = "so2_message"
    kind = "op"
    bound = "flops"
    description = "gather + rotate in + SO(2) linear (modulated) + rotate out + scatter-sum"

    def cases(self, quick, device):
        gpu = device.type == "cuda"
        extra = (torch.float64, torch.bfloat16) if gpu else (torch.float64,)

        def skips(shape):
            # e3nn's tensor product costs seconds per call on a CPU from lmax 4 on: --quick keeps it to lmax 2
            if quick and not gpu and shape["lmax"] > 2:
                return {"e3nn_tp": "--quick on CPU: e3nn TP timed at lmax 2 only (seconds per call above)"}
            return {}

        return standard_cases(shapes(quick, gpu), quick, extra, skips)

    def make_inputs(self, shape, dtype, device, seed):
        g = inp.generator(seed)
        lmax, mmax, c, e, n = shape["lmax"], shape["mmax"], shape["C"], shape["E"], shape["N"]
        edge_index, edge_vec = inp.random_graph(e, n, g)
        fan_in = (lmax + 1) * c
        return {
            "x": inp.randn((n, num_coeffs(lmax), c), g, dtype, device),
            "wigner": inp.wigner_of(edge_vec, lmax, dtype, device),
            "edge_index": edge_index.to(device),
            "edge_vec": edge_vec.to(device),
            "weight": inp.randn((weight_size(lmax, mmax, c, c),), g, dtype, device, scale=fan_in ** -0.5),
            "modulation": inp.randn((e, num_mod(lmax, mmax), c), g, dtype, device),
        }

    def impls(self, device):
        def bind(inputs, shape):
            t = leaves(inputs, GRAD)
            lmax, mmax, c = shape["lmax"], shape["mmax"], shape["C"]

            def fwd():
                return so2ops.so2_message(t["x"], t["wigner"], t["edge_index"], t["weight"], lmax, mmax, c, modulation=t["modulation"])

            return fwd, [t[k] for k in GRAD]

        impls = backend_impls("so2_message", device, bind)
        impls.append(Impl("escn_dense", "baseline", _escn_build, is_baseline=True, mem_estimate=_escn_mem,
                          note="eSCN/EquiformerV2 style: dense Wigner bmm + per-m Linear + index_add"))
        e3nn_reason = e3nn_tp.available()
        impls.append(Impl(
            "e3nn_tp", "baseline", _e3nn_build, same_math=False, is_baseline=True, count=e3nn_tp.count,
            mem_estimate=e3nn_tp.mem_estimate, skip=lambda shape, dtype: e3nn_reason or _e3nn_skip(shape, dtype),
            note="e3nn channel-wise ('uvu') CG tensor-product conv + node o3.Linear",
        ))
        cueq_reason = optional.cueq_available(device)
        impls.append(Impl(
            "cueq_tp", "baseline", _cueq_build, same_math=False, is_baseline=True, count=e3nn_tp.count,
            mem_estimate=e3nn_tp.mem_estimate, skip=lambda shape, dtype: cueq_reason,
            note="cuEquivariance channel-wise TP conv + Linear",
        ))
        return impls

    def count(self, shape, mode, itemsize):
        f, b = message_count(shape["lmax"], shape["mmax"], shape["C"], shape["C"], shape["E"], shape["N"], itemsize)
        return combine(f, b, mode)

    def mem_estimate(self, shape, itemsize):
        # the reference's autograd keeps ~10 [E, K, C] activations and gradients
        e, k, c = shape["E"], num_coeffs(shape["lmax"]), shape["C"]
        return itemsize * 10 * e * k * c


def _escn_mem(shape, itemsize):
    # plus the dense [E, K', K] Wigner (and its build temporaries)
    e, k = shape["E"], num_coeffs(shape["lmax"])
    return itemsize * (3 * e * k * k + 10 * e * k * shape["C"])


def _e3nn_skip(shape, dtype):
    if dtype == torch.bfloat16:
        return "e3nn's codegen has no bf16 path worth timing"
    return None


def _escn_build(inputs, shape):
    lmax, mmax, c = shape["lmax"], shape["mmax"], shape["C"]
    dense = escn_dense.dense_wigner(inputs["wigner"], lmax, mmax)
    ws = escn_dense.per_m_weights(inputs["weight"], lmax, mmax, c, c)
    x = inputs["x"].detach().requires_grad_(True)
    mod = inputs["modulation"].detach().requires_grad_(True)
    ei = inputs["edge_index"]

    def fwd():
        return escn_dense.message(x, dense, ei, ws, mod, lmax, mmax)

    def to_ref(out, grads):
        gx, gm, gws = grads[0], grads[1], grads[2:]
        return out, [gx, escn_dense.packed_grad(gws, lmax, mmax, c), gm]

    return Workload(forward=fwd, grad_inputs=[x, mod, *ws], to_reference=to_ref)


def _e3nn_build(inputs, shape):
    fwd, grads = e3nn_tp.build(inputs, shape)
    return Workload(forward=fwd, grad_inputs=grads)


def _cueq_build(inputs, shape):
    fwd, grads = optional.cueq_build(inputs, shape)
    return Workload(forward=fwd, grad_inputs=grads)


ENTRY = register(SO2Message())
