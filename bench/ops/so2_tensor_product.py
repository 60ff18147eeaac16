"""``so2_tensor_product``: the continuous SO(2) tensor product of node features.

Timed: every so2ops backend that implements the fused grid stage
(``so2_grid_product``; the two SO(2) mixings are torch GEMMs shared by every
backend), against the ``reference`` backend.  Gradients w.r.t. ``x``,
``w_in``, ``coeffs`` and ``w_out`` (a training step).

Sizes are molecule scale: ``N`` = 30 (one QM9/MD17 molecule) and 300 nodes
(a batch of them), ``lmax = 4``, ``mmax`` 2 and 4, body order ``nu = 3``,
``C = H = 128``; a body-order sweep ``nu = 1..4`` and, on GPU, larger batches.
"""
from __future__ import annotations

import torch

import so2ops
from so2ops.layout import num_coeffs, spectral_size, tp_grid_size, tp_in_size, tp_out_size

from .. import inputs as inp
from ..counts import Count, combine
from ..registry import Entry, Shape, register, standard_cases
from ..so2_backends import backend_impls, leaves

GRAD = ("x", "w_in", "coeffs", "w_out")

#: The backend-dispatched kernel of the op (the GEMM stages are plain torch on every backend).
KERNEL = "so2_grid_product"


def shapes(quick: bool, gpu: bool) -> Shape:
    """Headline ``N=300, lmax 4, mmax 4, nu 3, C=H=128``; sweeps over N x mmax, body order, (GPU) nodes."""
    sh = Shape()

    def add(tag, n, mmax, nu=3, lmax=4, c=128, h=128):
        sh.add(tag, lmax=lmax, mmax=mmax, nu=nu, C=c, H=h, N=n)

    if quick:
        add("headline", 30, 2)
        return sh
    add("headline", 300, 4)
    for n in (30, 300):
        for mmax in (2, 4):
            add("mmax", n, mmax)
    for nu in (1, 2, 3, 4):
        add("body_order", 300, 2, nu=nu)
    for n in ((30, 300, 3_000, 30_000) if gpu else (30, 300, 3_000)):
        add("nodes", n, 2)
    return sh


def mix_macs(lmax: int, mmax: int) -> int:
    """Multiply-adds per node and (C x H) of one SO(2) mixing: ``L0 + 4 sum_{m>=1} Lm``, ``Lm = lmax-m+1``.

    ``m = 0``: one ``[L0*C] -> H`` GEMM; ``m > 0``: four ``[Lm*C] -> H`` GEMMs
    (``W1 x+``, ``W2 x-``, ``W2 x+``, ``W1 x-``); the output mixing is the transpose.
    """
    return (lmax + 1) + 4 * sum(lmax - m + 1 for m in range(1, mmax + 1))


def tp_count(lmax, mmax, nu, c, h, cout, n, itemsize, grid=None):
    """``(fwd, bwd)`` analytic counts of ``so2_tensor_product`` (see ``bench.counts``).

    Forward multiply-adds per node: the ``nu`` input mixings ``nu*Q*C*H``; the
    grid stage ``(nu+1)*G*S*H`` (each factor to the ``G`` grid angles from its
    ``S = 2 mmax + 1`` coefficients, and the projection back; the pointwise
    products are element-wise and not counted; with ``mmax = 0`` the whole
    stage is element-wise); the output mixing ``Q*H*C_out``.
    Backward (grads of x, w_in, coeffs, w_out): the two mixings twice (input
    and weight gradients), the grid stage once (the basis is constant).
    """
    q, s = mix_macs(lmax, mmax), spectral_size(mmax)
    g = tp_grid_size(mmax, nu) if grid is None else grid
    k = num_coeffs(lmax)
    mix_in, grid_m, mix_out = nu * n * q * c * h, (nu + 1) * n * g * s * h, n * q * h * cout
    if g * s == 1:  # mmax = 0: one angle, one coefficient: the grid stage is element-wise
        grid_m = 0
    f = 2 * (mix_in + grid_m + mix_out)
    b = 2 * (2 * mix_in + grid_m + 2 * mix_out)
    ins = n * k * c + nu * tp_in_size(lmax, mmax, c, h) + n * nu * h + tp_out_size(lmax, mmax, h, cout)
    return (Count(f, itemsize * (ins + n * k * cout)),
            Count(b, itemsize * (n * k * cout + ins + ins)))


class SO2TensorProduct(Entry):
    name = "so2_tensor_product"
    kind = "op"
    bound = "flops"
    description = "continuous SO(2) tensor product: SO(2) mixings + products on an alias-free angle grid (body order nu)"

    def cases(self, quick, device):
        return standard_cases(shapes(quick, device.type == "cuda"), quick, (torch.float64,))

    def make_inputs(self, shape, dtype, device, seed):
        g = inp.generator(seed)
        lmax, mmax, nu, c, h, n = shape["lmax"], shape["mmax"], shape["nu"], shape["C"], shape["H"], shape["N"]
        return {
            "x": inp.randn((n, num_coeffs(lmax), c), g, dtype, device),
            # unit-variance circle functions per factor, so that products of nu of them stay O(1)
            "w_in": inp.randn((nu, tp_in_size(lmax, mmax, c, h)), g, dtype, device, scale=((lmax + 1) * c) ** -0.5),
            "coeffs": inp.randn((n, nu, h), g, dtype, device),
            "w_out": inp.randn((tp_out_size(lmax, mmax, h, c),), g, dtype, device, scale=h ** -0.5),
        }

    def impls(self, device):
        def bind(inputs, shape):
            t = leaves(inputs, GRAD)
            lmax, mmax, c = shape["lmax"], shape["mmax"], shape["C"]

            def fwd():
                return so2ops.so2_tensor_product(t["x"], t["w_in"], t["coeffs"], t["w_out"], lmax, mmax, c)

            return fwd, [t[k] for k in GRAD]

        return backend_impls(KERNEL, device, bind)

    def count(self, shape, mode, itemsize):
        f, b = tp_count(shape["lmax"], shape["mmax"], shape["nu"], shape["C"], shape["H"], shape["C"], shape["N"], itemsize)
        return combine(f, b, mode)

    def mem_estimate(self, shape, itemsize):
        # the reference's autograd keeps the nu grid factors, running products and their gradients
        n, h, nu = shape["N"], shape["H"], shape["nu"]
        g = tp_grid_size(shape["mmax"], nu)
        return itemsize * (6 * n * nu * g * h + 6 * n * num_coeffs(shape["lmax"]) * shape["C"])


ENTRY = register(SO2TensorProduct())
