"""Global rotation equivariance of so2_message and SO2Convolution, on every backend,
checked with e3nn's Wigner-D as the independent reference; edge_vec gradients at the
frame's special directions."""
import pytest
import torch
from e3nn import o3

import so2ops
from so2ops.nn import SO2Convolution

from _helpers import backend_params, message_inputs, require, rotation_and_D

F64 = torch.float64
ALL_BACKENDS = backend_params() + [pytest.param("reference", "cpu", id="reference")]
#: max |error| / max |output| allowed per dtype (the issue's bounds)
EQUIV_TOL = {torch.float32: 1e-5, torch.float64: 1e-11}


def _rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("lmax,mmax", [(2, 2), (4, 2), (6, 6)])
def test_so2_message_is_equivariant(backend, device, dtype, lmax, mmax):
    if backend != "reference":
        require(backend, device)
    x, v, _, ei, w, mod = message_inputs(8, 40, lmax, mmax, 5, 4, dtype, device)  # includes +-y edges
    rot, d = rotation_and_D(lmax, dtype, seed=lmax)
    rot, d = rot.to(device), d.to(device)
    with so2ops.use_backend(backend):
        out = so2ops.so2_message(x, so2ops.edge_wigner(v, lmax), ei, w, lmax, mmax, 4, mod)
        out_rot = so2ops.so2_message(d @ x, so2ops.edge_wigner(v @ rot.T, lmax), ei, w, lmax, mmax, 4, mod)
    assert _rel_err(out_rot, d @ out) < EQUIV_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_so2_message_equivariant_for_edges_exactly_on_the_polar_axis(dtype):
    """Rotations that move generic edges onto +-y and the +-y edges elsewhere."""
    lmax = 3
    x, _, _, ei, w, mod = message_inputs(4, 6, lmax, lmax, 3, 3, dtype, "cpu")
    v = torch.tensor([[0, 1, 0], [0, -1, 0], [1, 0, 0], [0, 0, 1], [1, 1, 0], [0, 0, -2.0]], dtype=dtype)
    t = lambda a: torch.tensor(a, dtype=F64)  # noqa: E731
    for rot in (o3.angles_to_matrix(t(0.0), t(1.5707963267948966), t(0.0)),
                o3.angles_to_matrix(t(0.3), t(3.141592653589793), t(0.2))):
        rot = rot.to(dtype)
        old = torch.get_default_dtype()
        torch.set_default_dtype(F64)
        d = o3.Irreps.spherical_harmonics(lmax).D_from_matrix(rot.to(F64)).to(dtype)
        torch.set_default_dtype(old)
        out = so2ops.so2_message(x, so2ops.edge_wigner(v, lmax), ei, w, lmax, lmax, 3, mod)
        out_rot = so2ops.so2_message(d @ x, so2ops.edge_wigner(v @ rot.T, lmax), ei, w, lmax, lmax, 3, mod)
        assert _rel_err(out_rot, d @ out) < EQUIV_TOL[dtype] * 10


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_so2_convolution_is_equivariant(backend, device, dtype):
    if backend != "reference":
        require(backend, device)
    torch.manual_seed(0)
    lmax = 3
    conv = SO2Convolution(lmax, 2, 6, 5, edge_attr_dim=4).to(device=device, dtype=dtype)
    x, v, _, ei, _, _ = message_inputs(7, 30, lmax, 2, 6, 5, dtype, device, modulation=False)
    attr = torch.randn(30, 4, dtype=dtype, device=device)
    rot, d = rotation_and_D(lmax, dtype, seed=11)
    rot, d = rot.to(device), d.to(device)
    with so2ops.use_backend(backend), torch.no_grad():
        out = conv(x, ei, v, attr)
        out_rot = conv(d @ x, ei, v @ rot.T, attr)
    assert _rel_err(out_rot, d @ out) < EQUIV_TOL[dtype]


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize(
    "edge",
    [[0.0, 1.0, 0.0], [0.0, -1.0, 0.0], [1e-7, 1.0, 0.0], [0.0, -1.0, 1e-7], [0.6, 0.0, 0.8], [0.6, 1e-12, -0.8]],
    ids=["+y", "-y", "1e-7 off +y", "1e-7 off -y", "chart boundary", "1e-12 above boundary"],
)
def test_edge_vec_gradient_through_so2_message_matches_finite_differences(backend, device, edge):
    if backend != "reference":
        require(backend, device)
    lmax = 3
    x, _, _, _, w, mod = message_inputs(2, 1, lmax, 2, 3, 2, F64, device)
    ei = torch.tensor([[0], [1]], device=device)
    v = torch.tensor([edge], dtype=F64, device=device, requires_grad=True)
    with so2ops.use_backend(backend):
        f = lambda t: so2ops.so2_message(x, so2ops.edge_wigner(t, lmax), ei, w, lmax, 2, 2, mod)  # noqa: E731
        out = f(v)
        (grad,) = torch.autograd.grad(out.square().sum(), v)
        assert torch.isfinite(grad).all()
        assert torch.autograd.gradcheck(f, (v,), eps=1e-6, atol=1e-5, rtol=1e-4)
