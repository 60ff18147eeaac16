"""Spectrum metrics (LUMO, gap, virtual orbitals, worst orbital) and density metrics
(energy and dipole of the predicted density) against independent PySCF / SciPy
computations on real converged SCFs of small molecules.

The references here never call :mod:`qhnetv2.metrics`: the orbitals come from
``scipy.linalg.eigh(H, S)``, densities from PySCF's ``mf.eig`` / ``mf.get_occ`` /
``mf.make_rdm1``, energies from ``mf.energy_tot`` and dipoles from
``mf.dip_moment`` of mean-field objects built here by hand.
"""
import numpy as np
import pytest
import scipy.linalg

pytest.importorskip("pyscf")

from qhnetv2.metrics import (DENSITY_KEYS, HARTREE_TO_EV, METRIC_KEYS, SPECTRUM_KEYS, density_metrics,  # noqa: E402
                             hamiltonian_metrics, summarize, to_micro_hartree)

from qh_helpers import WATER_POS, WATER_Z  # noqa: E402

H2_Z, H2_POS = np.array([1, 1]), np.array([[0.0, 0.0, 0.0], [0.05, 0.02, 0.74]])
OH_Z, OH_POS = np.array([8, 1]), np.array([[0.0, 0.0, 0.0], [0.1, 0.05, 0.96]])


def _scf(z, pos, basis, xc="hf", charge=0, grid_level=1):
    """Converged RHF/RKS built directly with PySCF: (mf, label H = F[D_scf], S)."""
    from pyscf import dft, gto, scf
    mol = gto.M(atom=[(int(a), tuple(p)) for a, p in zip(z, pos)], basis=basis, unit="Angstrom",
                charge=charge, spin=0, verbose=0)
    if xc == "hf":
        mf = scf.RHF(mol)
    else:
        mf = dft.RKS(mol)
        mf.xc = xc
        mf.grids.level = grid_level
    mf.conv_tol = 1e-12
    mf.kernel()
    assert mf.converged
    dm = mf.make_rdm1()
    return mf, np.asarray(mf.get_fock(dm=dm)), np.asarray(mf.get_ovlp())


def _sym(rng, n, scale):
    e = rng.normal(scale=scale, size=(n, n))
    return 0.5 * (e + e.T)


@pytest.fixture(scope="module")
def water_svp():
    return _scf(WATER_Z, WATER_POS, "def2-svp")


@pytest.fixture(scope="module")
def water_sto():
    return _scf(WATER_Z, WATER_POS, "sto-3g")


def _ref_spectrum(hp, ht, s, n_occ):
    """Plain SciPy: all four spectrum errors of one molecule (Hartree)."""
    ep = scipy.linalg.eigh(hp, s, eigvals_only=True)
    et = scipy.linalg.eigh(ht, s, eigvals_only=True)
    n_virt = min(10, len(et) - n_occ)
    return {"lumo_error": abs(ep[n_occ] - et[n_occ]),
            "gap_error": abs((ep[n_occ] - ep[n_occ - 1]) - (et[n_occ] - et[n_occ - 1])),
            "virtual_orbital_energy_mae": np.mean([abs(ep[n_occ + k] - et[n_occ + k]) for k in range(n_virt)]),
            "max_orbital_energy_error": max(abs(a - b) for a, b in zip(ep, et))}


# ------------------------------------------------------------------ spectrum (cheap) metrics
def test_label_spectrum_is_the_scf_spectrum(water_svp):
    """The reference side: eigenvalues of the stored (H, S) are PySCF's mo_energy."""
    mf, h, s = water_svp
    np.testing.assert_allclose(scipy.linalg.eigh(h, s, eigvals_only=True), mf.mo_energy, atol=1e-7)


def test_random_perturbations_match_scipy(water_svp):
    mf, h, s = water_svp
    n_occ = mf.mol.nelectron // 2
    rng = np.random.default_rng(3)
    for scale in (1e-4, 1e-2, 1e-1):  # the largest reorders orbitals
        hp = h + _sym(rng, h.shape[0], scale)
        m = hamiltonian_metrics(hp, h, s, n_occ)
        for key, value in _ref_spectrum(hp, h, s, n_occ).items():
            assert m[key] == pytest.approx(value, rel=1e-7, abs=1e-12), (scale, key)


def test_spurious_low_virtual_is_seen_only_by_the_spectrum_metrics(water_svp):
    """Lower the LUMO alone by a (H' = H + a S c c^T S, c the S-normalised LUMO):
    an exact eigenpair shift.  The QH9 occupied metrics and the density metrics
    cannot see it; LUMO, gap, virtual MAE (a/10: one of the lowest 10) and worst
    orbital all read |a|."""
    mf, h, s = water_svp
    n_occ = mf.mol.nelectron // 2
    eps, c = scipy.linalg.eigh(h, s)
    a = -0.5 * (eps[n_occ] - eps[n_occ - 1])  # half the gap: the order is kept
    lumo = s @ c[:, n_occ]
    hp = h + a * np.outer(lumo, lumo)
    m = hamiltonian_metrics(hp, h, s, n_occ)
    assert m["orbital_energy_mae"] < 1e-12 and m["orbital_coefficient_similarity"] == pytest.approx(1, abs=1e-10)
    assert m["lumo_error"] == pytest.approx(abs(a), rel=1e-9)
    assert m["gap_error"] == pytest.approx(abs(a), rel=1e-9)
    assert m["virtual_orbital_energy_mae"] == pytest.approx(abs(a) / 10, rel=1e-8)
    assert m["max_orbital_energy_error"] == pytest.approx(abs(a), rel=1e-9)
    d = density_metrics(hp, h, [WATER_Z], [WATER_POS], {"xc": "hf", "basis": "def2-svp"})
    assert abs(d["energy_error"]) < 1e-10 and d["dipole_error"] < 1e-8  # same occupied space
    # raising the HOMO by as much instead: the gap, not the LUMO
    homo = s @ c[:, n_occ - 1]
    m = hamiltonian_metrics(h - a * np.outer(homo, homo), h, s, n_occ)
    assert m["lumo_error"] < 1e-12 and m["virtual_orbital_energy_mae"] < 1e-12
    assert m["gap_error"] == pytest.approx(abs(a), rel=1e-9)
    assert m["orbital_energy_mae"] == pytest.approx(abs(a) / n_occ, rel=1e-8)


def test_only_the_lowest_ten_virtuals_count(water_svp):
    mf, h, s = water_svp
    n_occ = mf.mol.nelectron // 2
    assert h.shape[0] - n_occ > 11  # def2-SVP water: 19 virtuals
    eps, c = scipy.linalg.eigh(h, s)
    k = n_occ + 10  # the 11th virtual orbital
    a = 0.25 * (eps[k + 1] - eps[k])
    v = s @ c[:, k]
    m = hamiltonian_metrics(h + a * np.outer(v, v), h, s, n_occ)
    assert m["virtual_orbital_energy_mae"] < 1e-12 and m["lumo_error"] < 1e-12
    assert m["max_orbital_energy_error"] == pytest.approx(a, rel=1e-8)  # but the worst orbital sees it
    m = hamiltonian_metrics(h + a * np.outer(v, v), h, s, n_occ, n_virtual=11)
    assert m["virtual_orbital_energy_mae"] == pytest.approx(a / 11, rel=1e-7)


def test_uniform_shift_and_sign_conventions(water_svp):
    """H + c S shifts every orbital by c: errors are |c| whatever the sign; the gap is unchanged."""
    mf, h, s = water_svp
    n_occ = mf.mol.nelectron // 2
    for c in (-0.01, 0.02):
        m = hamiltonian_metrics(h + c * s, h, s, n_occ)
        for key in ("lumo_error", "virtual_orbital_energy_mae", "max_orbital_energy_error", "orbital_energy_mae"):
            assert m[key] == pytest.approx(abs(c), rel=1e-8), key
        assert m["gap_error"] < 1e-12
    # the density of H + c S is that of H: no energy or dipole error
    d = density_metrics(h - 0.01 * s, h, [WATER_Z], [WATER_POS], {"xc": "hf", "basis": "def2-svp"})
    assert abs(d["energy_error"]) < 1e-10 and d["dipole_error"] < 1e-8


def test_few_or_no_virtuals_and_batches(water_svp, water_sto):
    """STO-3G water has 2 virtuals, H2 1, and n_occ == n_ao none (NaN, left out of the means)."""
    rng = np.random.default_rng(5)
    mf_h2, h_h2, s_h2 = _scf(H2_Z, H2_POS, "sto-3g")
    items = [(water_svp[1], water_svp[2], 5), (water_sto[1], water_sto[2], 5), (h_h2, s_h2, 1),
             (water_sto[1], water_sto[2], 7)]  # the last: every orbital "occupied"
    hps = [h + _sym(rng, h.shape[0], 2e-2) for h, _, _ in items]
    m = hamiltonian_metrics(hps, [h for h, _, _ in items], [s for _, s, _ in items], [k for _, _, k in items])
    for i, ((h, s, k), hp) in enumerate(zip(items[:3], hps)):
        ref = _ref_spectrum(hp, h, s, k)
        for key in SPECTRUM_KEYS:
            assert m["per_molecule"][key][i] == pytest.approx(ref[key], rel=1e-7, abs=1e-12), (i, key)
    ep = scipy.linalg.eigh(hps[1], items[1][1], eigvals_only=True)
    et = scipy.linalg.eigh(items[1][0], items[1][1], eigvals_only=True)
    assert m["per_molecule"]["virtual_orbital_energy_mae"][1] == pytest.approx(np.abs(ep[5:] - et[5:]).mean())
    per = m["per_molecule"]
    for key in ("lumo_error", "gap_error", "virtual_orbital_energy_mae"):
        assert np.isnan(per[key][3])
        assert m[key] == pytest.approx(np.mean(per[key][:3]), rel=1e-12)  # NaN skipped
    ep3 = scipy.linalg.eigh(hps[3], items[3][1], eigvals_only=True)
    assert per["max_orbital_energy_error"][3] == pytest.approx(np.abs(ep3 - et).max(), rel=1e-7)
    assert m["gap_error_max"] == pytest.approx(np.max(per["gap_error"][:3]), rel=1e-12)
    assert m["max_orbital_energy_error_max"] == pytest.approx(per["max_orbital_energy_error"].max(), rel=1e-12)
    assert set(METRIC_KEYS) <= set(m) and set(per) == set(METRIC_KEYS)
    assert np.isnan(summarize({"gap_error": [np.nan]})["gap_error_max"])


def test_exact_prediction_gives_zero(water_svp):
    mf, h, s = water_svp
    m = hamiltonian_metrics(h, h, s, 5)
    for key in SPECTRUM_KEYS + ("gap_error_max", "max_orbital_energy_error_max"):
        assert m[key] == 0.0, key
    d = density_metrics(h, h, [WATER_Z], [WATER_POS], {"xc": "hf", "basis": "def2-svp"})
    # two evaluations of the same density agree to rounding (PySCF's J/K summation order may differ
    # between calls with threads), not necessarily bit for bit
    assert abs(d["energy_error"]) < 1e-10 and d["energy_abs_error"] < 1e-10 and d["dipole_error"] < 1e-8


def test_report_units():
    raw = {"hamiltonian_mae": 1e-4, "virtual_orbital_energy_mae": 2e-3, "lumo_error": 0.1, "gap_error": 0.2,
           "gap_error_max": 0.5, "max_orbital_energy_error": 0.3, "max_orbital_energy_error_max": 0.6,
           "energy_error": -1e-3, "energy_abs_error": 2e-3, "dipole_error": 0.7,
           "orbital_coefficient_similarity": 0.9, "n_molecules": 3}
    from pyscf.data import nist
    out = to_micro_hartree(raw)
    assert HARTREE_TO_EV == pytest.approx(nist.HARTREE2EV, rel=1e-8)
    assert out == pytest.approx({
        "hamiltonian_mae_uEh": 100.0, "virtual_orbital_energy_mae_uEh": 2000.0,
        "lumo_error_eV": 0.1 * HARTREE_TO_EV, "gap_error_eV": 0.2 * HARTREE_TO_EV,
        "gap_error_max_eV": 0.5 * HARTREE_TO_EV, "max_orbital_energy_error_eV": 0.3 * HARTREE_TO_EV,
        "max_orbital_energy_error_max_eV": 0.6 * HARTREE_TO_EV, "energy_error_uEh": -1000.0,
        "energy_abs_error_uEh": 2000.0, "dipole_error_D": 0.7, "orbital_coefficient_similarity_percent": 90.0})


# ------------------------------------------------------------------ density metrics
def _pyscf_energy_dipole(mf, h):
    """By hand: aufbau density of h with PySCF's own eig / get_occ / make_rdm1."""
    e, c = mf.eig(0.5 * (h + h.T), mf.get_ovlp())
    dm = mf.make_rdm1(c, mf.get_occ(e, c))
    return mf.energy_tot(dm=dm), np.asarray(mf.dip_moment(dm=dm, unit="Debye", verbose=0))


@pytest.mark.parametrize("case", [
    dict(z=WATER_Z, pos=WATER_POS, basis="def2-svp", xc="hf", charge=0, scale=1e-2),
    dict(z=OH_Z, pos=OH_POS, basis="sto-3g", xc="hf", charge=-1, scale=3e-2),  # anion: charge matters
    dict(z=WATER_Z, pos=WATER_POS, basis="sto-3g", xc="lda,vwn", charge=0, scale=3e-2),  # KS: the functional
])
def test_density_metrics_match_pyscf(case, water_svp):
    if case["basis"] == "def2-svp" and case["xc"] == "hf":
        mf, h, s = water_svp
    else:
        mf, h, s = _scf(case["z"], case["pos"], case["basis"], case["xc"], case["charge"], grid_level=1)
    rng = np.random.default_rng(11)
    hps = [h + _sym(rng, h.shape[0], case["scale"]) for _ in range(2)]
    hps[1] = hps[1] + 1e-7 * np.triu(np.ones_like(h), 1)  # slightly asymmetric: symmetrised first
    settings = {"xc": case["xc"], "basis": case["basis"], "grid_level": 1, "charge": case["charge"],
                "pyscf_version": "x", "source": "a record's provenance keys are ignored"}
    d = density_metrics(hps, [h, h], [case["z"]] * 2, [case["pos"]] * 2, settings, charges=case["charge"])
    e_ref, mu_ref = _pyscf_energy_dipole(mf, h)
    # E_ref is the label's SCF energy: H is the converged Fock matrix
    assert e_ref == pytest.approx(mf.e_tot, abs=1e-9)
    for i, hp in enumerate(hps):
        e_p, mu_p = _pyscf_energy_dipole(mf, hp)
        assert d["per_molecule"]["energy_ref"][i] == pytest.approx(e_ref, abs=1e-9)
        assert d["per_molecule"]["energy_pred"][i] == pytest.approx(e_p, abs=1e-9)
        assert d["per_molecule"]["energy_error"][i] == pytest.approx(e_p - e_ref, abs=1e-9)
        # the SCF density is the minimum: a perturbed density is higher in energy
        assert d["per_molecule"]["energy_error"][i] > 1e-6
        assert d["per_molecule"]["dipole_error"][i] == pytest.approx(np.linalg.norm(mu_p - mu_ref), rel=1e-6,
                                                                     abs=1e-9)
        assert d["per_molecule"]["dipole_error"][i] > 1e-4
    assert d["energy_error"] == pytest.approx(np.mean(d["per_molecule"]["energy_error"]), rel=1e-12)
    assert d["energy_abs_error"] == pytest.approx(np.mean(np.abs(d["per_molecule"]["energy_error"])), rel=1e-12)
    assert set(DENSITY_KEYS) <= set(d) and d["n_molecules"] == 2


def test_energy_error_is_signed():
    """A label H that is *not* at the SCF minimum (the core Hamiltonian) has a higher
    energy than the SCF density the 'prediction' gives: negative error, positive abs."""
    mf, h, s = _scf(WATER_Z, WATER_POS, "sto-3g")
    core = mf.get_hcore()
    d = density_metrics([h], [core], [WATER_Z], [WATER_POS], {"xc": "hf", "basis": "sto-3g"})
    e_core, _ = _pyscf_energy_dipole(mf, core)
    assert d["energy_error"] == pytest.approx(mf.e_tot - e_core, abs=1e-9)
    assert d["energy_error"] < 0 and d["energy_abs_error"] == pytest.approx(-d["energy_error"])


def test_density_metrics_bad_input():
    h = np.eye(7)
    with pytest.raises(ValueError, match="closed-shell"):
        density_metrics([h], [h], [WATER_Z], [WATER_POS], {"xc": "hf", "basis": "sto-3g"}, charges=1)
    with pytest.raises(ValueError, match="AOs"):
        density_metrics([np.eye(5)], [np.eye(5)], [WATER_Z], [WATER_POS], {"xc": "hf", "basis": "sto-3g"})
    with pytest.raises(ValueError, match="same number"):
        density_metrics([h, h], [h], [WATER_Z], [WATER_POS], {"xc": "hf", "basis": "sto-3g"})


# ------------------------------------------------------------------ validation reports them
def test_validate_reports_spectrum_and_density_metrics():
    import torch

    from qhnetv2.data.labelling import label_molecule, make_settings
    from qhnetv2.model import QHNetV2
    from qhnetv2.training.collate import collate
    from qhnetv2.training.validate import validate

    settings = make_settings(xc="hf", basis="sto-3g", conv_tol=1e-10)
    recs = []
    for k, (z, pos) in enumerate([(WATER_Z, WATER_POS), (WATER_Z, WATER_POS * 1.03)]):
        rec = label_molecule(z, pos, settings)
        rec["id"] = f"w{k}"
        recs.append(rec)
    torch.manual_seed(0)
    model = QHNetV2(basis="sto-3g", elements=[1, 8], channels=8, layers=1, mmax=2, num_rbf=8, body_order=2)
    with torch.no_grad():
        model.atom_reference.normal_()  # a non-degenerate spectrum: a unique aufbau density
    model = model.double()
    out = validate(model, [collate(recs)], "cpu", torch.float64, density=True, settings=settings)
    preds = [model.predict(r["atomic_numbers"], r["positions"]) for r in recs]
    m = hamiltonian_metrics(preds, [r["hamiltonian"] for r in recs], [r["overlap"] for r in recs], 5)
    d = density_metrics(preds, [r["hamiltonian"] for r in recs], [r["atomic_numbers"] for r in recs],
                        [r["positions"] for r in recs], settings)
    for key in SPECTRUM_KEYS + ("gap_error_max", "max_orbital_energy_error_max"):
        assert out[key] == pytest.approx(m[key], rel=1e-6), key
    for key in DENSITY_KEYS:
        assert out[key] == pytest.approx(d[key], rel=1e-5), key
    assert out["n_molecules"] == 2
    # off by default: no PySCF work in an ordinary validation
    plain = validate(model, [collate(recs)], "cpu", torch.float64)
    assert not set(DENSITY_KEYS) & set(plain) and "gap_error" in plain
    with pytest.raises(ValueError, match="settings"):
        validate(model, [collate(recs)], "cpu", torch.float64, density=True)
