"""``rotate``: per-edge block-diagonal Wigner rotation with a fused gather.

Timed against the ``reference`` backend (per-degree ``bmm``) and the
eSCN-style dense ``[E, K, K]`` Wigner ``bmm`` (``escn_dense``).  Gradient
w.r.t. ``x`` only (the Wigner blocks need none without autograd forces).
"""
from __future__ import annotations

import torch

import so2ops
from so2ops.layout import num_coeffs, wigner_size

from .. import inputs as inp
from ..baselines import escn_dense
from ..counts import Count, combine, rotate_macs
from ..registry import Entry, Impl, Shape, Workload, register, standard_cases
from ..so2_backends import backend_impls, leaves

GRAD = ("x",)


def shapes(quick: bool, gpu: bool) -> Shape:
    sh = Shape()
    if quick:
        sh.add("headline", lmax=4, C=32, E=2000, N=inp.default_nodes(2000))
        return sh
    e = 200_000 if gpu else 20_000
    sh.add("headline", lmax=4, C=128, E=e, N=inp.default_nodes(e))
    for lmax in (2, 4, 6, 8):
        sh.add("lmax", lmax=lmax, C=128 if gpu else 64, E=e // 2, N=inp.default_nodes(e // 2))
    return sh


def rotate_count(lmax, c, e, n, itemsize, need_wigner=False):
    """``(fwd, bwd)``: ``S*C`` MACs per edge, ``S = sum_l (2l+1)^2``; backward the x gradient (+ Wigner's)."""
    f = 2 * e * rotate_macs(lmax) * c
    k, p = num_coeffs(lmax), wigner_size(lmax)
    fwd_b = itemsize * (n * k * c + e * p + e * k * c) + 8 * e
    bwd_b = itemsize * (e * k * c + e * p + n * k * c + (e * p + n * k * c if need_wigner else 0)) + 8 * e
    return Count(f, fwd_b), Count(f * (2 if need_wigner else 1), bwd_b)


class Rotate(Entry):
    name = "rotate"
    kind = "op"
    bound = "bytes"
    description = "gather x[index] and rotate by per-edge Wigner-D blocks"

    def cases(self, quick, device):
        # --quick: float32 only (the float64 path is exercised by so2_message)
        return standard_cases(shapes(quick, device.type == "cuda"), quick, () if quick else (torch.float64,))

    def make_inputs(self, shape, dtype, device, seed):
        g = inp.generator(seed)
        edge_index, edge_vec = inp.random_graph(shape["E"], shape["N"], g)
        return {
            "x": inp.randn((shape["N"], num_coeffs(shape["lmax"]), shape["C"]), g, dtype, device),
            "wigner": inp.wigner_of(edge_vec, shape["lmax"], dtype, device),
            "index": edge_index[0].to(device),
        }

    def impls(self, device):
        def bind(inputs, shape):
            t = leaves(inputs, GRAD)
            return (lambda: so2ops.rotate(t["x"], t["wigner"], shape["lmax"], index=t["index"])), [t["x"]]

        impls = backend_impls("rotate", device, bind)
        impls.append(Impl("escn_dense", "baseline", _escn_build, is_baseline=True,
                          mem_estimate=lambda shape, isz: isz * 3 * shape["E"] * num_coeffs(shape["lmax"]) ** 2,
                          note="dense [E, K, K] Wigner bmm (eSCN style)"))
        return impls

    def count(self, shape, mode, itemsize):
        f, b = rotate_count(shape["lmax"], shape["C"], shape["E"], shape["N"], itemsize)
        return combine(f, b, mode)

    def mem_estimate(self, shape, itemsize):
        e, k, c = shape["E"], num_coeffs(shape["lmax"]), shape["C"]
        return itemsize * 5 * e * k * c


def _escn_build(inputs, shape):
    dense = escn_dense.dense_wigner(inputs["wigner"], shape["lmax"])
    x = inputs["x"].detach().requires_grad_(True)
    return Workload(lambda: escn_dense.rotate(x, dense, inputs["index"], False), [x])


ENTRY = register(Rotate())
