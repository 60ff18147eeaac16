"""``edge_wigner``: packed Wigner-D blocks of every edge frame.

Only so2ops backends (the ``reference`` backend is the plain-PyTorch
baseline).  Gradient w.r.t. ``edge_vec`` (autograd forces need it).

Count of the sampled construction (``so2ops.wigner_tables``): rotate the
``K = 3*lmax + 3`` sample points by the frame (``9 K`` MACs per edge), then per
degree ``D^l = Y^l(R p) B_l`` (``(2l+1)^2 K`` MACs); the spherical harmonics
themselves are element-wise recurrences and are not counted.  The backward
needs one gradient per contraction (the tables are constants): same count.
"""
from __future__ import annotations

import torch

import so2ops
from so2ops.layout import wigner_size
from so2ops.wigner_tables import num_points

from .. import inputs as inp
from ..counts import Count, combine
from ..registry import Entry, Shape, register, standard_cases
from ..so2_backends import backend_impls, leaves

GRAD = ("edge_vec",)


def shapes(quick: bool, gpu: bool) -> Shape:
    sh = Shape()
    if quick:
        sh.add("headline", lmax=4, E=2000)
        return sh
    e = 1_000_000 if gpu else 100_000
    sh.add("headline", lmax=4, E=e)
    for lmax in (2, 4, 6, 8):
        sh.add("lmax", lmax=lmax, E=e)
    return sh


def wigner_count(lmax, e, itemsize):
    k = num_points(lmax)
    f = 2 * e * k * (9 + wigner_size(lmax))
    p = wigner_size(lmax)
    return Count(f, itemsize * (3 * e + e * p)), Count(f, itemsize * (e * p + 3 * e + 3 * e))


class EdgeWigner(Entry):
    name = "edge_wigner"
    kind = "op"
    bound = "bytes"
    description = "edge frames and their packed Wigner-D blocks"

    def cases(self, quick, device):
        # --quick: float32 only (the float64 path is exercised by so2_message)
        return standard_cases(shapes(quick, device.type == "cuda"), quick, () if quick else (torch.float64,))

    def make_inputs(self, shape, dtype, device, seed):
        _, vec = inp.random_graph(shape["E"], max(2, shape["E"] // 16), inp.generator(seed))
        return {"edge_vec": vec.to(device=device, dtype=dtype)}

    def impls(self, device):
        def bind(inputs, shape):
            t = leaves(inputs, GRAD)
            return (lambda: so2ops.edge_wigner(t["edge_vec"], shape["lmax"])), [t["edge_vec"]]

        return backend_impls("edge_wigner", device, bind)

    def count(self, shape, mode, itemsize):
        f, b = wigner_count(shape["lmax"], shape["E"], itemsize)
        return combine(f, b, mode)

    def mem_estimate(self, shape, itemsize):
        # the reference keeps SH of K points per edge for every degree, and their grads
        lmax = shape["lmax"]
        return itemsize * shape["E"] * num_points(lmax) * (lmax + 1) ** 2 * 6


ENTRY = register(EdgeWigner())
