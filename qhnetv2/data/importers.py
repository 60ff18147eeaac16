"""``qhnetv2 data import``: QH9 and SchNOrb-MD17 files -> qhnetv2 LMDB datasets.

Both converters produce the standard record layout in PySCF AO order.

QH9 (B3LYP / def2-SVP / grid 3, computed with PySCF):
  * stable: SQLite file with table ``data(id, N, Z, pos, Ham)`` - Z int32 bytes,
    pos float64 bytes [N, 3] in Angstrom, Ham float64 bytes [n_ao, n_ao];
  * dynamic: LMDB whose values are pickled dicts with ``atoms``, ``pos``
    (Bohr), ``Ham`` (bytes or arrays), and ``id`` / ``geo_id``.
  The AO order of the stored matrices is given by ``orbital_order``: ``pyscf``
  or ``qh9`` (the m = -l..l order QH9's code converts to, see
  :mod:`.conventions`), or ``auto``: pick the one whose density reproduces H
  through one PySCF Fock build (self-consistency residual) on the first
  molecule.  QH9 files hold no overlap: S is computed with PySCF (exact, cheap).

SchNOrb MD17 (PBE / def2-SVP, computed with ORCA): ASE database whose rows
carry positions (Angstrom) and ``data`` with ``hamiltonian`` and ``overlap``
(ORCA AO order, optional ``energy``/``forces``).  Converted with the ``orca``
convention; with ``verify`` > 0 the converted overlap of the first molecules
is compared with PySCF's (functional-independent, so it checks permutation
and signs).

Imports are resumable (ids already present are skipped) and commit in
batches; each committed molecule is complete.
"""
from __future__ import annotations

import io
import os
import pickle
import sqlite3
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .conventions import check_convention, from_pyscf, to_pyscf
from .store import DatasetWriter, check_molecule_id, is_dataset

BOHR_IN_ANGSTROM = 0.52917721092  # PySCF's value (pyscf.lib.param.BOHR)
HARTREE_IN_EV = 27.211386245988

QH9_SETTINGS = {"xc": "b3lyp", "basis": "def2-svp", "grid_level": 3}
SCHNORB_SETTINGS = {"xc": "pbe", "basis": "def2-svp"}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler for QH9's LMDB values: builtins and NumPy arrays only."""
    _ALLOWED = {("builtins", n) for n in ("dict", "list", "tuple", "int", "float", "str",
                                          "bytes", "bool", "set", "frozenset", "complex")}
    _ALLOWED |= {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
                 for n in ("_reconstruct", "scalar")}
    _ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a QH9 file")


def _safe_loads(data: bytes):
    return _SafeUnpickler(io.BytesIO(bytes(data))).load()


def _as_int_array(value, n_atoms: Optional[int]) -> np.ndarray:
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        width = len(raw) // n_atoms if n_atoms else 4
        dtype = {4: np.int32, 8: np.int64, 1: np.uint8}.get(width)
        if dtype is None:
            raise ValueError(f"cannot decode atomic numbers of {len(raw)} bytes for "
                             f"{n_atoms} atoms")
        return np.frombuffer(raw, dtype=dtype).astype(np.int64)
    return np.asarray(value, dtype=np.int64).reshape(-1)


def _as_float_array(value) -> np.ndarray:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(value), dtype=np.float64).copy()
    return np.asarray(value, dtype=np.float64)


# --------------------------------------------------------------------------- QH9 readers
def _iter_qh9_sqlite(path: str) -> Iterator[Dict[str, Any]]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cols = [r[1] for r in con.execute("PRAGMA table_info(data)")]
        if not cols:
            raise ValueError(f"{path!r}: no table 'data' (not a QH9 SQLite file)")
        lower = [c.lower() for c in cols]

        def col(*names, pos):
            for n in names:
                if n.lower() in lower:
                    return lower.index(n.lower())
            return pos
        i_id, i_n, i_z = col("id", pos=0), col("N", "num_nodes", pos=1), col("Z", "atoms", pos=2)
        i_pos, i_h = col("pos", pos=3), col("Ham", "hamiltonian", pos=4)
        for row in con.execute("SELECT * FROM data ORDER BY rowid"):
            yield {"id": row[i_id], "num_nodes": row[i_n], "atoms": row[i_z],
                   "pos": row[i_pos], "Ham": row[i_h]}
    finally:
        con.close()


def _iter_qh9_lmdb(path: str) -> Iterator[Dict[str, Any]]:
    import lmdb
    env = lmdb.open(path, readonly=True, lock=False, subdir=os.path.isdir(path))
    try:
        with env.begin() as txn:
            for key, value in txn.cursor():
                try:
                    item = _safe_loads(value)
                except Exception:
                    continue  # e.g. a "length" entry that is not a molecule
                if isinstance(item, dict) and "Ham" in item and "pos" in item:
                    item.setdefault("_key", bytes(key).decode("utf-8", "replace"))
                    yield item
    finally:
        env.close()


def _qh9_mol_id(prefix: str, item: Dict[str, Any]) -> str:
    parts = []
    for field in ("id", "geo_id"):
        if item.get(field) is not None:
            v = item[field]
            v = int(v) if isinstance(v, (int, np.integer)) else str(v)
            parts.append(f"{v:08d}" if isinstance(v, int) else v)
    if not parts:
        parts.append(str(item.get("_key")))
    return check_molecule_id(":".join([prefix] + parts))


# --------------------------------------------------------------------------- shared helpers
def overlap_matrix(atomic_numbers, positions, basis: str) -> np.ndarray:
    """PySCF AO overlap [n_ao, n_ao] (positions in Angstrom)."""
    from .labelling import build_mol
    charge = int(np.sum(atomic_numbers)) % 2  # any closed-shell charge; S ignores it
    return build_mol(atomic_numbers, positions, basis, charge).intor("int1e_ovlp")


def self_consistency_residual(atomic_numbers, positions, hamiltonian,
                              settings: Dict[str, Any]) -> float:
    """max |F[D(H)] - H|: one Fock build from H's own density (Hartree).

    Small (grid noise, ~1e-6) only if H is a converged KS matrix for these
    settings *in PySCF's AO order*; a wrong permutation gives a large value.
    """
    from ..scf import init_guess
    from .labelling import build_mol, make_mf, make_settings
    s = make_settings(**{k: v for k, v in settings.items() if k in QH9_SETTINGS})
    mol = build_mol(atomic_numbers, positions, s["basis"])
    mf = make_mf(mol, s)
    dm = init_guess(mf, hamiltonian)
    return float(np.abs(mf.get_fock(dm=dm) - hamiltonian).max())


def _make_record(z, pos, h, s, settings, energy=float("nan"), extras=None) -> Dict[str, Any]:
    import scipy.linalg
    rec = {"atomic_numbers": z, "positions": pos, "hamiltonian": h, "overlap": s,
           "energy": energy, "mo_energy": scipy.linalg.eigh(h, s, eigvals_only=True),
           "n_cycles": -1, "converged": True, "settings": settings}
    rec.update(extras or {})
    return rec


def _open_output(out: str, meta: Dict[str, Any]) -> DatasetWriter:
    writer = DatasetWriter(out)
    existing = writer.get_meta()
    if existing is None:
        writer.set_meta(meta)
    elif existing.get("kind") != meta["kind"] or existing.get("source") != meta["source"]:
        writer.close()
        raise ValueError(f"--out {out!r} already holds a different dataset "
                         f"({existing.get('kind')}, {existing.get('source')})")
    return writer


class _BatchWriter:
    """Commit every ``batch`` molecules in one transaction (atomic per batch)."""

    def __init__(self, writer: DatasetWriter, batch: int = 128):
        self.writer, self.batch, self.pending = writer, batch, []

    def add(self, mol_id: str, record: Dict[str, Any]) -> None:
        from .serialization import encode_record
        self.pending.append((mol_id.encode("utf-8"), encode_record(record)))
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            with self.writer.env.begin(write=True) as txn:
                for k, v in self.pending:
                    txn.put(k, v)
            self.pending = []


# --------------------------------------------------------------------------- QH9
def import_qh9(path: str, out: str, variant: str = "stable", orbital_order: str = "auto",
               positions_unit: Optional[str] = None, prefix: Optional[str] = None,
               verify: int = 0, limit: Optional[int] = None,
               progress: bool = True) -> Dict[str, Any]:
    """Convert a QH9 SQLite (stable) or LMDB (dynamic) file into ``out``.

    Args:
        variant: ``stable`` (positions in Angstrom) or ``dynamic`` (Bohr).
        orbital_order: ``auto``, ``pyscf`` or ``qh9``.
        positions_unit: override ``angstrom`` / ``bohr``.
        verify: check the self-consistency residual on this many molecules
            (after conversion; raises if above 1e-4 Eh).
        limit: import at most this many molecules (testing).
    Returns: summary dict (counts, the orbital order used, residuals).
    """
    if variant not in ("stable", "dynamic"):
        raise ValueError(f"variant must be 'stable' or 'dynamic', got {variant!r}")
    if orbital_order != "auto":
        check_convention(orbital_order)
        if orbital_order not in ("pyscf", "qh9"):
            raise ValueError(f"orbital_order for QH9 must be auto, pyscf or qh9, "
                             f"got {orbital_order!r}")
    unit = positions_unit or ("angstrom" if variant == "stable" else "bohr")
    if unit not in ("angstrom", "bohr"):
        raise ValueError(f"positions_unit must be 'angstrom' or 'bohr', got {unit!r}")
    scale = BOHR_IN_ANGSTROM if unit == "bohr" else 1.0
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such QH9 file {path!r}")
    if os.path.isdir(path) or path.endswith((".lmdb", ".mdb")):
        items = _iter_qh9_lmdb(path)
    else:
        items = _iter_qh9_sqlite(path)
    prefix = prefix or f"qh9-{variant}"
    basis = QH9_SETTINGS["basis"]
    settings = dict(QH9_SETTINGS, source=f"QH9-{variant}", imported_from=os.path.basename(path))
    meta = {"kind": "imported", "source": f"QH9-{variant}", "settings": settings,
            "basis": basis, "sources": [{"stem": prefix, "path": os.path.abspath(path)}],
            "shard": None, "units": {"positions": "Angstrom", "hamiltonian": "Hartree",
                                     "energy": "Hartree (NaN: QH9 files hold no energy)"}}
    writer = _open_output(out, meta)
    done = writer.record_ids()
    batch = _BatchWriter(writer)
    used_order = (writer.get_meta() or {}).get("orbital_order") or orbital_order
    residuals: List[float] = []
    n_new = n_seen = 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(unit="mol", desc="importing QH9")
    try:
        for item in items:
            if limit is not None and n_seen >= limit:
                break
            n_seen += 1
            mol_id = _qh9_mol_id(prefix, item)
            if mol_id in done:
                continue
            z = _as_int_array(item["atoms"], item.get("num_nodes"))
            pos = _as_float_array(item["pos"]).reshape(-1, 3) * scale
            h_file = _as_float_array(item["Ham"])
            n_ao = int(round(np.sqrt(h_file.size)))
            h_file = h_file.reshape(n_ao, n_ao)
            if used_order == "auto":
                res = {o: self_consistency_residual(z, pos, to_pyscf(h_file, o, basis, z),
                                                    QH9_SETTINGS) for o in ("pyscf", "qh9")}
                used_order = min(res, key=res.get)
                if res[used_order] > 1e-4:
                    raise ValueError(f"orbital_order auto: neither pyscf ({res['pyscf']:.2e}) "
                                     f"nor qh9 ({res['qh9']:.2e}) order reproduces H for "
                                     f"{mol_id}; not a B3LYP/def2-SVP QH9 file?")
                writer.set_meta(dict(meta, orbital_order=used_order,
                                     orbital_order_residuals=res))
            h = to_pyscf(h_file, used_order, basis, z)
            if len(residuals) < verify:
                residuals.append(self_consistency_residual(z, pos, h, QH9_SETTINGS))
                if residuals[-1] > 1e-4:
                    raise ValueError(f"verify: {mol_id} is not self-consistent after "
                                     f"conversion (residual {residuals[-1]:.2e} Eh)")
            s = overlap_matrix(z, pos, basis)
            batch.add(mol_id, _make_record(z, pos, h, s, dict(settings, orbital_order=used_order)))
            n_new += 1
            if bar is not None:
                bar.update(1)
        batch.flush()
        if used_order != "auto" and (writer.get_meta() or {}).get("orbital_order") is None:
            writer.set_meta(dict(meta, orbital_order=used_order))
    finally:
        batch.flush()
        if bar is not None:
            bar.close()
        writer.close()
    return {"n_imported": n_new, "n_seen": n_seen, "orbital_order": used_order,
            "verify_residuals": residuals}


# --------------------------------------------------------------------------- SchNOrb MD17
def import_schnorb(path: str, out: str, prefix: Optional[str] = None, verify: int = 1,
                   energy_unit: str = "hartree", hamiltonian_unit: str = "hartree",
                   limit: Optional[int] = None, progress: bool = True) -> Dict[str, Any]:
    """Convert a SchNOrb MD17 ASE database (ORCA AO order) into ``out``.

    ``verify``: number of molecules whose converted overlap is compared with
    PySCF's (raises if max deviation > 1e-6).  Units of ``energy`` and
    ``hamiltonian`` in the file: ``hartree`` or ``ev``.
    """
    import ase.db
    factors = {"hartree": 1.0, "ev": 1.0 / HARTREE_IN_EV}
    for name, value in (("energy_unit", energy_unit), ("hamiltonian_unit", hamiltonian_unit)):
        if value not in factors:
            raise ValueError(f"{name} must be 'hartree' or 'ev', got {value!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such SchNOrb database {path!r}")
    prefix = prefix or os.path.splitext(os.path.basename(path))[0]
    basis = SCHNORB_SETTINGS["basis"]
    settings = dict(SCHNORB_SETTINGS, source="SchNOrb-MD17 (ORCA)",
                    imported_from=os.path.basename(path), orbital_order="orca")
    meta = {"kind": "imported", "source": "SchNOrb-MD17", "settings": settings,
            "basis": basis, "sources": [{"stem": prefix, "path": os.path.abspath(path)}],
            "shard": None, "orbital_order": "orca",
            "units": {"positions": "Angstrom", "hamiltonian": "Hartree", "energy": "Hartree",
                      "forces": "as in the file (converted by energy_unit)"}}
    writer = _open_output(out, meta)
    done = writer.record_ids()
    batch = _BatchWriter(writer)
    deviations: List[float] = []
    n_new = n_seen = 0
    db = ase.db.connect(path)
    rows = db.select()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(unit="mol", desc="importing SchNOrb")
    try:
        for row in rows:
            if limit is not None and n_seen >= limit:
                break
            n_seen += 1
            mol_id = check_molecule_id(f"{prefix}:{row.id:08d}")
            if mol_id in done:
                continue
            z = np.asarray(row.numbers, dtype=np.int64)
            pos = np.asarray(row.positions, dtype=np.float64)
            data = row.data
            if "hamiltonian" not in data or "overlap" not in data:
                raise ValueError(f"row {row.id} of {path!r} has no data['hamiltonian'] / "
                                 f"data['overlap'] (not a SchNOrb database?)")
            h_file = np.asarray(data["hamiltonian"], dtype=np.float64)
            s_file = np.asarray(data["overlap"], dtype=np.float64)
            n_ao = int(round(np.sqrt(h_file.size)))
            h = to_pyscf(h_file.reshape(n_ao, n_ao), "orca", basis, z)
            h = h * factors[hamiltonian_unit]
            s = to_pyscf(s_file.reshape(n_ao, n_ao), "orca", basis, z)
            if len(deviations) < verify:
                deviations.append(float(np.abs(s - overlap_matrix(z, pos, basis)).max()))
                if deviations[-1] > 1e-6:
                    raise ValueError(f"verify: converted overlap of {mol_id} differs from "
                                     f"PySCF's by {deviations[-1]:.2e}: AO order/sign "
                                     f"convention or basis does not match")
            energy = data.get("energy", row.get("energy", np.nan))
            energy = float(np.asarray(energy).reshape(-1)[0]) * factors[energy_unit]
            extras = {}
            if "forces" in data:
                extras["forces"] = (np.asarray(data["forces"], dtype=np.float64).reshape(-1, 3)
                                    * factors[energy_unit])
            batch.add(mol_id, _make_record(z, pos, h, s, settings, energy, extras))
            n_new += 1
            if bar is not None:
                bar.update(1)
    finally:
        batch.flush()
        if bar is not None:
            bar.close()
        writer.close()
    return {"n_imported": n_new, "n_seen": n_seen, "overlap_deviations": deviations}


def export_convention(hamiltonian: np.ndarray, convention: str, basis: str,
                      atomic_numbers) -> np.ndarray:
    """PySCF-order matrix -> ``convention`` order (e.g. to feed QH9-codebase tools)."""
    return from_pyscf(hamiltonian, convention, basis, atomic_numbers)
