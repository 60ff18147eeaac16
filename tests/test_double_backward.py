"""Double backward (second-order autograd) of every op on every backend.

* ``gradgradcheck`` of every public op (reference, cpu, triton; cuda when a GPU is present);
* ``gradgradcheck`` of the ``so2ops::*_backward`` ops themselves, i.e. the second-order
  formulas of so2ops/ops/double_backward.py are differentiated once more (third order),
  including partial ``need_*`` flags (the ``[0]`` placeholder outputs);
* force training (``F = -dE/dpos`` with ``create_graph=True``, a loss on ``F``,
  ``.backward()``) of a small so2ops.nn model: parameter gradients on each backend equal
  those of the same model written with plain-PyTorch ``so2ops.reference`` functions (whose
  second derivatives come from PyTorch's own autograd), and a finite-difference check;
  a sabotaged formula (a dropped weight term) is shown to fail that comparison.

Sizes are tiny and float64; the Triton interpreter runs gradcheck's fast mode.
"""
import copy

import pytest
import torch
from torch import nn

import so2ops
from so2ops import dispatch
from so2ops.ops import double_backward
from so2ops.layout import num_mod

from _helpers import FAST, assert_close, backend_params, message_inputs, require

F64 = torch.float64
ALL_BACKENDS = [pytest.param("reference", "cpu", id="reference")] + backend_params()
OPS = torch.ops.so2ops


def _require(backend, device):
    if backend != "reference":
        require(backend, device)


def _gradgrad(fn, inputs, backend, fast=False):
    """``gradgradcheck`` on ``backend``: full Jacobians, or gradcheck's fast mode (one random
    projection) with ``fast`` and on the Triton interpreter (seconds per launch), which also
    skips the undefined-grad pass (backend-independent Python, checked on the others)."""
    kw = dict(fast_mode=True) if fast else {}
    if FAST[backend]:
        kw = dict(fast_mode=True, check_undefined_grad=False)
    with so2ops.use_backend(backend):
        assert torch.autograd.gradgradcheck(fn, inputs, **kw)


def _leaves(*ts):
    return [None if t is None else t.detach().clone().requires_grad_(True) for t in ts]


# ------------------------------------------------------------------ inputs
def _edges(device):
    """Exactly +-y (the poles of the chart), 1e-3 off +y, a generic direction; not the
    chart seam y = 0, where D jumps by a roll, nor tiny lengths (finite differences)."""
    v = [[0.0, 1.0, 0.0], [0.0, -2.0, 0.0], [1e-3, 1.0, 0.0], [0.7, 0.25, -0.5]]
    return torch.tensor(v, dtype=F64, device=device)


def _message(device, modulation=True, lmax=1, mmax=1):
    x, _, wig, ei, w, mod = message_inputs(2, 3, lmax, mmax, 1, 1, F64, device, modulation=modulation, seed=1)
    return x, wig, ei, w, mod


SMALL = so2ops.BasisLayout({1: [0], 6: [0, 1]}, name="s+sp")  # features lmax 2


def _blocks_problem(device):
    """Two molecules (C-H; a lone H: invariant), every block, features lmax 2."""
    g = torch.Generator().manual_seed(5)
    z = torch.tensor([6, 1, 1])
    batch = torch.tensor([0, 0, 1])
    items = torch.tensor([[0, 0], [1, 1], [2, 2], [0, 1]])
    v = torch.randn(items.shape[0], 3, dtype=F64, generator=g)
    invariant = torch.tensor([False, False, True, False])
    c = so2ops.block_channels(SMALL, 2)
    x = torch.randn(items.shape[0], 9, c, dtype=F64, generator=g)
    w = so2ops.reference.edge_wigner(v, SMALL.lmax_shell)
    return [t.to(device) for t in (x, w, z, items, batch, invariant)]


# ------------------------------------------------------------------ gradgradcheck of the public ops
@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_gradgradcheck_edge_wigner(backend, device):
    _require(backend, device)
    # the reference's own first-order backward is slow at lmax 2: full Jacobians on cpu only
    _gradgrad(lambda t: so2ops.edge_wigner(t, 2), _leaves(_edges(device)), backend, fast=backend != "cpu")


@pytest.mark.parametrize("gather,inverse", [(False, False), (False, True), (True, False), (True, True)],
                         ids=["plain", "inverse", "index", "index-inverse"])
@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_gradgradcheck_rotate(backend, device, gather, inverse):
    _require(backend, device)
    x, wig, ei, _, _ = _message(device, lmax=2)
    index = ei[0] if gather else None
    if not gather:
        x = so2ops.reference.rotate(x, wig, 2, ei[0])
    _gradgrad(lambda a, b: so2ops.rotate(a, b, 2, index, inverse), _leaves(x, wig), backend)


@pytest.mark.parametrize("modulation", [True, False], ids=["mod", "nomod"])
@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_gradgradcheck_so2_linear(backend, device, modulation):
    _require(backend, device)
    x, wig, ei, w, mod = _message(device, modulation, lmax=2, mmax=1)
    local = so2ops.reference.rotate(x, wig, 2, ei[0])
    if modulation:
        f = lambda a, b, c: so2ops.so2_linear(a, b, 2, 1, 1, c)  # noqa: E731
        _gradgrad(f, _leaves(local, w, mod), backend)
    else:
        _gradgrad(lambda a, b: so2ops.so2_linear(a, b, 2, 1, 1), _leaves(local, w), backend)


@pytest.mark.parametrize("modulation", [True, False], ids=["mod", "nomod"])
@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_gradgradcheck_so2_message(backend, device, modulation):
    _require(backend, device)
    x, wig, ei, w, mod = _message(device, modulation)
    if modulation:
        f = lambda a, b, c, d: so2ops.so2_message(a, b, ei, c, 1, 1, 1, d)  # noqa: E731
        _gradgrad(f, _leaves(x, wig, w, mod), backend)
    else:
        _gradgrad(lambda a, b, c: so2ops.so2_message(a, b, ei, c, 1, 1, 1), _leaves(x, wig, w), backend)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_gradgradcheck_so2_tensor_product(backend, device):
    _require(backend, device)
    g = torch.Generator().manual_seed(2)
    lmax, mmax, cin, hidden, cout, nu = 1, 1, 1, 1, 1, 2
    x = torch.randn(2, 4, cin, dtype=F64, generator=g)
    w_in = torch.randn(nu, so2ops.tp_in_size(lmax, mmax, cin, hidden), dtype=F64, generator=g)
    coeffs = torch.randn(2, nu, hidden, dtype=F64, generator=g)
    w_out = torch.randn(so2ops.tp_out_size(lmax, mmax, hidden, cout), dtype=F64, generator=g)
    f = lambda a, b, c, d: so2ops.so2_tensor_product(a, b, c, d, lmax, mmax, cout)  # noqa: E731
    _gradgrad(f, _leaves(*(t.to(device) for t in (x, w_in, coeffs, w_out))), backend)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_gradgradcheck_assemble_blocks(backend, device):
    _require(backend, device)
    x, w, z, items, batch, invariant = _blocks_problem(device)
    f = lambda a, b: so2ops.assemble_blocks(a, b, SMALL, z, items, batch, invariant)  # noqa: E731
    _gradgrad(f, _leaves(x, w), backend, fast=True)


# ------------------------------------------------------------------ the second-order formulas, differentiated again
NEEDS2 = [(True, True), (True, False), (False, True)]


def _only(outs, needs):
    return tuple(o for o, n in zip(outs, needs) if n)


@pytest.mark.parametrize("needs", NEEDS2, ids=["both", "x", "wigner"])
def test_gradgradcheck_rotate_backward(needs):
    x, wig, ei, _, _ = _message("cpu", lmax=2)
    g = torch.randn(3, 9, 1, dtype=F64, generator=torch.Generator().manual_seed(7))
    f = lambda gg, a, b: _only(OPS.rotate_backward(gg, a, b, 2, ei[0], True, *needs), needs)  # noqa: E731
    _gradgrad(f, _leaves(g, x, wig), "cpu")


@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False), (False, True, True), (True, True, False)],
                         ids=["all", "x", "weight-mod", "x-weight"])
def test_gradgradcheck_so2_linear_backward(needs):
    x, wig, ei, w, mod = _message("cpu", lmax=2, mmax=1)
    local = so2ops.reference.rotate(x, wig, 2, ei[0])
    g = torch.randn_like(local)
    f = lambda gg, a, b, c: _only(OPS.so2_linear_backward(gg, a, b, c, 2, 1, 1, *needs), needs)  # noqa: E731
    _gradgrad(f, _leaves(g, local, w, mod), "cpu")


@pytest.mark.parametrize("needs", [(True, True, True, True), (False, True, False, False), (True, False, True, False)],
                         ids=["all", "wigner", "x-weight"])
def test_gradgradcheck_so2_message_backward(needs):
    x, wig, ei, w, mod = _message("cpu")
    g = torch.randn_like(x)
    def f(gg, a, b, c, d):
        return _only(OPS.so2_message_backward(gg, a, b, ei, c, d, 1, 1, 1, False, *needs), needs)

    _gradgrad(f, _leaves(g, x, wig, w, mod), "cpu")


def test_opcheck_backward_ops():
    """Schema, autograd registration, fake kernels and AOT tracing of the backward ops with
    inputs that require grad (so their double backward is traced too)."""
    x, wig, ei, w, mod = _message("cpu")
    local = so2ops.reference.rotate(x, wig, 1, ei[0])
    cases = [
        (OPS.rotate_backward.default, (*_leaves(local, x, wig), 1, ei[0], False, True, True)),
        (OPS.so2_message_backward.default,
         (*_leaves(x, x, wig), ei, *_leaves(w, mod), 1, 1, 1, False, True, True, True, True)),
    ]
    with so2ops.use_backend("cpu"):
        for op, args in cases:
            torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradgradcheck_edge_wigner_backward(backend):
    v = _edges("cpu")
    g = torch.randn(4, so2ops.wigner_size(2), dtype=F64, generator=torch.Generator().manual_seed(8))
    _gradgrad(lambda gg, t: OPS.edge_wigner_backward(gg, t, 2), _leaves(g, v), backend, fast=True)


@pytest.mark.parametrize("needs", [(True, False), (False, True)], ids=["features", "wigner"])
def test_gradgradcheck_assemble_blocks_backward(needs):
    x, w, z, items, batch, invariant = _blocks_problem("cpu")
    tail = _ab_tail(x, z, items, batch, invariant)
    g = torch.randn(tail[-1], dtype=F64, generator=torch.Generator().manual_seed(9))
    f = lambda gg, a, b: _only(OPS.assemble_blocks_backward(gg, a, b, *tail, *needs), needs)  # noqa: E731
    _gradgrad(f, _leaves(g, x, w), "cpu", fast=True)


def _ab_tail(x, z, items, batch, invariant):
    """The table arguments the public op passes to the reference ``assemble_blocks``."""
    from so2ops.block_tables import block_tables

    index = so2ops.HamiltonianIndex.build(SMALL, z, batch)
    t = block_tables(SMALL, 2, x.shape[2], x.dtype, x.device)
    n = t.z_index.numel() - 1
    ei, ej = t.z_index[z[items[:, 0]].clamp(0, n)], t.z_index[z[items[:, 1]].clamp(0, n)]
    item_type = t.type_lut[ei, ej, (items[:, 0] == items[:, 1]).long()]
    return (items, item_type, invariant, index.atom_ao, index.atom_mol, index.mol_offset, index.mol_nao,
            t.sp_start, t.sp_info, t.entry_src, t.entry_coef, t.inv_src, t.basis_change, SMALL.lmax_shell, index.total)


# ------------------------------------------------------------------ force training
LMAX, MMAX, C, NRBF = 2, 1, 3, 4


class Model(nn.Module):
    """positions -> edge_wigner -> SO2Convolution -> Gate -> SO2Convolution -> invariant readout."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.embed = nn.Embedding(3, C)
            self.conv1 = so2ops.nn.SO2Convolution(LMAX, MMAX, C, C, NRBF, hidden_dim=5)
            self.gate = so2ops.nn.Gate(LMAX, C)
            self.conv2 = so2ops.nn.SO2Convolution(LMAX, MMAX, C, C, NRBF, hidden_dim=5)
            self.readout = nn.Sequential(nn.Linear(2 * C, 6), nn.SiLU(), nn.Linear(6, 1))
        self.double()

    def _conv(self, conv, x, ei, vec, attr, wig, pure):
        if not pure:
            return conv(x, ei, vec, attr, wigner=wig)
        mod = conv.radial(attr).view(-1, num_mod(LMAX, MMAX), C)
        return so2ops.reference.so2_message(x, wig, ei, conv.weight, LMAX, MMAX, C, mod)

    def forward(self, pos, species, ei, pure=False):
        """Energy; ``pure``: the same model with plain-PyTorch reference functions (no custom op)."""
        vec = pos[ei[1]] - pos[ei[0]]
        wig = (so2ops.reference.edge_wigner if pure else so2ops.edge_wigner)(vec, LMAX)
        r = vec.norm(dim=-1, keepdim=True)
        attr = torch.exp(-((r - torch.linspace(0.5, 3.0, NRBF, dtype=F64, device=r.device)) ** 2))
        e = self.embed(species)
        x = torch.cat([e[:, None, :], e.new_zeros(e.shape[0], so2ops.num_coeffs(LMAX) - 1, C)], dim=1)
        h = self.gate(self._conv(self.conv1, x, ei, vec, attr, wig, pure))
        h = h + self._conv(self.conv2, h, ei, vec, attr, wig, pure)
        inv = torch.cat([h[:, 0, :], (h[:, 1:4, :] ** 2).sum(1)], dim=-1)
        return self.readout(inv).sum()


def _system():
    g = torch.Generator().manual_seed(11)
    pos = torch.randn(4, 3, dtype=F64, generator=g) * 1.2
    species = torch.tensor([0, 1, 2, 1])
    src, dst = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    keep = src != dst
    ei = torch.stack([src[keep], dst[keep]])
    f_target = torch.randn(4, 3, dtype=F64, generator=g)
    return pos, species, ei, f_target


def _force_loss(model, pos, species, ei, f_target, pure=False, create_graph=True):
    p = pos.detach().clone().requires_grad_(True)
    energy = model(p, species, ei, pure)
    (de,) = torch.autograd.grad(energy, p, create_graph=create_graph)
    return ((-de - f_target) ** 2).sum() + 0.1 * energy**2


def _param_grads(model, backend, device="cpu", pure=False, seen=None):
    """Parameter gradients of the force loss; ``.backward()`` runs outside ``use_backend``:
    the formulas must use the backend chosen at forward time (``seen`` records each dispatch)."""
    if device != "cpu":
        model = copy.deepcopy(model).to(device)
    pos, species, ei, f_target = (t.to(device) for t in _system())
    model.zero_grad()
    with so2ops.use_backend(backend):
        loss = _force_loss(model, pos, species, ei, f_target, pure)
    real = dispatch._load_backends
    if seen is not None:
        dispatch._load_backends = lambda: (seen.append(dispatch.current_backend()), real())[1]
    try:
        loss.backward()
    finally:
        dispatch._load_backends = real
    return {k: p.grad.detach().cpu().clone() for k, p in model.named_parameters()}


@pytest.fixture(scope="module")
def oracle():
    """Parameter gradients of the force loss through PyTorch's own double backward of the reference math."""
    model = Model()
    return model, _param_grads(model, None, pure=True)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_force_training_matches_plain_pytorch(backend, device, oracle):
    _require(backend, device)
    model, expected = oracle
    seen = []
    grads = _param_grads(model, backend, device, seen=seen)
    assert seen and set(seen) == {backend}, "the second-order backward ran on another backend"
    for k, g in expected.items():
        assert float(g.abs().max()) > 0, k  # every parameter feeds the force loss
        assert_close(grads[k], g, F64, f"{backend}: d(force loss)/d{k}")


@pytest.mark.parametrize("param", ["conv1.weight", "conv1.radial.0.weight", "conv2.weight"])
def test_force_training_finite_differences(param, oracle):
    """Directional finite difference of the force loss along a random direction of one parameter."""
    model, _ = oracle
    grads = _param_grads(model, "cpu")
    pos, species, ei, f_target = _system()
    p = dict(model.named_parameters())[param]
    u = torch.randn(p.shape, dtype=F64, generator=torch.Generator().manual_seed(4))
    eps = 1e-5
    vals = []
    with torch.no_grad():
        p0 = p.detach().clone()
        for s in (1.0, -1.0):
            p.copy_(p0 + s * eps * u)
            with torch.enable_grad(), so2ops.use_backend("cpu"):
                vals.append(_force_loss(model, pos, species, ei, f_target, create_graph=False).item())
        p.copy_(p0)
    fd = (vals[0] - vals[1]) / (2 * eps)
    an = float((grads[param] * u).sum())
    assert abs(fd - an) <= 1e-6 * max(1.0, abs(an)), (param, fd, an)


def test_force_training_detects_a_dropped_second_order_term(oracle, monkeypatch):
    """The comparison above can fail: drop so2_linear's second-order weight term and it does."""
    model, expected = oracle
    real = double_backward.multilinear_double_backward

    def dropped(fwd, bwd, grad, args, ggs, need_grad, need_args):
        need_args = list(need_args)
        if len(args) == 3:  # so2_linear: (x, weight, modulation)
            need_args[1] = False
        return real(fwd, bwd, grad, args, ggs, need_grad, need_args)

    monkeypatch.setattr(double_backward, "multilinear_double_backward", dropped)
    grads = _param_grads(model, "cpu")
    assert_close(grads["readout.2.weight"], expected["readout.2.weight"], F64, "untouched")
    with pytest.raises(AssertionError):
        assert_close(grads["conv1.weight"], expected["conv1.weight"], F64, "dropped term")
