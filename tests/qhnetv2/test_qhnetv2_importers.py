"""Importers: self-written files in QH9's and SchNOrb's formats and conventions
are converted back to PySCF order; proven numerically (self-consistency of H,
PySCF's overlap, rotation equivariance)."""
import pickle
import sqlite3

import numpy as np
import pytest

from qhnetv2.data import HamiltonianReader, import_qh9, import_schnorb
from qhnetv2.data.conventions import ao_permutation, from_pyscf, to_pyscf
from qhnetv2.data.labelling import build_mol, label_molecule, make_settings

from qh_helpers import WATER_POS, WATER_Z, random_rotation, wigner_D

BOHR = 0.52917721092


@pytest.fixture(scope="module")
def qh9_waters():
    """Two waters labelled exactly as QH9 (B3LYP / def2-SVP / grid 3)."""
    s = make_settings()
    return [label_molecule(WATER_Z, pos, s) for pos in (WATER_POS, WATER_POS * 1.03 + 0.1)]


def test_convention_tables():
    # QH9 stores p as (py, pz, px): file component k is PySCF component [1, 2, 0][k]
    idx, sign = ao_permutation("qh9", [0, 1, 2])
    assert idx.tolist() == [0, 2, 3, 1, 4, 5, 6, 7, 8] and (sign == 1).all()
    # ORCA: m = 0, +1, -1, +2, -2 ...; p = (pz, px, py); f |m|=3 sign flipped
    idx, sign = ao_permutation("orca", [1, 2, 3])
    assert idx[:3].tolist() == [2, 0, 1]
    assert idx[3:8].tolist() == [5, 6, 4, 7, 3]
    assert idx[8:].tolist() == [11, 12, 10, 13, 9, 14, 8]
    assert sign[8:].tolist() == [1, 1, 1, 1, 1, -1, -1]
    rng = np.random.default_rng(0)
    z = [8, 1, 1]
    m = rng.normal(size=(2, 24, 24))
    for conv in ("qh9", "orca", "pyscf"):
        np.testing.assert_array_equal(to_pyscf(from_pyscf(m, conv, "def2-svp", z), conv,
                                               "def2-svp", z), m)
    with pytest.raises(ValueError, match="convention"):
        to_pyscf(m[0], "gaussian", "def2-svp", z)
    with pytest.raises(ValueError, match="shape"):
        to_pyscf(m[0, :5, :5], "qh9", "def2-svp", z)


def _write_qh9_sqlite(path, labels, order):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE data (id INTEGER PRIMARY KEY, N INTEGER, Z BLOB, pos BLOB, Ham BLOB)")
    for i, rec in enumerate(labels):
        h = from_pyscf(rec["hamiltonian"], order, "def2-svp", rec["atomic_numbers"])
        con.execute("INSERT INTO data VALUES (?, ?, ?, ?, ?)",
                    (i, len(rec["atomic_numbers"]),
                     rec["atomic_numbers"].astype(np.int32).tobytes(),
                     rec["positions"].astype(np.float64).tobytes(), h.tobytes()))
    con.commit()
    con.close()


@pytest.mark.parametrize("order", ["qh9", "pyscf"])
def test_qh9_stable_sqlite(tmp_path, qh9_waters, order):
    path = str(tmp_path / "QH9Stable.db")
    _write_qh9_sqlite(path, qh9_waters, order)
    summary = import_qh9(path, str(tmp_path / "ds"), variant="stable", orbital_order="auto",
                         verify=1, progress=False)
    assert summary["orbital_order"] == order  # detected from the physics, not assumed
    assert summary["n_imported"] == 2 and summary["verify_residuals"][0] < 1e-5
    reader = HamiltonianReader(str(tmp_path / "ds"))
    assert reader.ids == ["qh9-stable:00000000", "qh9-stable:00000001"]
    for mol_id, rec in zip(reader.ids, qh9_waters):
        got = reader[mol_id]
        np.testing.assert_allclose(got["hamiltonian"], rec["hamiltonian"], atol=1e-14)
        np.testing.assert_allclose(got["overlap"], rec["overlap"], atol=1e-12)
        np.testing.assert_allclose(got["positions"], rec["positions"], atol=1e-14)
        np.testing.assert_allclose(got["mo_energy"], rec["mo_energy"], atol=1e-10)
        assert np.isnan(got["energy"])
    reader.close()
    # resumable: a second import adds nothing
    again = import_qh9(path, str(tmp_path / "ds"), orbital_order=order, progress=False)
    assert again["n_imported"] == 0


def test_qh9_wrong_order_is_caught(tmp_path, qh9_waters):
    path = str(tmp_path / "QH9Stable.db")
    _write_qh9_sqlite(path, qh9_waters, "qh9")
    with pytest.raises(ValueError, match="not self-consistent"):
        import_qh9(path, str(tmp_path / "ds"), orbital_order="pyscf", verify=1, progress=False)


def test_qh9_dynamic_lmdb_bohr(tmp_path, qh9_waters):
    import lmdb
    path = str(tmp_path / "QH9Dynamic.lmdb")
    env = lmdb.open(path, subdir=False, map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, rec in enumerate(qh9_waters):
            z = rec["atomic_numbers"]
            item = {"id": 17, "geo_id": i, "num_nodes": len(z),
                    "atoms": z.astype(np.int32).tobytes(),
                    "pos": (rec["positions"] / BOHR).tobytes(),
                    "Ham": from_pyscf(rec["hamiltonian"], "qh9", "def2-svp", z).tobytes()}
            txn.put(str(i).encode(), pickle.dumps(item))
        txn.put(b"length", pickle.dumps(len(qh9_waters)))
    env.close()
    summary = import_qh9(path, str(tmp_path / "ds"), variant="dynamic", progress=False)
    assert summary["orbital_order"] == "qh9" and summary["n_imported"] == 2
    reader = HamiltonianReader(str(tmp_path / "ds"))
    # <row>:<QH9 id>:<geo_id>; the row (here from decimal-text keys) is what QH9's splits use
    assert reader.ids == ["qh9-dynamic:00000000:00000017:00000000",
                          "qh9-dynamic:00000001:00000017:00000001"]
    for mol_id, rec in zip(reader.ids, qh9_waters):
        got = reader[mol_id]
        np.testing.assert_allclose(got["positions"], rec["positions"], atol=1e-12)  # Angstrom
        np.testing.assert_allclose(got["hamiltonian"], rec["hamiltonian"], atol=1e-14)


# The test's own statement of ORCA's order, written out per shell type
# (independent of qhnetv2.data.conventions): PySCF index of each ORCA component.
ORCA_FROM_PYSCF = {0: [0], 1: [2, 0, 1], 2: [2, 3, 1, 4, 0]}  # s; (z,x,y); (0,+1,-1,+2,-2)


def _to_orca_by_hand(mat, mol):
    order, offset = [], 0
    for b in range(mol.nbas):
        l = mol.bas_angular(b)
        for _ in range(mol.bas_nctr(b)):
            order += [offset + k for k in ORCA_FROM_PYSCF[l]]
            offset += 2 * l + 1
    return mat[np.ix_(order, order)]


def _write_schnorb_db(path, labels, mols, convert=True):
    import ase
    import ase.db
    db = ase.db.connect(path)
    for rec, mol in zip(labels, mols):
        h, s = rec["hamiltonian"], rec["overlap"]
        if convert:
            h, s = _to_orca_by_hand(h, mol), _to_orca_by_hand(s, mol)
        atoms = ase.Atoms(numbers=rec["atomic_numbers"], positions=rec["positions"])
        db.write(atoms, data={"hamiltonian": h.ravel(), "overlap": s, "energy": [rec["energy"]],
                              "forces": np.zeros((len(atoms), 3))})


def test_schnorb_orca_pbe(tmp_path):
    settings = make_settings(xc="pbe", grid_level=3, conv_tol=1e-10)
    Q = random_rotation(5)
    geoms = [WATER_POS, WATER_POS @ Q.T]
    labels = [label_molecule(WATER_Z, g, settings) for g in geoms]
    mols = [build_mol(WATER_Z, g, "def2-svp") for g in geoms]
    path = str(tmp_path / "water.db")
    _write_schnorb_db(path, labels, mols)
    summary = import_schnorb(path, str(tmp_path / "ds"), verify=2, progress=False)
    assert max(summary["overlap_deviations"]) < 1e-12
    reader = HamiltonianReader(str(tmp_path / "ds"))
    r0, r1 = reader["water:00000001"], reader["water:00000002"]
    np.testing.assert_allclose(r0["hamiltonian"], labels[0]["hamiltonian"], atol=1e-14)
    assert r0["energy"] == labels[0]["energy"] and r0["forces"].shape == (3, 3)
    # converted matrices obey PySCF's rotation relation (permutation and signs right)
    D = wigner_D(mols[0], Q)
    np.testing.assert_allclose(D @ r0["overlap"] @ D.T, r1["overlap"], atol=1e-10)
    assert np.abs(D @ r0["hamiltonian"] @ D.T - r1["hamiltonian"]).max() < 2e-4
    # ... which the unconverted ORCA-ordered matrix does not
    h_orca = _to_orca_by_hand(labels[0]["hamiltonian"], mols[0])
    assert np.abs(D @ h_orca @ D.T - _to_orca_by_hand(labels[1]["hamiltonian"], mols[0])).max() > 1e-2


def test_schnorb_wrong_convention_is_caught(tmp_path):
    settings = make_settings(xc="pbe", grid_level=0, conv_tol=1e-8)
    labels = [label_molecule(WATER_Z, WATER_POS, settings)]
    mols = [build_mol(WATER_Z, WATER_POS, "def2-svp")]
    path = str(tmp_path / "water.db")
    _write_schnorb_db(path, labels, mols, convert=False)  # PySCF order, not ORCA's
    with pytest.raises(ValueError, match="overlap"):
        import_schnorb(path, str(tmp_path / "ds"), verify=1, progress=False)
