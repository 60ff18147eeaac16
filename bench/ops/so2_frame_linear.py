"""``so2_frame_linear``: ``so2_gather_linear`` (gather + rotate in + SO(2) layer) and
``so2_linear_scatter`` (SO(2) layer + m = 0 bias + envelope + rotate back + sum), the two
ends of a two-conv edgewise block.

Each is timed against ``composition``: the same function written with the fast
public ops of the same backend (``rotate`` + ``so2_linear``; ``so2_linear`` +
bias + envelope + inverse ``rotate`` + ``index_add``), i.e. what a user of the
other so2ops ops would write.  Gradients w.r.t. ``x``, ``weight`` and
``modulation``.
"""
from __future__ import annotations

import torch

import so2ops
from so2ops.layout import coeff_index, num_coeffs, num_mod, weight_size

from .. import inputs as inp
from ..counts import combine
from ..registry import Entry, Impl, Shape, Workload, register, standard_cases
from ..so2_backends import backend_impls, force_backend, leaves
from .rotate import rotate_count
from .so2_linear import linear_count

GRAD = ("x", "weight", "modulation")


def shapes(quick: bool, gpu: bool) -> Shape:
    sh = Shape()
    if quick:
        sh.add("headline", dir="scatter", lmax=4, mmax=2, C=32, E=2000, N=inp.default_nodes(2000))
        sh.add("gather", dir="gather", lmax=4, mmax=2, C=32, E=2000, N=inp.default_nodes(2000))
        return sh
    e = 200_000 if gpu else 20_000
    c = 128 if gpu else 64
    sh.add("headline", dir="scatter", lmax=4, mmax=2, C=c, E=e, N=inp.default_nodes(e))
    sh.add("headline", dir="gather", lmax=4, mmax=2, C=c, E=e, N=inp.default_nodes(e))
    for lmax, mmax in ((2, 2), (6, 2)):
        for d in ("gather", "scatter"):
            sh.add("lmax", dir=d, lmax=lmax, mmax=mmax, C=c, E=e // 2, N=inp.default_nodes(e // 2))
    return sh


class SO2FrameLinear(Entry):
    name = "so2_frame_linear"
    kind = "op"
    bound = "flops"
    description = "one end of an edgewise block: gather+rotate+SO(2) layer, or SO(2) layer+rotate back+sum"

    def cases(self, quick, device):
        return standard_cases(shapes(quick, device.type == "cuda"), quick, ())

    def make_inputs(self, shape, dtype, device, seed):
        g = inp.generator(seed)
        lmax, mmax, c, e, n = shape["lmax"], shape["mmax"], shape["C"], shape["E"], shape["N"]
        edge_index, edge_vec = inp.random_graph(e, n, g)
        scatter = shape["dir"] == "scatter"
        return {
            "x": inp.randn((e if scatter else n, num_coeffs(lmax), c), g, dtype, device),
            "wigner": inp.wigner_of(edge_vec, lmax, dtype, device),
            "index": edge_index[1 if scatter else 0].to(device),
            "weight": inp.randn((weight_size(lmax, mmax, c, c),), g, dtype, device, scale=((lmax + 1) * c) ** -0.5),
            "modulation": inp.randn((e, num_mod(lmax, mmax), c), g, dtype, device),
            "bias": inp.randn((lmax + 1, c), g, dtype, device) if scatter else None,
            "scale": inp.randn((e,), g, dtype, device).abs() if scatter else None,
        }

    def impls(self, device):
        def bind(inputs, shape):
            t = leaves(inputs, GRAD)
            lmax, mmax, c = shape["lmax"], shape["mmax"], shape["C"]
            if shape["dir"] == "scatter":
                fwd = lambda: so2ops.so2_linear_scatter(t["x"], t["wigner"], t["index"], t["weight"], shape["N"],  # noqa: E731
                                                        lmax, mmax, c, t["modulation"], t["bias"], t["scale"])
            else:
                fwd = lambda: so2ops.so2_gather_linear(t["x"], t["wigner"], t["index"], t["weight"], lmax, mmax, c,  # noqa: E731
                                                       t["modulation"])
            return fwd, [t[k] for k in GRAD]

        impls = backend_impls("so2_frame_linear", device, bind)
        fast = "cuda" if device.type == "cuda" else "cpu"
        impls.append(Impl("composition", "baseline", lambda i, s: _composition(i, s, fast), is_baseline=True,
                          note=f"rotate + so2_linear (+ index_add) on the {fast} backend"))
        return impls

    def count(self, shape, mode, itemsize):
        lmax, mmax, c, e, n = shape["lmax"], shape["mmax"], shape["C"], shape["E"], shape["N"]
        lf, lb = linear_count(lmax, mmax, c, c, e, itemsize)
        rf, rb = rotate_count(lmax, c, e, n, itemsize)
        return combine(lf + rf, lb + rb, mode)

    def mem_estimate(self, shape, itemsize):
        return itemsize * 8 * shape["E"] * num_coeffs(shape["lmax"]) * shape["C"]


def _composition(inputs, shape, backend):
    t = leaves(inputs, GRAD)
    lmax, mmax, c = shape["lmax"], shape["mmax"], shape["C"]
    rows = torch.tensor([coeff_index(l, 0) for l in range(lmax + 1)], device=t["x"].device)

    def gather():
        return so2ops.so2_linear(so2ops.rotate(t["x"], t["wigner"], lmax, index=t["index"]), t["weight"], lmax, mmax,
                                 c, t["modulation"])

    def scatter():
        y = so2ops.so2_linear(t["x"], t["weight"], lmax, mmax, c, t["modulation"])
        y = y.index_add(1, rows, t["bias"].unsqueeze(0).expand(y.shape[0], -1, -1)) * t["scale"].view(-1, 1, 1)
        back = so2ops.rotate(y, t["wigner"], lmax, inverse=True)
        return back.new_zeros(shape["N"], back.shape[1], c).index_add_(0, t["index"], back)

    return Workload(scatter if shape["dir"] == "scatter" else gather, [t[k] for k in GRAD],
                    context=lambda: force_backend(backend))


ENTRY = register(SO2FrameLinear())
