"""Reading input geometries: any file ASE reads, or SMILES lists (RDKit).

Every input frame becomes a :class:`GeometryItem` with a stable molecule id
``"<file stem>:<frame index, 8 digits>"`` (e.g. ``"water:00000012"``), so that
shards of the same input file, built on different machines, agree on ids.

SMILES conformers are *not* generated here but in the labelling worker
(:func:`embed_smiles`), because RDKit embedding of 100k molecules would
otherwise serialise in the parent process.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

SMILES_EXTENSIONS = (".smi", ".smiles")


@dataclasses.dataclass
class GeometryItem:
    """One input molecule.

    ``atomic_numbers`` int64 [n_atoms] and ``positions`` float64 [n_atoms, 3]
    (Angstrom) for geometry files; ``smiles`` for SMILES input (conformer made
    later).  ``index`` is the global position over all input files (used by
    ``--shard``).
    """
    mol_id: str
    index: int
    atomic_numbers: Optional[np.ndarray] = None
    positions: Optional[np.ndarray] = None
    smiles: Optional[str] = None
    charge: int = 0


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_stem(path: str) -> str:
    name = os.path.basename(path)
    for ext in SMILES_EXTENSIONS + (".gz", ".bz2", ".xz"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    stem = os.path.splitext(name)[0]
    if not stem or stem.startswith("__"):
        raise ValueError(f"geometries: cannot derive a molecule-id prefix from {path!r}")
    return stem


def is_smiles_file(path: str, fmt: Optional[str]) -> bool:
    if fmt is not None:
        return fmt.lower() == "smiles"
    return path.lower().endswith(SMILES_EXTENSIONS)


def make_id(stem: str, frame: int) -> str:
    return f"{stem}:{frame:08d}"


def _read_smiles(path: str, stem: str, start: int) -> List[GeometryItem]:
    items = []
    with open(path, encoding="utf-8") as f:
        frame = 0
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            smiles = line.split()[0]
            items.append(GeometryItem(make_id(stem, frame), start + frame, smiles=smiles))
            frame += 1
    return items


def _read_ase(path: str, stem: str, start: int, fmt: Optional[str]) -> List[GeometryItem]:
    import ase.io
    try:
        frames = ase.io.read(path, index=":", format=fmt)
    except Exception as exc:
        raise ValueError(f"geometries: ASE cannot read {path!r}: {exc}") from None
    items = []
    for frame, atoms in enumerate(frames):
        charge = int(round(float(atoms.info.get("charge", 0) or 0)))
        items.append(GeometryItem(
            make_id(stem, frame), start + frame,
            atomic_numbers=np.asarray(atoms.numbers, dtype=np.int64),
            positions=np.asarray(atoms.positions, dtype=np.float64).reshape(-1, 3),
            charge=charge))
    return items


def read_geometries(paths: Sequence[str], fmt: Optional[str] = None
                    ) -> Tuple[List[GeometryItem], List[dict]]:
    """Read all frames of all files.

    Returns ``(items, sources)``; ``sources`` describes each file (stem, frame
    count, sha256) and goes into the dataset metadata so that a resumed run or
    a merge can check it is looking at the same inputs.
    """
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise ValueError("geometries: at least one input file is required")
    items: List[GeometryItem] = []
    sources = []
    stems = set()
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"geometries: no such file {path!r}")
        stem = source_stem(path)
        if stem in stems:
            raise ValueError(f"geometries: two input files share the stem {stem!r}; "
                             f"molecule ids would collide")
        stems.add(stem)
        if is_smiles_file(path, fmt):
            new = _read_smiles(path, stem, len(items))
        else:
            new = _read_ase(path, stem, len(items), fmt)
        sources.append({"stem": stem, "n_frames": len(new), "sha256": file_sha256(path),
                        "kind": "smiles" if is_smiles_file(path, fmt) else "geometry"})
        items.extend(new)
    return items, sources


def embed_smiles(smiles: str, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, int]:
    """One RDKit conformer (ETKDG + MMFF relaxation) for a SMILES string.

    Returns ``(atomic_numbers [n_atoms], positions [n_atoms, 3] Angstrom,
    formal charge)``; raises ``ValueError`` with the reason on failure.
    """
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"invalid SMILES {smiles!r}")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise ValueError(f"RDKit could not embed a conformer for {smiles!r}")
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    pos = np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64)
    return z, pos, int(Chem.GetFormalCharge(mol))
