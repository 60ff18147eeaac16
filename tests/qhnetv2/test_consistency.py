"""The self-consistency check and the one-Fock-build refinement (``qhnetv2.consistency``).

The hard case is built exactly as it happens in trained models: a small error along the
most poorly conditioned overlap direction gives a spurious low virtual orbital (a gap
several eV off) while the entry-wise error stays small.  The check must flag it, the
refinement must remove it, and an exact (self-consistent) label must pass untouched.
"""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pyscf")

from qh_helpers import WATER_POS, WATER_Z  # noqa: E402

from qhnetv2 import consistency  # noqa: E402

SETTINGS = {"basis": "def2-svp", "xc": "hf", "conv_tol": 1e-11}
# ethanol, the molecule where trained models showed the failure
ETHANOL_Z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
ETHANOL_POS = np.array([[-1.1768, -0.2296, 0.0000], [0.1716, 0.4660, 0.0000], [1.1788, -0.5407, 0.0000],
                        [-1.2811, -0.8651, 0.8836], [-1.2811, -0.8651, -0.8836], [-2.0066, 0.4798, 0.0000],
                        [0.2638, 1.1096, 0.8863], [0.2638, 1.1096, -0.8863], [2.0327, -0.0762, 0.0000]])


def converged(z, pos, settings=SETTINGS):
    """H, S and n_occ of a converged SCF (PySCF, independent of the module under test)."""
    from pyscf import gto, scf
    mol = gto.M(atom=[(int(a), tuple(p)) for a, p in zip(z, pos)], basis=settings["basis"], unit="Angstrom",
                verbose=0)
    mf = scf.RHF(mol)
    mf.conv_tol = settings["conv_tol"]
    mf.conv_tol_grad = 1e-8
    mf.kernel()
    assert mf.converged
    return mf, mf.get_fock(), mol.intor_symmetric("int1e_ovlp"), mol.nelectron // 2


@pytest.fixture(scope="module")
def ethanol():
    return converged(ETHANOL_Z, ETHANOL_POS)


def spurious(H, S, size=0.004):
    """H minus ``size`` (Hartree) along S's most poorly conditioned direction v (S v = s v).

    Entry-wise tiny (size * |v_i v_j|), but the generalised eigenvalue along v drops by
    about size / s: a virtual orbital several eV too low.
    """
    s, U = np.linalg.eigh(S)
    v = U[:, 0]
    return H - size * np.outer(v, v), s[0]


def gap_eV(H, S, n_occ):
    import scipy.linalg
    e = scipy.linalg.eigh(H, S, eigvals_only=True)
    return (e[n_occ] - e[n_occ - 1]) * consistency.HARTREE_TO_EV


def test_converged_label_is_self_consistent(ethanol):
    mf, H, S, n_occ = ethanol
    F1, S1 = consistency.fock_of_prediction(H, ETHANOL_Z, ETHANOL_POS, SETTINGS)
    np.testing.assert_allclose(S1, S, atol=1e-12)
    assert np.abs(F1 - H).max() < 1e-5
    r = consistency.self_consistency(H, F1, S, n_occ)
    assert r["self_consistent"] and r["gap_shift_eV"] < 1e-3 and r["orbital_shift_max_eV"] < 1e-3


def test_fock_of_prediction_matches_pyscf_get_fock(ethanol):
    """Against PySCF's own eig / make_rdm1 / get_fock on a perturbed H."""
    mf, H, S, n_occ = ethanol
    rng = np.random.default_rng(0)
    P = rng.normal(scale=2e-3, size=H.shape)
    Hp = H + (P + P.T) / 2
    e, C = mf.eig(Hp, S)
    occ = np.zeros(len(e))
    occ[:n_occ] = 2.0
    want = mf.get_fock(dm=mf.make_rdm1(C, occ))
    got, _ = consistency.fock_of_prediction(Hp, ETHANOL_Z, ETHANOL_POS, SETTINGS)
    np.testing.assert_allclose(got, want, atol=1e-10)


def test_spurious_virtual_orbital_is_flagged_and_refined_away(ethanol):
    mf, H, S, n_occ = ethanol
    Hbad, s_min = spurious(H, S)
    assert s_min < 0.02  # a genuinely poorly conditioned direction (def2-SVP)
    # small entry-wise, wrong spectrum: the hard case
    assert np.abs(Hbad - H).mean() < 1e-4
    gap_true, gap_bad = gap_eV(H, S, n_occ), gap_eV(Hbad, S, n_occ)
    assert gap_true - gap_bad > 3.0
    (row,) = consistency.check_predictions([Hbad], [ETHANOL_Z], [ETHANOL_POS], SETTINGS)
    assert row["self_consistent"] is False and row["gap_shift_eV"] > 3.0
    assert abs(row["gap_refined_eV"] - gap_true) < 0.1
    assert abs(gap_eV(row["refined"], S, n_occ) - gap_true) < 0.1


def test_small_ordinary_error_passes(ethanol):
    mf, H, S, n_occ = ethanol
    rng = np.random.default_rng(1)
    P = rng.normal(scale=3e-4, size=H.shape)
    (row,) = consistency.check_predictions([H + (P + P.T) / 2], [ETHANOL_Z], [ETHANOL_POS], SETTINGS)
    assert row["self_consistent"] is True


def test_open_shell_is_not_checked_and_inputs_are_validated():
    z = np.array([8, 1])
    pos = np.array([[0.0, 0.0, 0.0], [0.97, 0.0, 0.0]])
    from pyscf import gto
    n = gto.M(atom=[(8, (0, 0, 0)), (1, (0.97, 0, 0))], basis="sto-3g", unit="Angstrom", spin=1, verbose=0).nao
    (row,) = consistency.check_predictions([np.eye(n)], [z], [pos], {"basis": "sto-3g", "xc": "hf"})
    assert row["self_consistent"] is None and row["refined"] is None and "open-shell" in row["reason"]
    with pytest.raises(ValueError, match="must match"):
        consistency.check_predictions([np.eye(n)], [z, z], [pos], {"basis": "sto-3g", "xc": "hf"})
    with pytest.raises(ValueError, match="AOs"):
        consistency.fock_of_prediction(np.eye(3), WATER_Z, WATER_POS, {"basis": "sto-3g", "xc": "hf"})


# --- the entry points: QHNetV2.predict(refine=True), evaluate(refine=True), qhnetv2 predict --refine


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from qhnetv2.model import QHNetV2
    torch.manual_seed(0)
    model = QHNetV2(basis="sto-3g", elements=[1, 8], channels=8, layers=1, mmax=2, num_rbf=8, body_order=2)
    path = str(tmp_path_factory.mktemp("consistency") / "m.pt")
    model.save(path, extra={"target": "minao", "settings": {"basis": "sto-3g", "xc": "hf", "conv_tol": 1e-10}})
    return path


@pytest.mark.filterwarnings("ignore::qhnetv2.domain.DomainWarning")
def test_model_predict_refine_is_the_fock_of_the_prediction(tiny_ckpt):
    from qhnetv2.model import QHNetV2
    model = QHNetV2.load(tiny_ckpt)
    h = model.predict(WATER_Z, WATER_POS)
    f = model.predict(WATER_Z, WATER_POS, refine=True)
    want, _ = consistency.fock_of_prediction(h, WATER_Z, WATER_POS, model.settings)
    np.testing.assert_allclose(f, want, atol=1e-10)
    assert np.abs(f - h).max() > 1e-6  # an untrained model is not self-consistent: refine did something
    with pytest.raises(ValueError, match="full=True"):
        model.predict(WATER_Z, WATER_POS, full=False, refine=True)
    model.settings = None
    with pytest.raises(ValueError, match="functional"):
        model.predict(WATER_Z, WATER_POS, refine=True)


@pytest.mark.filterwarnings("ignore::qhnetv2.domain.DomainWarning")
@pytest.mark.filterwarnings("ignore::qhnetv2.consistency.ConsistencyWarning")
def test_evaluate_and_predict_cli_report_consistency(tiny_ckpt, tmp_path):
    from qh_helpers import labelled_water, water_frames, write_xyz

    from qhnetv2.evaluate import evaluate
    from qhnetv2.predict import predict_geometries

    d = labelled_water(tmp_path, 3, seed=5)
    res = evaluate(tiny_ckpt, d["data"], refine=True, density=0)
    rf = res["refined"]
    assert rf is not None and rf["n_not_checked"] == 0
    assert rf["n_not_self_consistent"] == sum(r["self_consistent"] is False for r in res["per_molecule"])
    for row in res["per_molecule"]:
        assert isinstance(row["self_consistent"], bool) and row["gap_shift_eV"] >= 0
    # the refined H of a poor model is closer to the label than the prediction (the density carries it)
    assert rf["metrics"]["hamiltonian_mae_uEh"] < res["metrics"]["hamiltonian_mae_uEh"]

    xyz = write_xyz(str(tmp_path / "mols.xyz"), water_frames(2, seed=9))
    out = str(tmp_path / "p.npz")
    with pytest.warns(consistency.ConsistencyWarning, match="not self-consistent"):
        s = predict_geometries(tiny_ckpt, [xyz], out, refine=True)
    assert set(s["not_self_consistent"]) == {i for i in s["gaps_eV"]}  # an untrained model: all flagged
    assert s["consistency_checked"] and s["n_ok"] == 2
    f = np.load(out, allow_pickle=False)
    meta = json.loads(str(f["meta"]))
    assert meta["refined"] and meta["consistency_checked"]
    for i in f["ids"]:
        raw = f[f"{i}/hamiltonian_network"]
        want, _ = consistency.fock_of_prediction(raw, f[f"{i}/atomic_numbers"], f[f"{i}/positions"],
                                                 {"basis": "sto-3g", "xc": "hf"})
        np.testing.assert_allclose(f[i], want, atol=1e-10)
        assert int(f[f"{i}/self_consistent"]) in (0, 1)
        assert np.isfinite(float(f[f"{i}/gap_shift_eV"]))
    out2 = str(tmp_path / "q.npz")
    s2 = predict_geometries(tiny_ckpt, [xyz], out2, check=False)
    g = np.load(out2, allow_pickle=False)
    assert not s2["consistency_checked"]
    for i in g["ids"]:
        assert int(g[f"{i}/self_consistent"]) == -1 and f"{i}/hamiltonian_network" not in g.files


# --- what the check computes is exposed and reused: one overlap / eigen-solve / Fock build per molecule


def test_check_rows_expose_overlap_and_spectra(ethanol):
    import scipy.linalg
    mf, H, S, n_occ = ethanol
    rng = np.random.default_rng(2)
    P = rng.normal(scale=1e-3, size=H.shape)
    Hp = H + (P + P.T) / 2
    (row,) = consistency.check_predictions([Hp], [ETHANOL_Z], [ETHANOL_POS], SETTINGS)
    np.testing.assert_allclose(row["overlap"], S, atol=1e-12)
    # independent solver (scipy's Cholesky-based one) for both spectra
    np.testing.assert_allclose(row["mo_energy"], scipy.linalg.eigh(Hp, S, eigvals_only=True), atol=1e-9)
    np.testing.assert_allclose(row["mo_energy_refined"], scipy.linalg.eigh(row["refined"], S, eigvals_only=True),
                               atol=1e-9)
    e, e1 = row["mo_energy"], row["mo_energy_refined"]
    assert row["gap_eV"] == pytest.approx((e[n_occ] - e[n_occ - 1]) * consistency.HARTREE_TO_EV, abs=1e-9)
    assert row["gap_refined_eV"] == pytest.approx((e1[n_occ] - e1[n_occ - 1]) * consistency.HARTREE_TO_EV, abs=1e-9)


@pytest.mark.parametrize("xc", ["hf", "lda,vwn"])
def test_fock_build_energy_and_fock_match_separate_pyscf_calls(xc):
    """The stored potential gives the same F1 and E[D] as two separate PySCF builds (DFT grid included)."""
    from qhnetv2.data.labelling import build_mol, make_mf, make_settings
    from qhnetv2.metrics import closed_shell_density
    settings = {"basis": "sto-3g", "xc": xc}
    mol = build_mol(WATER_Z, WATER_POS, "sto-3g")
    ref = make_mf(mol, make_settings(**settings))
    S = mol.intor_symmetric("int1e_ovlp")
    rng = np.random.default_rng(3)
    P = rng.normal(scale=1e-2, size=S.shape)
    H = ref.get_fock(dm=ref.get_init_guess()) + (P + P.T) / 2
    b = consistency.fock_build(H, WATER_Z, WATER_POS, settings)
    D = closed_shell_density(H, S, 5)
    np.testing.assert_allclose(b.density, D, atol=1e-12)
    # a fresh object each: the DFT grid is pruned on the first density it sees, D here as in fock_build
    e_sep = float(make_mf(mol, make_settings(**settings)).energy_tot(dm=D))
    f_sep = make_mf(mol, make_settings(**settings)).get_fock(dm=D)
    assert b.energy() == pytest.approx(e_sep, abs=1e-10)
    np.testing.assert_allclose(b.fock, f_sep, atol=1e-10)
    assert consistency.fock_build(H[:3, :3], np.array([8, 1]), WATER_POS[:2], settings) is None  # odd: open shell


@pytest.fixture(scope="module")
def full_ckpt(tmp_path_factory):
    """A ``full``-target checkpoint with HF/STO-3G settings: no base Hamiltonian, so every PySCF
    call during predict / evaluate is the check's or the metrics'."""
    from qhnetv2.model import QHNetV2
    torch.manual_seed(1)
    model = QHNetV2(basis="sto-3g", elements=[1, 8], channels=8, layers=1, mmax=2, num_rbf=8, body_order=2)
    path = str(tmp_path_factory.mktemp("consistency_full") / "m.pt")
    model.save(path, extra={"target": "full", "settings": {"basis": "sto-3g", "xc": "hf", "conv_tol": 1e-10}})
    return path


def _count_pyscf(monkeypatch):
    """Count overlap integrals, eigen-solves, mean-field objects and Fock builds (``get_veff``)."""
    from pyscf import gto

    from qhnetv2 import metrics
    from qhnetv2.data import labelling
    n = {"ovlp": 0, "eig": 0, "mf": 0, "veff": 0}
    intor, orbitals, make_mf = gto.Mole.intor, metrics.orbitals, labelling.make_mf

    def counting_intor(self, intor_name, *a, **k):
        n["ovlp"] += str(intor_name).startswith("int1e_ovlp")
        return intor(self, intor_name, *a, **k)

    def counting_orbitals(H, S):
        n["eig"] += 1
        return orbitals(H, S)

    def counting_make_mf(mol, settings):
        mf = make_mf(mol, settings)
        n["mf"] += 1
        get_veff = mf.get_veff

        def counting_veff(*a, **k):
            n["veff"] += 1
            return get_veff(*a, **k)
        mf.get_veff = counting_veff
        return mf
    monkeypatch.setattr(gto.Mole, "intor", counting_intor)
    monkeypatch.setattr(metrics, "orbitals", counting_orbitals)
    monkeypatch.setattr(labelling, "make_mf", counting_make_mf)
    return n


@pytest.mark.filterwarnings("ignore::qhnetv2.domain.DomainWarning")
@pytest.mark.filterwarnings("ignore::qhnetv2.consistency.ConsistencyWarning")
@pytest.mark.parametrize("refine", [False, True])
def test_predict_reuses_the_checks_overlap_and_spectrum(full_ckpt, tmp_path, monkeypatch, refine):
    from qh_helpers import water_frames, write_xyz

    from qhnetv2.metrics import orbitals
    from qhnetv2.predict import HARTREE_TO_EV, overlap_matrix, predict_geometries
    xyz = write_xyz(str(tmp_path / "mols.xyz"), water_frames(3, seed=4))
    out = str(tmp_path / "p.npz")
    n = _count_pyscf(monkeypatch)
    s = predict_geometries(full_ckpt, [xyz], out, refine=refine)
    assert s["n_ok"] == 3 and s["consistency_checked"]
    # per molecule: one overlap, one solve of H and one of F1, one Fock build (was 2 / 4 / 1)
    assert n == {"ovlp": 3, "eig": 6, "mf": 3, "veff": 3}
    monkeypatch.undo()
    f = np.load(out, allow_pickle=False)
    for i in f["ids"]:
        # the reused spectrum is the one predict solved on its own before: eigenvalues of the stored H
        S = overlap_matrix(f[f"{i}/atomic_numbers"], f[f"{i}/positions"], "sto-3g")
        eps = orbitals(f[i], S)[0]
        np.testing.assert_allclose(f[f"{i}/orbital_energies"], eps, rtol=0, atol=1e-12)
        n_occ = int(f[f"{i}/n_electrons"]) // 2
        assert float(f[f"{i}/homo"]) == pytest.approx(eps[n_occ - 1], abs=1e-12)
        assert float(f[f"{i}/lumo"]) == pytest.approx(eps[n_occ], abs=1e-12)
        assert float(f[f"{i}/homo_lumo_gap_eV"]) == pytest.approx((eps[n_occ] - eps[n_occ - 1]) * HARTREE_TO_EV,
                                                                   abs=1e-10)
        assert (f"{i}/hamiltonian_network" in f.files) == refine
    n = _count_pyscf(monkeypatch)
    assert predict_geometries(full_ckpt, [xyz], str(tmp_path / "q.npz"), check=False)["n_ok"] == 3
    assert n == {"ovlp": 3, "eig": 3, "mf": 0, "veff": 0}  # unchecked: predict solves on its own


@pytest.mark.filterwarnings("ignore::qhnetv2.domain.DomainWarning")
def test_evaluate_refine_and_density_share_one_fock_build(full_ckpt, tmp_path, monkeypatch):
    from qh_helpers import labelled_water

    from qhnetv2.data import HamiltonianReader
    from qhnetv2.evaluate import evaluate
    from qhnetv2.inference import model_and_extra, predict_hamiltonians
    from qhnetv2.metrics import DENSITY_KEYS, density_metrics
    d = labelled_water(tmp_path, 3, seed=6)
    n = _count_pyscf(monkeypatch)
    both = evaluate(full_ckpt, d["data"], refine=True)
    # per molecule: one mean-field object; Fock builds of D(H_pred) (shared) and of D(H_true) only
    assert n["mf"] == 3 and n["veff"] == 6
    monkeypatch.undo()
    dens = evaluate(full_ckpt, d["data"])
    ref = evaluate(full_ckpt, d["data"], refine=True, density=0)
    for k in DENSITY_KEYS:  # density metrics do not depend on --refine ...
        assert both["metrics_hartree"][k] == pytest.approx(dens["metrics_hartree"][k], rel=1e-12, abs=1e-15)
    assert both["refined"]["metrics_hartree"] == pytest.approx(ref["refined"]["metrics_hartree"], rel=1e-12)
    for a, b in zip(both["per_molecule"], ref["per_molecule"]):
        assert a["self_consistent"] == b["self_consistent"]
        assert a["gap_shift_eV"] == pytest.approx(b["gap_shift_eV"], abs=1e-9)
    # ... and are qhnetv2.metrics.density_metrics' numbers
    recs = [HamiltonianReader(d["data"])[i] for i in range(3)]
    model, extra, _ = model_and_extra(full_ckpt, "cpu", None)
    preds = predict_hamiltonians(model, extra, [r["atomic_numbers"] for r in recs], [r["positions"] for r in recs])
    want = density_metrics(preds, [r["hamiltonian"] for r in recs], [r["atomic_numbers"] for r in recs],
                           [r["positions"] for r in recs], {"xc": "hf", "basis": "sto-3g"})
    for k in DENSITY_KEYS:
        assert both["metrics_hartree"][k] == pytest.approx(want[k], rel=1e-6, abs=1e-12)
