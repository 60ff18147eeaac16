"""SCF from a Hamiltonian: exact H converges at once to the same energy; noisy H
converges to the same energy."""
import numpy as np
import pytest

from qhnetv2.data.labelling import build_mol, label_molecule, make_mf, make_settings
from qhnetv2.scf import init_guess, run_scf, scf_from_hamiltonian

from qh_helpers import WATER_POS, WATER_Z

SETTINGS = make_settings()  # B3LYP / def2-SVP / grid 3 / conv_tol 1e-12


@pytest.fixture(scope="module")
def water_label():
    return label_molecule(WATER_Z, WATER_POS, SETTINGS)


def test_exact_hamiltonian_converges_immediately(water_label):
    res = scf_from_hamiltonian(WATER_Z, WATER_POS, water_label["hamiltonian"])
    assert res.converged
    assert res.cycles <= 3
    assert abs(res.energy - water_label["energy"]) < 1e-8
    minao = run_scf(WATER_Z, WATER_POS, "minao", SETTINGS)
    assert minao.cycles > res.cycles
    assert abs(minao.energy - water_label["energy"]) < 1e-8


def test_noisy_hamiltonian_same_energy(water_label):
    rng = np.random.default_rng(1)
    e = rng.normal(scale=2e-3, size=water_label["hamiltonian"].shape)
    noisy = water_label["hamiltonian"] + 0.5 * (e + e.T)
    res = scf_from_hamiltonian(WATER_Z, WATER_POS, noisy)
    assert res.converged
    assert abs(res.energy - water_label["energy"]) < 1e-8
    assert res.cycles > 1  # the noise is real: it needs iterations


def test_init_guess_for_pyscf_users(water_label):
    mol = build_mol(WATER_Z, WATER_POS, "def2-svp")
    mf = make_mf(mol, SETTINGS)
    dm0 = init_guess(mf, water_label["hamiltonian"])
    s = mf.get_ovlp()
    assert dm0.shape == (mol.nao, mol.nao)
    assert np.trace(dm0 @ s) == pytest.approx(mol.nelectron, abs=1e-10)
    np.testing.assert_allclose(dm0 @ s @ dm0, 2 * dm0, atol=1e-10)  # idempotent
    with pytest.raises(ValueError, match="H"):
        init_guess(mf, np.zeros((3, 3)))
