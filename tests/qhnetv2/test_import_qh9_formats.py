"""Importers against files laid out exactly the way QH9's and SchNOrb's own code
write them (not the way our writer would):

* QH9 (divelab/AIRS OpenDFT/QHBench/QH9, dataset_generation_examples/ and
  datasets.py): raw SQLite files with the generators' table schemas and
  binding quirks, H = ``mf.get_fock()`` of a default B3LYP/def2-SVP RKS in
  PySCF's AO order, dynamic positions from ``mol.atom_coords()`` (Bohr) and the
  QM9 id bound as a NumPy int64 (stored as an 8-byte blob); the processed LMDBs
  with pickled dicts of the raw bytes under 4-byte big-endian keys.
* SchNOrb (atomistic-machine-learning/SchNOrb, data.py + extract_data.py):
  an ASE database written through SchNetPack >= 0.3's AtomsData encoding
  (base64 + _shape_/_dtype_; H, S float32 in ORCA's AO order; energy float64
  with the mean subtracted and stored in the metadata; forces float32), and the
  directly-stored arrays that the published MD17 files hold.

The fixture writers are this test's own code; only the layouts follow those
projects.  Sqlite3 stands in for apsw (same file format, same blob binding of
buffer objects)."""
import base64
import os
import pickle
import sqlite3

import numpy as np
import pytest

from qhnetv2.data import HamiltonianReader, import_qh9, import_schnorb

from qh_helpers import WATER_POS, WATER_Z

# geometries in Angstrom; an ammonia gives a second element pattern and size
NH3_Z = np.array([7, 1, 1, 1])
NH3_POS = np.array([[0.0, 0.0, 0.11], [0.0, 0.94, -0.26], [0.81, -0.47, -0.26],
                    [-0.82, -0.46, -0.25]])
MOLECULES = [(WATER_Z, WATER_POS), (NH3_Z, NH3_POS), (WATER_Z, WATER_POS * 1.02 + 0.05)]


def _qh9_style_label(z, pos_ang):
    """What QH9's generators do per molecule: default RKS B3LYP/def2svp, kernel, get_fock."""
    from pyscf import dft, gto
    mol = gto.Mole()
    mol.build(verbose=0, atom=[[int(a), p] for a, p in zip(z, pos_ang)], basis="def2svp",
              unit="ang")
    mf = dft.RKS(mol)
    mf.xc = "b3lyp"
    mf.kernel()
    return {"mol": mol, "ham": mf.get_fock(), "e_tot": float(mf.e_tot),
            "converged": bool(mf.converged), "ovlp": mol.intor("int1e_ovlp"),
            "z": np.asarray(z), "pos": np.asarray(pos_ang, dtype=np.float64)}


@pytest.fixture(scope="module")
def labels():
    return [_qh9_style_label(z, p) for z, p in MOLECULES]


def _blob(array):
    # the generators' helper: little-endian contiguous memory as a buffer
    return memoryview(np.ascontiguousarray(array))


def write_qh9_stable_raw(path, labels, qm9_ids):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE IF NOT EXISTS data (id INTEGER NOT NULL PRIMARY KEY,  N INTEGER, "
                "Z BLOB, pos BLOB, Ham BLOB)")
    for q, lab in zip(qm9_ids, labels):
        con.execute("INSERT INTO data (id, N, Z, pos, Ham) VALUES (?,?,?,?,?)",
                    (q, len(lab["z"]), _blob(lab["z"].astype(np.int32)), _blob(lab["pos"]),
                     _blob(lab["ham"])))
    con.commit()
    con.close()


def write_qh9_dynamic_raw(path, trajectories):
    """trajectories: [(qm9 id, [labels of its frames])], in sampling order."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE IF NOT EXISTS data (id INTEGER NOT NULL, geo_id INTEGER NOT NULL, "
                "N INTEGER, Z BLOB, pos BLOB, ekin FLOAT, epot FLOAT, etot FLOAT, time FLOAT, "
                "Ham BLOB, converged INT)")
    for q, frames in trajectories:
        for it, lab in enumerate(frames):
            ekin = 0.001 * (it + 1)
            con.execute("INSERT INTO data (id, geo_id, N, Z, pos, ekin, epot, etot, time, Ham, "
                        "converged) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (np.int64(q), it, len(lab["z"]), _blob(lab["z"].astype(np.int32)),
                         lab["mol"].atom_coords(), ekin, lab["e_tot"], ekin + lab["e_tot"],
                         50.0 * it, _blob(lab["ham"]), int(lab["converged"])))
    con.commit()
    con.close()


def write_qh9_processed_lmdb(raw_path, lmdb_dir, variant):
    """QH9's loader's conversion: every raw row -> pickled dict of its raw
    fields, key = QH9 id (stable) or row position (dynamic), 4 bytes big-endian."""
    import lmdb
    con = sqlite3.connect(raw_path)
    rows = con.execute("select * from data").fetchall()
    con.close()
    os.makedirs(os.path.dirname(lmdb_dir), exist_ok=True)
    env = lmdb.open(lmdb_dir, map_size=1 << 28)
    for position, row in enumerate(rows):
        with env.begin(write=True) as txn:
            if variant == "stable":
                item = {"id": row[0], "num_nodes": row[1], "atoms": row[2], "pos": row[3],
                        "Ham": row[4]}
                key = item["id"]
            else:
                item = {"id": int(np.frombuffer(row[0], dtype=np.int64)[0]), "geo_id": row[1],
                        "num_nodes": row[2], "atoms": row[3], "pos": row[4], "Ham": row[9]}
                key = position
            txn.put(key.to_bytes(length=4, byteorder="big"), pickle.dumps(item))
    env.close()


def _check_record(got, lab, energy=None):
    np.testing.assert_array_equal(got["atomic_numbers"], lab["z"])
    np.testing.assert_allclose(got["positions"], lab["pos"], rtol=0, atol=1e-12)
    # PySCF order, Hartree: bit-identical to what the generator computed
    np.testing.assert_array_equal(got["hamiltonian"], lab["ham"])
    np.testing.assert_allclose(got["overlap"], lab["ovlp"], rtol=0, atol=1e-12)
    if energy is None:
        assert np.isnan(got["energy"])
    else:
        assert got["energy"] == energy


@pytest.mark.parametrize("source", ["raw", "lmdb"])
def test_qh9_stable_files(tmp_path, labels, source):
    raw = str(tmp_path / "QH9Stable.db")
    write_qh9_stable_raw(raw, labels, qm9_ids=[0, 1, 2])
    path = raw
    if source == "lmdb":
        path = str(tmp_path / "processed" / "QH9Stable.lmdb")
        write_qh9_processed_lmdb(raw, path, "stable")
    summary = import_qh9(path, str(tmp_path / "ds"), variant="stable", orbital_order="auto",
                         verify=3, progress=False)
    # decided by the physics: QH9's files hold PySCF's own order
    assert summary["orbital_order"] == "pyscf"
    assert max(summary["verify_residuals"]) < 1e-4
    reader = HamiltonianReader(str(tmp_path / "ds"))
    assert reader.ids == ["qh9-stable:00000000", "qh9-stable:00000001", "qh9-stable:00000002"]
    for mol_id, lab in zip(reader.ids, labels):
        _check_record(reader[mol_id], lab)
    reader.close()


def test_qh9_stable_split_from_imported_ids(tmp_path, labels):
    from qhnetv2.data.split import make_split, qh9_stable_id_indices
    raw = str(tmp_path / "QH9Stable.db")
    write_qh9_stable_raw(raw, labels, qm9_ids=[0, 1, 2])
    import_qh9(raw, str(tmp_path / "ds"), orbital_order="pyscf", progress=False)
    split = make_split(str(tmp_path / "ds"), qh9="stable-id")
    ref = np.random.RandomState(seed=43).permutation(3)  # int(3*.8)=2, int(3*.1)=0
    assert split["train"] == sorted(f"qh9-stable:{k:08d}" for k in ref[:2])
    assert split["valid"] == [] and split["test"] == [f"qh9-stable:{ref[2]:08d}"]
    assert [a.tolist() for a in qh9_stable_id_indices(3)] == [ref[:2].tolist(), [],
                                                              ref[2:].tolist()]
    ood = make_split(str(tmp_path / "ds"), qh9="stable-ood")
    assert ood["train"] == sorted(HamiltonianReader(str(tmp_path / "ds")).ids)  # all <= 20 atoms


@pytest.mark.parametrize("source", ["raw", "lmdb"])
def test_qh9_dynamic_files(tmp_path, labels, source):
    # two "trajectories" (QM9 ids sampled out of order, as rng.choice does)
    trajectories = [(4021, [labels[0], labels[2]]), (17, [labels[1]])]
    raw = str(tmp_path / "QH9Dynamic_300k.db")
    write_qh9_dynamic_raw(raw, trajectories)
    con = sqlite3.connect(raw)
    assert con.execute("select typeof(id), typeof(pos) from data").fetchone() == ("blob", "blob")
    con.close()
    path = raw
    if source == "lmdb":
        path = str(tmp_path / "processed" / "QH9Dynamic.lmdb")
        write_qh9_processed_lmdb(raw, path, "dynamic")
    summary = import_qh9(path, str(tmp_path / "ds"), variant="dynamic", verify=1, progress=False)
    assert summary["orbital_order"] == "pyscf" and summary["n_imported"] == 3
    reader = HamiltonianReader(str(tmp_path / "ds"))
    assert reader.ids == ["qh9-dynamic:00000000:00004021:00000000",
                          "qh9-dynamic:00000001:00004021:00000001",
                          "qh9-dynamic:00000002:00000017:00000000"]
    expected = [labels[0], labels[2], labels[1]]
    for mol_id, lab in zip(reader.ids, expected):
        got = reader[mol_id]
        # Bohr in the file -> Angstrom, through PySCF's own Bohr constant
        _check_record(got, lab, energy=lab["e_tot"] if source == "raw" else None)
        assert got["converged"]
    reader.close()
    # importing it as stable would merge the geometries of one molecule: refused
    with pytest.raises(ValueError, match="QH9-dynamic file"):
        import_qh9(path, str(tmp_path / "ds_wrong"), variant="stable", orbital_order="pyscf",
                   progress=False)


# ----------------------------------------------------------------------------- SchNOrb
# ORCA's order within a shell, as PySCF indices (m = 0, +1, -1, +2, -2; p = z, x, y)
ORCA_SHELL = {0: [0], 1: [2, 0, 1], 2: [2, 3, 1, 4, 0]}


def _pyscf_to_orca(mat, mol):
    idx, start = [], 0
    for b in range(mol.nbas):
        l = mol.bas_angular(b)
        for _ in range(mol.bas_nctr(b)):
            idx.extend(start + k for k in ORCA_SHELL[l])
            start += 2 * l + 1
    return mat[np.ix_(idx, idx)]


def _schnetpack_encode(props):
    """SchNetPack >= 0.3 AtomsData row data: base64 of the bytes, shape, dtype."""
    data = {}
    for name, arr in props.items():
        data[name] = base64.b64encode(arr.tobytes()).decode("utf-8")
        data["_shape_" + name] = arr.shape
        data["_dtype_" + name] = str(arr.dtype)
    return data


@pytest.fixture(scope="module")
def pbe_labels():
    from qhnetv2.data.labelling import build_mol, label_molecule, make_settings
    s = make_settings(xc="pbe", grid_level=1, conv_tol=1e-9)
    out = []
    for z, pos in MOLECULES[:2]:
        rec = label_molecule(z, pos, s)
        rec["mol"] = build_mol(z, pos, "def2-svp")
        rec["forces"] = np.random.default_rng(len(z)).normal(size=(len(z), 3)) * 0.01
        out.append(rec)
    return out


@pytest.mark.parametrize("encoding", ["schnetpack", "direct"])
def test_schnorb_files(tmp_path, pbe_labels, encoding):
    import ase
    import ase.db
    path = str(tmp_path / "schnorb_hamiltonian_water.db")
    mean = float(np.mean([r["energy"] for r in pbe_labels]))
    with ase.db.connect(path) as db:
        for rec in pbe_labels:
            h = _pyscf_to_orca(rec["hamiltonian"], rec["mol"])
            s = _pyscf_to_orca(rec["overlap"], rec["mol"])
            atoms = ase.Atoms(numbers=rec["atomic_numbers"], positions=rec["positions"])
            if encoding == "schnetpack":
                # SchNOrb's parser casts H, S and forces to float32, keeps energy
                # float64 [1] and its extraction script subtracts the mean energy
                data = _schnetpack_encode({
                    "hamiltonian": h.astype(np.float32), "overlap": s.astype(np.float32),
                    "energy": np.array([rec["energy"]]) - mean,
                    "forces": rec["forces"].astype(np.float32)})
            else:
                data = {"hamiltonian": h, "overlap": s, "energy": np.array([rec["energy"]]),
                        "forces": rec["forces"]}
            db.write(atoms, data=data)
    if encoding == "schnetpack":
        with ase.db.connect(path) as db:
            db.metadata = {"basisdef": [[0]], "mean_energy": mean}
    summary = import_schnorb(path, str(tmp_path / "ds"), verify=2, progress=False)
    assert max(summary["overlap_deviations"]) < (1e-6 if encoding == "schnetpack" else 1e-12)
    reader = HamiltonianReader(str(tmp_path / "ds"))
    assert reader.ids == ["schnorb_hamiltonian_water:00000001",
                          "schnorb_hamiltonian_water:00000002"]
    for mol_id, rec in zip(reader.ids, pbe_labels):
        got = reader[mol_id]
        np.testing.assert_array_equal(got["atomic_numbers"], rec["atomic_numbers"])
        np.testing.assert_allclose(got["positions"], rec["positions"], rtol=0, atol=1e-12)
        if encoding == "schnetpack":
            # exactly the float32 values, back in PySCF order
            np.testing.assert_array_equal(got["hamiltonian"],
                                          rec["hamiltonian"].astype(np.float32).astype(float))
            np.testing.assert_array_equal(got["forces"],
                                          rec["forces"].astype(np.float32).astype(float))
            assert abs(got["energy"] - rec["energy"]) < 1e-9  # total again
        else:
            np.testing.assert_array_equal(got["hamiltonian"], rec["hamiltonian"])
            np.testing.assert_array_equal(got["overlap"], rec["overlap"])
            np.testing.assert_array_equal(got["forces"], rec["forces"])
            assert got["energy"] == rec["energy"]
    reader.close()


def test_schnorb_unknown_text_encoding(tmp_path, pbe_labels):
    import ase
    import ase.db
    rec = pbe_labels[0]
    path = str(tmp_path / "bad.db")
    with ase.db.connect(path) as db:
        data = _schnetpack_encode({"hamiltonian": rec["hamiltonian"],
                                   "overlap": rec["overlap"]})
        del data["_shape_hamiltonian"]
        db.write(ase.Atoms(numbers=rec["atomic_numbers"], positions=rec["positions"]),
                 data=data)
    with pytest.raises(ValueError, match="_shape_hamiltonian"):
        import_schnorb(path, str(tmp_path / "ds"), verify=1, progress=False)
