"""Labels: equal to direct PySCF, rotation-equivariant, reproducible; basis layout."""
import numpy as np
import pytest

from qhnetv2.data import HamiltonianReader, ao_slices, basis_layout, build_dataset

from qh_helpers import WATER_POS, WATER_Z, random_rotation, wigner_D, write_xyz

SETTINGS = {"xc": "b3lyp", "basis": "def2-svp", "grid_level": 3}


def _pyscf_direct(z, pos):
    from pyscf import dft, gto
    mol = gto.M(atom=[(int(a), tuple(p)) for a, p in zip(z, pos)], basis="def2-svp",
                unit="Angstrom", verbose=0)
    mf = dft.RKS(mol)
    mf.xc = "b3lyp"
    mf.grids.level = 3
    mf.conv_tol = 1e-12
    e = mf.kernel()
    return mol, mf.get_fock(dm=mf.make_rdm1()), mf.get_ovlp(), e


@pytest.fixture(scope="module")
def water_pair(tmp_path_factory):
    """Dataset with water at R and at Q.R (B3LYP/def2-SVP/grid 3)."""
    tmp = tmp_path_factory.mktemp("labels")
    Q = random_rotation(7)
    path = write_xyz(tmp / "water.xyz", [(WATER_Z, WATER_POS), (WATER_Z, WATER_POS @ Q.T)])
    summary = build_dataset([path], str(tmp / "ds"), SETTINGS, workers=0, progress=False)
    assert summary["n_ok"] == 2 and summary["n_failed"] == 0
    return HamiltonianReader(str(tmp / "ds")), Q, path, tmp


def test_labels_equal_direct_pyscf(water_pair):
    reader, _, _, _ = water_pair
    rec = reader["water:00000000"]
    mol, fock, ovlp, energy = _pyscf_direct(WATER_Z, WATER_POS)
    assert rec["hamiltonian"].shape == (mol.nao, mol.nao) == (24, 24)
    assert rec["hamiltonian"].dtype == np.float64
    np.testing.assert_allclose(rec["overlap"], ovlp, atol=1e-12)
    np.testing.assert_allclose(rec["hamiltonian"], fock, atol=1e-7)
    assert abs(rec["energy"] - energy) < 1e-9
    np.testing.assert_array_equal(rec["atomic_numbers"], WATER_Z)
    np.testing.assert_allclose(rec["positions"], WATER_POS, atol=1e-12)
    # stored orbital energies solve H C = S C e of the stored matrices
    import scipy.linalg
    np.testing.assert_allclose(rec["mo_energy"],
                               scipy.linalg.eigh(rec["hamiltonian"], rec["overlap"])[0],
                               atol=1e-10)
    assert rec["converged"] and rec["n_cycles"] > 1
    assert rec["settings"]["xc"] == "b3lyp" and rec["settings"]["basis"] == "def2-svp"
    assert reader.meta["settings"]["grid_level"] == 3


def test_labels_rotation_equivariant(water_pair):
    reader, Q, _, _ = water_pair
    from qhnetv2.data.labelling import build_mol
    r0, r1 = reader["water:00000000"], reader["water:00000001"]
    D = wigner_D(build_mol(WATER_Z, WATER_POS, "def2-svp"), Q)
    # the overlap involves no grid: exact
    np.testing.assert_allclose(D @ r0["overlap"] @ D.T, r1["overlap"], atol=1e-10)
    # the Fock matrix: equal up to the (non-rotating) DFT grid noise
    err = np.abs(D @ r0["hamiltonian"] @ D.T - r1["hamiltonian"]).max()
    assert err < 2e-4, err
    # and the grid noise is far below the size of what rotation changes
    assert np.abs(r0["hamiltonian"] - r1["hamiltonian"]).max() > 100 * err
    assert abs(r0["energy"] - r1["energy"]) < 1e-5


def test_labels_reproducible(water_pair):
    reader, _, path, tmp = water_pair
    build_dataset([path], str(tmp / "again"), SETTINGS, workers=1, progress=False)
    again = HamiltonianReader(str(tmp / "again"))
    assert again.ids == reader.ids
    for mol_id in reader.ids:
        a, b = reader[mol_id], again[mol_id]
        assert abs(a["energy"] - b["energy"]) < 1e-10
        np.testing.assert_allclose(a["hamiltonian"], b["hamiltonian"], atol=1e-8)


def test_basis_layout_matches_pyscf():
    from pyscf import gto
    layout = basis_layout("def2-svp", [8, 1, 1, 8])
    assert sorted(layout) == [1, 8]
    assert layout[1] == [(0, 1), (0, 1), (1, 3)]
    assert layout[8] == [(0, 1)] * 3 + [(1, 3)] * 2 + [(2, 5)]
    mol = gto.M(atom="O 0 0 0; H 0 0.8 0.6; H 0 -0.8 0.6; O 0 0 3", basis="def2-svp",
                verbose=0, spin=0)
    np.testing.assert_array_equal(ao_slices("def2-svp", [8, 1, 1, 8]),
                                  mol.aoslice_by_atom()[:, 2:])
    # l per AO agrees with PySCF's own AO labels (p functions are px, py, pz)
    from qhnetv2.data.basis import ao_angular_momenta
    labels = mol.ao_labels(fmt=False)
    letters = np.array(["spdfg".index(lab[2][1]) for lab in labels])
    np.testing.assert_array_equal(ao_angular_momenta("def2-svp", [8, 1, 1, 8]), letters)
    assert [lab[3] for lab in labels if lab[2] == "2p"][:3] == ["x", "y", "z"]


def test_basis_layout_errors():
    with pytest.raises(ValueError, match="basis_name"):
        basis_layout("", [1])
    with pytest.raises(ValueError, match="U"):
        basis_layout("def2-svp", [92])
