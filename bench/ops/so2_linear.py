"""``so2_linear``: the SO(2) linear map on edge-frame features.

Timed against the ``reference`` backend and the eSCN-style per-m
``nn.Linear`` code (``escn_dense``).  Gradients w.r.t. ``x``, ``weight`` and
``modulation``.  The ``gemm_floor`` row times the layer's GEMMs alone over the
whole edge set (bench/gemm_floor.py): a backend's time over it is how far the
tile loop is from its own matrix products.
"""
from __future__ import annotations

import torch

import so2ops
from so2ops.layout import num_coeffs, num_mod, weight_size

from .. import gemm_floor
from .. import inputs as inp
from ..baselines import escn_dense
from ..counts import Count, combine, so2_macs
from ..registry import Entry, Impl, Shape, Workload, register, standard_cases
from ..so2_backends import backend_impls, leaves

GRAD = ("x", "weight", "modulation")


def shapes(quick: bool, gpu: bool) -> Shape:
    sh = Shape()
    if quick:
        sh.add("headline", lmax=4, mmax=4, C=32, E=2000)
        return sh
    e = 200_000 if gpu else 20_000
    sh.add("headline", lmax=4, mmax=4, C=128, E=e)
    for lmax in (2, 4, 6, 8):
        for mmax in sorted({2, lmax}):
            sh.add("lmax", lmax=lmax, mmax=mmax, C=128 if gpu else 64, E=e // 2)
    return sh


def linear_count(lmax, mmax, cin, cout, e, itemsize):
    """``(fwd, bwd)``: ``Q*C_in*C_out`` MACs per edge forward; backward grads of x and weight (2x)."""
    q = so2_macs(lmax, mmax)
    k, nm, w = num_coeffs(lmax), num_mod(lmax, mmax), weight_size(lmax, mmax, cin, cout)
    f = 2 * e * q * cin * cout
    ins = e * k * cin + w + e * nm * cin
    return (Count(f, itemsize * (ins + e * k * cout)),
            Count(2 * f, itemsize * (e * k * cout + ins + ins)))


class SO2Linear(Entry):
    name = "so2_linear"
    kind = "op"
    bound = "flops"
    description = "SO(2) linear map (per-m complex-like blocks) with radial modulation"

    def cases(self, quick, device):
        # --quick: float32 only (the float64 path is exercised by so2_message)
        return standard_cases(shapes(quick, device.type == "cuda"), quick, () if quick else (torch.float64,))

    def make_inputs(self, shape, dtype, device, seed):
        g = inp.generator(seed)
        lmax, mmax, c, e = shape["lmax"], shape["mmax"], shape["C"], shape["E"]
        return {
            "x": inp.randn((e, num_coeffs(lmax), c), g, dtype, device),
            "weight": inp.randn((weight_size(lmax, mmax, c, c),), g, dtype, device, scale=((lmax + 1) * c) ** -0.5),
            "modulation": inp.randn((e, num_mod(lmax, mmax), c), g, dtype, device),
        }

    def impls(self, device):
        def bind(inputs, shape):
            t = leaves(inputs, GRAD)
            lmax, mmax, c = shape["lmax"], shape["mmax"], shape["C"]
            return (lambda: so2ops.so2_linear(t["x"], t["weight"], lmax, mmax, c, modulation=t["modulation"])), [t[k] for k in GRAD]

        impls = backend_impls("so2_linear", device, bind)
        impls.append(Impl("escn_dense", "baseline", _escn_build, is_baseline=True,
                          note="eSCN style: m-major gather + per-m nn.Linear"))
        impls.append(gemm_floor.impl(_floor_gemms, "the layer's GEMMs",
                                     "a backend's time / gemm_floor is how far its tile loop is from its GEMMs"))
        return impls

    def count(self, shape, mode, itemsize):
        f, b = linear_count(shape["lmax"], shape["mmax"], shape["C"], shape["C"], shape["E"], itemsize)
        return combine(f, b, mode)

    def mem_estimate(self, shape, itemsize):
        return itemsize * 10 * shape["E"] * num_coeffs(shape["lmax"]) * shape["C"]


def _floor_gemms(shape):
    # the modulation's gradient is elementwise: the floor's GEMMs are the layer's own (x and weight gradients)
    return gemm_floor.so2_gemms(shape["lmax"], shape["mmax"], shape["C"], shape["C"])


def _escn_build(inputs, shape):
    lmax, mmax, c = shape["lmax"], shape["mmax"], shape["C"]
    ws = escn_dense.per_m_weights(inputs["weight"], lmax, mmax, c, c)
    x = inputs["x"].detach().requires_grad_(True)
    mod = inputs["modulation"].detach().requires_grad_(True)

    def to_ref(out, grads):
        return out, [grads[0], escn_dense.packed_grad(grads[2:], lmax, mmax, c), grads[1]]

    return Workload(lambda: escn_dense.so2_linear(x, ws, mod, lmax, mmax), [x, mod, *ws], to_reference=to_ref)


ENTRY = register(SO2Linear())
