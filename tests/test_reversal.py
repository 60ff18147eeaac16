"""Edge reversal ``F`` (so2ops.nn.reversal): the frames of r and -r, and the packed-weight
facts a pair model uses to run once per unordered pair (docs/math.md "Edge reversal")."""
import pytest
import torch

import so2ops
from so2ops.nn.reversal import (ReversalCommutingLinear, commuting_mask, conjugation_signs, reversal_signs,
                                reversal_wigner_signs)

from _helpers import backend_params, require

F64 = torch.float64


def dense(vec, lmax):
    return so2ops.wigner_to_dense(so2ops.edge_wigner(vec, lmax), lmax)


def generic_vectors(n, seed=0):
    v = torch.randn(n, 3, dtype=F64, generator=torch.Generator().manual_seed(seed))
    return v[v[:, 1].abs() > 1e-3]  # off the chart's equator


# the chart's equator u_y = 0 (a planar molecule in the xz plane), the poles, tiny offsets
EQUATOR = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.3], [-0.2, 0.0, 0.7], [1e-12, 0.0, 1.0]],
                       dtype=F64)
POLES = torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0], [1e-12, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=F64)


@pytest.mark.parametrize("lmax", [0, 1, 2, 4, 6])
def test_reversed_frame_is_F_times_the_frame(lmax):
    """D(-r) D(r)^T = diag(F) for every direction off the equator (poles included)."""
    v = torch.cat([generic_vectors(40, lmax), POLES])
    rel = dense(-v, lmax) @ dense(v, lmax).transpose(1, 2)
    expect = torch.diag(reversal_signs(lmax)).expand_as(rel)
    torch.testing.assert_close(rel, expect, rtol=0, atol=1e-12)


@pytest.mark.parametrize("lmax", [1, 2, 4])
def test_on_the_equator_the_frames_differ_by_a_roll(lmax):
    """On u_y = 0 the convention's D(-r) is not F D(r) (this is why the model never uses
    D(-r) for a tied pair), but the two differ only by a roll about +y: their relative
    rotation maps each (l, |m|) pair of rows into itself and keeps (l, 0)."""
    D_rev, FD = dense(-EQUATOR, lmax), reversal_signs(lmax)[:, None] * dense(EQUATOR, lmax)
    rel = D_rev @ FD.transpose(1, 2)
    assert (D_rev - FD).abs().max() > 0.5  # the test could fail: they really differ
    K = (lmax + 1) ** 2
    l_of = torch.tensor([l for l in range(lmax + 1) for _ in range(2 * l + 1)])
    m_of = torch.tensor([m for l in range(lmax + 1) for m in range(-l, l + 1)])
    same_block = (l_of[:, None] == l_of[None, :]) & (m_of[:, None].abs() == m_of[None, :].abs())
    assert rel[:, ~same_block].abs().max() < 1e-12
    m0 = m_of == 0
    torch.testing.assert_close(rel[:, m0][:, :, m0], torch.eye(lmax + 1, dtype=F64).expand(len(EQUATOR), -1, -1))
    torch.testing.assert_close(rel @ rel.transpose(1, 2), torch.eye(K, dtype=F64).expand_as(rel))


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("lmax,mmax,cin,cout", [(0, 0, 1, 2), (2, 1, 3, 5), (4, 2, 7, 4), (4, 4, 2, 3), (6, 3, 5, 1)])
def test_conjugated_weights(backend, device, lmax, mmax, cin, cout):
    """so2_linear(F x, W) = F so2_linear(x, W * conjugation_signs) on every backend."""
    require(backend, device)
    g = torch.Generator().manual_seed(lmax * 10 + mmax)
    x = torch.randn(9, (lmax + 1) ** 2, cin, dtype=F64, generator=g).to(device)
    w = torch.randn(so2ops.weight_size(lmax, mmax, cin, cout), dtype=F64, generator=g).to(device)
    f = reversal_signs(lmax).to(device)[:, None]
    s = conjugation_signs(lmax, mmax, cin, cout).to(device)
    with so2ops.use_backend(backend):
        lhs = so2ops.so2_linear(f * x, w, lmax, mmax, cout)
        rhs = f * so2ops.so2_linear(x, w * s, lmax, mmax, cout)
    torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-12)
    if lmax:  # not a triviality: W itself does not commute with F
        assert (lhs - f * so2ops.so2_linear(x, w, lmax, mmax, cout)).abs().max() > 1e-3


@pytest.mark.parametrize("lmax,mmax,cin,cout", [(1, 1, 2, 3), (4, 2, 5, 4), (5, 5, 3, 2)])
def test_commuting_mask_is_exactly_the_commuting_part(lmax, mmax, cin, cout):
    """Weights inside the mask commute with F; weights outside anti-commute: the mask
    keeps every entry that may stay and no other."""
    g = torch.Generator().manual_seed(lmax)
    x = torch.randn(6, (lmax + 1) ** 2, cin, dtype=F64, generator=g)
    w = torch.randn(so2ops.weight_size(lmax, mmax, cin, cout), dtype=F64, generator=g)
    mask = commuting_mask(lmax, mmax, cin, cout)
    f = reversal_signs(lmax)[:, None]
    lin = lambda w_, x_: so2ops.reference.so2_linear(x_, w_, lmax, mmax, cout)  # noqa: E731
    torch.testing.assert_close(lin(w * mask, f * x), f * lin(w * mask, x), rtol=0, atol=1e-12)
    torch.testing.assert_close(lin(w * (1 - mask), f * x), -f * lin(w * (1 - mask), x), rtol=0, atol=1e-12)
    assert 0.3 < float(mask.mean()) < 0.7


@pytest.mark.parametrize("lmax", [0, 3, 4])
def test_reversed_wigner_rows(lmax):
    """Packed Wigner rows times reversal_wigner_signs rotate into the frame F D."""
    v = generic_vectors(12, 3)
    wig = so2ops.edge_wigner(v, lmax)
    x = torch.randn(len(v), (lmax + 1) ** 2, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    out = so2ops.rotate(x, wig * reversal_wigner_signs(lmax), lmax)
    torch.testing.assert_close(out, reversal_signs(lmax)[:, None] * so2ops.rotate(x, wig, lmax), rtol=0, atol=0)
    torch.testing.assert_close(wig * reversal_wigner_signs(lmax), so2ops.edge_wigner(-v, lmax), rtol=0, atol=1e-12)


def test_reversal_commuting_linear():
    """The module commutes with F, keeps its masked entries at zero through training steps,
    and its mask follows the module's dtype."""
    torch.manual_seed(0)
    lin = ReversalCommutingLinear(4, 2, 3, 5).double()
    assert lin.mask.dtype == F64
    assert (lin.weight * (1 - lin.mask)).abs().max() == 0
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1, weight_decay=0.1)
    x = torch.randn(7, 25, 3, dtype=F64)
    f = reversal_signs(4)[:, None]
    for _ in range(3):
        opt.zero_grad()
        lin(x).pow(2).sum().backward()
        assert (lin.weight.grad * (1 - lin.mask)).abs().max() == 0
        opt.step()
    torch.testing.assert_close(lin(f * x), f * lin(x), rtol=0, atol=1e-12)
    with torch.no_grad():  # a state that put weight outside the mask changes nothing
        before = lin(x)
        lin.weight.add_(1 - lin.mask)
        torch.testing.assert_close(lin(x), before)
    assert "mask" not in lin.state_dict()
