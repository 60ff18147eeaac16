"""QH9's published splits: our implementation against a plain transcription of
QH9's procedure (written here, in the test's own words, straight from the
description in docs/data.md), on synthetic id lists; plus the properties every
split must have (disjoint, complete, conformers of one molecule together)."""
import json
import random
import sqlite3

import numpy as np
import pytest

from qhnetv2.data import HamiltonianReader
from qhnetv2.data.split import (QH9_KINDS, make_split, qh9_dynamic_geo_indices,
                                qh9_dynamic_mol_indices, qh9_split, qh9_stable_id_indices,
                                qh9_stable_ood_indices)

import qh_helpers  # noqa: F401  (puts the repository on sys.path)


# ----------------------------------------------------------------------------- transcriptions
def reference_stable_id(n):
    """Shuffle 0..n-1 with numpy's legacy generator seeded 43; first floor(0.8 n)
    train, next floor(0.1 n) valid, the remaining ones test."""
    shuffled = np.random.RandomState(seed=43).permutation(n)
    a = int(n * 0.8)
    b = a + int(n * 0.1)
    return shuffled[:a], shuffled[a:b], shuffled[b:]


def reference_stable_ood(sizes):
    sizes = np.array(sizes)
    return (np.where(sizes <= 20)[0], np.where((sizes >= 21) & (sizes <= 22))[0],
            np.where(sizes >= 23)[0])


def reference_dynamic_geo(n_rows, per_mol=100, n_train=80, n_valid=10):
    """Walk the rows; whenever a molecule's last row is reached, shuffle its
    per_mol local positions with RandomState(that row's index)."""
    train, valid, test = [], [], []
    first_row_of_molecule = 0
    for row in range(n_rows):
        if (row + 1) % per_mol != 0:
            continue
        local = np.random.RandomState(seed=row).permutation(per_mol)
        train += list(first_row_of_molecule + local[:n_train])
        valid += list(first_row_of_molecule + local[n_train:n_train + n_valid])
        test += list(first_row_of_molecule + local[n_train + n_valid:])
        first_row_of_molecule += per_mol
    return np.array(train, dtype=np.int64), np.array(valid, dtype=np.int64), \
        np.array(test, dtype=np.int64)


def reference_dynamic_mol(n_molecules, per_mol=100):
    """Python's module-level random: seed(43), shuffle the molecule numbers,
    cut 80/10/10 by truncation; a row belongs to molecule row // per_mol."""
    order = list(range(n_molecules))
    random.seed(43)
    random.shuffle(order)
    a = int(n_molecules * 0.8)
    b = a + int(n_molecules * 0.1)
    molecule_of_row = np.repeat(np.arange(n_molecules), per_mol)
    return tuple(np.where(np.isin(molecule_of_row, order[lo:hi]))[0]
                 for lo, hi in ((0, a), (a, b), (b, n_molecules)))


def _same(ours, ref):
    assert len(ours) == 3
    for o, r in zip(ours, ref):
        np.testing.assert_array_equal(np.asarray(o), np.asarray(r))  # same order, too


def _check_partition(parts, universe):
    flat = np.concatenate(parts)
    assert len(flat) == len(set(flat.tolist()))                   # disjoint
    assert set(flat.tolist()) == set(universe)                      # complete


# ----------------------------------------------------------------------------- index level
@pytest.mark.parametrize("n", [0, 1, 7, 10, 131, 1000, 130831])
def test_stable_id_matches_transcription(n):
    parts = qh9_stable_id_indices(n)
    _same(parts, reference_stable_id(n))
    _check_partition(parts, range(n))


def test_stable_id_published_sizes():
    # QH9-stable has 130,831 molecules: 104,664 / 13,083 / 13,084 in the paper's split
    tr, va, te = qh9_stable_id_indices(130831)
    assert (len(tr), len(va), len(te)) == (104664, 13083, 13084)


def test_stable_ood_matches_transcription():
    rng = np.random.default_rng(3)
    sizes = rng.integers(3, 30, size=500)
    parts = qh9_stable_ood_indices(sizes)
    _same(parts, reference_stable_ood(sizes))
    _check_partition(parts, range(500))
    assert sizes[parts[0]].max() <= 20 and set(sizes[parts[1]]) <= {21, 22}
    assert sizes[parts[2]].min() >= 23


@pytest.mark.parametrize("n_rows,per_mol,counts", [(1000, 100, (80, 10)), (1050, 100, (80, 10)),
                                                   (60, 6, (4, 1)), (0, 100, (80, 10))])
def test_dynamic_geo_matches_transcription(n_rows, per_mol, counts):
    parts = qh9_dynamic_geo_indices(n_rows, per_mol, counts)
    _same(parts, reference_dynamic_geo(n_rows, per_mol, *counts))
    complete = (n_rows // per_mol) * per_mol
    _check_partition(parts, range(complete))  # a trailing partial block is in no split
    # every molecule contributes exactly the same counts to each split
    for part, c in zip(parts, (counts[0], counts[1], per_mol - sum(counts))):
        assert (np.bincount(part // per_mol, minlength=n_rows // per_mol) == c).all()


@pytest.mark.parametrize("n_molecules,per_mol", [(2998, 100), (999, 100), (37, 5), (1, 3)])
def test_dynamic_mol_matches_transcription(n_molecules, per_mol):
    parts = qh9_dynamic_mol_indices(n_molecules * per_mol, per_mol)
    _same(parts, reference_dynamic_mol(n_molecules, per_mol))
    _check_partition(parts, range(n_molecules * per_mol))
    owners = [set((p // per_mol).tolist()) for p in parts]
    assert not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])


def test_dynamic_mol_published_sizes():
    tr, va, te = qh9_dynamic_mol_indices(299800)  # QH9-dynamic-300k: 2998 molecules x 100
    assert (len(tr), len(va), len(te)) == (239800, 29900, 30100)


def test_qh9_rng_is_not_default_rng():
    # guard against "simplifying" to numpy's new Generator: a different split
    assert not np.array_equal(qh9_stable_id_indices(100)[0],
                              np.random.default_rng(43).permutation(100)[:80])


# ----------------------------------------------------------------------------- id level
def _stable_ids(n, prefix="qh9-stable"):
    return [f"{prefix}:{k:08d}" for k in range(n)]


def _dynamic_ids(qm9_ids, per_mol, prefix="qh9-dynamic"):
    ids, row = [], 0
    for q in qm9_ids:
        for geo in range(per_mol):
            ids.append(f"{prefix}:{row:08d}:{q:08d}:{geo:08d}")
            row += 1
    return ids


def test_qh9_split_stable_ids():
    ids = _stable_ids(53)
    rng = np.random.default_rng(0)
    shuffled = list(rng.permutation(ids))  # input order must not matter
    split = qh9_split(shuffled, "stable-id")
    ref = reference_stable_id(53)
    for name, r in zip(("train", "valid", "test"), ref):
        assert split[name] == sorted(ids[k] for k in r)
    with pytest.raises(ValueError, match="exactly 0..51"):
        qh9_split(ids[:20] + ids[21:], "stable-id")  # a gap: not the complete file
    with pytest.raises(ValueError, match="several prefixes"):
        qh9_split(["water:00000099"] + ids, "stable-id")
    with pytest.raises(ValueError, match="not of the form"):
        qh9_split(["water:0000009x"] + ids, "stable-id")
    with pytest.raises(ValueError, match="kind"):
        qh9_split(ids, "stable")


def test_qh9_split_stable_ood_ids():
    ids = _stable_ids(40)
    sizes = {i: 18 + (k % 8) for k, i in enumerate(ids)}
    split = qh9_split(ids, "stable-ood", n_atoms=sizes)
    assert all(sizes[i] <= 20 for i in split["train"])
    assert all(sizes[i] in (21, 22) for i in split["valid"])
    assert all(sizes[i] >= 23 for i in split["test"])
    assert sorted(split["train"] + split["valid"] + split["test"]) == ids
    with pytest.raises(ValueError, match="n_atoms"):
        qh9_split(ids, "stable-ood")


def test_qh9_split_dynamic_ids_keep_conformers_together():
    per_mol = 10
    qm9 = [int(q) for q in np.random.default_rng(1).choice(5000, size=23, replace=False)]
    ids = _dynamic_ids(qm9, per_mol)
    mol = qh9_split(ids, "dynamic-mol", geometries_per_molecule=per_mol)
    ref = reference_dynamic_mol(23, per_mol)
    for name, r in zip(("train", "valid", "test"), ref):
        assert mol[name] == [ids[k] for k in r]
        molecules = {i.split(":")[2] for i in mol[name]}
        assert all(sum(i.split(":")[2] == m for i in mol[name]) == per_mol for m in molecules)
    owners = [{i.split(":")[2] for i in mol[n]} for n in ("train", "valid", "test")]
    assert not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])

    geo = qh9_split(ids, "dynamic-geo", geometries_per_molecule=per_mol, geometry_counts=(8, 1))
    ref = reference_dynamic_geo(len(ids), per_mol, 8, 1)
    for name, r in zip(("train", "valid", "test"), ref):
        assert geo[name] == sorted(ids[k] for k in r)
    assert geo["n_unassigned"] == 0

    # a block mixing two molecules breaks QH9's assumption: refused
    broken = list(ids)
    broken[3] = broken[3].replace(f":{qm9[0]:08d}:", f":{qm9[1]:08d}:")
    with pytest.raises(ValueError, match="several molecules"):
        qh9_split(broken, "dynamic-mol", geometries_per_molecule=per_mol)
    with pytest.raises(ValueError, match="rows must be exactly"):
        qh9_split(ids[1:], "dynamic-geo", geometries_per_molecule=per_mol)


# ----------------------------------------------------------------------------- through a dataset
def _write_fake_qh9_dynamic_db(path, qm9_ids, per_mol):
    """A QH9-dynamic raw file laid out as QH9's generator writes it (fake H:
    the split only needs the ids; the importer is checked in test_import_qh9_formats)."""
    from pyscf import gto
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE IF NOT EXISTS data (id INTEGER NOT NULL, geo_id INTEGER NOT NULL, "
                "N INTEGER, Z BLOB, pos BLOB, ekin FLOAT, epot FLOAT, etot FLOAT, time FLOAT, "
                "Ham BLOB, converged INT)")
    z = np.array([8, 1, 1], dtype=np.int32)
    rng = np.random.default_rng(5)
    for q in qm9_ids:
        for geo in range(per_mol):
            pos_ang = np.array([[0, 0, 0.12], [0.76, 0, -0.47], [-0.76, 0, -0.47]]) \
                + 0.02 * rng.normal(size=(3, 3))
            mol = gto.M(atom=[(int(a), tuple(p)) for a, p in zip(z, pos_ang)],
                        basis="def2svp", unit="ang", verbose=0)
            h = rng.normal(size=(mol.nao, mol.nao))
            h = h + h.T
            con.execute("INSERT INTO data (id, geo_id, N, Z, pos, ekin, epot, etot, time, Ham, "
                        "converged) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (np.int64(q), geo, 3, memoryview(z), mol.atom_coords(), 0.0, -76.0,
                         -76.0, 50.0 * geo, memoryview(np.ascontiguousarray(h)), 1))
    con.commit()
    con.close()


def test_make_split_qh9_dynamic_cli(tmp_path):
    from qhnetv2.data import import_qh9
    from qhnetv2.data.commands import register
    import argparse

    per_mol = 4
    qm9 = [907, 12, 4410, 3, 77, 1500, 260, 31, 5, 64]  # sampled order, not sorted (as QH9)
    raw = str(tmp_path / "QH9Dynamic_300k.db")
    _write_fake_qh9_dynamic_db(raw, qm9, per_mol)
    ds = str(tmp_path / "ds")
    import_qh9(raw, ds, variant="dynamic", orbital_order="pyscf", progress=False)
    ids = HamiltonianReader(ds).ids
    assert ids[:2] == ["qh9-dynamic:00000000:00000907:00000000",
                       "qh9-dynamic:00000001:00000907:00000001"]

    parser = argparse.ArgumentParser()
    register(parser)
    out = str(tmp_path / "mol.json")
    args = parser.parse_args(["split", ds, "--out", out, "--qh9", "dynamic-mol",
                              "--geometries-per-molecule", str(per_mol)])
    assert args.func(args) == 0
    with open(out) as f:
        split = json.load(f)
    assert split["method"] == "qh9-dynamic-mol"
    ref = reference_dynamic_mol(len(qm9), per_mol)
    for name, r in zip(("train", "valid", "test"), ref):
        assert split[name] == [ids[k] for k in r]

    geo = make_split(ds, qh9="dynamic-geo", geometries_per_molecule=per_mol,
                     geometry_counts=(2, 1))
    ref = reference_dynamic_geo(len(ids), per_mol, 2, 1)
    for name, r in zip(("train", "valid", "test"), ref):
        assert geo[name] == sorted(ids[k] for k in r)
    assert set(QH9_KINDS) == {"stable-id", "stable-ood", "dynamic-geo", "dynamic-mol"}
