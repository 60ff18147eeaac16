"""LMDB storage of a Hamiltonian dataset: writer and random-access reader.

Layout (one LMDB environment = one directory, ``data.mdb`` + ``lock.mdb``),
all in the main database:

* ``<molecule id>``          -> record bytes (see :mod:`.serialization`)
* ``__meta__``               -> JSON: format, version, settings, basis, sources
* ``__failure__:<id>``       -> JSON: ``{"reason": str, ...}``

Keys starting with ``__`` are reserved, so molecule ids may not start with it.
Every molecule is written in its own write transaction, which LMDB commits
atomically and durably: a process killed at any moment leaves each molecule
either completely present or absent.

Beside the LMDB files, ``index.npz`` (:data:`INDEX_FILE`) holds each record's
atomic numbers, positions and AO count, so that a training run's start (size
bucketing, element list, training domain) reads no matrices: for QH9-stable the
records are ~60 GB, the index a few MB.  ``DatasetWriter.close`` writes it (build,
import, merge); a dataset without one, or with records the index does not list
(a build killed before ``close``), gets the missing entries computed from the
records' small fields and cached on first use (:func:`dataset_index`).  Records
are never rewritten under an existing id (build and import skip ids already
present, merge writes a new dataset), so an entry, once indexed, stays valid.
The index is replaced atomically (temporary file + rename).
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from .serialization import (decode_json, decode_record, encode_json, encode_record, record_summary,
                            summarize_record)

FORMAT_NAME = "qhnetv2-hamiltonian-lmdb"
FORMAT_VERSION = 1
META_KEY = b"__meta__"
FAILURE_PREFIX = "__failure__:"
DEFAULT_MAP_SIZE = 1 << 40  # address space only; the file grows as needed
INDEX_FILE = "index.npz"
INDEX_FORMAT = "qhnetv2-dataset-index"
INDEX_VERSION = 1

#: ``(atomic_numbers int64 [n_atoms], positions float64 [n_atoms, 3] Angstrom, n_ao)`` of one record
Summary = Tuple[np.ndarray, np.ndarray, int]


def check_molecule_id(mol_id: str) -> str:
    if not isinstance(mol_id, str) or not mol_id or mol_id.startswith("__"):
        raise ValueError(f"molecule id must be a non-empty string not starting with "
                         f"'__', got {mol_id!r}")
    if len(mol_id.encode("utf-8")) > 400:  # LMDB's default max key size is 511 bytes
        raise ValueError(f"molecule id too long (max 400 bytes): {mol_id[:50]!r}...")
    return mol_id


def is_dataset(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "data.mdb"))


def _open_env(path: str, readonly: bool, map_size: int = DEFAULT_MAP_SIZE):
    import lmdb
    if readonly:
        if not is_dataset(path):
            raise FileNotFoundError(f"no dataset at {path!r} (expected {path}/data.mdb)")
        return lmdb.open(path, readonly=True, lock=False, readahead=False,
                         subdir=True, max_readers=1024)
    os.makedirs(path, exist_ok=True)
    return lmdb.open(path, map_size=map_size, subdir=True, sync=True, metasync=True)


# py-lmdb refuses to open the same environment twice in one process, so every
# reader in a process shares one read-only handle per dataset: realpath -> (pid, env).
_SHARED: Dict[str, Any] = {}


def open_readonly(path: str):
    """The process-wide read-only LMDB handle of a dataset (opened on demand).

    After a fork (DataLoader workers) the inherited handle is closed and a
    fresh one opened: LMDB handles must not cross a fork.
    """
    key = os.path.realpath(path)
    entry = _SHARED.get(key)
    if entry is not None:
        pid, env = entry
        if pid == os.getpid():
            return env
        try:  # inherited: release this process's copy of the mapping / fds
            env.close()
        except Exception:
            pass
        del _SHARED[key]
    env = _open_env(path, readonly=True)
    _SHARED[key] = (os.getpid(), env)
    return env


def release(path: str) -> None:
    """Close the shared read-only handle of ``path`` (readers reopen lazily)."""
    entry = _SHARED.pop(os.path.realpath(path), None)
    if entry is not None and entry[0] == os.getpid():
        entry[1].close()


class DatasetWriter:
    """Writes records, failures and metadata; one transaction per call.

    Only one process should write at a time (the builder's parent process).
    """

    def __init__(self, path: str, map_size: int = DEFAULT_MAP_SIZE):
        self.path = path
        release(path)  # a read-only handle in this process would block the open
        self.env = _open_env(path, readonly=False, map_size=map_size)
        # index entries known without reading the LMDB back (records put by this writer,
        # or handed over by merge); close() adds them to index.npz
        self._summaries: Dict[str, Summary] = {}
        self._txn_at_open = self.env.info()["last_txnid"]

    # -- metadata ---------------------------------------------------------
    def get_meta(self) -> Optional[Dict[str, Any]]:
        with self.env.begin() as txn:
            raw = txn.get(META_KEY)
        return None if raw is None else decode_json(raw)

    def set_meta(self, meta: Dict[str, Any]) -> None:
        meta = dict(meta, format=FORMAT_NAME, format_version=FORMAT_VERSION)
        with self.env.begin(write=True) as txn:
            txn.put(META_KEY, encode_json(meta))

    # -- molecules ----------------------------------------------------------
    def put_record(self, mol_id: str, record: Dict[str, Any]) -> None:
        """Store a record and drop a previous failure entry, atomically."""
        key = check_molecule_id(mol_id).encode("utf-8")
        value = encode_record(record)
        with self.env.begin(write=True) as txn:
            txn.put(key, value)
            txn.delete((FAILURE_PREFIX + mol_id).encode("utf-8"))
        self._summaries[mol_id] = summarize_record(record)

    def add_summaries(self, summaries: Dict[str, Summary]) -> None:
        """Index entries of records written to ``env`` directly (merge), so ``close`` need not read them."""
        self._summaries.update(summaries)

    def write_index(self) -> int:
        """Bring ``index.npz`` up to date with the records now in the LMDB; returns the entries
        that had to be read from the records (those neither indexed nor put by this writer)."""
        return _update_index(self.path, self.env, self._summaries, write=True)[1]

    def put_failure(self, mol_id: str, reason: str, **extra: Any) -> None:
        key = (FAILURE_PREFIX + check_molecule_id(mol_id)).encode("utf-8")
        with self.env.begin(write=True) as txn:
            txn.put(key, encode_json(dict(extra, reason=str(reason))))

    def delete_failure(self, mol_id: str) -> None:
        with self.env.begin(write=True) as txn:
            txn.delete((FAILURE_PREFIX + mol_id).encode("utf-8"))

    def record_ids(self) -> Set[str]:
        return set(_scan_ids(self.env)[0])

    def failures(self) -> Dict[str, Dict[str, Any]]:
        return _scan_failures(self.env)

    def close(self) -> None:
        """Bring the index up to date if anything was written, then close the environment."""
        try:
            if self._summaries or self.env.info()["last_txnid"] != self._txn_at_open:
                self.write_index()
        except Exception as exc:  # a cache: training rebuilds what is missing, so never fail the write
            warnings.warn(f"{self.path}: could not update the dataset index ({type(exc).__name__}: {exc}); "
                          f"it will be completed on first use")
        finally:
            self.env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _scan_ids(env) -> (List[str], List[str]):
    """Return (record ids, failure ids), each sorted, by scanning keys only."""
    records, failures = [], []
    with env.begin() as txn:
        for key in txn.cursor().iternext(keys=True, values=False):
            k = bytes(key).decode("utf-8")
            if k.startswith(FAILURE_PREFIX):
                failures.append(k[len(FAILURE_PREFIX):])
            elif not k.startswith("__"):
                records.append(k)
    return sorted(records), sorted(failures)


def _scan_failures(env) -> Dict[str, Dict[str, Any]]:
    out = {}
    prefix = FAILURE_PREFIX.encode("utf-8")
    with env.begin() as txn:
        cur = txn.cursor()
        if cur.set_range(prefix):
            for key, value in cur:
                if not bytes(key).startswith(prefix):
                    break
                out[bytes(key)[len(prefix):].decode("utf-8")] = decode_json(value)
    return out


class HamiltonianReader:
    """Random read access to a dataset directory.

    ``reader[i]`` (int, position in the sorted id list) or ``reader[mol_id]``
    returns the record dict of NumPy arrays (see :mod:`.serialization`), plus
    ``"id"``.  Safe to use from forked / spawned DataLoader workers: the LMDB
    environment is (re)opened lazily in each process.
    """

    def __init__(self, path: str, ids: Optional[List[str]] = None):
        self.path = str(path)
        env = self._get_env()
        with env.begin() as txn:
            raw = txn.get(META_KEY)
        if raw is None:
            raise ValueError(f"dataset {self.path!r} has no __meta__ record "
                             f"(not a qhnetv2 dataset, or never initialised)")
        self.meta: Dict[str, Any] = decode_json(raw)
        self.all_ids, self.failure_ids = _scan_ids(env)
        if ids is None:
            self.ids = list(self.all_ids)
        else:
            known = set(self.all_ids)
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise ValueError(f"ids: {len(unknown)} ids are not in {self.path!r}, "
                                 f"e.g. {unknown[:3]}")
            self.ids = list(ids)

    def _get_env(self):
        # never cache the handle on self: it is per process (see open_readonly)
        return open_readonly(self.path)

    def __len__(self) -> int:
        return len(self.ids)

    def _mol_id(self, item: Union[int, str]) -> str:
        if isinstance(item, str):
            return item
        n = len(self.ids)
        i = int(item)
        if not -n <= i < n:
            raise IndexError(f"index {item} out of range for dataset of {n} molecules")
        return self.ids[i]

    def __getitem__(self, item: Union[int, str]) -> Dict[str, Any]:
        return self.read(item)

    def read(self, item: Union[int, str], fields: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """The record (``reader[item]``), decoding only ``fields`` when given (plus ``"id"``).

        The value is read through LMDB's memory map without a copy, so the pages of the
        fields left out (e.g. the overlap matrix) are never read from disk.
        """
        mol_id = self._mol_id(item)
        with self._get_env().begin(buffers=True) as txn:
            raw = txn.get(mol_id.encode("utf-8"))
            if raw is None:
                raise KeyError(f"molecule id {mol_id!r} not in {self.path!r}")
            record = decode_record(raw, fields)
        record["id"] = mol_id
        return record

    def read_field(self, mol_id: str, field: str):
        """One field of one record without decoding (or reading) the others."""
        record = self.read(mol_id, (field,))
        if field not in record:
            raise KeyError(f"molecule {mol_id!r} in {self.path!r} has no field {field!r}")
        return record[field]

    def summaries(self, write_cache: bool = True) -> List[Summary]:
        """``(atomic_numbers, positions, n_ao)`` of every molecule of ``self.ids``, in order,
        from the dataset's index (see the module docstring); entries the index lacks are
        computed from the records' small fields and, with ``write_cache``, added to it."""
        index = dataset_index(self.path, write=write_cache, env=self._get_env())
        return [index[i] for i in self.ids]

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def failures(self) -> Dict[str, Dict[str, Any]]:
        return _scan_failures(self._get_env())

    @property
    def basis(self) -> str:
        return self.meta["settings"]["basis"]

    def close(self) -> None:
        """Release the process's handle (other readers of it reopen lazily)."""
        release(self.path)


# --------------------------------------------------------------------------- index
def index_path(path: str) -> str:
    return os.path.join(path, INDEX_FILE)


def read_index_file(path: str) -> Dict[str, Summary]:
    """The entries of ``path/index.npz`` (empty if there is none or it is unreadable / of
    another format: the index is a cache, rebuilt from the records when in doubt)."""
    file = index_path(path)
    if not os.path.isfile(file):
        return {}
    try:
        with np.load(file, allow_pickle=False) as npz:
            if str(npz["format"]) != INDEX_FORMAT or int(npz["version"]) > INDEX_VERSION:
                return {}
            id_bytes = npz["id_bytes"].tobytes()
            id_offsets, n_atoms = npz["id_offsets"], npz["n_atoms"]
            z_all, pos_all, n_ao = npz["atomic_numbers"], npz["positions"], npz["n_ao"]
    except (OSError, ValueError, KeyError) as exc:
        warnings.warn(f"{file}: unreadable dataset index ({exc}); rebuilding it from the records")
        return {}
    starts = np.concatenate([[0], np.cumsum(n_atoms)])
    out: Dict[str, Summary] = {}
    for k in range(n_atoms.size):
        mol_id = id_bytes[id_offsets[k] : id_offsets[k + 1]].decode("utf-8")
        a, b = int(starts[k]), int(starts[k + 1])
        out[mol_id] = (z_all[a:b], pos_all[a:b], int(n_ao[k]))
    return out


def write_index_file(path: str, entries: Dict[str, Summary]) -> None:
    """Write ``path/index.npz`` atomically (entries sorted by id)."""
    from ..atomic import atomic_file

    ids = sorted(entries)
    encoded = [i.encode("utf-8") for i in ids]
    id_offsets = np.concatenate([[0], np.cumsum([len(e) for e in encoded])]).astype(np.int64)
    zs = [np.asarray(entries[i][0], dtype=np.int64).reshape(-1) for i in ids]
    pos = [np.asarray(entries[i][1], dtype=np.float64).reshape(-1, 3) for i in ids]
    arrays = {
        "format": np.asarray(INDEX_FORMAT), "version": np.asarray(INDEX_VERSION),
        "id_bytes": np.frombuffer(b"".join(encoded), dtype=np.uint8),
        "id_offsets": id_offsets,
        "n_atoms": np.asarray([z.size for z in zs], dtype=np.int64),
        "atomic_numbers": np.concatenate(zs) if zs else np.zeros(0, np.int64),
        "positions": np.concatenate(pos) if pos else np.zeros((0, 3)),
        "n_ao": np.asarray([int(entries[i][2]) for i in ids], dtype=np.int64),
    }
    with atomic_file(index_path(path)) as f:
        np.savez(f, **arrays)


def _summaries_from_records(env, ids: Iterable[str]) -> Dict[str, Summary]:
    out: Dict[str, Summary] = {}
    with env.begin(buffers=True) as txn:
        for mol_id in ids:
            raw = txn.get(mol_id.encode("utf-8"))
            if raw is not None:
                out[mol_id] = record_summary(raw)
    return out


def _update_index(path: str, env, known: Dict[str, Summary], write: bool) -> Tuple[Dict[str, Summary], int]:
    """``(index of every record in env, entries read from records)``; rewrites the file when it changed."""
    ids = _scan_ids(env)[0]
    on_file = read_index_file(path)
    index: Dict[str, Summary] = {}
    missing = []
    for mol_id in ids:
        entry = on_file.get(mol_id, known.get(mol_id))
        if entry is None:
            missing.append(mol_id)
        else:
            index[mol_id] = entry
    computed = _summaries_from_records(env, missing)
    index.update(computed)
    if write and set(index) != set(on_file):
        try:
            write_index_file(path, index)
        except OSError as exc:  # a read-only dataset: use the index without caching it
            warnings.warn(f"could not write the dataset index {index_path(path)} ({exc}); "
                          f"it will be computed again next time")
    return index, len(computed)


def dataset_index(path: str, write: bool = True, env=None) -> Dict[str, Summary]:
    """``{id: (atomic_numbers, positions, n_ao)}`` of every record of the dataset at ``path``.

    Reads ``index.npz``; records it does not cover (old datasets, builds killed before
    the index was written) are summarised from their small fields only (never the
    matrices, see :func:`qhnetv2.data.serialization.record_summary`) and, with
    ``write``, added to the file.
    """
    env = env if env is not None else open_readonly(path)
    return _update_index(path, env, {}, write)[0]
