"""so2ops.nn modules: shapes, equivariance of norm/gate, torch.compile(fullgraph=True)."""
import pytest
import torch
from e3nn import o3

import so2ops
from so2ops.nn import Gate, SO2Convolution, SO2LayerNorm

from _helpers import message_inputs


def _d(lmax, seed=0):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return o3.Irreps.spherical_harmonics(lmax).D_from_matrix(o3.rand_matrix())
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize("module", [SO2LayerNorm(3, 8), Gate(3, 8)], ids=["norm", "gate"])
def test_pointwise_modules_are_equivariant(module):
    module = module.double()
    x = torch.randn(10, 16, 8, dtype=torch.float64)
    d = _d(3)
    torch.testing.assert_close(module(d @ x), d @ module(x), rtol=1e-10, atol=1e-10)


def test_layer_norm_normalises_each_degree():
    ln = SO2LayerNorm(2, 16).double()
    x = 5 + 3 * torch.randn(4, 9, 16, dtype=torch.float64)
    y = ln(x)
    torch.testing.assert_close(y[:, 0].mean(-1), torch.zeros(4, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(y[:, 1:4].pow(2).mean((1, 2)), torch.ones(4, dtype=torch.float64), atol=1e-5, rtol=0)


def test_so2_convolution_compiles_fullgraph_and_matches_eager():
    torch.manual_seed(0)
    conv = SO2Convolution(3, 2, 6, 5, edge_attr_dim=4)
    x, v, _, ei, _, _ = message_inputs(7, 30, 3, 2, 6, 5, torch.float32, "cpu", modulation=False)
    attr = torch.randn(30, 4)
    compiled = torch.compile(conv, fullgraph=True)
    xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    eager = conv(xe, ei, v, attr)
    out = compiled(xc, ei, v, attr)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    eager.square().sum().backward()
    out.square().sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-4, atol=1e-4)


def test_so2_convolution_without_edge_attributes():
    conv = SO2Convolution(2, 1, 3, 4, edge_attr_dim=0)
    x, v, _, ei, _, _ = message_inputs(5, 9, 2, 1, 3, 4, torch.float32, "cpu", modulation=False)
    assert conv(x, ei, v).shape == (5, 9, 4)
