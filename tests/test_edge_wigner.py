"""edge_wigner: reference against e3nn, and every backend against the reference."""
import pytest
import torch
from e3nn import o3

import so2ops
from so2ops.layout import wigner_offset
from so2ops.reference import edge_frames, spherical_harmonics, wigner_from_matrices, wigner_to_dense

from _helpers import FAST, assert_close, backend_params, random_edges, require

F64 = torch.float64


@pytest.fixture
def e3nn_f64():
    """e3nn builds its generators in the default dtype: make that float64 for exact comparisons."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    yield
    torch.set_default_dtype(old)


def _block(w, l):
    n = 2 * l + 1
    o = wigner_offset(l)
    return w[:, o : o + n * n].reshape(-1, n, n)


@pytest.mark.parametrize("lmax", [0, 1, 3, 6, 8])
def test_spherical_harmonics_match_e3nn(lmax):
    u = torch.nn.functional.normalize(torch.randn(200, 3, dtype=F64), dim=-1)
    u[0] = torch.tensor([0.0, 1.0, 0.0], dtype=F64)
    ours = spherical_harmonics(u, lmax)
    theirs = o3.spherical_harmonics(list(range(lmax + 1)), u, normalize=False, normalization="component")
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lmax", [1, 4, 8])
def test_wigner_matches_e3nn_wigner_D(lmax, e3nn_f64):
    # generic rotations (e3nn's Euler angles are well conditioned there)
    alpha, beta, gamma = (torch.rand(64, dtype=F64) * s for s in (6.283, 3.1415, 6.283))
    rot = o3.angles_to_matrix(alpha, beta, gamma)
    ours = wigner_from_matrices(rot, lmax)
    for l in range(lmax + 1):
        torch.testing.assert_close(_block(ours, l), o3.wigner_D(l, alpha, beta, gamma), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("lmax", [2, 6, 8])
def test_wigner_is_a_representation(lmax):
    r1, r2 = (o3.angles_to_matrix(*(torch.rand(32, dtype=F64) * 6 for _ in range(3))) for _ in range(2))
    d1, d2, d12 = (wigner_to_dense(wigner_from_matrices(r, lmax), lmax) for r in (r1, r2, r1 @ r2))
    torch.testing.assert_close(d12, d1 @ d2, rtol=1e-11, atol=1e-11)
    eye = torch.eye(d1.shape[-1], dtype=F64).expand_as(d1)
    torch.testing.assert_close(d1 @ d1.transpose(1, 2), eye, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("lmax", [3, 8])
def test_edge_wigner_maps_edge_to_polar_axis_and_agrees_with_e3nn_up_to_roll(lmax, e3nn_f64):
    v = random_edges(300, F64, "cpu", torch.Generator().manual_seed(1))
    w = so2ops.reference.edge_wigner(v, lmax)
    u = torch.nn.functional.normalize(v, dim=-1)
    ey = torch.tensor([[0.0, 1.0, 0.0]], dtype=F64)
    dense = wigner_to_dense(w, lmax)
    torch.testing.assert_close(
        (dense @ spherical_harmonics(u, lmax)[..., None])[..., 0],
        spherical_harmonics(ey, lmax).expand(len(v), -1), rtol=1e-10, atol=1e-10,
    )
    # e3nn's own frame: R_e3nn = (Ry(a) Rx(b))^-1 maps u to +y; ours differs by a roll about y
    alpha, beta = o3.xyz_to_angles(u)
    generic = (u[:, 1].abs() < 0.999)  # e3nn's angles are singular at the poles
    r1 = _block(w, 1)
    # our frame times the inverse of e3nn's is a rotation about y by the roll angle
    rel = r1 @ o3.wigner_D(1, alpha, beta, torch.zeros_like(alpha))
    roll = torch.atan2(rel[:, 0, 2], rel[:, 0, 0])
    for l in range(lmax + 1):
        d_e3nn = o3.wigner_D(l, alpha, beta, torch.zeros_like(alpha)).transpose(1, 2)  # frame of e3nn
        expected = o3.wigner_D(l, roll, torch.zeros_like(roll), torch.zeros_like(roll)) @ d_e3nn
        torch.testing.assert_close(_block(w, l)[generic], expected[generic], rtol=1e-9, atol=1e-9)


def test_frames_are_rotations_taking_edges_to_polar_axis():
    v = random_edges(500, F64, "cpu", torch.Generator().manual_seed(2))
    u = torch.nn.functional.normalize(v, dim=-1)
    r = edge_frames(u)
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3, dtype=F64).expand_as(r), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(len(u), dtype=F64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close((r @ u[..., None])[..., 0], torch.tensor([0.0, 1.0, 0.0], dtype=F64).expand_as(u))


@pytest.mark.parametrize("edge", [[0.0, 1.0, 0.0], [0.0, -1.0, 0.0], [1e-9, 1.0, 0.0], [0.0, -1.0, 1e-9], [0.3, 1e-3, 0.2]])
def test_reference_gradient_finite_at_special_directions(edge):
    # (edge_wigner itself jumps by a roll across the chart boundary y = 0; roll-invariant
    # outputs are checked there in test_so2_message.py)
    v = torch.tensor([edge], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: so2ops.reference.edge_wigner(t, 4), (v,))


# ------------------------------------------------------------------ backends
CASES = [(0, 1), (1, 0), (2, 7), (5, 1000), (8, 33)]


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("lmax,num_edges", CASES)
def test_backend_matches_reference(backend, device, dtype, lmax, num_edges):
    require(backend, device)
    v = random_edges(num_edges, dtype, device, torch.Generator().manual_seed(lmax))
    v1 = v.clone().requires_grad_(True)
    v2 = v.clone().requires_grad_(True)
    expected = so2ops.reference.edge_wigner(v1, lmax)
    with so2ops.use_backend(backend):
        actual = so2ops.edge_wigner(v2, lmax)
    assert actual.shape == expected.shape
    assert_close(actual, expected, dtype, "edge_wigner")
    g = torch.randn_like(expected)
    (actual * g).sum().backward()
    if lmax == 0:  # D^0 = 1 does not depend on the edge: the gradient is exactly zero
        assert v2.grad is None or v2.grad.abs().max() == 0
        return
    (expected * g).sum().backward()
    assert_close(v2.grad, v1.grad, dtype, "grad edge_vec")


@pytest.mark.parametrize("backend,device", backend_params())
def test_backend_gradcheck(backend, device):
    require(backend, device)
    # +-y and 1e-9 off it, but not the chart seam y = 0, where D itself jumps by a roll
    v = random_edges(8, F64, device, torch.Generator().manual_seed(3))
    v[4, 1], v[5, 1] = 0.25, -1e-4
    with so2ops.use_backend(backend):
        assert torch.autograd.gradcheck(lambda t: so2ops.edge_wigner(t, 3), (v.requires_grad_(True),), fast_mode=FAST[backend])


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_opcheck(backend):
    if backend != "reference":
        require(backend, "cpu")
    v = random_edges(9, F64, "cpu", torch.Generator().manual_seed(4)).requires_grad_(True)
    with so2ops.use_backend(backend):
        torch.library.opcheck(torch.ops.so2ops.edge_wigner.default, (v, 3))
        grad = torch.randn(9, so2ops.wigner_size(3), dtype=F64)
        torch.library.opcheck(torch.ops.so2ops.edge_wigner_backward.default, (grad, v.detach(), 3))
