"""QHNetV2: exact symmetries of the predicted H, backends, gradients, bad input.

The symmetry references are PySCF's own: the AO rotation D(Q) is built from
``pyscf.symm.Dmatrix`` in PySCF's AO order and checked against rotated AO values
(``mol.eval_gto``), so "equivariant" means "rotates exactly like PySCF's matrices".
Tiny models keep this file fast (lmax 4 for def2-SVP, 6 for def2-TZVP with f shells).
"""
import numpy as np
import pytest
import scipy.linalg
import torch

import so2ops
from qhnetv2.model import ModelConfig, QHNetV2

from qh_helpers import WATER_POS, WATER_Z, random_rotation

TINY = dict(elements=[1, 6, 8], channels=8, layers=1, mmax=2, num_rbf=8, body_order=2)

# formaldehyde-like CH2O, no symmetry (every AO component matters)
CHO_Z = np.array([6, 8, 1, 1])
CHO_POS = np.array([[0.0, 0.0, 0.0], [0.1, 1.2, 0.05], [0.9, -0.5, 0.1], [-0.8, -0.6, -0.3]])
# diatomics along the axes: +y is the singular axis of e3nn's frame convention
Y_BOND = (np.array([6, 8]), np.array([[0.0, -0.4, 0.0], [0.0, 0.8, 0.0]]))
X_BOND = (np.array([8, 1]), np.array([[0.3, 0.0, 0.0], [1.27, 0.0, 0.0]]))  # -> along -y under QUARTER
Z_BOND = (np.array([6, 1]), np.array([[0.0, 0.0, 0.2], [0.0, 0.0, -0.9]]))
ATOM = (np.array([8]), np.array([[0.4, -0.3, 1.1]]))
MOLECULES = [(CHO_Z, CHO_POS), Y_BOND, X_BOND, Z_BOND, ATOM]
# (x, y, z) -> (y, -x, z): maps +x onto -y and +y onto +x, keeps z
QUARTER = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


# ------------------------------------------------------------------ references
def pyscf_mol(z, pos, basis):
    from pyscf import gto
    nelec = int(np.sum(z))
    return gto.M(atom=[(int(a), tuple(p)) for a, p in zip(z, pos)], basis=basis, unit="Angstrom",
                 spin=nelec % 2, cart=False, verbose=0)


def ao_rotation(mol, Q):
    """D[n_ao, n_ao] (PySCF AO order, p as px py pz) with M(Q r) = D M(r) D^T."""
    from pyscf.symm import Dmatrix
    alpha, beta, gamma = Dmatrix.get_euler_angles(Q, np.eye(3))
    blocks = []
    for b in range(mol.nbas):
        d = Dmatrix.Dmatrix(mol.bas_angular(b), alpha, beta, gamma, reorder_p=True)
        blocks.extend([d] * mol.bas_nctr(b))
    return scipy.linalg.block_diag(*blocks)


def ao_permutation(model, z, perm):
    """AO indices of the molecule with atoms reordered as ``z[perm]``."""
    counts = [model.layout.n_ao(int(a)) for a in z]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.concatenate([np.arange(starts[i], starts[i] + counts[i]) for i in perm])


def make_model(basis, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    model = QHNetV2(basis=basis, **TINY).to(dtype)
    with torch.no_grad():  # a non-zero atomic reference exercises the invariant path too
        model.atom_reference.normal_()
    return model


@pytest.fixture(scope="module")
def svp():
    return make_model("def2-svp")


@pytest.fixture(scope="module")
def tzvp():
    return make_model("def2-tzvp")


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


# ------------------------------------------------------------------ the reference itself
def test_ao_rotation_matches_rotated_pyscf_orbitals():
    """D(Q) from Dmatrix is exactly how PySCF's AOs (incl. f) move under a rotation."""
    z, pos = CHO_Z, CHO_POS
    rng = np.random.default_rng(0)
    pts = pos[rng.integers(0, len(z), 64)] + rng.normal(scale=0.7, size=(64, 3))
    for Q in (random_rotation(5), QUARTER):
        mol, mol_q = pyscf_mol(z, pos, "def2-tzvp"), pyscf_mol(z, pos @ Q.T, "def2-tzvp")
        assert max(mol.bas_angular(b) for b in range(mol.nbas)) == 3
        D = ao_rotation(mol, Q)
        # phi'_mu(Q r) = sum_nu D[mu, nu] phi_nu(r)
        np.testing.assert_allclose(mol_q.eval_gto("GTOval_sph", pts @ Q.T), mol.eval_gto("GTOval_sph", pts) @ D.T,
                                   atol=1e-12)
        np.testing.assert_allclose(D @ mol.intor("int1e_ovlp") @ D.T, mol_q.intor("int1e_ovlp"), atol=1e-12)


# ------------------------------------------------------------------ rotation equivariance
@pytest.mark.parametrize("basis", ["def2-svp", "def2-tzvp"])
def test_rotation_equivariance(basis, svp, tzvp):
    """H(Q R) = D(Q) H(R) D(Q)^T for a generic molecule, bonds along +y, -y and z, a single atom."""
    model64 = svp if basis == "def2-svp" else tzvp
    model32 = make_model(basis, torch.float32)
    zs = [z for z, _ in MOLECULES]
    for model, tol in ((model64, 1e-10), (model32, 1e-5)):
        h0 = model.predict_many(zs, [p for _, p in MOLECULES])
        for Q in (random_rotation(7), QUARTER):
            h1 = model.predict_many(zs, [p @ Q.T for _, p in MOLECULES])
            for (z, pos), a, b in zip(MOLECULES, h0, h1):
                D = ao_rotation(pyscf_mol(z, pos, basis), Q)
                err = rel_err(D @ a @ D.T, b)
                assert err < tol, (basis, model.embedding.weight.dtype, z.tolist(), err)
                assert np.abs(a - a.T).max() <= tol * np.abs(a).max()
        # rotation changes H by far more than the tolerance (the test can fail)
        assert rel_err(h0[0], h1[0]) > 1e-2
    # the single atom is a rotation-covariant but non-trivial block (not just a constant)
    assert np.abs(h0[-1]).max() > 0


def test_translation_permutation_symmetry(svp):
    z, pos = CHO_Z, CHO_POS
    h = svp.predict(z, pos)
    np.testing.assert_array_equal(h, h.T)
    assert rel_err(svp.predict(z, pos + np.array([3.1, -2.2, 0.7])), h) < 1e-10
    perm = np.array([2, 0, 3, 1])
    idx = ao_permutation(svp, z, perm)
    assert rel_err(svp.predict(z[perm], pos[perm]), h[np.ix_(idx, idx)]) < 1e-10


def test_batch_equals_single(svp):
    single = [svp.predict(z, p) for z, p in MOLECULES[:3]]
    batched = svp.predict_many([z for z, _ in MOLECULES[:3]], [p for _, p in MOLECULES[:3]])
    for a, b in zip(single, batched):
        assert rel_err(b, a) < 1e-12


# ------------------------------------------------------------------ backends
MODEL_OPS = ("edge_wigner", "rotate", "so2_linear", "so2_message", "so2_grid_product", "assemble_blocks")


def _value_and_grads(model, backend, weight):
    model.zero_grad()
    pos = torch.tensor(WATER_POS, requires_grad=True)
    with so2ops.use_backend(backend):
        h = model(torch.tensor(WATER_Z), pos)
        (h * weight).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return h.detach(), grads, pos.grad.detach().clone()


@pytest.fixture(scope="module")
def reference_result(svp):
    weight = torch.randn(24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return weight, _value_and_grads(svp, "reference", weight)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_backends_agree(backend, svp, reference_result):
    lacking = [op for op in MODEL_OPS if backend not in so2ops.dispatch.implementations(op)]
    if lacking:
        pytest.skip(f"backend {backend!r} does not implement {lacking} yet")
    if not so2ops.dispatch.runnable(backend, torch.device("cpu")):
        pytest.skip(f"backend {backend!r} cannot run on this machine's CPU")
    weight, (h_ref, g_ref, gpos_ref) = reference_result
    h, g, gpos = _value_and_grads(svp, backend, weight)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gpos, gpos_ref, rtol=1e-9, atol=1e-11)
    assert g.keys() == g_ref.keys() and len(g) > 10
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-9, atol=1e-11, msg=lambda m: f"{name}: {m}")


def test_position_gradient_finite_difference(svp):
    z = torch.tensor(WATER_Z)
    weight = torch.randn(24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def loss(p):
        return (svp(z, p) * weight).sum()

    pos = torch.tensor(WATER_POS, requires_grad=True)
    grad = torch.autograd.grad(loss(pos), pos)[0]
    assert torch.isfinite(grad).all()
    eps = 1e-5
    with torch.no_grad():
        for atom, axis in ((1, 1), (0, 2)):
            dp = torch.zeros_like(pos)
            dp[atom, axis] = eps
            fd = (loss(pos + dp) - loss(pos - dp)) / (2 * eps)
            assert abs(float(fd) - float(grad[atom, axis])) < 1e-6 * max(1.0, abs(float(fd))), (atom, axis)


# ------------------------------------------------------------------ inputs
def test_bad_inputs_are_clear_errors(svp):
    z, pos = torch.tensor(WATER_Z), torch.tensor(WATER_POS)
    with pytest.raises(ValueError, match=r"element.*\[7\].*not in this model"):
        svp(torch.tensor([8, 1, 7]), pos)
    with pytest.raises(ValueError, match="0.3"):
        svp(z, torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.1, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64))
    bad = pos.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        svp(z, bad)
    with pytest.raises(ValueError, match=r"unknown model config key.*chanels"):
        ModelConfig.from_dict({"chanels": 8})
    with pytest.raises(ValueError, match="chanels"):
        QHNetV2(basis="def2-svp", elements=[1, 8], chanels=8)


def test_single_atom_and_isolated_atom_are_fine(svp):
    h = svp.predict([8], [[0.0, 0.0, 0.0]])
    assert h.shape == (14, 14) and np.isfinite(h).all()
    # an oxygen 20 Angstrom away: no neighbour within the 5 Angstrom cutoff
    z = np.array([8, 1, 1, 8])
    pos = np.vstack([WATER_POS, [[20.0, 0.0, 0.0]]])
    h = svp.predict(z, pos)
    assert h.shape == (38, 38) and np.isfinite(h).all()
    Q = random_rotation(3)
    D = ao_rotation(pyscf_mol(z, pos, "def2-svp"), Q)
    assert rel_err(D @ h @ D.T, svp.predict(z, pos @ Q.T)) < 1e-10


def test_checkpoint_roundtrip_and_corruption(svp, tmp_path):
    path = str(tmp_path / "m.pt")
    svp.save(path, extra={"target": "full"})
    loaded = QHNetV2.load(path)
    assert loaded.config == svp.config
    ref = svp.state_dict()
    for name, value in loaded.state_dict().items():  # loaded in the default dtype
        torch.testing.assert_close(value, ref[name].to(value.dtype), rtol=0, atol=0)
    assert rel_err(loaded.predict(WATER_Z, WATER_POS), svp.predict(WATER_Z, WATER_POS)) < 1e-5
    data = open(path, "rb").read()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all" * 10)
    for name in ("trunc.pt", "junk.pt"):
        with pytest.raises(ValueError, match="corrupt or truncated"):
            QHNetV2.load(str(tmp_path / name))
    torch.save({"weights": 1}, str(tmp_path / "foreign.pt"))
    with pytest.raises(ValueError, match="not a qhnetv2 checkpoint"):
        QHNetV2.load(str(tmp_path / "foreign.pt"))
    with pytest.raises(FileNotFoundError):
        QHNetV2.load(str(tmp_path / "missing.pt"))
