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


def decode_record(data: bytes) -> Dict[str, Any]:
    """Inverse of :func:`encode_record`; scalars come back as Python numbers."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        out = {key: npz[key] for key in npz.files}
    out["energy"] = float(out["energy"])
    out["n_cycles"] = int(out["n_cycles"])
    out["converged"] = bool(out["converged"])
    out["settings"] = json.loads(str(out["settings"]))
    return out


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True).encode("utf-8")


def decode_json(data: bytes) -> Any:
    return json.loads(bytes(data).decode("utf-8"))
