"""so2ops.nn.SO2EdgewiseBlock / EdgeDegreeEmbedding / SO2EdgeLinear on their own.

* SO(3) equivariance under a random rotation (features rotated by D(Q),
  positions by Q; the edge frames change, the roll about the edge must cancel);
* reference vs cpu vs triton backends (outputs and gradients);
* edge_chunk (checkpointed chunks) == unchunked, outputs and gradients.
"""
from __future__ import annotations

import pytest
import torch

import so2ops
from so2ops.dispatch import runnable
from so2ops.nn import EdgeDegreeEmbedding, SO2EdgeLinear, SO2EdgewiseBlock

from _helpers import assert_close

EDGE_ATTR = 5


def _graph(n, dtype, gen):
    pos = 2.0 * torch.randn(n, 3, generator=gen, dtype=torch.float64).to(dtype)
    ei = torch.tensor([[i, j] for i in range(n) for j in range(n) if i != j and (i + j) % 3 != 1]).T.contiguous()
    return pos, ei


def _random_rotation(gen):
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.det(q))


def _dense_d(q, lmax):
    return so2ops.wigner_to_dense(so2ops.reference.wigner_from_matrices(q[None], lmax), lmax)[0]


def _perturb(module, gen, scale=0.3):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))
    return module


def _inputs(lmax, c, n, dtype, gen):
    pos, ei = _graph(n, dtype, gen)
    e = ei.shape[1]
    x = torch.randn(n, (lmax + 1) ** 2, c, generator=gen, dtype=torch.float64).to(dtype)
    ea = torch.randn(e, EDGE_ATTR, generator=gen, dtype=torch.float64).to(dtype)
    env = torch.rand(e, generator=gen, dtype=torch.float64).to(dtype)
    return pos, ei, x, ea, env


def _run(module, pos, ei, x, ea, env, lmax):
    w = so2ops.edge_wigner(pos[ei[1]] - pos[ei[0]], lmax)
    return module(x, ei, w, ea, env)


def _modules(lmax, mmax, c, h, gen, dtype):
    block = _perturb(SO2EdgewiseBlock(lmax, mmax, c, h, [EDGE_ATTR, 6]), gen).to(dtype)
    emb = _perturb(EdgeDegreeEmbedding(lmax, c, [EDGE_ATTR, 6]), gen).to(dtype)
    return block, emb


@pytest.mark.parametrize("lmax,mmax", [(2, 2), (4, 2), (3, 1)])
@pytest.mark.parametrize("which", ["edgewise", "edge_degree"])
def test_equivariance(lmax, mmax, which):
    dtype = torch.float64
    gen = torch.Generator().manual_seed(lmax * 7 + mmax)
    block, emb = _modules(lmax, mmax, 3, 4, gen, dtype)
    module = block if which == "edgewise" else emb
    pos, ei, x, ea, env = _inputs(lmax, 3, 8, dtype, gen)
    q = _random_rotation(gen)
    d = _dense_d(q, lmax)
    y = _run(module, pos, ei, x, ea, env, lmax)
    y_rot = _run(module, pos @ q.T, ei, torch.einsum("ij,njc->nic", d, x), ea, env, lmax)
    y, y_rot = y.detach(), y_rot.detach()
    torch.testing.assert_close(y_rot, torch.einsum("ij,njc->nic", d, y), rtol=1e-9, atol=1e-10 * float(y.abs().max()))
    # and the output is not trivially invariant
    assert (y_rot - y).abs().max() > 1e-3 * y.abs().max()


def test_edge_linear_roll_equivariance():
    """SO2EdgeLinear (bias on m = 0 only, radial modulation, extra m = 0 outputs) commutes with rolls about y."""
    lmax, mmax, cin, cout, e = 3, 2, 3, 4, 6
    gen = torch.Generator().manual_seed(3)
    lin = _perturb(SO2EdgeLinear(lmax, mmax, cin, cout, edge_channels_list=[EDGE_ATTR, 6], extra_m0_channels=5),
                   gen).double()
    x = torch.randn(e, (lmax + 1) ** 2, cin, generator=gen, dtype=torch.float64)
    ea = torch.randn(e, EDGE_ATTR, generator=gen, dtype=torch.float64)
    phi = 0.7
    roll = torch.tensor([[torch.cos(torch.tensor(phi)), 0, torch.sin(torch.tensor(phi))], [0, 1, 0],
                         [-torch.sin(torch.tensor(phi)), 0, torch.cos(torch.tensor(phi))]], dtype=torch.float64)
    d = _dense_d(roll, lmax)
    # keep only the orders the layer reads (|m| <= mmax): D_y mixes only (l, +-m)
    y, extra = lin(x, ea)
    y_rot, extra_rot = lin(torch.einsum("ij,njc->nic", d, x), ea)
    torch.testing.assert_close(y_rot, torch.einsum("ij,njc->nic", d, y), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(extra_rot, extra, rtol=1e-10, atol=1e-10)


def _fwd_bwd(module, pos, ei, x, ea, env, lmax, gen):
    pos = pos.clone().requires_grad_()
    x = x.clone().requires_grad_()
    ea = ea.clone().requires_grad_()
    module.zero_grad()
    y = _run(module, pos, ei, x, ea, env, lmax)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(device=y.device, dtype=y.dtype)
    (y * g).sum().backward()
    return [y.detach(), x.grad, ea.grad, pos.grad] + [p.grad.clone() for p in module.parameters()]


_BACKENDS = [
    pytest.param("cpu", "cpu", id="cpu"),
    pytest.param("triton", "cuda" if torch.cuda.is_available() else "cpu", id="triton"),
    pytest.param("cuda", "cuda", id="cuda", marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend,device", _BACKENDS)
def test_backends_agree(backend, device, dtype):
    """Same block on the reference backend and on ``backend`` (triton: the CPU interpreter without a GPU)."""
    if not runnable(backend, torch.device(device)):
        pytest.skip(f"backend {backend} not runnable on {device}: {so2ops.backends()}")
    slow = backend == "triton" and device == "cpu"
    lmax, mmax, c, h = (2, 1, 2, 3) if slow else (3, 2, 3, 4)
    n = 4 if slow else 7
    gen = torch.Generator().manual_seed(11)
    block, emb = _modules(lmax, mmax, c, h, gen, dtype)
    pos, ei, x, ea, env = _inputs(lmax, c, n, dtype, gen)
    pos, ei, x, ea, env = (t.to(device) for t in (pos, ei, x, ea, env))
    block, emb = block.to(device), emb.to(device)
    for module in (block, emb):
        with so2ops.use_backend("reference"):
            ref = _fwd_bwd(module, pos, ei, x, ea, env, lmax, torch.Generator().manual_seed(1))
        with so2ops.use_backend(backend):
            got = _fwd_bwd(module, pos, ei, x, ea, env, lmax, torch.Generator().manual_seed(1))
        for i, (a, b) in enumerate(zip(got, ref)):
            assert_close(a.cpu(), b.cpu(), dtype, f"{type(module).__name__} {backend} tensor {i}")


@pytest.mark.parametrize("which", ["edgewise", "edge_degree"])
def test_chunked_equals_unchunked(which):
    dtype = torch.float64
    lmax, mmax, c, h = 3, 2, 3, 4
    gen = torch.Generator().manual_seed(5)
    block, emb = _modules(lmax, mmax, c, h, gen, dtype)
    module = block if which == "edgewise" else emb
    pos, ei, x, ea, env = _inputs(lmax, c, 7, dtype, gen)
    module.edge_chunk = None
    full = _fwd_bwd(module, pos, ei, x, ea, env, lmax, torch.Generator().manual_seed(2))
    module.edge_chunk = 4  # 28 edges: 7 chunks
    chunked = _fwd_bwd(module, pos, ei, x, ea, env, lmax, torch.Generator().manual_seed(2))
    for i, (a, b) in enumerate(zip(chunked, full)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m: f"tensor {i}: {m}")


def test_chunked_under_forced_backend():
    """The checkpoint recomputation (on the autograd thread) keeps the forward's backend."""
    lmax, mmax, c, h = 2, 2, 2, 3
    gen = torch.Generator().manual_seed(9)
    block = _perturb(SO2EdgewiseBlock(lmax, mmax, c, h, [EDGE_ATTR, 6], edge_chunk=5), gen).double()
    pos, ei, x, ea, env = _inputs(lmax, c, 5, torch.float64, gen)
    with so2ops.use_backend("reference"):
        ref = _fwd_bwd(block, pos, ei, x, ea, env, lmax, torch.Generator().manual_seed(3))
    block.edge_chunk = None
    with so2ops.use_backend("reference"):
        full = _fwd_bwd(block, pos, ei, x, ea, env, lmax, torch.Generator().manual_seed(3))
    for a, b in zip(ref, full):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_edge_degree_matches_dense_rotation():
    """EdgeDegreeEmbedding's Wigner-row gather equals rotating the m = 0 embedding with ``rotate(inverse=True)``."""
    lmax, c = 3, 4
    gen = torch.Generator().manual_seed(4)
    emb = _perturb(EdgeDegreeEmbedding(lmax, c, [EDGE_ATTR, 6], rescale_factor=3.0), gen).double()
    pos, ei, x, ea, env = _inputs(lmax, c, 6, torch.float64, gen)
    w = so2ops.edge_wigner(pos[ei[1]] - pos[ei[0]], lmax)
    y = emb(x, ei, w, ea, env)
    r = emb.radial(ea).view(-1, lmax + 1, c)
    local = torch.zeros(ei.shape[1], (lmax + 1) ** 2, c, dtype=torch.float64)
    local[:, [l * l + l for l in range(lmax + 1)]] = r
    msg = so2ops.rotate(local, w, lmax, inverse=True) * env[:, None, None] / 3.0
    expected = x.index_add(0, ei[1], msg)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-12)
    y0 = emb(None, ei, w, ea, env, num_nodes=x.shape[0])
    torch.testing.assert_close(y0, expected - x, rtol=1e-10, atol=1e-12)
