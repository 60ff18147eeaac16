"""Training-domain record and check (qhnetv2.domain): flagged out-of-domain molecules.

The domain is built from MD17-like water + ethanol geometries (the demo's recipe,
no model trained): new geometries of the same molecules are inside, formic acid
(a C=O double bond, an O-O pair, a C(H,O,O) carbon) is outside.  Then the reasons one
by one, the Python API (``check_domain``, ``predict`` warnings), ``qhnetv2 predict``'s
npz keys and warning lines, ``evaluate``'s per-molecule flags and the record written
into training checkpoints.
"""
import json
import os
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ase")
pytest.importorskip("rdkit")

from qh_helpers import WATER_POS, WATER_Z, labelled_water, write_xyz  # noqa: E402

from qhnetv2.domain import (DomainBuilder, DomainWarning, build_domain, domain_reasons,  # noqa: E402
                            environments, formula, pair_label, training_domain)

TINY = dict(channels=8, layers=1, mmax=2, num_rbf=8, body_order=2)
# ethanol, an MMFF-like geometry (Angstrom): C C O H H H H H H
ETHANOL_Z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
ETHANOL_POS = np.array([[-1.2260, -0.2430, 0.0000], [0.2640, 0.0850, 0.0000], [0.9740, -1.1450, 0.0000],
                        [-1.7660, 0.7090, 0.0000], [-1.5170, -0.8170, 0.8840], [-1.5170, -0.8170, -0.8840],
                        [0.5460, 0.6650, 0.8840], [0.5460, 0.6650, -0.8840], [1.9230, -0.9630, 0.0000]])


def _frames(paths):
    import ase.io
    out = {}
    for p in paths:
        out[os.path.basename(p).split(".")[0]] = [(a.numbers.copy(), a.positions.copy())
                                                  for a in ase.io.read(p, index=":")]
    return out


@pytest.fixture(scope="module")
def md(tmp_path_factory):
    """The domain of 40 water + 40 ethanol MD frames (seed 0), and 10 + 10 new frames (seed 1)."""
    from qhnetv2.data.recipe import make_md17_like
    tmp = tmp_path_factory.mktemp("domain")
    train = _frames(make_md17_like(str(tmp / "train"), {"water": 40, "ethanol": 40}, seed=0))
    new = _frames(make_md17_like(str(tmp / "new"), {"water": 10, "ethanol": 10}, seed=1))
    molecules = train["water"] + train["ethanol"]
    return {"domain": build_domain(molecules, cutoff=5.0), "new": new["water"] + new["ethanol"], "tmp": tmp}


def formic_acid():
    from qhnetv2.data.geometries import embed_smiles
    z, pos, charge = embed_smiles("C(=O)O", seed=0)
    assert charge == 0 and sorted(z.tolist()) == [1, 1, 6, 8, 8]
    return z, pos


# ------------------------------------------------------------------ the requirement
def test_new_water_and_ethanol_geometries_are_inside(md):
    from qhnetv2.data.geometries import embed_smiles
    for z, pos in md["new"]:  # another MD trajectory
        assert domain_reasons(md["domain"], z, pos) == [], formula(z)
    for smiles in ("O", "CCO"):  # RDKit conformers, as `qhnetv2 predict` makes them from SMILES
        z, pos, _ = embed_smiles(smiles, seed=0)
        assert domain_reasons(md["domain"], z, pos) == [], smiles


def test_formic_acid_is_outside_with_a_c_o_distance_reason(md):
    z, pos = formic_acid()
    reasons = domain_reasons(md["domain"], z, pos)
    co = [r for r in reasons if r.startswith("C-O distance") and "below the trained range" in r]
    assert len(co) == 1, reasons
    assert float(co[0].split()[2]) < 1.3  # the C=O bond, ~1.2 A, the training C-O bonds are single
    assert any(r.startswith("environment C(H,O,O) not seen in training") for r in reasons), reasons
    assert any(r.startswith("O-O pair at") for r in reasons), reasons  # one O per training molecule


def test_record_is_json_and_says_what_was_seen(md):
    dom = md["domain"]
    again = json.loads(json.dumps(dom))
    assert again == dom
    assert dom["elements"] == [1, 6, 8] and dom["n_atoms"] == [3, 9] and dom["n_molecules"] == 80
    assert set(dom["pair_distances"]) == {"C-C", "C-H", "C-O", "H-H", "H-O"}
    assert set(dom["environments"]) == {"C(C,H,H,H)", "C(C,H,H,O)", "H(C)", "H(O)", "O(C,H)", "O(H,H)"}
    lo, hi = dom["pair_distances"]["C-O"]
    assert 1.3 < lo < 1.45 and 2.3 < hi < 2.7  # bonded C-O and the 1-3 C...O of ethanol
    z, pos = formic_acid()
    assert domain_reasons(again, z, pos) == domain_reasons(dom, z, pos)


# ------------------------------------------------------------------ reasons one by one
def _water_domain(**kw):
    return build_domain([(WATER_Z, WATER_POS)], cutoff=5.0, **kw)


def test_unknown_element_is_one_reason():
    hf = (np.array([9, 1]), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.92]]))
    reasons = domain_reasons(_water_domain(), *hf)
    assert reasons[0] == "element F not in the training set (trained on H, O)"
    # its pairs and environments are not repeated: the element says it all
    assert not any("F-H" in r or "F(" in r or "H(F)" in r for r in reasons), reasons
    assert "2 atoms, below the trained minimum 3" in reasons


def test_sizes_atoms_and_aos():
    dom = build_domain([(ETHANOL_Z, ETHANOL_POS)], cutoff=5.0, n_ao_of={1: 1, 6: 5, 8: 5}.__getitem__)
    assert dom["n_ao"] == [21, 21]
    big_z = np.concatenate([ETHANOL_Z] * 4)[:32]
    shifts = np.repeat(np.arange(4) * 20.0, 9)[:32, None] * np.array([[1.0, 0.0, 0.0]])
    big_pos = np.concatenate([ETHANOL_POS] * 4)[:32] + shifts
    reasons = domain_reasons(dom, big_z, big_pos, n_ao=100)
    assert "32 atoms, above the trained maximum 9" in reasons
    assert "100 atomic orbitals, above the trained maximum 21" in reasons


def test_distance_margin_tolerates_a_little():
    def hydroxyl(d):
        return np.array([8, 1]), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, d]])
    dom = build_domain([hydroxyl(0.97), hydroxyl(1.01)], cutoff=5.0)
    assert dom["pair_distances"] == {"H-O": [0.97, 1.01]}
    assert domain_reasons(dom, *hydroxyl(0.93)) == []  # within 0.05 A
    assert domain_reasons(dom, *hydroxyl(1.05)) == []
    assert domain_reasons(dom, *hydroxyl(0.90)) == ["H-O distance 0.90 A below the trained range [0.97, 1.01]"]
    assert domain_reasons(dom, *hydroxyl(1.08)) == ["H-O distance 1.08 A above the trained range [0.97, 1.01]"]
    assert domain_reasons(dom, *hydroxyl(0.90), margin=0.1) == []
    # the relative margin wins for long distances: 3 % of 4 A is 0.12 A
    far = build_domain([(np.array([8, 8]), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 4.0]]))], cutoff=5.0)
    assert domain_reasons(far, np.array([8, 8]), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 4.1]])) == []
    with pytest.raises(ValueError, match="margin"):
        domain_reasons(dom, *hydroxyl(0.97), margin=-1)


def test_unseen_pair_and_unseen_environment():
    dom = build_domain([(ETHANOL_Z, ETHANOL_POS)], cutoff=5.0)
    # two ethanols 4 A apart: O-O pair unseen, every environment seen
    two_z = np.concatenate([ETHANOL_Z, ETHANOL_Z])
    two_pos = np.concatenate([ETHANOL_POS, ETHANOL_POS + np.array([0.0, 0.0, 4.0])])
    reasons = domain_reasons(dom, two_z, two_pos)
    assert any(r.startswith("O-O pair at 4.00 A: no O-O pair within the 5 A cutoff") for r in reasons), reasons
    assert not any(r.startswith("environment") for r in reasons)
    # ethanol's environments, Hill-ordered
    assert environments(ETHANOL_Z, ETHANOL_POS) == ["C(C,H,H,H)", "C(C,H,H,O)", "O(C,H)"] + ["H(C)"] * 5 + ["H(O)"]
    # water against ethanol: O(H,H) not seen, the seen O environment listed
    reasons = domain_reasons(dom, WATER_Z, WATER_POS)
    assert "environment O(H,H) not seen in training (seen for O: O(C,H))" in reasons


def test_labels_and_formula_are_hill_ordered():
    assert pair_label(8, 6) == pair_label(6, 8) == "C-O"
    assert pair_label(1, 6) == "C-H" and pair_label(8, 1) == "H-O" and pair_label(9, 8) == "F-O"
    assert formula(ETHANOL_Z) == "C2H6O" and formula([8, 1, 1]) == "H2O"


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="cutoff"):
        DomainBuilder(cutoff=0)
    with pytest.raises(ValueError, match="empty"):
        DomainBuilder(cutoff=5.0).to_dict()
    with pytest.raises(ValueError, match=r"positions must have shape \[3, 3\]"):
        domain_reasons(_water_domain(), WATER_Z, WATER_POS[:2])
    with pytest.raises(ValueError, match="not a qhnetv2 training-domain record"):
        domain_reasons({"elements": [1]}, WATER_Z, WATER_POS)


def test_training_domain_reads_positions_only():
    class Reader:  # what training_domain may touch: ids and read_field(positions / atomic_numbers)
        ids = ["a", "b"]
        fields = {"a": (WATER_Z, WATER_POS), "b": (ETHANOL_Z, ETHANOL_POS)}
        asked = []

        def read_field(self, mol_id, field):
            self.asked.append(field)
            z, pos = self.fields[mol_id]
            return {"atomic_numbers": z, "positions": pos}[field]
    r = Reader()
    dom = training_domain(r, 5.0)
    assert set(r.asked) == {"atomic_numbers", "positions"}
    assert dom == build_domain([(WATER_Z, WATER_POS), (ETHANOL_Z, ETHANOL_POS)], 5.0)
    r.asked.clear()
    assert training_domain(r, 5.0, atomic_numbers=[WATER_Z, ETHANOL_Z]) == dom and set(r.asked) == {"positions"}


# ------------------------------------------------------------------ the model and the CLIs
@pytest.fixture(scope="module")
def checkpoints(md):
    from qhnetv2.model import QHNetV2
    torch.manual_seed(0)
    model = QHNetV2(basis="sto-3g", elements=[1, 6, 8], **TINY)
    with_domain, without = str(md["tmp"] / "dom.pt"), str(md["tmp"] / "old.pt")
    model.save(with_domain, extra={"domain": md["domain"]})
    model.save(without)
    return {"with": with_domain, "without": without}


def test_python_api_check_domain_and_predict_warning(md, checkpoints):
    from qhnetv2.model import QHNetV2
    model = QHNetV2.load(checkpoints["with"])
    assert model.domain == md["domain"]
    z, pos = formic_acid()
    ok, reasons = model.check_domain(z, pos)
    assert not ok and any(r.startswith("C-O distance") for r in reasons)
    assert model.check_domain(*md["new"][0]) == (True, [])
    with pytest.warns(DomainWarning, match=r"molecule 0 \(CH2O2\) is outside the training domain: .*C-O distance"):
        model.predict(z, pos)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DomainWarning)
        model.predict_many([m[0] for m in md["new"][:3]], [m[1] for m in md["new"][:3]])  # no warning
        model.predict(z, pos, check_domain=False)
    # a loaded model keeps its domain when saved again
    again = str(md["tmp"] / "again.pt")
    model.save(again)
    assert QHNetV2.load(again).domain == md["domain"]


def test_old_checkpoint_no_flags_and_one_note(md, checkpoints):
    from qhnetv2.model import QHNetV2
    model = QHNetV2.load(checkpoints["without"])
    z, pos = formic_acid()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert model.check_domain(z, pos) == (True, [])
        model.predict(z, pos)
        model.predict(z, pos)
    notes = [w for w in caught if issubclass(w.category, DomainWarning)]
    assert len(notes) == 1 and "records no training domain" in str(notes[0].message)
    # a model built directly: nothing to note
    direct = QHNetV2(basis="sto-3g", elements=[1, 6, 8], **TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DomainWarning)
        assert direct.check_domain(z, pos) == (True, [])
        direct.predict(z, pos)


def test_predict_cli_flags_formic_acid(md, checkpoints, capsys):
    from qhnetv2.cli import main
    tmp = md["tmp"] / "pred"
    tmp.mkdir()
    z, pos = formic_acid()
    xyz = write_xyz(tmp / "mols.xyz", [md["new"][0], md["new"][-1], (z, pos)])
    out = tmp / "pred.npz"
    assert main(["predict", "--checkpoint", checkpoints["with"], "--geometry", xyz, "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 0
    cap = capsys.readouterr()
    warned = [line for line in cap.err.splitlines() if line.startswith("qhnetv2: warning:")]
    assert len(warned) == 1 and "molecule mols:00000002 is outside the training domain" in warned[0]
    assert "C-O distance" in warned[0]
    assert "1 outside the training domain" in cap.out and "(outside the training domain)" in cap.out
    d = np.load(out, allow_pickle=False)
    assert [bool(d[f"mols:0000000{i}/in_domain"]) for i in range(3)] == [True, True, False]
    assert json.loads(str(d["mols:00000000/domain_reasons"])) == []
    reasons = json.loads(str(d["mols:00000002/domain_reasons"]))
    assert any(r.startswith("C-O distance") for r in reasons)
    assert json.loads(str(d["meta"]))["domain_checked"] is True
    # an old checkpoint: nothing flagged, one note, the summary says it was not checked
    out2 = tmp / "old.npz"
    assert main(["predict", "--checkpoint", checkpoints["without"], "--geometry", xyz, "--out", str(out2),
                 "--device", "cpu", "--no-progress"]) == 0
    cap = capsys.readouterr()
    assert "training domain not checked" in cap.out
    d = np.load(out2, allow_pickle=False)
    assert all(bool(d[f"mols:0000000{i}/in_domain"]) for i in range(3))


def test_evaluate_flags_per_molecule(md, tmp_path):
    """Against an ethanol-only domain, labelled waters are outside (O(H,H), H-H, size)."""
    pytest.importorskip("pyscf")
    from qhnetv2.evaluate import evaluate
    from qhnetv2.model import QHNetV2
    ds = labelled_water(tmp_path, 2, seed=5)["data"]
    model = QHNetV2(basis="sto-3g", elements=[1, 6, 8], **TINY)
    ethanol_only = build_domain([(ETHANOL_Z, ETHANOL_POS)], cutoff=5.0)
    with pytest.warns(DomainWarning) as caught:
        res = evaluate(model, ds, extra={"domain": ethanol_only, "target": "full"})
    assert sorted(str(w.message).split(" is outside")[0] for w in caught) == [
        "molecule water:00000000", "molecule water:00000001"]
    assert res["n_out_of_domain"] == 2
    row = res["per_molecule"][0]
    assert row["in_domain"] is False and any(r.startswith("environment O(H,H)") for r in row["domain_reasons"])
    from qhnetv2.data.store import HamiltonianReader
    own = build_domain([(r["atomic_numbers"], r["positions"]) for r in HamiltonianReader(ds)], cutoff=5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DomainWarning)
        res = evaluate(model, ds, extra={"domain": own, "target": "full"})
    assert res["n_out_of_domain"] == 0 and res["per_molecule"][1]["in_domain"] is True


def test_training_writes_the_domain_into_every_checkpoint(tmp_path):
    pytest.importorskip("pyscf")
    pytest.importorskip("yaml")
    from qhnetv2.data.store import HamiltonianReader
    from qhnetv2.model import load_checkpoint
    from qhnetv2.training import load_config, train
    labelled = labelled_water(tmp_path, 3, seed=11, scale=0.05, n_train=2)
    ds, split = labelled["data"], labelled["split"]
    cfg = load_config("tiny", max_steps=2, val_every=2, log_every=1, device="cpu", target="full")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = train(cfg, ds, split, str(tmp_path / "run"), progress=False)
    finally:
        torch.set_num_threads(threads)
    rec = HamiltonianReader(ds)
    ids = rec.ids
    expected = build_domain([(rec[i]["atomic_numbers"], rec[i]["positions"]) for i in ids[:2]], cutoff=5.0,
                            n_ao_of={1: 1, 8: 5}.__getitem__)
    for path in (summary["best_checkpoint"], summary["last_checkpoint"]):
        dom = load_checkpoint(path)["extra"]["domain"]
        assert dom == expected and dom["n_ao"] == [7, 7]  # the train split only (not the valid molecule)
