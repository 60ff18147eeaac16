"""Degree ``LMAX_SUPPORTED`` (8): rotate, so2_linear and so2_message on every backend
against the reference, values and gradients, on small graphs (E <= 6, C <= 3)."""
import pytest
import torch

import so2ops

from _helpers import assert_close, backend_params, message_inputs, require

LMAX = so2ops.LMAX_SUPPORTED
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
MMAX = pytest.mark.parametrize("mmax", [LMAX, 3, 0], ids=lambda m: f"mmax{m}")


def test_lmax_supported_is_8():
    assert LMAX == 8


def _compare(fn_ref, fn, tensors, dtype, what):
    ref = [t.clone().requires_grad_(True) for t in tensors]
    act = [t.clone().requires_grad_(True) for t in tensors]
    expected = fn_ref(*ref)
    actual = fn(*act)
    assert actual.shape == expected.shape
    assert_close(actual, expected, dtype, what)
    g = torch.randn(expected.shape, dtype=dtype, generator=torch.Generator().manual_seed(1)).to(expected.device)
    (expected * g).sum().backward()
    (actual * g).sum().backward()
    for i, (a, r) in enumerate(zip(act, ref)):
        assert a.grad is not None, f"{what}: no gradient for input {i}"
        assert_close(a.grad, r.grad, dtype, f"{what} grad {i}")


@pytest.mark.parametrize("backend,device", backend_params())
@DTYPES
@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
@pytest.mark.parametrize("gather", [False, True], ids=["plain", "gather"])
def test_rotate(backend, device, dtype, inverse, gather):
    require(backend, device)
    n, e, c = 4, 6, 3
    x, v, wig, ei, _, _ = message_inputs(n if gather else e, e, LMAX, LMAX, c, c, dtype, device, modulation=False)
    index = ei[0] if gather else None
    with so2ops.use_backend(backend):
        _compare(lambda a, b: so2ops.reference.rotate(a, b, LMAX, index, inverse),
                 lambda a, b: so2ops.rotate(a, b, LMAX, index, inverse), [x, wig], dtype, "rotate")


@pytest.mark.parametrize("backend,device", backend_params())
@DTYPES
@MMAX
@pytest.mark.parametrize("modulation", [True, False], ids=["mod", "nomod"])
def test_so2_linear(backend, device, dtype, mmax, modulation):
    require(backend, device)
    e, cin, cout = 5, 3, 2
    x, _, _, _, w, mod = message_inputs(e, e, LMAX, mmax, cin, cout, dtype, device, modulation=modulation)
    tensors = [x, w] + ([mod] if modulation else [])
    with so2ops.use_backend(backend):
        _compare(lambda a, b, *m: so2ops.reference.so2_linear(a, b, LMAX, mmax, cout, m[0] if m else None),
                 lambda a, b, *m: so2ops.so2_linear(a, b, LMAX, mmax, cout, m[0] if m else None),
                 tensors, dtype, "so2_linear")


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype,deterministic", [(torch.float32, False), (torch.float64, False), (torch.float64, True)],
                         ids=["f32-atomic", "f64-atomic", "f64-det"])
@MMAX
def test_so2_message(backend, device, dtype, mmax, deterministic):
    require(backend, device)
    n, e, cin, cout = 4, 6, 3, 2
    x, _, wig, ei, w, mod = message_inputs(n, e, LMAX, mmax, cin, cout, dtype, device)
    with so2ops.use_backend(backend):
        _compare(lambda a, b, c, d: so2ops.reference.so2_message(a, b, ei, c, LMAX, mmax, cout, d),
                 lambda a, b, c, d: so2ops.so2_message(a, b, ei, c, LMAX, mmax, cout, d, deterministic=deterministic),
                 [x, wig, w, mod], dtype, "so2_message")


@pytest.mark.parametrize("backend,device", [pytest.param("reference", "cpu", id="reference")] + backend_params())
def test_edge_wigner_lmax8_is_orthogonal(backend, device):
    """The Wigner blocks feeding the tests above: orthogonal at degree 8 on every backend."""
    if backend != "reference":
        require(backend, device)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(6, 3, dtype=torch.float64, generator=g).to(device)
    with so2ops.use_backend(backend):
        wig = so2ops.edge_wigner(v, LMAX)
    dense = so2ops.wigner_to_dense(wig, LMAX)
    eye = torch.eye(so2ops.num_coeffs(LMAX), dtype=torch.float64, device=device).expand_as(dense)
    torch.testing.assert_close(dense @ dense.transpose(1, 2), eye, rtol=0, atol=1e-9)
    torch.testing.assert_close(wig, so2ops.reference.edge_wigner(v, LMAX), rtol=1e-9, atol=1e-10)
