"""``qhnetv2 evaluate`` and ``qhnetv2 predict`` end to end on a tiny labelled set.

An untrained tiny model in STO-3G (fast) against 3 waters labelled with HF/STO-3G:
the numbers are meaningless as chemistry, but every reported number is checked
against an independent computation.
"""
import json
import os

import numpy as np
import pytest
import scipy.linalg
import torch

from qhnetv2.cli import main
from qhnetv2.model import QHNetV2

from qh_helpers import WATER_POS, WATER_Z, water_frames, write_xyz

FAST = ["--xc", "hf", "--basis", "sto-3g", "--conv-tol", "1e-10"]
TINY = dict(channels=8, layers=1, mmax=2, num_rbf=8, body_order=2)
CORE_EXTRA = {"target": "core", "settings": {"basis": "sto-3g", "xc": "hf", "conv_tol": 1e-10}}


def pyscf_mol(z, pos, basis="sto-3g", charge=0):
    from pyscf import gto
    nelec = int(np.sum(z)) - charge
    return gto.M(atom=[(int(a), tuple(p)) for a, p in zip(z, pos)], basis=basis, unit="Angstrom",
                 charge=charge, spin=nelec % 2, cart=False, verbose=0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalpred")
    geo = write_xyz(tmp / "water.xyz", water_frames(3, seed=7))
    ds = str(tmp / "ds")
    assert main(["data", "build", "--geometries", geo, "--out", ds, "--workers", "0", "--no-progress"] + FAST) == 0
    split = str(tmp / "split.json")
    assert main(["data", "split", ds, "--out", split, "--seed", "0", "--fractions", "0.34", "0.0", "0.66"]) == 0
    torch.manual_seed(0)
    model = QHNetV2(basis="sto-3g", elements=[1, 6, 8], **TINY)
    with torch.no_grad():
        model.atom_reference.normal_()
    ckpt, ckpt_core = str(tmp / "model.pt"), str(tmp / "model_core.pt")
    model.save(ckpt)
    model.save(ckpt_core, extra=CORE_EXTRA)
    return {"tmp": tmp, "ds": ds, "split": split, "model": QHNetV2.load(ckpt), "ckpt": ckpt,
            "ckpt_core": ckpt_core, "geo": geo}


def manual_metrics(model, ds, ids, extra=None):
    """The five QH9 metrics computed here, independently of qhnetv2.evaluate."""
    from qhnetv2.baseline import base_hamiltonian
    from qhnetv2.data import HamiltonianReader, ao_slices
    from qhnetv2.metrics import hamiltonian_metrics, to_micro_hartree
    recs = [HamiltonianReader(ds)[i] for i in ids]
    preds = []
    for r in recs:
        h = model.predict(r["atomic_numbers"], r["positions"])
        if extra:
            h = h + base_hamiltonian(r["atomic_numbers"], r["positions"], extra["target"], extra["settings"])
        preds.append(h)
    m = hamiltonian_metrics(preds, [r["hamiltonian"] for r in recs], [r["overlap"] for r in recs],
                            [int(r["atomic_numbers"].sum()) // 2 for r in recs],
                            ao_slices=[ao_slices("sto-3g", r["atomic_numbers"]) for r in recs])
    return to_micro_hartree(m)


DENSITY_UNITS = ("energy_error_uEh", "energy_abs_error_uEh", "dipole_error_D")


def manual_density(model, ds, ids):
    """Per molecule: E[D(H_pred)] - E[D(H_label)] (uEh) and |dipole difference| (Debye),
    with plain PySCF (the aufbau density of each H, energy_tot, dip_moment)."""
    from pyscf import scf
    from qhnetv2.data import HamiltonianReader
    out = []
    for mol_id in ids:
        r = HamiltonianReader(ds)[mol_id]
        mf = scf.RHF(pyscf_mol(r["atomic_numbers"], r["positions"]))
        e_mu = []
        for h in (model.predict(r["atomic_numbers"], r["positions"]), r["hamiltonian"]):
            eps, c = scipy.linalg.eigh(0.5 * (h + h.T), r["overlap"])
            dm = mf.make_rdm1(c, mf.get_occ(eps, c))
            e_mu.append((mf.energy_tot(dm=dm), mf.dip_moment(dm=dm, unit="Debye", verbose=0)))
        de = e_mu[0][0] - e_mu[1][0]
        out.append({"energy_error_uEh": de * 1e6, "energy_abs_error_uEh": abs(de) * 1e6,
                    "dipole_error_D": float(np.linalg.norm(e_mu[0][1] - e_mu[1][1]))})
    return out


# ------------------------------------------------------------------ evaluate
def test_evaluate_cli(setup, capsys):
    from qhnetv2.data import HamiltonianReader
    out = str(setup["tmp"] / "eval.json")
    assert main(["evaluate", "--checkpoint", setup["ckpt"], "--data", setup["ds"], "--scf", "2",
                 "--json", out, "--device", "cpu", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "hamiltonian_mae_uEh" in printed and "mean_cycles_pred" in printed
    res = json.load(open(out))
    ids = HamiltonianReader(setup["ds"]).ids
    assert res["n_molecules"] == 3 and [r["id"] for r in res["per_molecule"]] == ids
    assert res["target"] == "full" and res["basis"] == "sto-3g"
    expected = manual_metrics(setup["model"], setup["ds"], ids)
    assert set(expected) | set(DENSITY_UNITS) == set(res["metrics"]) and res["n_density_molecules"] == 3
    for key, value in expected.items():
        assert res["metrics"][key] == pytest.approx(value, rel=1e-6), key  # float32 model: batching moves the last bits
    assert "gap_error_max_eV" in printed and "energy_error_uEh" in printed and "dipole_error_D" in printed
    # energy and dipole of the predicted density, by hand with PySCF (HF/STO-3G, the labels' recipe)
    by_hand = manual_density(setup["model"], setup["ds"], ids)
    for row, ref in zip(res["per_molecule"], by_hand):
        for key, value in ref.items():
            assert row[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    for key in DENSITY_UNITS:
        assert res["metrics"][key] == pytest.approx(np.mean([r[key] for r in by_hand]), rel=1e-4, abs=1e-6)
    scf = res["scf"]
    assert scf["n_molecules"] == 2 and scf["n_errors"] == 0
    assert scf["n_energy_diff_above_tol"] == 0 and scf["max_abs_energy_diff_pred_vs_minao"] < 1e-8
    assert scf["mean_cycles_pred"] >= 1 and scf["mean_cycles_minao"] >= 1
    assert scf["settings"]["xc"] == "hf" and scf["settings"]["basis"] == "sto-3g"
    assert len(scf["per_molecule"]) == 2 and scf["per_molecule"][0]["pred"]["converged"]


def test_evaluate_split_subset(setup):
    from qhnetv2.data import load_split
    from qhnetv2.evaluate import evaluate
    out = str(setup["tmp"] / "eval_test.json")
    assert main(["evaluate", "--checkpoint", setup["ckpt"], "--data", setup["ds"], "--split", setup["split"],
                 "--subset", "test", "--json", out, "--no-progress", "--density", "1"]) == 0
    test_ids = load_split(setup["split"], "test")
    res = json.load(open(out))
    assert [r["id"] for r in res["per_molecule"]] == test_ids and res["scf"] is None
    # --density 1: energy/dipole errors of the first molecule only (null for the others)
    assert res["n_density_molecules"] == 1 and len(test_ids) == 2
    assert res["per_molecule"][0]["dipole_error_D"] is not None and res["per_molecule"][1]["dipole_error_D"] is None
    assert res["metrics"]["energy_error_uEh"] == pytest.approx(res["per_molecule"][0]["energy_error_uEh"])
    # the Python API with a model object gives the same numbers
    direct = evaluate(setup["model"], setup["ds"], ids=test_ids, density=1)
    assert set(direct["metrics"]) == set(res["metrics"])
    for key, value in direct["metrics"].items():
        assert res["metrics"][key] == pytest.approx(value, rel=1e-12)
    assert not set(DENSITY_UNITS) & set(evaluate(setup["model"], setup["ds"], ids=test_ids, density=0)["metrics"])


def test_residual_target_adds_the_base(setup):
    from qhnetv2.evaluate import evaluate
    from qhnetv2.inference import predict_hamiltonians
    model = setup["model"]
    zs, ps = [WATER_Z], [WATER_POS]
    full = predict_hamiltonians(model, {}, zs, ps)[0]
    core = predict_hamiltonians(model, CORE_EXTRA, zs, ps)[0]
    mol = pyscf_mol(WATER_Z, WATER_POS)
    np.testing.assert_allclose(core - full, mol.intor("int1e_kin") + mol.intor("int1e_nuc"), atol=1e-12)
    res = evaluate(setup["ckpt_core"], setup["ds"], device="cpu")
    assert res["target"] == "core"
    expected = manual_metrics(model, setup["ds"], res_ids(res), extra=CORE_EXTRA)
    for key, value in expected.items():
        assert res["metrics"][key] == pytest.approx(value, rel=1e-6), key  # float32 model: batching moves the last bits
    with pytest.raises(ValueError, match="target must be one of"):
        predict_hamiltonians(model, {"target": "bogus"}, zs, ps)
    with pytest.raises(ValueError, match="basis"):
        predict_hamiltonians(model, {"target": "core", "settings": {"basis": "def2-svp"}}, zs, ps)


def res_ids(res):
    return [r["id"] for r in res["per_molecule"]]


def test_evaluate_refuses_other_basis_and_missing_elements(setup, capsys):
    from qhnetv2.evaluate import evaluate
    svp = QHNetV2(basis="def2-svp", elements=[1, 8], **TINY)
    with pytest.raises(ValueError, match=r"basis mismatch.*def2-svp.*sto-3g"):
        evaluate(svp, setup["ds"])
    path = str(setup["tmp"] / "svp.pt")
    svp.save(path)
    assert main(["evaluate", "--checkpoint", path, "--data", setup["ds"], "--no-progress"]) == 2
    assert "basis mismatch" in capsys.readouterr().err
    no_oxygen = QHNetV2(basis="sto-3g", elements=[1, 6], **TINY)
    with pytest.raises(ValueError, match=r"elements \[8\]"):
        evaluate(no_oxygen, setup["ds"])


def test_corrupt_checkpoint_is_a_clear_cli_error(setup, capsys):
    data = open(setup["ckpt"], "rb").read()
    bad = setup["tmp"] / "truncated.pt"
    bad.write_bytes(data[: len(data) // 3])
    assert main(["evaluate", "--checkpoint", str(bad), "--data", setup["ds"], "--no-progress"]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    out = setup["tmp"] / "never.npz"
    assert main(["predict", "--checkpoint", str(bad), "--geometry", setup["geo"], "--out", str(out),
                 "--no-progress"]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err and not out.exists()
    assert main(["evaluate", "--checkpoint", str(setup["tmp"] / "absent.pt"), "--data", setup["ds"]]) == 2
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------ predict
def _write_inputs(tmp):
    from rdkit import Chem
    from rdkit.Chem import AllChem
    good = water_frames(2, seed=3)
    close = (WATER_Z, np.array([[0.0, 0.0, 0.0], [0.1, 0.1, 0.0], [-0.76, 0.0, -0.47]]))
    nan = (WATER_Z, np.where(np.arange(9).reshape(3, 3) == 4, np.nan, WATER_POS))
    xyz = write_xyz(tmp / "mix.xyz", [good[0], close, nan, good[1]])
    ammonia = (np.array([7, 1, 1, 1]), np.array([[0, 0, 0.1], [0.94, 0, -0.25], [-0.47, 0.81, -0.25],
                                                 [-0.47, -0.81, -0.25]]))
    extxyz = str(tmp / "more.extxyz")
    import ase
    import ase.io
    ase.io.write(extxyz, [ase.Atoms(numbers=z, positions=p) for z, p in (ammonia, good[1])], format="extxyz")
    mol = Chem.AddHs(Chem.MolFromSmiles("CO"))
    assert AllChem.EmbedMolecule(mol, randomSeed=1) == 0
    sdf = tmp / "methanol.sdf"
    sdf.write_text(Chem.MolToMolBlock(mol) + "$$$$\n")
    smi = tmp / "mols.smi"
    smi.write_text("O water\nC=O formaldehyde\nnot_a_smiles\n")
    return [xyz, extxyz, str(sdf), str(smi)]


def test_predict_cli(setup, capsys):
    tmp = setup["tmp"] / "pred"
    tmp.mkdir()
    files = _write_inputs(tmp)
    out = tmp / "out" / "pred.npz"
    assert main(["predict", "--checkpoint", setup["ckpt"], "--geometry", *files, "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "6 predicted, 4 skipped" in captured.out and "HOMO-LUMO gap" in captured.out
    assert os.listdir(out.parent) == ["pred.npz"]  # no temporary file left behind
    d = np.load(out, allow_pickle=False)
    assert list(d["ids"]) == ["mix:00000000", "mix:00000003", "more:00000001", "methanol:00000000",
                              "mols:00000000", "mols:00000001"]
    reasons = dict(zip(d["failed_ids"], d["failed_reasons"]))
    assert set(reasons) == {"mix:00000001", "mix:00000002", "more:00000000", "mols:00000002"}
    assert "0.3" in reasons["mix:00000001"] and "NaN" in reasons["mix:00000002"]
    assert "Z=[7]" in reasons["more:00000000"] and "SMILES" in reasons["mols:00000002"]
    for mol_id in reasons:
        assert f"skipped {mol_id}" in captured.err
    meta = json.loads(str(d["meta"]))
    assert meta["basis"] == "sto-3g" and meta["target"] == "full" and meta["ao_order"] == "pyscf"
    model = setup["model"]
    for mol_id in d["ids"]:
        z, pos, h = d[f"{mol_id}/atomic_numbers"], d[f"{mol_id}/positions"], d[mol_id]
        assert h.dtype == np.float64 and h.shape == (model.layout.ao_counts(z).sum().item(),) * 2
        np.testing.assert_allclose(h, model.predict(z, pos), atol=1e-5)
        n_el = int(z.sum())
        assert int(d[f"{mol_id}/n_electrons"]) == n_el and int(d[f"{mol_id}/charge"]) == 0
        eps = scipy.linalg.eigh(h, pyscf_mol(z, pos).intor("int1e_ovlp"), eigvals_only=True)
        np.testing.assert_allclose(d[f"{mol_id}/orbital_energies"], eps, atol=1e-8)
        homo, lumo = eps[n_el // 2 - 1], eps[n_el // 2]
        assert float(d[f"{mol_id}/homo"]) == pytest.approx(homo, abs=1e-8)
        assert float(d[f"{mol_id}/lumo"]) == pytest.approx(lumo, abs=1e-8)
        assert float(d[f"{mol_id}/homo_lumo_gap"]) == pytest.approx(lumo - homo, abs=1e-8)
    # the water frames of the xyz file went through unchanged
    np.testing.assert_array_equal(d["mix:00000000/positions"], water_frames(2, seed=3)[0][1])
    # SMILES: a conformer was made (methanol-like sizes: water has 3 atoms, formaldehyde 4)
    assert d["mols:00000000/atomic_numbers"].tolist() == [8, 1, 1]
    assert sorted(d["mols:00000001/atomic_numbers"].tolist()) == [1, 1, 6, 8]


def test_predict_residual_checkpoint_and_scf_bench_compat(setup):
    from qhnetv2.predict import predict_geometries
    out = str(setup["tmp"] / "core.npz")
    summary = predict_geometries(setup["ckpt_core"], [setup["geo"]], out, device="cpu")
    assert summary["n_ok"] == 3 and summary["n_failed"] == 0
    d = np.load(out, allow_pickle=False)
    assert json.loads(str(d["meta"]))["target"] == "core"
    from qhnetv2.data import HamiltonianReader
    rec = HamiltonianReader(setup["ds"])["water:00000000"]  # same file stem: same ids as the dataset
    mol = pyscf_mol(rec["atomic_numbers"], rec["positions"])
    np.testing.assert_allclose(d["water:00000000"] - setup["model"].predict(rec["atomic_numbers"], rec["positions"]),
                               mol.intor("int1e_kin") + mol.intor("int1e_nuc"), atol=1e-5)
    # keyed by molecule id: the file is a valid `qhnetv2 data scf-bench --pred`
    assert main(["data", "scf-bench", setup["ds"], "--pred", out, "--limit", "1", "--workers", "0",
                 "--no-progress"]) == 0


def test_predict_empty_geometry_file(setup, capsys):
    empty = setup["tmp"] / "empty.xyz"
    empty.write_text("")
    out = setup["tmp"] / "empty_out.npz"
    assert main(["predict", "--checkpoint", setup["ckpt"], "--geometry", str(empty), "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "empty.xyz" in err and not out.exists()
    comments = setup["tmp"] / "nothing.smi"
    comments.write_text("# no molecules here\n")
    assert main(["predict", "--checkpoint", setup["ckpt"], "--geometry", str(comments), "--out", str(out),
                 "--no-progress"]) == 2
    assert "holds no molecules" in capsys.readouterr().err and not out.exists()
