"""QH9 metrics against a slow, obviously-correct reference; invariances."""
import numpy as np
import pytest
import scipy.linalg

from qhnetv2.data import ao_slices
from qhnetv2.metrics import hamiltonian_metrics, to_micro_hartree

from qh_helpers import WATER_POS, WATER_Z, random_rotation, wigner_D


def _mol(z, pos, basis="def2-svp"):
    from qhnetv2.data.labelling import build_mol
    return build_mol(z, pos, basis)


def _core_h_and_s(mol):
    """A physical (not SCF) Hamiltonian and the overlap, no SCF needed."""
    return mol.intor("int1e_kin") + mol.intor("int1e_nuc"), mol.intor("int1e_ovlp")


def _perturb(h, scale, rng):
    e = rng.normal(scale=scale, size=h.shape)
    return h + 0.5 * (e + e.T)


def reference_metrics(hp, ht, s, n_occ, slices):
    """Straightforward loops; generalized eigenproblem by scipy."""
    n_atoms = len(slices)
    diag, off = [], []
    for i in range(n_atoms):
        for j in range(n_atoms):
            block = np.abs(hp[slices[i][0]:slices[i][1], slices[j][0]:slices[j][1]]
                           - ht[slices[i][0]:slices[i][1], slices[j][0]:slices[j][1]])
            (diag if i == j else off).extend(block.ravel().tolist())
    ep, cp = scipy.linalg.eigh(hp, s)
    et, ct = scipy.linalg.eigh(ht, s)
    cos = [abs(cp[:, k] @ ct[:, k]) / (np.linalg.norm(cp[:, k]) * np.linalg.norm(ct[:, k]))
           for k in range(n_occ)]
    return {"hamiltonian_mae": np.abs(hp - ht).mean(),
            "hamiltonian_diagonal_mae": np.mean(diag),
            "hamiltonian_off_diagonal_mae": np.mean(off),
            "orbital_energy_mae": np.abs(ep[:n_occ] - et[:n_occ]).mean(),
            "orbital_coefficient_similarity": np.mean(cos)}


@pytest.fixture(scope="module")
def systems():
    rng = np.random.default_rng(0)
    out = []
    for z, pos in [(WATER_Z, WATER_POS), (np.array([1, 1]), np.array([[0, 0, 0], [0.1, 0.2, 0.7]])),
                   (WATER_Z, WATER_POS * 1.05)]:
        mol = _mol(z, pos)
        h, s = _core_h_and_s(mol)
        out.append((z, pos, mol, h, s, mol.nelectron // 2, ao_slices("def2-svp", z)))
    return out, rng


def test_zero_for_exact_prediction(systems):
    items, _ = systems
    z, pos, mol, h, s, n_occ, sl = items[0]
    m = hamiltonian_metrics(h, h, s, n_occ, ao_slices=sl)
    for key in ("hamiltonian_mae", "hamiltonian_diagonal_mae", "hamiltonian_off_diagonal_mae",
                "orbital_energy_mae"):
        assert m[key] == 0.0
    assert m["orbital_coefficient_similarity"] == pytest.approx(1.0, abs=1e-12)


def test_matches_reference_on_random_perturbations(systems):
    items, rng = systems
    hp_list, ht_list, s_list, occ, slices, refs = [], [], [], [], [], []
    for scale in (1e-4, 1e-3, 3e-2):
        for z, pos, mol, h, s, n_occ, sl in items:
            hp = _perturb(h, scale, rng)
            hp_list.append(hp); ht_list.append(h); s_list.append(s)
            occ.append(n_occ); slices.append(sl)
            refs.append(reference_metrics(hp, h, s, n_occ, sl))
            single = hamiltonian_metrics(hp, h, s, n_occ, ao_slices=sl)
            for key, value in refs[-1].items():
                assert single[key] == pytest.approx(value, rel=1e-8, abs=1e-13), key
    # batched over molecules of different sizes: per-molecule values and their mean
    batch = hamiltonian_metrics(hp_list, ht_list, s_list, occ, ao_slices=slices)
    assert batch["n_molecules"] == len(refs)
    for key in refs[0]:
        ref = np.array([r[key] for r in refs])
        np.testing.assert_allclose(batch["per_molecule"][key], ref, rtol=1e-8, atol=1e-13)
        assert batch[key] == pytest.approx(ref.mean(), rel=1e-8)
    # a [batch, n, n] array (equal sizes), and torch tensors, give the same numbers
    import torch
    idx = [0, 2]
    stacked = hamiltonian_metrics(torch.tensor(np.stack([hp_list[i] for i in idx])),
                                  np.stack([ht_list[i] for i in idx]),
                                  np.stack([s_list[i] for i in idx]), occ[0], ao_slices=slices[0])
    np.testing.assert_allclose(stacked["per_molecule"]["orbital_energy_mae"],
                               [refs[i]["orbital_energy_mae"] for i in idx], rtol=1e-8)
    assert to_micro_hartree(batch)["hamiltonian_mae_uEh"] == pytest.approx(
        batch["hamiltonian_mae"] * 1e6)


def test_invariant_under_global_rotation(systems):
    items, rng = systems
    z, pos, mol, h, s, n_occ, sl = items[0]
    hp = _perturb(h, 1e-2, rng)
    base = hamiltonian_metrics(hp, h, s, n_occ, ao_slices=sl)
    # any rotation: the orbital metrics are invariant
    D = wigner_D(mol, random_rotation(11))
    rot = hamiltonian_metrics(D @ hp @ D.T, D @ h @ D.T, D @ s @ D.T, n_occ, ao_slices=sl)
    for key in ("orbital_energy_mae", "orbital_coefficient_similarity"):
        assert rot[key] == pytest.approx(base[key], rel=1e-7, abs=1e-12), key
    # the entry-wise MAEs change under a generic rotation ...
    assert abs(rot["hamiltonian_mae"] - base["hamiltonian_mae"]) > 1e-6 * base["hamiltonian_mae"]
    # ... but not under a 90-degree turn (a signed permutation of the AOs): all invariant
    quarter = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    D = wigner_D(mol, quarter)
    assert np.allclose(np.abs(D).sum(1), 1.0)  # a signed permutation indeed
    rot = hamiltonian_metrics(D @ hp @ D.T, D @ h @ D.T, D @ s @ D.T, n_occ, ao_slices=sl)
    for key in ("hamiltonian_mae", "hamiltonian_diagonal_mae", "hamiltonian_off_diagonal_mae",
                "orbital_energy_mae", "orbital_coefficient_similarity"):
        assert rot[key] == pytest.approx(base[key], rel=1e-9), key


def test_bad_input_is_named():
    h = np.eye(4)
    with pytest.raises(ValueError, match="H_pred"):
        hamiltonian_metrics(np.zeros((4, 3)), h, h, 1)
    with pytest.raises(ValueError, match="n_occ"):
        hamiltonian_metrics(h, h, h, 5)
    with pytest.raises(ValueError, match="same number"):
        hamiltonian_metrics([h, h], [h], [h], 1)
    # without ao_slices the block MAEs are undefined (NaN), the rest is computed
    m = hamiltonian_metrics(h, h, h, 1)
    assert np.isnan(m["hamiltonian_diagonal_mae"]) and m["hamiltonian_mae"] == 0.0
