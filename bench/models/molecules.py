"""Hard-coded molecular geometries for the model benchmarks (no network, no PySCF, no RDKit at bench time).

Every geometry was generated once with RDKit (``Chem.AddHs``,
``AllChem.EmbedMolecule(randomSeed=7)``, ``AllChem.MMFFOptimizeMolecule``)
from the SMILES next to it and is copied here (Angstrom, 4 decimals):

* ``water`` (3 atoms), ``ethanol`` (9), ``uracil`` (12): the MD17-style molecules;
* ``nonane`` (C9H20, 29 atoms): the largest molecule size of QM9 (at most 9
  heavy atoms; 29 atoms needs 20 hydrogens, i.e. a C9H20 isomer);
* three more C9H20 isomers for the batch (``tmp``, ``ethyl``, ``dmh``).

``qm9_batch(32)`` is a batch of 32 QM9-size molecules: the four 29-atom isomers,
each in 8 copies randomly rotated and perturbed by 0.02 Angstrom (seeded), so the
batch is QM9's largest size class (928 atoms, 12992 atom pairs).
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch

#: name -> (SMILES, atomic numbers, positions in Angstrom)
MOLECULES: Dict[str, Tuple[str, Tuple[int, ...], Tuple[Tuple[float, float, float], ...]]] = {
    "water": ("O", (8, 1, 1), (
        (0.0073, 0.3977, 0.0000), (-0.7670, -0.1849, 0.0000), (0.7597, -0.2129, 0.0000))),
    "ethanol": ("CCO", (6, 6, 8, 1, 1, 1, 1, 1, 1), (
        (-0.8544, 0.2235, 0.2418), (0.3871, -0.3585, -0.4015), (1.5316, 0.3843, -0.0073), (-1.7476, -0.3278, -0.0651),
        (-0.9749, 1.2758, -0.0359), (-0.7771, 0.1892, 1.3335), (0.5283, -1.4032, -0.1080), (0.3103, -0.3138, -1.4917),
        (1.5966, 0.3305, 0.9614))),
    "uracil": ("O=C1C=CNC(=O)N1", (8, 6, 6, 6, 7, 6, 8, 7, 1, 1, 1, 1), (
        (-1.8935, -1.8281, 0.0057), (-1.0076, -0.9815, 0.0029), (-1.3344, 0.4588, 0.0197), (-0.3344, 1.3432, 0.0160),
        (0.9677, 0.9290, -0.0030), (1.3450, -0.3875, -0.0192), (2.5238, -0.7248, -0.0359), (0.3226, -1.2940, -0.0154),
        (-2.3792, 0.7373, 0.0344), (-0.5072, 2.4145, 0.0276), (1.7251, 1.6031, -0.0058), (0.5720, -2.2700, -0.0270))),
    "nonane": ("CCCCCCCCC", (6,) * 9 + (1,) * 20, (
        (4.7815, 0.4513, -0.4722), (3.6453, -0.5038, -0.1432), (2.3066, 0.2284, -0.0528), (1.1663, -0.7359, 0.2782),
        (-0.1741, -0.0028, 0.3693), (-1.3133, -0.9707, 0.6968), (-2.6605, -0.2750, 0.9116), (-3.2100, 0.3893, -0.3514),
        (-4.5981, 0.9652, -0.1155), (5.7291, -0.0932, -0.5320), (4.8810, 1.2228, 0.2980), (4.6124, 0.9456, -1.4342),
        (3.8608, -1.0049, 0.8077), (3.5936, -1.2805, -0.9150), (2.0980, 0.7313, -1.0049), (2.3649, 1.0069, 0.7177),
        (1.3759, -1.2387, 1.2302), (1.1074, -1.5139, -0.4926), (-0.1163, 0.7725, 1.1427), (-0.3713, 0.5013, -0.5833),
        (-1.4076, -1.7161, -0.1022), (-1.0635, -1.5203, 1.6129), (-2.5666, 0.4697, 1.7114), (-3.3798, -1.0254, 1.2628),
        (-3.2582, -0.3417, -1.1666), (-2.5469, 1.1981, -0.6762), (-4.5797, 1.7208, 0.6764), (-5.3048, 0.1808, 0.1737),
        (-4.9720, 1.4388, -1.0286))),
    "tmp": ("CC(C)(C)CC(C)(C)C", (6,) * 9 + (1,) * 20, (
        (-1.7293, -1.2218, -0.7898), (-1.3767, 0.0411, 0.0180), (-2.4960, 1.0768, -0.2564), (-1.4072, -0.2879, 1.5142),
        (-0.0362, 0.6841, -0.4578), (1.3692, 0.0993, -0.1120), (1.4966, -1.4035, -0.3824), (1.7732, 0.3921, 1.3451),
        (2.3954, 0.8262, -1.0171), (-2.7568, -1.5447, -0.5832), (-1.6546, -1.0383, -1.8674), (-1.0852, -2.0687, -0.5459),
        (-2.3337, 1.9970, 0.3165), (-2.5352, 1.3450, -1.3184), (-3.4810, 0.6853, 0.0231), (-2.4156, -0.5780, 1.8327),
        (-1.1116, 0.5774, 2.1172), (-0.7509, -1.1273, 1.7594), (-0.1013, 0.7595, -1.5539), (-0.0303, 1.7287, -0.1113),
        (1.1685, -1.6537, -1.3969), (0.9160, -1.9954, 0.3304), (2.5378, -1.7338, -0.2856), (1.6328, 1.4503, 1.5917),
        (1.2052, -0.2007, 2.0646), (2.8303, 0.1541, 1.5138), (2.1946, 0.6344, -2.0774), (3.4188, 0.4920, -0.8109),
        (2.3631, 1.9105, -0.8603))),
    "ethyl": ("CCC(CC)C(C)(C)C", (6,) * 9 + (1,) * 20, (
        (-0.0790, 2.4394, 0.8883), (0.7368, 1.1580, 0.9169), (0.4818, 0.1260, -0.2188), (1.5163, -1.0360, -0.0876),
        (2.9787, -0.6053, -0.0361), (-1.0052, -0.4195, -0.3456), (-1.5845, -0.8401, 1.0179), (-1.0770, -1.6522, -1.2824),
        (-1.9393, 0.6347, -0.9829), (-0.1341, 2.8578, -0.1209), (0.3897, 3.1904, 1.5341), (-1.0870, 2.2844, 1.2789),
        (0.6242, 0.6782, 1.8963), (1.7814, 1.4844, 0.8606), (0.7164, 0.6328, -1.1662), (1.4325, -1.6980, -0.9557),
        (1.2961, -1.6386, 0.8009), (3.2135, 0.0938, -0.8446), (3.2304, -0.1400, 0.9211), (3.6281, -1.4803, -0.1469),
        (-0.9585, -1.5960, 1.5031), (-2.5866, -1.2700, 0.9026), (-1.6794, 0.0080, 1.7023), (-0.5919, -2.5301, -0.8428),
        (-0.6079, -1.4402, -2.2496), (-2.1159, -1.9442, -1.4784), (-2.9096, 0.1954, -1.2450), (-2.1637, 1.4667, -0.3158),
        (-1.5063, 1.0405, -1.9038))),
    "dmh": ("CC(C)CC(C)CCC", (6,) * 9 + (1,) * 20, (
        (-2.2950, 0.0421, 0.7523), (-1.2441, -0.7594, -0.0117), (-1.9322, -1.9113, -0.7561), (-0.4305, 0.0782, -1.0215),
        (0.4716, 1.2182, -0.5012), (-0.3254, 2.4944, -0.1998), (1.3827, 0.8673, 0.6924), (2.5604, -0.0596, 0.3643),
        (2.2446, -1.5440, 0.4374), (-2.9738, -0.6223, 1.2987), (-1.8290, 0.6894, 1.4989), (-2.8987, 0.6581, 0.0780),
        (-0.5680, -1.2121, 0.7205), (-1.1967, -2.5342, -1.2762), (-2.4767, -2.5568, -0.0586), (-2.6455, -1.5354, -1.4976),
        (0.2132, -0.6074, -1.5878), (-1.1186, 0.4925, -1.7715), (1.1269, 1.4865, -1.3426), (0.3531, 3.3517, -0.1202),
        (-1.0374, 2.7173, -1.0011), (-0.8716, 2.4341, 0.7434), (1.8245, 1.8062, 1.0544), (0.8015, 0.4739, 1.5337),
        (2.9797, 0.1840, -0.6185), (3.3543, 0.1385, 1.0958), (1.7975, -1.8051, 1.4016), (3.1657, -2.1261, 0.3280),
        (1.5674, -1.8586, -0.3586))),
}

#: the 29-atom isomers the QM9-size batch is made of
BATCH_ISOMERS = ("nonane", "tmp", "ethyl", "dmh")


def molecule(name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(atomic_numbers[n] int64, positions[n, 3] float64)`` of a named molecule."""
    if name not in MOLECULES:
        raise KeyError(f"unknown molecule {name!r}; expected one of {sorted(MOLECULES)}")
    _, z, pos = MOLECULES[name]
    return torch.tensor(z, dtype=torch.int64), torch.tensor(pos, dtype=torch.float64)


def _rotation(g: torch.Generator) -> torch.Tensor:
    """A uniformly random rotation matrix (normalised random quaternion)."""
    q = torch.randn(4, generator=g, dtype=torch.float64)
    a, b, c, d = (q / q.norm()).tolist()
    return torch.tensor([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
    ], dtype=torch.float64)


def qm9_batch(molecules: int, seed: int = 0, noise: float = 0.02) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(atomic_numbers[N], positions[N, 3], batch[N])``: rotated, perturbed copies of the 29-atom isomers."""
    g = torch.Generator().manual_seed(1000 + seed)
    zs: List[torch.Tensor] = []
    ps: List[torch.Tensor] = []
    for i in range(molecules):
        z, p = molecule(BATCH_ISOMERS[i % len(BATCH_ISOMERS)])
        p = (p - p.mean(0)) @ _rotation(g).T + noise * torch.randn(p.shape, generator=g, dtype=torch.float64)
        zs.append(z)
        ps.append(p)
    batch = torch.cat([torch.full((len(z),), i, dtype=torch.int64) for i, z in enumerate(zs)])
    return torch.cat(zs), torch.cat(ps), batch


def system(name: str, molecules: int = 1, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(atomic_numbers, positions, batch)`` of a benchmark system: a named molecule or ``"qm9x<B>"``."""
    if name.startswith("qm9x"):
        return qm9_batch(int(name[4:]), seed)
    if molecules != 1:
        raise ValueError("batches of a named molecule are not used; use qm9x<B>")
    z, p = molecule(name)
    return z, p, torch.zeros(len(z), dtype=torch.int64)


def min_distance(pos: torch.Tensor, batch: torch.Tensor) -> float:
    d = torch.cdist(pos, pos).masked_fill(batch[:, None] != batch[None, :], math.inf)
    d.fill_diagonal_(math.inf)
    return float(d.min())
