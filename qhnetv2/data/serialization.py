"""Byte encoding of one dataset record (and of the metadata).

A record value is the bytes of an *uncompressed NumPy ``.npz`` archive*
(``np.savez``), read back with ``allow_pickle=False`` so that opening a dataset
never executes code.  Fields (shapes for a molecule with ``n_atoms`` atoms and
``n_ao`` AOs)::

    atomic_numbers  int64   [n_atoms]
    positions       float64 [n_atoms, 3]   Angstrom
    hamiltonian     float64 [n_ao, n_ao]   Hartree, PySCF AO order
    overlap         float64 [n_ao, n_ao]   PySCF AO order
    energy          float64 []             total energy, Hartree (NaN if unknown)
    mo_energy       float64 [n_ao]         eigenvalues of H C = S C e, Hartree
    n_cycles        int64   []             SCF cycles (-1 if unknown)
    converged       bool    []
    settings        str     []             JSON of the settings used
    (optional extra float64 arrays, e.g. ``forces`` [n_atoms, 3])

Metadata and failure entries are UTF-8 JSON.

Readers may decode a subset of the fields (:func:`decode_record` with ``fields``)
or only the small per-molecule summary (:func:`record_summary`: atomic numbers,
positions and the AO count read from the Hamiltonian's ``.npy`` header).  Both
accept a ``memoryview`` onto LMDB's memory map (a ``buffers=True`` transaction)
and read through it without copying the value, so the pages holding the matrices
that are not asked for are never touched.
"""
from __future__ import annotations

import io
import json
from typing import Any, Dict

import numpy as np

REQUIRED_FIELDS = ("atomic_numbers", "positions", "hamiltonian", "overlap", "energy",
                   "mo_energy", "n_cycles", "converged", "settings")


def check_record(record: Dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the field if ``record`` is inconsistent."""
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        raise ValueError(f"record: missing fields {missing}")
    z = np.asarray(record["atomic_numbers"])
    pos = np.asarray(record["positions"])
    h = np.asarray(record["hamiltonian"])
    s = np.asarray(record["overlap"])
    if z.ndim != 1 or pos.shape != (z.shape[0], 3):
        raise ValueError(f"record: positions shape {pos.shape} does not match "
                         f"atomic_numbers shape {z.shape}")
    if h.ndim != 2 or h.shape[0] != h.shape[1] or s.shape != h.shape:
        raise ValueError(f"record: hamiltonian {h.shape} and overlap {s.shape} must be "
                         f"equal square matrices")
    if np.asarray(record["mo_energy"]).shape != (h.shape[0],):
        raise ValueError("record: mo_energy must have shape [n_ao]")


def encode_record(record: Dict[str, Any]) -> bytes:
    """Encode a record dict (fields above) to bytes."""
    check_record(record)
    arrays = {
        "atomic_numbers": np.asarray(record["atomic_numbers"], dtype=np.int64),
        "positions": np.asarray(record["positions"], dtype=np.float64),
        "hamiltonian": np.asarray(record["hamiltonian"], dtype=np.float64),
        "overlap": np.asarray(record["overlap"], dtype=np.float64),
        "energy": np.asarray(record["energy"], dtype=np.float64),
        "mo_energy": np.asarray(record["mo_energy"], dtype=np.float64),
        "n_cycles": np.asarray(record["n_cycles"], dtype=np.int64),
        "converged": np.asarray(bool(record["converged"])),
        "settings": np.asarray(json.dumps(record["settings"], sort_keys=True)),
    }
    for key, value in record.items():
        if key not in arrays:
            arrays[key] = np.asarray(value, dtype=np.float64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class BufferFile(io.RawIOBase):
    """A read-only, seekable file over a bytes-like object, without copying it.

    ``io.BytesIO(memoryview)`` copies the whole value; this reads only the byte
    ranges asked for, so over an LMDB memory map only those pages are faulted in.
    """

    def __init__(self, data):
        super().__init__()
        self._buf = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._buf)}[whence]
        self._pos = max(0, base + int(offset))
        return self._pos

    def readinto(self, b) -> int:
        n = max(0, min(len(b), len(self._buf) - self._pos))
        memoryview(b).cast("B")[:n] = self._buf[self._pos : self._pos + n]
        self._pos += n
        return n


def decode_record(data, fields=None) -> Dict[str, Any]:
    """Inverse of :func:`encode_record`; scalars come back as Python numbers.

    ``data``: the value (bytes, or a memoryview valid for the duration of the call).
    ``fields``: decode only these (those the record has; None: all).  The arrays are
    copies, never views of ``data``.
    """
    with np.load(BufferFile(data), allow_pickle=False) as npz:
        names = npz.files if fields is None else [f for f in npz.files if f in set(fields)]
        out = {key: npz[key] for key in names}
    if "energy" in out:
        out["energy"] = float(out["energy"])
    if "n_cycles" in out:
        out["n_cycles"] = int(out["n_cycles"])
    if "converged" in out:
        out["converged"] = bool(out["converged"])
    if "settings" in out:
        out["settings"] = json.loads(str(out["settings"]))
    return out


def summarize_record(record: Dict[str, Any]):
    """``(atomic_numbers int64 [n_atoms], positions float64 [n_atoms, 3], n_ao)`` of a record dict."""
    z = np.asarray(record["atomic_numbers"], dtype=np.int64).reshape(-1)
    pos = np.asarray(record["positions"], dtype=np.float64).reshape(-1, 3)
    return z, pos, int(np.shape(record["hamiltonian"])[0])


def record_summary(data):
    """:func:`summarize_record` of an encoded record, without reading its matrices.

    Only the two small arrays are decoded; the AO count comes from the
    ``hamiltonian.npy`` header (a few dozen bytes).  ``data``: bytes or a memoryview.
    """
    import zipfile

    with zipfile.ZipFile(BufferFile(data)) as zf:
        with zf.open("atomic_numbers.npy") as f:
            z = np.lib.format.read_array(f, allow_pickle=False)
        with zf.open("positions.npy") as f:
            pos = np.lib.format.read_array(f, allow_pickle=False)
        with zf.open("hamiltonian.npy") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape = np.lib.format.read_array_header_1_0(f)[0]  # (shape, fortran_order, dtype)
            elif version == (2, 0):
                shape = np.lib.format.read_array_header_2_0(f)[0]
            else:  # no public header reader for this .npy version: read the array (rare)
                f.seek(0)
                shape = np.lib.format.read_array(f, allow_pickle=False).shape
    if len(shape) != 2:
        raise ValueError(f"record: hamiltonian has shape {shape}, expected [n_ao, n_ao]")
    return (np.asarray(z, dtype=np.int64).reshape(-1), np.asarray(pos, dtype=np.float64).reshape(-1, 3),
            int(shape[0]))


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True).encode("utf-8")


def decode_json(data: bytes) -> Any:
    return json.loads(bytes(data).decode("utf-8"))
