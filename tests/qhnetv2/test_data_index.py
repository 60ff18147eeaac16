"""The per-dataset index (atomic numbers, positions, AO counts) and what training reads.

A training run's start needs only each molecule's atomic numbers, positions and AO
count (size bucketing, element list, training domain).  For QH9-stable reading them
from the records meant reading ~60 GB on every rank; the index is written by
build / import / merge and, for older datasets, computed once from the records'
small fields.  Reads are counted by wrapping the record decoder.
"""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pyscf")
pytest.importorskip("yaml")

from qh_helpers import labelled_water, water_frames, write_xyz  # noqa: E402


@pytest.fixture(scope="module")
def water(tmp_path_factory):
    root = tmp_path_factory.mktemp("index_water")
    d = labelled_water(root, 5, seed=7, scale=0.05, n_train=3)
    from qhnetv2.data.split import write_json_atomic
    from qhnetv2.data.store import HamiltonianReader

    ids = HamiltonianReader(d["data"]).ids
    d["split_noval"] = os.path.join(str(root), "split_noval.json")
    write_json_atomic(d["split_noval"], {"train": ids[:3], "valid": [], "test": []})
    return d


class Counter:
    """Wraps ``store.decode_record`` and ``store.record_summary`` and records each call."""

    def __init__(self, monkeypatch, forbid_summary=False, forbid_decode=False):
        from qhnetv2.data import store

        self.decoded, self.summarised = [], 0
        real_decode, real_summary = store.decode_record, store.record_summary

        def decode(data, fields=None):
            if forbid_decode:
                raise AssertionError("a record was decoded")
            self.decoded.append(None if fields is None else tuple(fields))
            return real_decode(data, fields)

        def summary(data):
            if forbid_summary:
                raise AssertionError("a record was summarised: the index should cover it")
            self.summarised += 1
            return real_summary(data)

        monkeypatch.setattr(store, "decode_record", decode)
        monkeypatch.setattr(store, "record_summary", summary)


def _expected(data):
    from qhnetv2.data.store import HamiltonianReader

    r = HamiltonianReader(data)
    return {i: (r[i]["atomic_numbers"], r[i]["positions"], r[i]["hamiltonian"].shape[0]) for i in r.ids}


def _same(index, expected):
    assert sorted(index) == sorted(expected)
    for k, (z, pos, n_ao) in expected.items():
        zi, posi, n_aoi = index[k]
        assert np.array_equal(zi, z) and np.array_equal(posi, pos) and n_aoi == n_ao, k


def test_build_writes_the_index(water):
    from qhnetv2.data.store import INDEX_FILE, read_index_file

    assert os.path.isfile(os.path.join(water["data"], INDEX_FILE))
    _same(read_index_file(water["data"]), _expected(water["data"]))


def test_old_dataset_index_is_computed_from_small_fields_once_and_cached(water, tmp_path, monkeypatch):
    import shutil

    from qhnetv2.data.store import INDEX_FILE, HamiltonianReader, dataset_index, release

    old = str(tmp_path / "old")
    shutil.copytree(water["data"], old)
    os.remove(os.path.join(old, INDEX_FILE))  # a dataset from before the index
    expected = _expected(water["data"])
    count = Counter(monkeypatch, forbid_decode=True)  # never the full record decoder
    reader = HamiltonianReader(old)
    summ = reader.summaries()
    assert count.summarised == len(expected) and count.decoded == []
    assert os.path.isfile(os.path.join(old, INDEX_FILE))
    _same(dict(zip(reader.ids, summ)), expected)
    monkeypatch.undo()
    Counter(monkeypatch, forbid_decode=True, forbid_summary=True)
    _same(dataset_index(old), expected)  # cached: nothing read
    release(old)


def test_records_added_without_the_index_are_indexed_incrementally(water, tmp_path, monkeypatch):
    """A build killed before ``close`` leaves records the index does not list."""
    import shutil

    from qhnetv2.data.store import HamiltonianReader, dataset_index, open_readonly, release

    part = str(tmp_path / "part")
    shutil.copytree(water["data"], part)
    rec = HamiltonianReader(part)[0]
    rec.pop("id")
    rec["atomic_numbers"] = np.array([8, 1, 1])
    rec["positions"] = rec["positions"] + 0.25
    release(part)
    import lmdb

    from qhnetv2.data.serialization import encode_record
    env = lmdb.open(part, subdir=True)  # raw put, as a killed build would have left it
    with env.begin(write=True) as txn:
        txn.put(b"extra:00000000", encode_record(rec))
    env.close()
    count = Counter(monkeypatch, forbid_decode=True)
    index = dataset_index(part)
    assert count.summarised == 1  # only the new record
    assert np.array_equal(index["extra:00000000"][1], rec["positions"])
    release(part)
    open_readonly(part)  # still a valid dataset
    release(part)


def test_writer_close_indexes_records_put_directly(water, tmp_path):
    """The importers commit batches through ``writer.env`` and close the writer: the index follows."""
    from qhnetv2.data.serialization import encode_record
    from qhnetv2.data.store import DatasetWriter, HamiltonianReader, read_index_file, release

    rec = HamiltonianReader(water["data"])[1]
    rec.pop("id")
    out = str(tmp_path / "imported")
    writer = DatasetWriter(out)
    writer.set_meta({"kind": "imported", "source": "test", "settings": rec["settings"]})
    with writer.env.begin(write=True) as txn:
        txn.put(b"imp:0", encode_record(rec))
    writer.put_record("imp:1", rec)
    writer.close()
    index = read_index_file(out)
    assert sorted(index) == ["imp:0", "imp:1"]
    for k in index:
        assert np.array_equal(index[k][0], rec["atomic_numbers"]) and index[k][2] == rec["hamiltonian"].shape[0]
    release(out)


def test_merge_joins_the_parts_indexes(tmp_path, monkeypatch):
    from qhnetv2.data.build import build_dataset
    from qhnetv2.data.merge import merge_datasets
    from qhnetv2.data.store import read_index_file

    xyz = write_xyz(tmp_path / "w.xyz", water_frames(4, seed=11))
    settings = {"xc": "hf", "basis": "sto-3g"}
    parts = [str(tmp_path / f"p{k}") for k in range(2)]
    for k, p in enumerate(parts):
        build_dataset([xyz], p, settings, workers=0, shard=f"{k}/2", progress=False)
    count = Counter(monkeypatch, forbid_decode=True)
    out = str(tmp_path / "merged")
    merge_datasets(parts, out, progress=False)
    assert count.summarised == 0  # from the parts' indexes, no record read
    monkeypatch.undo()
    _same(read_index_file(out), _expected(out))


def test_training_startup_reads_no_records_and_batches_no_overlap(water, tmp_path, monkeypatch):
    """With the index in place, the only records a 1-step run decodes are the atomic-reference
    molecules and the batch, and none of them with the overlap."""
    from qhnetv2.training.config import TrainConfig
    from qhnetv2.training.loop import train

    cfg = TrainConfig.from_dict({"model": {"preset": "tiny"}, "target": "full", "dtype": "float64",
                                 "batch_size": 2, "max_steps": 1, "warmup_steps": 1, "val_every": 10,
                                 "ema_decay": 0.0, "atom_reference_molecules": 2, "device": "cpu"})
    count = Counter(monkeypatch, forbid_summary=True)
    s = train(cfg, water["data"], water["split_noval"], str(tmp_path / "run"), progress=False)
    assert s["steps"] == 1
    assert len(count.decoded) == 2 + 2, count.decoded  # reference fit (2) + one batch (2)
    assert all(f is not None and "overlap" not in f for f in count.decoded), count.decoded


def test_validation_batches_keep_the_overlap(water):
    from qhnetv2.data import HamiltonianDataset
    from qhnetv2.data.torch_dataset import TRAINING_FIELDS
    from qhnetv2.training import collate

    ds = HamiltonianDataset(water["data"], fields=TRAINING_FIELDS)
    b = collate([ds[0], ds[1]])
    assert b.overlap == [] and "overlap" not in ds[0] and "mo_energy" not in ds[0]
    full = HamiltonianDataset(water["data"], fields=TRAINING_FIELDS + ("overlap",))
    b = collate([full[0], full[1]])
    assert len(b.overlap) == 2 and torch.equal(b.unpack(b.hamiltonian)[0], ds[0]["hamiltonian"])
    with pytest.raises(ValueError, match="overlap"):
        collate([ds[0], full[1]])
    assert set(HamiltonianDataset(water["data"])[0]) >= {"overlap", "mo_energy", "energy"}  # default: all
