"""so2_linear: reference properties, and every backend against the reference."""
import math

import pytest
import torch

import so2ops
from so2ops.layout import coeff_index

from _helpers import FAST, assert_close, backend_params, message_inputs, require

F64 = torch.float64


def _roll(lmax, angle):
    """Block-diagonal rotation about the polar axis (e3nn: D(angle, 0, 0))."""
    k = (lmax + 1) ** 2
    d = torch.zeros(k, k, dtype=F64)
    for l in range(lmax + 1):
        d[coeff_index(l, 0), coeff_index(l, 0)] = 1.0
        for m in range(1, l + 1):
            c, s = math.cos(m * angle), math.sin(m * angle)
            p, q = coeff_index(l, m), coeff_index(l, -m)
            d[p, p], d[p, q], d[q, p], d[q, q] = c, -s, s, c
    return d


@pytest.mark.parametrize("lmax,mmax", [(3, 3), (4, 2), (2, 0)])
def test_reference_commutes_with_rolls_and_truncates(lmax, mmax):
    x, _, _, _, w, mod = message_inputs(1, 30, lmax, mmax, 4, 3, F64, "cpu")
    x = torch.randn(30, (lmax + 1) ** 2, 4, dtype=F64)
    d = _roll(lmax, 0.7)
    y = so2ops.reference.so2_linear(x, w, lmax, mmax, 3, mod)
    y_rot = so2ops.reference.so2_linear(d @ x, w, lmax, mmax, 3, mod)
    torch.testing.assert_close(y_rot, d @ y, rtol=1e-12, atol=1e-12)
    for l in range(lmax + 1):
        for m in range(-l, l + 1):
            if abs(m) > mmax:
                assert y[:, coeff_index(l, m)].abs().max() == 0


def test_roll_helper_matches_e3nn():
    from e3nn import o3

    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        irreps = o3.Irreps.spherical_harmonics(3)
        a = torch.tensor(0.7, dtype=F64)
        torch.testing.assert_close(_roll(3, 0.7), irreps.D_from_angles(a, a * 0, a * 0))
    finally:
        torch.set_default_dtype(old)


CASES = [  # lmax, mmax, cin, cout, edges, modulation
    (0, 0, 3, 17, 1, True),
    (1, 1, 17, 3, 0, True),
    (2, 1, 3, 3, 37, False),
    (4, 4, 17, 63, 1000, True),
    (6, 2, 63, 17, 23, True),
    (5, 3, 3, 3, 64, False),
]


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("lmax,mmax,cin,cout,edges,modulation", CASES)
def test_backend_matches_reference(backend, device, dtype, lmax, mmax, cin, cout, edges, modulation):
    require(backend, device)
    _, _, _, _, w, mod = message_inputs(1, edges, lmax, mmax, cin, cout, dtype, device, modulation)
    x = torch.randn(edges, (lmax + 1) ** 2, cin, dtype=dtype, device=device)
    leaves1 = [t.clone().requires_grad_(True) if t is not None else None for t in (x, w, mod)]
    leaves2 = [t.clone().requires_grad_(True) if t is not None else None for t in (x, w, mod)]
    expected = so2ops.reference.so2_linear(leaves1[0], leaves1[1], lmax, mmax, cout, leaves1[2])
    with so2ops.use_backend(backend):
        actual = so2ops.so2_linear(leaves2[0], leaves2[1], lmax, mmax, cout, leaves2[2])
    assert_close(actual, expected, dtype, "so2_linear")
    g = torch.randn_like(expected)
    (expected * g).sum().backward()
    (actual * g).sum().backward()
    for name, a, b in zip(("x", "weight", "modulation"), leaves2, leaves1):
        if a is not None:
            assert_close(a.grad, b.grad, dtype, f"grad {name}")


@pytest.mark.parametrize("backend,device", backend_params())
def test_backend_gradcheck(backend, device):
    require(backend, device)
    _, _, _, _, w, mod = message_inputs(1, 5, 2, 1, 3, 2, F64, device)
    x = torch.randn(5, 9, 3, dtype=F64, device=device)
    args = [t.requires_grad_(True) for t in (x, w, mod)]
    with so2ops.use_backend(backend):
        assert torch.autograd.gradcheck(lambda a, b, c: so2ops.so2_linear(a, b, 2, 1, 2, c), args, fast_mode=FAST[backend])


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_opcheck(backend):
    if backend != "reference":
        require(backend, "cpu")
    _, _, _, _, w, mod = message_inputs(1, 5, 2, 1, 3, 2, F64, "cpu")
    x = torch.randn(5, 9, 3, dtype=F64)
    with so2ops.use_backend(backend):
        for m in (mod, None):
            args = (x.clone().requires_grad_(True), w.clone().requires_grad_(True),
                    None if m is None else m.clone().requires_grad_(True), 2, 1, 2)
            torch.library.opcheck(torch.ops.so2ops.so2_linear.default, args)


@pytest.mark.parametrize("lmax,mmax,groups,cout", [(0, 0, (1, 2), 3), (2, 1, (3, 1, 4), 2), (4, 4, (5, 2, 2), 3),
                                                   (4, 2, (6,), 5)])
def test_split_so2_weight(lmax, mmax, groups, cout):
    """A weight over concatenated inputs equals the sum of its split parts on the inputs
    (what lets the model fuse each input's gather into so2_gather_linear), gradients too."""
    from so2ops.nn.so2_linear import split_so2_weight

    g = torch.Generator().manual_seed(lmax + mmax)
    xs = [torch.randn(5, (lmax + 1) ** 2, c, dtype=torch.float64, generator=g) for c in groups]
    w = torch.randn(so2ops.weight_size(lmax, mmax, sum(groups), cout), dtype=torch.float64, generator=g,
                    requires_grad=True)
    whole = so2ops.reference.so2_linear(torch.cat(xs, 2), w, lmax, mmax, cout)
    parts = split_so2_weight(w, lmax, mmax, groups, cout)
    assert [p.numel() for p in parts] == [so2ops.weight_size(lmax, mmax, c, cout) for c in groups]
    split = sum(so2ops.reference.so2_linear(x, p, lmax, mmax, cout) for x, p in zip(xs, parts))
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-12)
    r = torch.randn_like(whole)
    (gw_whole,) = torch.autograd.grad((whole * r).sum(), w)
    (gw_split,) = torch.autograd.grad((split * r).sum(), w)
    torch.testing.assert_close(gw_split, gw_whole, rtol=0, atol=1e-12)
