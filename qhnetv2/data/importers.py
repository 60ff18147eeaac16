"""``qhnetv2 data import``: QH9 and SchNOrb-MD17 files -> qhnetv2 LMDB datasets.

Both converters produce the standard record layout in PySCF AO order.

QH9 (B3LYP / def2-SVP, computed with PySCF; see docs/data.md for how QH9's own
code writes each file):
  * QH9-stable raw SQLite (``QH9Stable.db``): table ``data(id INTEGER PRIMARY
    KEY, N, Z, pos, Ham)``; Z int32 bytes, pos float64 bytes [N, 3] in
    Angstrom, Ham float64 bytes [n_ao, n_ao];
  * QH9-dynamic raw SQLite (``QH9Dynamic_300k.db``): table ``data(id, geo_id,
    N, Z, pos, ekin, epot, etot, time, Ham, converged)``; ``id`` is stored as
    an 8-byte int64 blob, pos float64 bytes in **Bohr**, epot the total
    energy (Hartree);
  * QH9's processed LMDBs (``QH9Stable.lmdb`` / ``QH9Dynamic.lmdb``): values
    are pickled dicts ``id, num_nodes, atoms, pos, Ham`` (+ ``geo_id`` for
    dynamic) holding the raw bytes above; keys are 4-byte big-endian integers:
    the QH9 id (stable) or the row of the raw file (dynamic).
  QH9's generators store ``mf.get_fock()`` as is, so the files hold PySCF's AO
  order; QH9's loader permutes to m = -l..l only when reading.
  ``orbital_order`` (``auto`` / ``pyscf`` / ``qh9``) still lets a file in
  the m = -l..l order (see :mod:`.conventions`) be imported; ``auto`` picks
  the order whose density reproduces H through one PySCF Fock build
  (self-consistency residual) on the first molecule.  QH9 files hold no
  overlap: S is computed with PySCF (exact, cheap).
  Ids: ``qh9-stable:<QH9 id>`` and ``qh9-dynamic:<row>:<QH9 id>:<geo_id>``
  (8-digit fields); the row is what QH9's published splits are defined on
  (:func:`qhnetv2.data.split.qh9_split`).

SchNOrb MD17 (PBE / def2-SVP, computed with ORCA): ASE database whose rows
carry positions (Angstrom) and, in ``data``, ``hamiltonian`` and ``overlap``
(ORCA AO order, Hartree), ``energy`` and optionally ``forces`` (Hartree /
Angstrom).  Arrays are either stored directly (the published MD17 files) or
in SchNetPack >= 0.3's encoding (base64 of the raw bytes plus
``_shape_<name>`` / ``_dtype_<name>`` entries; H and S float32), which is
what SchNOrb's ``extract_data.py`` writes; that script also subtracts the
mean energy (metadata ``mean_energy``, plus ``energy_offset`` if given), which
is added back here.  Converted with the ``orca`` convention; with ``verify``
> 0 the converted overlap of the first molecules is compared with PySCF's
(functional-independent, so it checks permutation and signs).

Imports are resumable (ids already present are skipped) and commit in
batches; each committed molecule is complete.
"""
from __future__ import annotations

import base64
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
def _as_plain_int(value) -> int:
    """A QH9 integer field: int, NumPy integer, or (dynamic raw file) int64 bytes."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if len(raw) not in (4, 8):
            raise ValueError(f"cannot decode an integer id from {len(raw)} bytes")
        return int(np.frombuffer(raw, dtype=np.int32 if len(raw) == 4 else np.int64)[0])
    return int(value)


def _iter_qh9_sqlite(path: str) -> Iterator[Dict[str, Any]]:
    """Rows of a QH9 raw file in the order QH9 reads them (``select *``: rowid).

    ``_row`` is the 0-based position, which QH9-dynamic uses as its LMDB key
    and split index.
    """
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cols = [r[1] for r in con.execute("PRAGMA table_info(data)")]
        if not cols:
            raise ValueError(f"{path!r}: no table 'data' (not a QH9 SQLite file)")
        lower = [c.lower() for c in cols]

        def col(*names, pos=None):
            for n in names:
                if n.lower() in lower:
                    return lower.index(n.lower())
            return pos
        fields = {"id": col("id", pos=0), "num_nodes": col("N", "num_nodes", pos=1),
                  "atoms": col("Z", "atoms", pos=2), "pos": col("pos", pos=3),
                  "Ham": col("Ham", "hamiltonian", pos=4), "geo_id": col("geo_id"),
                  "epot": col("epot"), "converged": col("converged")}
        fields = {k: v for k, v in fields.items() if v is not None}
        for row_index, row in enumerate(con.execute("SELECT * FROM data ORDER BY rowid")):
            item = {k: row[i] for k, i in fields.items()}
            item["_row"] = row_index
            yield item
    finally:
        con.close()


def _lmdb_key_to_row(key: bytes, position: int) -> int:
    # QH9 writes keys as int.to_bytes(4, "big"); older/other writers may use
    # decimal text.  A 4-byte key of ASCII digits decodes to >= 0x30000000 as
    # big-endian, far beyond any QH9 row count, so the two cannot be confused.
    if len(key) == 4 and int.from_bytes(key, "big") < 10 ** 8:
        return int.from_bytes(key, "big")
    text = key.decode("ascii", "replace")
    return int(text) if text.isdigit() else position


def _iter_qh9_lmdb(path: str) -> Iterator[Dict[str, Any]]:
    import lmdb
    env = lmdb.open(path, readonly=True, lock=False, subdir=os.path.isdir(path))
    try:
        with env.begin() as txn:
            position = 0
            for key, value in txn.cursor():
                try:
                    item = _safe_loads(value)
                except Exception:
                    continue  # e.g. a "length" entry that is not a molecule
                if isinstance(item, dict) and "Ham" in item and "pos" in item:
                    item["_row"] = _lmdb_key_to_row(bytes(key), position)
                    position += 1
                    yield item
    finally:
        env.close()


def _qh9_mol_id(prefix: str, item: Dict[str, Any], variant: str) -> str:
    if variant == "stable":
        key = _as_plain_int(item["id"]) if item.get("id") is not None else item["_row"]
        return check_molecule_id(f"{prefix}:{key:08d}")
    if item.get("id") is None or item.get("geo_id") is None:
        raise ValueError("QH9-dynamic item without 'id' / 'geo_id' (not a QH9-dynamic file? "
                         "use qh9-stable)")
    return check_molecule_id(f"{prefix}:{int(item['_row']):08d}:"
                             f"{_as_plain_int(item['id']):08d}:"
                             f"{_as_plain_int(item['geo_id']):08d}")


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
                                     "energy": "Hartree (NaN unless the file has one: QH9-dynamic "
                                               "raw 'epot')"}}
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
            if variant == "stable" and item.get("geo_id") is not None:
                raise ValueError(f"{path!r} has geo_id fields: it is a QH9-dynamic file, "
                                 f"import it as qh9-dynamic")
            mol_id = _qh9_mol_id(prefix, item, variant)
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
            # the dynamic raw file keeps the MD frame's SCF energy (epot, Hartree)
            # and PySCF's convergence flag; the other QH9 files keep neither
            energy = float(item["epot"]) if item.get("epot") is not None else float("nan")
            record = _make_record(z, pos, h, s, dict(settings, orbital_order=used_order),
                                  energy)
            if item.get("converged") is not None:
                record["converged"] = bool(item["converged"])
            batch.add(mol_id, record)
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
def _schnorb_array(data, name: str) -> Optional[np.ndarray]:
    """``data[name]`` as float64, decoding SchNetPack >= 0.3's base64 encoding.

    SchNetPack's ``AtomsData`` stores ``data[name] = b64encode(a.tobytes())``
    with ``data["_shape_" + name]`` and ``data["_dtype_" + name]``; older files
    (and the published MD17 ones) hold the array itself.
    """
    if name not in data:
        return None
    value = data[name]
    shape_key, dtype_key = "_shape_" + name, "_dtype_" + name
    if isinstance(value, (str, bytes)) and shape_key in data and dtype_key in data:
        raw = base64.b64decode(value)
        arr = np.frombuffer(raw, dtype=np.dtype(str(data[dtype_key])))
        return arr.reshape(tuple(int(n) for n in data[shape_key])).astype(np.float64)
    if isinstance(value, (str, bytes)):
        raise ValueError(f"data[{name!r}] is encoded text without {shape_key!r} / "
                         f"{dtype_key!r}: unknown SchNOrb/SchNetPack encoding")
    return np.asarray(value, dtype=np.float64)


def import_schnorb(path: str, out: str, prefix: Optional[str] = None, verify: int = 1,
                   energy_unit: str = "hartree", hamiltonian_unit: str = "hartree",
                   limit: Optional[int] = None, progress: bool = True,
                   overlap_tol: float = 1e-5) -> Dict[str, Any]:
    """Convert a SchNOrb MD17 ASE database (ORCA AO order) into ``out``.

    ``verify``: number of molecules whose converted overlap is compared with
    PySCF's (raises if the max deviation exceeds ``overlap_tol``; SchNOrb's
    matrices are parsed from ORCA's printed output and stored as float32, so
    a correct file agrees to ~1e-6, a wrong permutation or sign by ~0.1).
    Units of ``energy`` and ``hamiltonian`` in the file: ``hartree`` (SchNOrb:
    ORCA's Fock matrix and final energy) or ``ev``.  Energies are made total
    again by adding the database metadata's ``mean_energy`` and
    ``energy_offset`` where present (SchNOrb's extraction subtracts them).
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
    db_meta = db.metadata or {}
    energy_shift = sum(float(db_meta.get(k, 0.0) or 0.0) for k in ("mean_energy", "energy_offset"))
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
            h_file = _schnorb_array(data, "hamiltonian")
            s_file = _schnorb_array(data, "overlap")
            n_ao = int(round(np.sqrt(h_file.size)))
            h = to_pyscf(h_file.reshape(n_ao, n_ao), "orca", basis, z)
            h = h * factors[hamiltonian_unit]
            s = to_pyscf(s_file.reshape(n_ao, n_ao), "orca", basis, z)
            if len(deviations) < verify:
                deviations.append(float(np.abs(s - overlap_matrix(z, pos, basis)).max()))
                if deviations[-1] > overlap_tol:
                    raise ValueError(f"verify: converted overlap of {mol_id} differs from "
                                     f"PySCF's by {deviations[-1]:.2e}: AO order/sign "
                                     f"convention or basis does not match")
            energy = _schnorb_array(data, "energy")
            if energy is None:
                energy = np.asarray(row.get("energy", np.nan), dtype=np.float64)
            energy = (float(energy.reshape(-1)[0]) + energy_shift) * factors[energy_unit]
            extras = {}
            forces = _schnorb_array(data, "forces")
            if forces is not None:
                extras["forces"] = forces.reshape(-1, 3) * factors[energy_unit]
            batch.add(mol_id, _make_record(z, pos, h, s, settings, energy, extras))
            n_new += 1
            if bar is not None:
                bar.update(1)
    finally:
        batch.flush()
        if bar is not None:
            bar.close()
        writer.close()
    return {"n_imported": n_new, "n_seen": n_seen, "overlap_deviations": deviations,
            "energy_shift_added": energy_shift}


def export_convention(hamiltonian: np.ndarray, convention: str, basis: str,
                      atomic_numbers) -> np.ndarray:
    """PySCF-order matrix -> ``convention`` order (e.g. to feed QH9-codebase tools)."""
    return from_pyscf(hamiltonian, convention, basis, atomic_numbers)
