"""rotate: reference properties, and every backend against the reference."""
import pytest
import torch

import so2ops

from _helpers import FAST, assert_close, backend_params, message_inputs, require

F64 = torch.float64


def test_reference_rotate_matches_dense_bmm():
    x, v, wig, ei, _, _ = message_inputs(7, 20, 4, 4, 5, 5, F64, "cpu")
    dense = so2ops.wigner_to_dense(wig, 4)
    out = so2ops.reference.rotate(x, wig, 4, index=ei[0])
    torch.testing.assert_close(out, dense @ x[ei[0]])
    back = so2ops.reference.rotate(out, wig, 4, inverse=True)
    torch.testing.assert_close(back, x[ei[0]])  # D^T D = 1


CASES = [  # lmax, channels, nodes, edges, gather
    (0, 3, 4, 1, True),
    (1, 17, 5, 0, True),
    (3, 3, 20, 20, False),
    (4, 63, 12, 1000, True),
    (6, 17, 30, 45, True),
]


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
@pytest.mark.parametrize("lmax,channels,nodes,edges,gather", CASES)
def test_backend_matches_reference(backend, device, dtype, inverse, lmax, channels, nodes, edges, gather):
    require(backend, device)
    n = nodes if gather else edges
    x, v, wig, ei, _, _ = message_inputs(n, edges, lmax, lmax, channels, channels, dtype, device, modulation=False)
    index = ei[0] if gather else None
    x1, w1 = x.clone().requires_grad_(True), wig.clone().requires_grad_(True)
    x2, w2 = x.clone().requires_grad_(True), wig.clone().requires_grad_(True)
    expected = so2ops.reference.rotate(x1, w1, lmax, index, inverse)
    with so2ops.use_backend(backend):
        actual = so2ops.rotate(x2, w2, lmax, index, inverse)
    assert_close(actual, expected, dtype, "rotate")
    g = torch.randn_like(expected)
    (expected * g).sum().backward()
    (actual * g).sum().backward()
    assert_close(x2.grad, x1.grad, dtype, "grad x")
    assert_close(w2.grad, w1.grad, dtype, "grad wigner")


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("inverse", [False, True])
def test_backend_gradcheck(backend, device, inverse):
    require(backend, device)
    x, v, wig, ei, _, _ = message_inputs(4, 6, 2, 2, 3, 3, F64, device, modulation=False)
    x.requires_grad_(True)
    wig.requires_grad_(True)
    with so2ops.use_backend(backend):
        assert torch.autograd.gradcheck(lambda a, b: so2ops.rotate(a, b, 2, ei[0], inverse), (x, wig), fast_mode=FAST[backend])


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_opcheck(backend):
    if backend != "reference":
        require(backend, "cpu")
    x, v, wig, ei, _, _ = message_inputs(4, 6, 2, 2, 3, 3, F64, "cpu", modulation=False)
    with so2ops.use_backend(backend):
        for index in (ei[0], None):
            xx = (x if index is not None else x[ei[0]]).clone().requires_grad_(True)
            torch.library.opcheck(torch.ops.so2ops.rotate.default, (xx, wig.clone().requires_grad_(True), 2, index, True))
