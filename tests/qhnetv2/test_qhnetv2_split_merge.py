"""Shards + merge (nothing missing or duplicated) and reproducible splits."""
import json
import os
import shutil

import numpy as np
import pytest

from qhnetv2.data import HamiltonianReader, build_dataset, make_split, merge_datasets
from qhnetv2.data.build import parse_shard, shard_items
from qhnetv2.data.geometries import read_geometries
from qhnetv2.data.store import DatasetWriter

from qh_helpers import write_xyz

HF = {"xc": "hf", "basis": "sto-3g", "conv_tol": 1e-10}
# molecules of 2..5 atoms for the size split
SMALL = [
    (np.array([1, 1]), np.array([[0, 0, 0], [0, 0, 0.74]])),
    (np.array([8, 1, 1]), np.array([[0, 0, 0.12], [0.76, 0, -0.47], [-0.76, 0, -0.47]])),
    (np.array([7, 1, 1, 1]), np.array([[0, 0, 0.1], [0.94, 0, -0.27], [-0.47, 0.81, -0.27],
                                       [-0.47, -0.81, -0.27]])),
    (np.array([6, 1, 1, 1, 1]), np.array([[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63],
                                          [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]])),
]


@pytest.fixture(scope="module")
def geo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    frames = [(z, p + rng.normal(scale=0.02, size=p.shape)) for _ in range(2) for z, p in SMALL]
    frames.append((np.array([1]), np.zeros((1, 3))))  # H atom: odd electrons -> failure
    return write_xyz(tmp / "mix.xyz", frames), tmp


def test_shard_partition_is_deterministic_and_disjoint(geo):
    path, _ = geo
    items, _ = read_geometries([path])
    parts = [shard_items(items, (k, 3)) for k in range(3)]
    ids = [it.mol_id for part in parts for it in part]
    assert sorted(ids) == sorted(it.mol_id for it in items) and len(set(ids)) == len(ids)
    assert [it.index for it in parts[1]] == [i for i in range(len(items)) if i % 3 == 1]
    assert parse_shard("0/1") == (0, 1) and parse_shard(None) is None


def test_shards_merge_to_the_unsharded_dataset(geo):
    path, tmp = geo
    parts = []
    for k in range(3):
        out = str(tmp / f"part{k}")
        build_dataset([path], out, HF, workers=0, shard=f"{k}/3", progress=False)
        parts.append(out)
    full = str(tmp / "full")
    build_dataset([path], full, HF, workers=0, progress=False)
    merged = str(tmp / "merged")
    summary = merge_datasets(parts, merged, progress=False)
    assert summary["n_records"] == 8 and summary["n_failures"] == 1
    a, b = HamiltonianReader(merged), HamiltonianReader(full)
    assert a.ids == b.ids and a.failure_ids == b.failure_ids == ["mix:00000008"]
    for mol_id in a.ids:
        np.testing.assert_allclose(a[mol_id]["hamiltonian"], b[mol_id]["hamiltonian"], atol=1e-9)
    assert a.meta["shard"] is None and len(a.meta["merged_from"]) == 3
    a.close(); b.close()

    with pytest.raises(FileExistsError):
        merge_datasets(parts, merged, progress=False)
    with pytest.raises(ValueError, match="shards \\[2\\] of 3 are missing"):
        merge_datasets(parts[:2], str(tmp / "m2"), progress=False)
    with pytest.raises(ValueError, match="more than one part"):
        merge_datasets(parts + [parts[0]], str(tmp / "m3"), progress=False)
    # a shard with a molecule neither labelled nor failed (an unfinished run)
    broken = str(tmp / "broken1")
    shutil.copytree(parts[1], broken)
    w = DatasetWriter(broken)
    victim = sorted(w.record_ids())[0]
    with w.env.begin(write=True) as txn:
        txn.delete(victim.encode())
    w.close()
    with pytest.raises(ValueError, match="neither labelled nor recorded"):
        merge_datasets([parts[0], broken, parts[2]], str(tmp / "m4"), progress=False)
    assert not os.path.exists(str(tmp / "m4"))
    ok = merge_datasets([parts[0], broken, parts[2]], str(tmp / "m5"), allow_missing=True,
                        progress=False)
    assert ok["n_missing"] == 1 and ok["n_records"] == 7
    # resuming the unfinished shard completes it, then the merge is accepted
    build_dataset([path], broken, HF, workers=0, shard="1/3", progress=False)
    merge_datasets([parts[0], broken, parts[2]], str(tmp / "m6"), progress=False)


def test_splits(geo):
    path, tmp = geo
    ds = str(tmp / "for_split")
    build_dataset([path], ds, HF, workers=0, progress=False)
    s1 = make_split(ds, "random", seed=1, fractions=(0.5, 0.25, 0.25), out=str(tmp / "s1.json"))
    s1b = make_split(ds, "random", seed=1, fractions=(0.5, 0.25, 0.25))
    s2 = make_split(ds, "random", seed=2, fractions=(0.5, 0.25, 0.25))
    with open(tmp / "s1.json") as f:
        assert json.load(f)["train"] == s1["train"]
    assert {k: s1[k] for k in ("train", "valid", "test")} == \
        {k: s1b[k] for k in ("train", "valid", "test")}
    assert s1["train"] != s2["train"]
    everything = s1["train"] + s1["valid"] + s1["test"]
    assert sorted(everything) == HamiltonianReader(ds).ids  # failures are not in splits
    assert (len(s1["train"]), len(s1["valid"]), len(s1["test"])) == (4, 2, 2)

    ood = make_split(ds, "size", size_bounds=(3, 4))
    sizes = {i: HamiltonianReader(ds)[i]["atomic_numbers"].size for i in everything}
    assert all(sizes[i] <= 3 for i in ood["train"]) and len(ood["train"]) == 4
    assert all(sizes[i] == 4 for i in ood["valid"]) and len(ood["valid"]) == 2
    assert all(sizes[i] == 5 for i in ood["test"]) and len(ood["test"]) == 2
    by_fraction = make_split(ds, "size", fractions=(0.5, 0.25, 0.25))
    assert by_fraction["size_bounds"] == [3, 4]
    with pytest.raises(ValueError, match="fractions"):
        make_split(ds, "random", fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="method"):
        make_split(ds, "scaffold")
