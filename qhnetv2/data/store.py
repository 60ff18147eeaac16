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
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Optional, Set, Union

from .serialization import decode_json, decode_record, encode_json, encode_record

FORMAT_NAME = "qhnetv2-hamiltonian-lmdb"
FORMAT_VERSION = 1
META_KEY = b"__meta__"
FAILURE_PREFIX = "__failure__:"
DEFAULT_MAP_SIZE = 1 << 40  # address space only; the file grows as needed


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

    def __getitem__(self, item: Union[int, str]) -> Dict[str, Any]:
        if isinstance(item, str):
            mol_id = item
        else:
            n = len(self.ids)
            i = int(item)
            if not -n <= i < n:
                raise IndexError(f"index {item} out of range for dataset of {n} molecules")
            mol_id = self.ids[i]
        with self._get_env().begin() as txn:
            raw = txn.get(mol_id.encode("utf-8"))
        if raw is None:
            raise KeyError(f"molecule id {mol_id!r} not in {self.path!r}")
        record = decode_record(raw)
        record["id"] = mol_id
        return record

    def read_field(self, mol_id: str, field: str):
        """One field of one record without decoding the others (npz is lazy)."""
        import io
        import numpy as np
        with self._get_env().begin() as txn:
            raw = txn.get(mol_id.encode("utf-8"))
        if raw is None:
            raise KeyError(f"molecule id {mol_id!r} not in {self.path!r}")
        with np.load(io.BytesIO(bytes(raw)), allow_pickle=False) as npz:
            return npz[field]

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
