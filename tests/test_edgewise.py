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
from so2ops.nn import edgewise_lean as edgewise_module

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


# ---------------------------------------------------------------------- lean path
def _lean_pair(lmax, mmax, c, h, dtype, seed, chunk=None):
    gen = torch.Generator().manual_seed(seed)
    plain = _perturb(SO2EdgewiseBlock(lmax, mmax, c, h, [EDGE_ATTR, 6], lean=False), gen).to(dtype)
    lean = SO2EdgewiseBlock(lmax, mmax, c, h, [EDGE_ATTR, 6], edge_chunk=chunk, lean=True).to(dtype)
    lean.load_state_dict(plain.state_dict())
    return plain, lean, gen


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("lmax,mmax,chunk,lean_slice", [(3, 2, None, None), (2, 2, None, None), (4, 1, None, None),
                                                        (0, 0, None, None), (3, 2, 5, None), (3, 2, None, 6),
                                                        (0, 0, None, 6), (4, 2, 11, 4), (2, 2, None, 5)])
def test_lean_equals_plain(lmax, mmax, chunk, lean_slice, dtype, monkeypatch):
    """lean (default) == lean=False: output and every gradient (x, edge_attr, pos via the Wigner blocks,
    envelope, every parameter); ``lean_slice``: the lean Functions work through the edges in slices."""
    assert SO2EdgewiseBlock(2, 2, 2, 2, [EDGE_ATTR, 6]).lean  # the default
    if lean_slice is not None:
        monkeypatch.setattr(edgewise_module, "LEAN_SLICE", lean_slice)
    c, h = 3, 4
    plain, lean, gen = _lean_pair(lmax, mmax, c, h, dtype, 21 + lmax, chunk)
    pos, ei, x, ea, env = _inputs(lmax, c, 7, dtype, gen)
    results = []
    for module in (plain, lean):
        p, xx, a, en = (t.clone().requires_grad_() for t in (pos, x, ea, env))
        module.zero_grad()
        y = module(xx, ei, so2ops.edge_wigner(p[ei[1]] - p[ei[0]], lmax), a, en)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64).to(dtype)
        (y * g).sum().backward()
        results.append([y.detach(), xx.grad, a.grad, p.grad, en.grad] + [q.grad.clone() for q in module.parameters()])
    for i, (a, b) in enumerate(zip(results[1], results[0])):
        assert_close(a, b, dtype, f"lean vs plain tensor {i}")


@pytest.mark.parametrize("lean,lean_slice", [(True, None), (True, 4), (False, None)])
def test_lean_double_backward(lean, lean_slice, monkeypatch):
    """Force training through the block (create_graph=True): lean == plain, and gradcheck of the forces."""
    if lean_slice is not None:
        monkeypatch.setattr(edgewise_module, "LEAN_SLICE", lean_slice)
    lmax, mmax, c, h = 2, 1, 2, 3
    dtype = torch.float64
    plain, ref_lean, gen = _lean_pair(lmax, mmax, c, h, dtype, 31)
    module = ref_lean if lean else plain
    pos, ei, x, ea, env = _inputs(lmax, c, 5, dtype, gen)
    x = x.requires_grad_()
    readout = torch.randn(c, generator=gen, dtype=dtype)

    def forces_loss(p, xx, envv):
        y = module(xx, ei, so2ops.edge_wigner(p[ei[1]] - p[ei[0]], lmax), ea, envv)
        energy = (y[:, 0, :] * readout).sum() + (y ** 2).sum() * 0.1
        f, gx = torch.autograd.grad(energy, (p, xx), create_graph=True)
        return (f ** 2).sum() + (gx ** 2).sum()

    p = pos.clone().requires_grad_()
    envv = env.clone().requires_grad_()
    loss = forces_loss(p, x, envv)
    grads = torch.autograd.grad(loss, [p, x, envv] + list(module.parameters()))
    # the same second-order gradients from the other path
    other = plain if lean else ref_lean
    module_saved, module = module, other
    loss2 = forces_loss(p, x, envv)
    grads2 = torch.autograd.grad(loss2, [p, x, envv] + list(other.parameters()))
    module = module_saved
    torch.testing.assert_close(loss, loss2, rtol=1e-10, atol=0)
    for i, (a, b) in enumerate(zip(grads, grads2)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m: f"tensor {i}: {m}")
    # and the lean backward itself is correct to second order (finite differences of the forces)
    if lean:
        pp = pos.clone().requires_grad_()
        torch.autograd.gradgradcheck(
            lambda q, e_: module(x.detach(), ei, so2ops.edge_wigner(q[ei[1]] - q[ei[0]], lmax), ea, e_),
            (pp, env.clone().requires_grad_()), eps=1e-6, atol=1e-6, rtol=1e-5)


def saved_bytes(module, *args) -> int:
    """Bytes of the distinct storages that autograd keeps for the backward of ``module(*args)``."""
    storages = {}

    def pack(t):
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(*args)
    del out
    return sum(storages.values())


def test_lean_saved_bytes():
    """The lean block keeps about R H + lmax H numbers per edge for the backward (conv1's output on the
    R rows |m| <= mmax and the gate logits; plus inputs, parameters and the small radial activations);
    the plain composition keeps about K (2 C + 3 H) + NM 2C + (lmax+1) 2C: it does not fit the lean bound."""
    lmax, mmax, c, h, n = 3, 1, 16, 16, 12
    dtype = torch.float32
    plain, lean, gen = _lean_pair(lmax, mmax, c, h, dtype, 41)
    pos, ei, x, ea, env = _inputs(lmax, c, n, dtype, gen)
    e, k = ei.shape[1], (lmax + 1) ** 2
    r = sum(2 * min(l, mmax) + 1 for l in range(lmax + 1))  # rows |m| <= mmax
    assert r < k
    x = x.requires_grad_()
    ea = ea.requires_grad_()
    w = so2ops.edge_wigner(pos[ei[1]] - pos[ei[0]], lmax)
    params = sum(p.numel() for p in lean.parameters())
    hidden_mlp = 6
    per_edge = (r * h              # conv1's output, rows |m| <= mmax only
                + lmax * h         # the gate logits
                + so2ops.wigner_size(lmax) + 1 + 2  # Wigner, envelope, indices (int64 = 2 x float32)
                + EDGE_ATTR + 4 * hidden_mlp + 2)   # the radial MLP: its activations, LayerNorm statistics
    bound = 4 * (e * per_edge + x.numel() + params + 64)
    got = saved_bytes(lean, x, ei, w, ea, env)
    assert got <= bound, (got, bound)
    plain_bytes = saved_bytes(plain, x, ei, w, ea, env)
    assert plain_bytes > bound, (plain_bytes, bound)
    assert plain_bytes > 2 * got


@pytest.mark.parametrize("lean", [True, False])
def test_caches_first_filled_under_inference_mode(lean):
    """A first call under ``torch.inference_mode()`` fills the cached index tensors and tables; they
    must be ordinary tensors (autograd refuses to save inference tensors), so training afterwards works
    and matches training with freshly built caches."""
    from so2ops import block_tables, wigner_tables

    caches = (so2ops.layout.m0_index, edgewise_module._kept_index, edgewise_module._half_rows,
              block_tables._tables, wigner_tables._cached, wigner_tables._tables_f64)
    gen = torch.Generator().manual_seed(8)
    lmax, c = 2, 3
    block = _perturb(SO2EdgewiseBlock(lmax, 1, c, 4, [EDGE_ATTR, 6], lean=lean), gen).double()
    linear = SO2EdgeLinear(lmax, 1, c, 2, bias=True).double()
    pos, ei, x, ea, env = _inputs(lmax, c, 6, torch.float64, gen)

    def train():
        block.zero_grad()
        linear.zero_grad()
        xx = x.clone().requires_grad_()
        w = so2ops.edge_wigner(pos[ei[1]] - pos[ei[0]], lmax)
        loss = _run(block, pos, ei, xx, ea, env, lmax).square().sum() + linear(w.new_ones(3, 9, c)).sum()
        loss.backward()
        return [xx.grad] + [p.grad.clone() for p in list(block.parameters()) + list(linear.parameters())]

    expected = train()
    for f in caches:
        f.cache_clear()
    with torch.inference_mode():
        _run(block, pos, ei, x, ea, env, lmax)
        linear(x.new_ones(3, 9, c))
    for a, b in zip(train(), expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lmax,mmax", [(3, 2), (0, 0)])
def test_plain_fused_consumer_equals_summed_edge_messages(lmax, mmax):
    """lean=False sums with the fused ``so2_linear_scatter``; ``edge_messages`` + ``index_add`` (rotate,
    so2_linear, no so2_frame_linear) is the oracle: output and every gradient."""
    dtype = torch.float64
    gen = torch.Generator().manual_seed(41)
    block = _perturb(SO2EdgewiseBlock(lmax, mmax, 3, 4, [EDGE_ATTR, 6], lean=False), gen).to(dtype)
    pos, ei, x, ea, env = _inputs(lmax, 3, 7, dtype, gen)
    results = []
    for fused in (True, False):
        p, xx, a, en = (t.clone().requires_grad_() for t in (pos, x, ea, env))
        block.zero_grad()
        w = so2ops.edge_wigner(p[ei[1]] - p[ei[0]], lmax)
        if fused:
            y = block(xx, ei, w, a, en)
        else:
            y = xx.new_zeros(xx.shape).index_add(0, ei[1], block.edge_messages(xx, w, ei[0], ei[1], a, en))
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(4), dtype=dtype)
        (y * g).sum().backward()
        results.append([y.detach(), xx.grad, a.grad, p.grad, en.grad] + [q.grad.clone() for q in block.parameters()])
    for i, (a, b) in enumerate(zip(*results)):
        assert_close(a, b, dtype, f"fused vs edge_messages tensor {i}")


# ---------------------------------------------------------------------- lean backward: O(edges) node-gradient traffic
class _NodeSizedAllocations(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts aten / custom ops that return a *fresh* tensor of at least ``threshold`` elements.

    In-place and ``out=`` ops (mutable schemas: ``index_add_``, ``add_``, ...) and views write or alias
    an existing buffer, so they are not allocations and are not counted.  Custom ops are seen whole (the
    mode is off while one runs), so a backend's node-sized output is counted once per call."""

    def __init__(self, threshold: int):
        super().__init__()
        self.threshold, self.hits = threshold, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        schema = func._schema
        if not schema.is_mutable and not any(r.alias_info is not None for r in schema.returns):
            for t in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(t, torch.Tensor) and t.numel() >= self.threshold:
                    self.hits.append((str(func), tuple(t.shape)))
        return out


def _lean_backward_node_allocations(num_slices, monkeypatch):
    """Node-sized allocations in one lean backward over ``num_slices`` slices of 4 edges (many nodes,
    few edges per slice, so anything [N, K, C]-sized per slice stands out)."""
    monkeypatch.setattr(edgewise_module, "LEAN_SLICE", 4)
    lmax, mmax, c, h, n = 2, 1, 4, 3, 400
    plain, lean, gen = _lean_pair(lmax, mmax, c, h, torch.float64, 51)
    k = (lmax + 1) ** 2
    e = 4 * num_slices
    pos = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    # distinct endpoints, so the per-edge tensors stay far below N * K * C elements
    src = torch.randperm(n, generator=gen)[:e]
    dst = torch.randperm(n, generator=gen)[:e]
    ei = torch.stack([src, dst])
    x = torch.randn(n, k, c, generator=gen, dtype=torch.float64, requires_grad=True)
    ea = torch.randn(e, EDGE_ATTR, generator=gen, dtype=torch.float64, requires_grad=True)
    env = torch.rand(e, generator=gen, dtype=torch.float64, requires_grad=True)
    p = pos.clone().requires_grad_()
    y = lean(x, ei, so2ops.edge_wigner(p[ei[1]] - p[ei[0]], lmax), ea, env)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    assert e * so2ops.wigner_size(lmax) < n * k * c  # no per-edge tensor reaches the threshold
    with _NodeSizedAllocations(n * k * c) as mode:
        grads = torch.autograd.grad(y, [x, p, ea, env] + list(lean.parameters()), g)
    assert grads[0].shape == x.shape and grads[0].abs().sum() > 0
    return mode.hits


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_lean_backward_node_allocations_do_not_grow_with_slices(backend, monkeypatch):
    """The lean backward's node-gradient accumulation costs O(slice) per slice: the number of
    [N, K, C]-sized allocations is the same for 2 and for 8 slices (a per-slice full-size zero-filled
    node gradient, O(N E / LEAN_SLICE) traffic per step, would add 6 or more)."""
    if not runnable(backend, torch.device("cpu")):
        pytest.skip(f"backend {backend} not runnable: {so2ops.backends()}")
    with so2ops.use_backend(backend):
        few = _lean_backward_node_allocations(2, monkeypatch)
        many = _lean_backward_node_allocations(8, monkeypatch)
    assert len(few) >= 1  # the x gradient itself: the counter sees node-sized tensors
    assert len(many) == len(few), (few, many)


@pytest.mark.parametrize("lmax,mmax,fast", [(2, 1, True), (1, 1, False)])
def test_lean_gradcheck_sliced(lmax, mmax, fast, monkeypatch):
    """fp64 gradcheck of the lean block through several slices (x, pos via the Wigner blocks, edge
    attributes, envelope), including nodes that several slices scatter into."""
    monkeypatch.setattr(edgewise_module, "LEAN_SLICE", 3)
    c, h = 2, 3
    _, lean, gen = _lean_pair(lmax, mmax, c, h, torch.float64, 61 + lmax)
    pos, ei, x, ea, env = _inputs(lmax, c, 4, torch.float64, gen)  # 8 edges: 3 slices
    assert ei.shape[1] > 2 * 3

    def f(xx, p, a, en):
        return lean(xx, ei, so2ops.edge_wigner(p[ei[1]] - p[ei[0]], lmax), a, en)

    # fast mode (random projections of the Jacobian): each slow-mode column is a whole block forward
    torch.autograd.gradcheck(f, tuple(t.clone().requires_grad_() for t in (x, pos, ea, env)), eps=1e-6,
                             atol=1e-6, rtol=1e-5, fast_mode=fast)
