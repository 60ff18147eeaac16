"""assemble_blocks: rotation equivariance with PySCF's AO rotations as the independent
truth (def2-SVP, def2-TZVP with f shells), the e3nn -> PySCF change of basis against
PySCF's AO values, invariant-only blocks, bad input, and every backend against the reference.

PySCF is optional: the basis layouts come from a fixed table (tests/data/basis_layouts.json,
checked against PySCF where it is installed), and without PySCF the AO rotations are built from
e3nn's Wigner-D and ``so2ops.e3nn_to_pyscf`` (checked against PySCF's own rotations and AO values
where it is installed).  So every backend case, the GPU ones included, runs on a machine without
PySCF; only the tests that compare with PySCF itself are skipped there."""
import importlib
import json
import os
from functools import lru_cache

import numpy as np
import pytest
import torch
from e3nn import o3

import so2ops
from so2ops.dispatch import implementations

from _helpers import FAST, assert_close, backend_params, require

try:
    from pyscf import gto
    from pyscf.symm import Dmatrix
    from scipy.linalg import block_diag

    from qhnetv2.data.basis import element_shells
except ImportError:  # the GPU machine has no PySCF
    gto = None

needs_pyscf = pytest.mark.skipif(gto is None, reason="PySCF is not installed")

F32, F64 = torch.float32, torch.float64
OP = "assemble_blocks"
ALL_BACKENDS = [pytest.param("reference", "cpu", id="reference")] + backend_params()
H_, C_, N_, O_ = 1, 6, 7, 8


def _require(backend, device):
    """``require``, then skip only when the backend has not registered the op yet."""
    if backend != "reference":
        require(backend, device)
    if backend not in implementations(OP):
        pytest.skip(f"backend {backend!r} has not registered {OP!r} yet (registered: {implementations(OP)})")


LAYOUTS_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "basis_layouts.json")


@lru_cache(maxsize=None)
def _layout_table():
    with open(LAYOUTS_JSON) as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


@lru_cache(maxsize=None)
def basis(name, elements):
    """``BasisLayout`` of basis ``name`` for ``elements`` (a tuple of atomic numbers), from the fixed
    table (no PySCF needed; ``test_fixed_layouts_match_pyscf`` checks it against PySCF)."""
    shells = _layout_table()[name]
    return so2ops.BasisLayout({z: shells[str(z)] for z in elements}, name=name)


@lru_cache(maxsize=None)
def pyscf_basis(name, elements):
    """The same layout read from PySCF (``qhnetv2.data.basis.element_shells``)."""
    return so2ops.BasisLayout({z: [l for l, _ in element_shells(name, z)] for z in elements}, name=name)


SMALL = so2ops.BasisLayout({H_: [0], C_: [0, 1]}, name="s+sp")  # features lmax 2, 2 channels


# ------------------------------------------------------------------ inputs
def molecules(sizes, elements, seed=0):
    """``Z[N]``, ``pos[N, 3]`` float64, sorted ``batch[N]`` for molecules of ``sizes`` atoms."""
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    z = torch.tensor(elements, dtype=torch.int64)[torch.randint(0, len(elements), (n,), generator=g)]
    pos = torch.randn(n, 3, dtype=F64, generator=g) * 1.5
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes, dtype=torch.int64))
    return z, pos, batch


def make_items(batch, strides=None):
    """Diagonal items ``(i, i)`` for every atom, then pairs ``(i, j)``, ``i < j``, of each molecule
    (all of them, or only ``j - i in strides``)."""
    items = [(i, i) for i in range(batch.numel())]
    b = batch.tolist()
    for i in range(len(b)):
        for j in range(i + 1, len(b)):
            if b[i] == b[j] and (strides is None or j - i in strides):
                items.append((i, j))
    return torch.tensor(items, dtype=torch.int64).reshape(-1, 2)


def frame_vectors(pos, batch, items):
    """Frame axis of each item: the pair axis, or the vector to the nearest atom of the
    molecule for a diagonal item; ``invariant`` for the atom of a one-atom molecule."""
    v = pos[items[:, 1]] - pos[items[:, 0]]
    invariant = torch.zeros(items.shape[0], dtype=torch.bool)
    for k, (i, j) in enumerate(items.tolist()):
        if i != j:
            continue
        d = (pos - pos[i]).norm(dim=1)
        d[batch != batch[i]] = float("inf")
        d[i] = float("inf")
        if torch.isinf(d.min()):
            invariant[k] = True
            v[k] = torch.tensor([0.3, 1.0, -0.2], dtype=pos.dtype)  # any direction: not read
        else:
            v[k] = pos[int(d.argmin())] - pos[i]
    return v, invariant


def local_inputs(xg, pos, batch, items, lmax):
    """Global-frame features ``xg[I, K, C]`` rotated into each item's frame, and the frames' Wigner."""
    v, invariant = frame_vectors(pos, batch, items)
    w = so2ops.reference.edge_wigner(v, lmax)
    return so2ops.reference.rotate(xg, w, lmax), w, invariant


def random_rotation(seed):
    g = torch.Generator().manual_seed(seed)
    angles = [torch.rand((), dtype=F64, generator=g) * s for s in (6.283, 3.1416, 6.283)]
    q = o3.angles_to_matrix(*angles)
    return q


def e3nn_d(q, lmax):
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)  # e3nn builds its generators in the default dtype
    try:
        return o3.Irreps.spherical_harmonics(lmax).D_from_matrix(q)
    finally:
        torch.set_default_dtype(old)


def pyscf_ao_rotation(layout, zs, q):
    """``D_AO(Q)`` with ``ao_{Q mol}(Q r) = D_AO ao_mol(r)`` from PySCF's Wigner matrices.

    PySCF's ``get_euler_angles(c1, c2)`` takes the axes as rows: ``c2`` is the rotated
    frame, the rows of ``Q^T``; ``Dmatrix(..., reorder_p=True)`` orders p as (x, y, z),
    PySCF's AO order.  Checked against AO values by ``test_pyscf_ao_rotation_matches_ao_values``.
    """
    angles = Dmatrix.get_euler_angles(np.eye(3), q.numpy().T)
    per_l = {l: np.real(Dmatrix.Dmatrix(l, *angles, reorder_p=True)) for l in range(layout.lmax_shell + 1)}
    return torch.from_numpy(block_diag(*[per_l[l] for z in zs for l in layout.shell_ls(int(z))]))


def e3nn_ao_rotation(layout, zs, q):
    """``D_AO(Q)`` without PySCF: per shell ``U_l D_e3nn^l(Q) U_l^T`` with ``U_l = e3nn_to_pyscf(l)``
    (``Y_pyscf(Q v) = U_l Y_e3nn(Q v) = U_l D^l(Q) U_l^T Y_pyscf(v)``).  Equal to ``pyscf_ao_rotation``
    (``test_e3nn_ao_rotation_matches_pyscf``)."""
    d = e3nn_d(q, layout.lmax_shell)
    per_l = {}
    for l in range(layout.lmax_shell + 1):
        u = so2ops.e3nn_to_pyscf(l)
        per_l[l] = u @ d[l * l : (l + 1) ** 2, l * l : (l + 1) ** 2] @ u.T
    return torch.block_diag(*[per_l[l] for z in zs for l in layout.shell_ls(int(z))])


def ao_rotation(layout, zs, q):
    """PySCF's AO rotation where PySCF is installed (the independent truth), else ``e3nn_ao_rotation``."""
    return e3nn_ao_rotation(layout, zs, q) if gto is None else pyscf_ao_rotation(layout, zs, q)


def _assemble(backend, x, w, layout, z, items, batch, invariant):
    with so2ops.use_backend(backend):
        return so2ops.assemble_blocks(x, w, layout, z, items, batch, invariant)


def _rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ------------------------------------------------------------------ PySCF as the independent truth
@needs_pyscf
@pytest.mark.parametrize("l", [0, 1, 2, 3, 4])
def test_e3nn_to_pyscf_matches_pyscf_ao_values(l):
    """Fit ``U_l`` with ``Y_pyscf = U_l Y_e3nn`` from PySCF's AO values of a single shell."""
    mol = gto.M(atom="He 0 0 0", basis={"He": [[l, [1.0, 1.0]]]}, unit="Bohr", verbose=0)
    g = torch.Generator().manual_seed(l)
    u = torch.randn(60, 3, dtype=F64, generator=g)
    u = u / u.norm(dim=1, keepdim=True)  # on the unit sphere the radial factor is one constant
    ao = torch.from_numpy(mol.eval_gto("GTOval_sph", u.numpy()))  # [P, 2l+1]
    y = so2ops.reference.spherical_harmonics(u, l)[:, l * l :]  # [P, 2l+1]
    m = torch.linalg.lstsq(y, ao).solution  # ao = y @ m
    assert (y @ m - ao).abs().max() < 1e-12 * ao.abs().max()
    fit = m.T / (m.T @ m).diagonal().mean().sqrt()  # the radial constant is positive
    torch.testing.assert_close(fit @ fit.T, torch.eye(2 * l + 1, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(so2ops.e3nn_to_pyscf(l), fit, rtol=0, atol=1e-12)


@needs_pyscf
@pytest.mark.parametrize("name,elements", [("def2-svp", (H_, C_, N_, O_)), ("def2-tzvp", (C_, O_))])
def test_pyscf_ao_rotation_matches_ao_values(name, elements):
    """The Euler-angle convention of ``pyscf_ao_rotation``: rotate the atoms, evaluate the AOs."""
    layout = basis(name, elements)
    zs, pos = list(elements), torch.randn(len(elements), 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    q = random_rotation(5)
    atoms = lambda p: [(int(z), tuple(r)) for z, r in zip(zs, p.tolist())]  # noqa: E731
    mol = gto.M(atom=atoms(pos), basis=name, unit="Bohr", spin=sum(zs) % 2, verbose=0)
    mol_q = gto.M(atom=atoms(pos @ q.T), basis=name, unit="Bohr", spin=sum(zs) % 2, verbose=0)
    pts = torch.randn(300, 3, dtype=F64, generator=torch.Generator().manual_seed(2)) * 1.5
    ao = torch.from_numpy(mol.eval_gto("GTOval_sph", pts.numpy()))
    ao_q = torch.from_numpy(mol_q.eval_gto("GTOval_sph", (pts @ q.T).numpy()))
    d = pyscf_ao_rotation(layout, zs, q)
    assert d.shape == (mol.nao, mol.nao)
    assert _rel_err(ao @ d.T, ao_q) < 1e-12


@needs_pyscf
@pytest.mark.parametrize("name,elements", [("def2-svp", (H_, C_, N_, O_)), ("def2-tzvp", (C_, O_))])
def test_fixed_layouts_match_pyscf(name, elements):
    """tests/data/basis_layouts.json (the layouts every test uses) == PySCF's shells."""
    assert basis(name, elements) == pyscf_basis(name, elements)
    assert [basis(name, elements).shell_ls(z) for z in elements] == [pyscf_basis(name, elements).shell_ls(z)
                                                                      for z in elements]


@needs_pyscf
@pytest.mark.parametrize("name,elements", [("def2-svp", (H_, C_, N_, O_)), ("def2-tzvp", (C_, O_))])
def test_e3nn_ao_rotation_matches_pyscf(name, elements):
    """The PySCF-free AO rotation (used where PySCF is missing) equals PySCF's."""
    layout = basis(name, elements)
    for seed in (5, 6):
        q = random_rotation(seed)
        torch.testing.assert_close(e3nn_ao_rotation(layout, list(elements), q),
                                   pyscf_ao_rotation(layout, list(elements), q), rtol=0, atol=1e-12)


def test_e3nn_ao_rotation_is_a_representation():
    """Without PySCF too: ``D_AO`` is orthogonal and ``D_AO(Q1 Q2) = D_AO(Q1) D_AO(Q2)`` (def2-TZVP: f shells)."""
    layout = basis("def2-tzvp", (C_, O_))
    q1, q2 = random_rotation(1), random_rotation(2)
    d1, d2 = e3nn_ao_rotation(layout, [C_, O_], q1), e3nn_ao_rotation(layout, [C_, O_], q2)
    assert d1.shape == (2 * layout.n_ao(C_),) * 2
    torch.testing.assert_close(d1 @ d1.T, torch.eye(d1.shape[0], dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(e3nn_ao_rotation(layout, [C_, O_], q1 @ q2), d1 @ d2, rtol=0, atol=1e-12)


BASES = [("def2-svp", (H_, C_, N_, O_), [1, 2, 5]), ("def2-tzvp", (C_, O_), [1, 2, 3])]


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("name,elements,sizes", BASES, ids=["def2-svp", "def2-tzvp"])
def test_rotating_the_molecule_rotates_H_like_pyscf(backend, device, name, elements, sizes):
    """``H(Q R) = D_AO(Q) H(R) D_AO(Q)^T`` for features built in random local frames."""
    _require(backend, device)
    layout = basis(name, elements)
    lmax = layout.features_lmax
    z, pos, batch = molecules(sizes, elements, seed=len(elements))
    items = make_items(batch)
    c = so2ops.block_channels(layout, lmax)
    xg = torch.randn(items.shape[0], so2ops.num_coeffs(lmax), c, dtype=F64, generator=torch.Generator().manual_seed(3))
    q = random_rotation(7)
    index = so2ops.HamiltonianIndex.build(layout, z, batch)
    outs = []
    for p, x in ((pos, xg), (pos @ q.T, e3nn_d(q, lmax) @ xg)):
        xl, w, invariant = local_inputs(x, p, batch, items, lmax)
        assert int(invariant.sum()) == 1  # the one-atom molecule
        h = _assemble(backend, xl.to(device), w.to(device), layout, z.to(device), items.to(device),
                      batch.to(device), invariant.to(device))
        outs.append([m.cpu() for m in index.unpack(h.cpu())])
    atoms = torch.split(z, [int(s) for s in sizes])
    for h, h_q, zs in zip(*outs, atoms):
        d = ao_rotation(layout, zs.tolist(), q)
        assert h.abs().max() > 0.1
        torch.testing.assert_close(h, h.T, rtol=0, atol=1e-13 * float(h.abs().max()))
        assert _rel_err(h_q, d @ h @ d.T) < 1e-12


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("name,elements,z", [("def2-svp", (H_, C_, N_, O_), O_), ("def2-tzvp", (C_, O_), C_)])
def test_invariant_block_of_an_isolated_atom_is_rotation_invariant(backend, device, name, elements, z):
    _require(backend, device)
    layout = basis(name, elements)
    lmax = layout.features_lmax
    c = so2ops.block_channels(layout, lmax)
    g = torch.Generator().manual_seed(11)
    x1 = torch.randn(1, so2ops.num_coeffs(lmax), c, dtype=F64, generator=g)
    x2 = torch.randn(1, so2ops.num_coeffs(lmax), c, dtype=F64, generator=g)
    x2[:, 0] = x1[:, 0]  # only row 0 is shared: the other rows are arbitrary
    args = (layout, torch.tensor([z]), torch.tensor([[0, 0]]), None, torch.tensor([True]))
    w1 = so2ops.reference.edge_wigner(torch.randn(1, 3, dtype=F64, generator=g), lmax)
    w2 = so2ops.reference.edge_wigner(torch.randn(1, 3, dtype=F64, generator=g), lmax)
    h1 = _assemble(backend, x1.to(device), w1.to(device), *[a.to(device) if torch.is_tensor(a) else a for a in args])
    h2 = _assemble(backend, x2.to(device), w2.to(device), *[a.to(device) if torch.is_tensor(a) else a for a in args])
    torch.testing.assert_close(h2, h1, rtol=0, atol=0)
    n = layout.n_ao(z)
    h = h1.cpu().view(n, n)
    assert h.abs().max() > 0.1
    for seed in (1, 2, 3):
        d = ao_rotation(layout, [z], random_rotation(seed))
        assert _rel_err(d @ h @ d.T, h) < 1e-12


def test_pair_block_lands_at_the_pair_and_its_transpose():
    """An item (i, j) fills H[i-AOs, j-AOs] and its transpose, nothing else."""
    layout = basis("def2-svp", (H_, C_, N_, O_))
    z = torch.tensor([O_, H_, C_])
    items = torch.tensor([[2, 0]])
    lmax = layout.features_lmax
    x = torch.randn(1, so2ops.num_coeffs(lmax), so2ops.block_channels(layout, lmax), dtype=F64)
    w = so2ops.reference.edge_wigner(torch.randn(1, 3, dtype=F64), lmax)
    h = so2ops.assemble_blocks(x, w, layout, z, items).view(14 + 5 + 14, -1)
    ao = {0: slice(0, 14), 1: slice(14, 19), 2: slice(19, 33)}
    assert h[ao[2], ao[0]].abs().min() > 0
    torch.testing.assert_close(h, h.T, rtol=0, atol=0)
    mask = torch.ones_like(h, dtype=torch.bool)
    mask[ao[2], ao[0]] = False
    mask[ao[0], ao[2]] = False
    assert h[mask].abs().max() == 0


# ------------------------------------------------------------------ every backend against the reference
CASES = {  # layout, feature lmax, channels, molecule sizes, items
    "small-c3": (SMALL, 2, 3, (1, 2, 30), "sparse"),
    "svp-c17": (basis("def2-svp", (H_, C_, N_, O_)), 4, 17, (1, 2, 30), "sparse"),
    "svp-lmax5-c63": (basis("def2-svp", (H_, C_, N_, O_)), 5, 63, (2, 3), "all"),
    "tzvp-c31": (basis("def2-tzvp", (C_, O_)), 6, 31, (1, 3), "all"),
    "one-item": (basis("def2-svp", (H_, C_, N_, O_)), 4, 12, (2,), "one"),
    "zero-items": (SMALL, 2, 3, (1, 2), "none"),
}


#: The Triton interpreter runs one program per (item, shell pair) at a few ms each:
#: on CPU it gets at most this many items (always those of the first three atoms).
INTERPRETER_ITEMS = 6


def _case_inputs(case, dtype, device, seed=0, max_items=None):
    layout, lmax, c, sizes, which = CASES[case]
    z, pos, batch = molecules(sizes, layout.elements, seed=seed)
    items = {"all": make_items(batch), "sparse": make_items(batch, strides=(1, 2, 3, 11)),
             "one": torch.tensor([[1, 0]]), "none": torch.zeros(0, 2, dtype=torch.int64)}[which]
    if max_items is not None and items.shape[0] > max_items:
        first = (items < 3).all(dim=1)  # the one- and two-atom molecules' items
        rest = torch.nonzero(~first).flatten()
        keep = rest[torch.linspace(0, rest.numel() - 1, max_items - int(first.sum())).round().long()]
        items = items[torch.sort(torch.cat([torch.nonzero(first).flatten(), keep])).values]
    g = torch.Generator().manual_seed(seed + 1)
    xg = torch.randn(items.shape[0], so2ops.num_coeffs(lmax), c, dtype=F64, generator=g)
    x, w, invariant = local_inputs(xg, pos, batch, items, lmax)
    to = lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)  # noqa: E731
    return layout, to(x), to(w), to(z), to(items), to(batch), to(invariant)


def _with_grads(backend, layout, x, w, z, items, batch, invariant, grad_seed=5):
    xl, wl = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    h = _assemble(backend, xl, wl, layout, z, items, batch, invariant)
    g = torch.randn(h.shape, dtype=h.dtype, generator=torch.Generator().manual_seed(grad_seed)).to(h.device)
    (h * g).sum().backward()
    return h.detach(), xl.grad, wl.grad


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", list(CASES))
def test_backend_matches_reference(backend, device, dtype, case):
    _require(backend, device)
    interpreted = backend == "triton" and device == "cpu"
    layout, x, w, z, items, batch, invariant = _case_inputs(case, dtype, device,
                                                            max_items=INTERPRETER_ITEMS if interpreted else None)
    expected = _with_grads("reference", layout, x, w, z, items, batch, invariant)
    actual = _with_grads(backend, layout, x, w, z, items, batch, invariant)
    index = so2ops.HamiltonianIndex.build(layout, z, batch)
    assert actual[0].shape == (index.total,) and actual[0].dtype == dtype
    for name, a, b in zip(("H", "grad features", "grad wigner"), actual, expected):
        assert_close(a, b, dtype, f"assemble_blocks {case}: {name}")
    for h in index.unpack(actual[0]):
        torch.testing.assert_close(h, h.T, rtol=0, atol=0)


def test_reference_handles_the_awkward_cases():
    """Zero items give zeros, one item fills one block pair, a one-atom molecule is invariant."""
    layout, x, w, z, items, batch, invariant = _case_inputs("zero-items", F64, "cpu")
    h = so2ops.assemble_blocks(x, w, layout, z, items, batch, invariant)
    assert h.shape == (so2ops.HamiltonianIndex.build(layout, z, batch).total,) and h.abs().max() == 0
    layout, x, w, z, items, batch, invariant = _case_inputs("one-item", F64, "cpu")
    h = so2ops.assemble_blocks(x, w, layout, z, items, batch, invariant)
    assert int((h != 0).sum()) == 2 * layout.n_ao(int(z[0])) * layout.n_ao(int(z[1]))


def _small_problem(dtype=F64, device="cpu"):
    """Two molecules (1 and 2 atoms), every block; wigner only up to the shells' degree 1."""
    z, pos, batch = molecules((1, 2), SMALL.elements, seed=4)
    items = make_items(batch)
    xg = torch.randn(items.shape[0], 9, 2, dtype=F64, generator=torch.Generator().manual_seed(6))
    x, w, invariant = local_inputs(xg, pos, batch, items, 2)
    w = w[:, : so2ops.wigner_size(SMALL.lmax_shell)]
    return x.to(device, dtype), w.to(device, dtype), z.to(device), items.to(device), batch.to(device), invariant.to(device)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_backend_gradcheck(backend, device):
    _require(backend, device)
    x, w, z, items, batch, invariant = _small_problem(F64, device)
    args = [x.requires_grad_(True), w.requires_grad_(True)]
    with so2ops.use_backend(backend):
        f = lambda a, b: so2ops.assemble_blocks(a, b, SMALL, z, items, batch, invariant)  # noqa: E731
        assert torch.autograd.gradcheck(f, args, fast_mode=FAST[backend])


def _custom_op_args(monkeypatch, *args):
    """The exact arguments the wrapper passes to ``torch.ops.so2ops.assemble_blocks``."""
    module = importlib.import_module("so2ops.ops.assemble_blocks")
    real, seen = module._assemble_blocks, []

    def spy(*a):
        seen.append(a)
        return real(*a)

    monkeypatch.setattr(module, "_assemble_blocks", spy)
    so2ops.assemble_blocks(*args)
    monkeypatch.setattr(module, "_assemble_blocks", real)
    return seen[0]


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_opcheck(backend, monkeypatch):
    _require(backend, "cpu")
    x, w, z, items, batch, invariant = _small_problem()
    with so2ops.use_backend(backend):
        args = _custom_op_args(monkeypatch, x, w, SMALL, z, items, batch, invariant)
        args = (args[0].clone().requires_grad_(True), args[1].clone().requires_grad_(True)) + tuple(args[2:])
        torch.library.opcheck(torch.ops.so2ops.assemble_blocks.default, args)


def test_custom_op_compiles_fullgraph_and_matches_eager(monkeypatch):
    """The custom op (fake kernels of forward and backward) under torch.compile(fullgraph=True).

    The public wrapper reads index data on the host (HamiltonianIndex, element lookup),
    so it runs eagerly in front of the compiled region; the aot_eager backend skips
    Inductor's codegen: cheap."""
    x, w, z, items, batch, invariant = _small_problem(F32)
    args = _custom_op_args(monkeypatch, x, w, SMALL, z, items, batch, invariant)
    rest = args[2:]
    f = lambda a, b: torch.ops.so2ops.assemble_blocks(a, b, *rest).square().sum()  # noqa: E731
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    with so2ops.use_backend("reference"):
        xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        eager, out = f(xe, w), compiled(xc, w)
        torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
        eager.backward()
        out.backward()
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ bad input: a clear error naming the argument
@pytest.fixture(params=["reference", "cpu", "triton"])
def backend(request):
    _require(request.param, "cpu")
    with so2ops.use_backend(request.param):
        yield request.param


@pytest.fixture
def problem():
    """def2-SVP: two molecules (3 and 2 atoms), every block."""
    layout = basis("def2-svp", (H_, C_, N_, O_))
    z = torch.tensor([O_, H_, H_, C_, N_])
    batch = torch.tensor([0, 0, 0, 1, 1])
    items = make_items(batch)
    lmax = layout.features_lmax
    x = torch.randn(items.shape[0], so2ops.num_coeffs(lmax), so2ops.block_channels(layout, lmax), dtype=F64)
    w = so2ops.reference.edge_wigner(torch.randn(items.shape[0], 3, dtype=F64), lmax)
    return x, w, layout, z, items, batch


def test_features_lmax_below_the_basis(backend, problem):
    x, w, layout, z, items, batch = problem
    with pytest.raises(ValueError, match=r"features have lmax=3 but the basis def2-svp needs lmax >= 4"):
        so2ops.assemble_blocks(x[:, :16], w, layout, z, items, batch)


def test_too_few_channels(backend, problem):
    x, w, layout, z, items, batch = problem
    need = x.shape[2]
    with pytest.raises(ValueError, match=rf"features have {need - 1} channels but the basis needs {need}"):
        so2ops.assemble_blocks(x[:, :, :-1], w, layout, z, items, batch)


def test_element_missing_from_the_layout(backend, problem):
    x, w, layout, z, items, batch = problem
    z = z.clone()
    z[2] = 9  # fluorine
    with pytest.raises(ValueError, match=r"atomic_numbers: element Z=9 is not in the basis layout"):
        so2ops.assemble_blocks(x, w, layout, z, items, batch)


def test_items_and_features_disagree(backend, problem):
    x, w, layout, z, items, batch = problem
    with pytest.raises(ValueError, match=rf"items has {items.shape[0] - 1} rows but features has {items.shape[0]}"):
        so2ops.assemble_blocks(x, w, layout, z, items[:-1], batch)


def test_wigner_rows_and_features_disagree(backend, problem):
    x, w, layout, z, items, batch = problem
    with pytest.raises(ValueError, match=rf"wigner must have shape \[{items.shape[0]}, \*\]"):
        so2ops.assemble_blocks(x, w[:-1], layout, z, items, batch)


@pytest.mark.parametrize("bad", [-1, 5, 100])
def test_atom_index_out_of_range(backend, problem, bad):
    x, w, layout, z, items, batch = problem
    items = items.clone()
    items[-1, 1] = bad
    with pytest.raises(IndexError, match=r"items has atom indices in \[.*\] but must lie in \[0, 5\)"):
        so2ops.assemble_blocks(x, w, layout, z, items, batch)


def test_pair_across_two_molecules(backend, problem):
    x, w, layout, z, items, batch = problem
    items = items.clone()
    items[-1] = torch.tensor([2, 3])  # atom 2 is in molecule 0, atom 3 in molecule 1
    with pytest.raises(ValueError, match=r"items pairs atoms of different molecules"):
        so2ops.assemble_blocks(x, w, layout, z, items, batch)


@pytest.mark.parametrize("dup", ["transposed", "repeated"])
def test_duplicated_block(backend, problem, dup):
    x, w, layout, z, items, batch = problem
    items = items.clone()
    pair = items[-2].clone()  # a pair item (i, j), i < j
    assert pair[0] != pair[1]
    items[-1] = pair.flip(0) if dup == "transposed" else pair
    with pytest.raises(ValueError, match=r"items lists a block twice"):
        so2ops.assemble_blocks(x, w, layout, z, items, batch)


def test_unsorted_batch(backend, problem):
    x, w, layout, z, items, batch = problem
    with pytest.raises(ValueError, match=r"batch must be non-negative and sorted"):
        so2ops.assemble_blocks(x, w, layout, z, items, torch.tensor([0, 0, 1, 1, 0]))


def test_nan_features(backend, problem):
    x, w, layout, z, items, batch = problem
    x = x.clone()
    x[4, 7, 2] = float("nan")
    with pytest.raises(ValueError, match=r"features has non-finite"):
        so2ops.assemble_blocks(x, w, layout, z, items, batch)
