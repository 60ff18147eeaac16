"""A small MD17-like dataset recipe (used by ``qhnetv2 demo``).

Geometries come from short Langevin molecular dynamics at 500 K (MD17's
temperature) driven by RDKit's MMFF94 force field (cheap, has parameters for
water and organic molecules), wrapped as an ASE calculator; frames are
sampled every ``stride`` steps after an equilibration period.  The frames are
then labelled by :func:`qhnetv2.data.build.build_dataset` like any input.
"""
from __future__ import annotations

import os
import zlib
from typing import Dict, List, Optional

import numpy as np

# name -> SMILES of the MD17 molecules (and water)
MOLECULES: Dict[str, str] = {
    "water": "O",
    "ethanol": "CCO",
    "malondialdehyde": "O=CCC=O",
    "uracil": "O=C1C=CNC(=O)N1",
    "methane": "C",
    "ammonia": "N",
}
DEFAULT_COUNTS = {"water": 100, "ethanol": 20}
KCAL_PER_MOL_IN_EV = 0.0433641153087705


def parse_counts(text: str) -> Dict[str, int]:
    """``"water=100,ethanol=20"`` -> dict; names must be in ``MOLECULES``."""
    counts = {}
    for part in str(text).split(","):
        if not part.strip():
            continue
        try:
            name, n = part.split("=")
            counts[name.strip()] = int(n)
        except ValueError:
            raise ValueError(f"--counts must look like water=100,ethanol=20; got {text!r}") from None
    for name, n in counts.items():
        if name not in MOLECULES:
            raise ValueError(f"--counts: unknown molecule {name!r}; known: {sorted(MOLECULES)}")
        if n < 1:
            raise ValueError(f"--counts: {name} needs a positive count, got {n}")
    if not counts:
        raise ValueError("--counts is empty")
    return counts


def _mmff_calculator(rdmol):
    """ASE calculator computing MMFF94 energy/forces for ``rdmol`` (eV, eV/A)."""
    from ase.calculators.calculator import Calculator, all_changes
    from rdkit.Chem import AllChem

    props = AllChem.MMFFGetMoleculeProperties(rdmol)
    if props is None:
        raise ValueError("MMFF has no parameters for this molecule")

    class MMFFCalculator(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            conf = rdmol.GetConformer()
            for i, p in enumerate(self.atoms.positions):
                conf.SetAtomPosition(i, p.tolist())
            ff = AllChem.MMFFGetMoleculeForceField(rdmol, props)
            grad = np.asarray(ff.CalcGrad(), dtype=np.float64).reshape(-1, 3)
            self.results["energy"] = ff.CalcEnergy() * KCAL_PER_MOL_IN_EV
            self.results["forces"] = -grad * KCAL_PER_MOL_IN_EV

    return MMFFCalculator()


def md_frames(smiles: str, n_frames: int, temperature: float = 500.0, seed: int = 0,
              timestep_fs: float = 0.5, stride: int = 20, equilibration: int = 200):
    """``n_frames`` ASE Atoms from MMFF Langevin MD of one molecule."""
    from ase import Atoms, units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta
    from rdkit import Chem
    from rdkit.Chem import AllChem

    rdmol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    if AllChem.EmbedMolecule(rdmol, params) != 0:
        raise ValueError(f"RDKit could not embed {smiles!r}")
    AllChem.MMFFOptimizeMolecule(rdmol)
    atoms = Atoms(numbers=[a.GetAtomicNum() for a in rdmol.GetAtoms()],
                  positions=rdmol.GetConformer().GetPositions())
    atoms.calc = _mmff_calculator(rdmol)
    from ase.constraints import FixCom
    atoms.set_constraint(FixCom())  # no centre-of-mass drift (ASE's recommended way)
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature,
                   friction=0.02, rng=rng, fixcm=False)
    dyn.run(equilibration)
    frames = []
    for _ in range(n_frames):
        dyn.run(stride)
        frame = Atoms(numbers=atoms.numbers, positions=atoms.positions.copy())
        frame.center()
        frames.append(frame)
    return frames


def make_md17_like(out_dir: str, counts: Optional[Dict[str, int]] = None, seed: int = 0,
                   temperature: float = 500.0) -> List[str]:
    """Write ``<out_dir>/<name>.extxyz`` per molecule; returns the file paths.

    Existing files with the right frame count are kept (re-running is cheap
    and does not change ids of an existing dataset).
    """
    import ase.io
    counts = dict(counts or DEFAULT_COUNTS)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, n in sorted(counts.items()):
        if name not in MOLECULES:
            raise ValueError(f"counts: unknown molecule {name!r}; known: {sorted(MOLECULES)}")
        path = os.path.join(out_dir, f"{name}.extxyz")
        if os.path.exists(path) and len(ase.io.read(path, index=":")) == n:
            paths.append(path)
            continue
        # seed per molecule name, so a molecule's frames do not depend on which
        # other molecules are requested
        mol_seed = (int(seed) * 1000003 + zlib.crc32(name.encode("utf-8"))) % (2 ** 31)
        frames = md_frames(MOLECULES[name], n, temperature=temperature, seed=mol_seed)
        tmp = path + ".tmp.extxyz"
        ase.io.write(tmp, frames, format="extxyz")
        os.replace(tmp, path)
        paths.append(path)
    return paths
