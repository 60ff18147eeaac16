"""Helpers shared by the qhnetv2 data/evaluation tests (small molecules only)."""
import os
import sys

import numpy as np

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# A slightly asymmetric water (no symmetry => every AO component matters).
WATER_Z = np.array([8, 1, 1])
WATER_POS = np.array([[0.0, 0.0, 0.117], [0.757, 0.02, -0.469], [-0.761, -0.03, -0.465]])


def random_rotation(seed):
    from scipy.spatial.transform import Rotation
    return Rotation.random(random_state=seed).as_matrix()


def wigner_D(mol, Q):
    """Block-diagonal real-spherical D [n_ao, n_ao] in PySCF AO order such that
    a matrix of ``mol`` rotated by ``Q`` (positions -> positions @ Q.T) is
    ``D @ M @ D.T``.  Built from PySCF's own Wigner matrices (pyscf.symm.Dmatrix)."""
    import scipy.linalg
    from pyscf.symm import Dmatrix
    angles = Dmatrix.get_euler_angles(Q, np.eye(3))
    blocks = []
    for b in range(mol.nbas):
        l = mol.bas_angular(b)
        for _ in range(mol.bas_nctr(b)):
            blocks.append(Dmatrix.Dmatrix(l, *angles, reorder_p=True))
    return scipy.linalg.block_diag(*blocks)


def write_xyz(path, frames, comments=None):
    """frames: list of (atomic_numbers, positions) -> plain multi-frame xyz."""
    from pyscf.data.elements import ELEMENTS
    with open(path, "w") as f:
        for k, (z, pos) in enumerate(frames):
            f.write(f"{len(z)}\n{(comments or {}).get(k, 'frame')}\n")
            for a, p in zip(z, pos):
                f.write(f"{ELEMENTS[int(a)]} {float(p[0])!r} {float(p[1])!r} {float(p[2])!r}\n")
    return str(path)


def water_frames(n, seed=0, scale=0.03):
    rng = np.random.default_rng(seed)
    return [(WATER_Z, WATER_POS + rng.normal(scale=scale, size=WATER_POS.shape))
            for _ in range(n)]




def labelled_water(root, n, seed, scale=0.03, n_train=None):
    """``n`` distorted waters labelled HF/STO-3G into ``root/water`` (asserting all succeed), and,
    with ``n_train``, a split file ``root/split.json`` (first ``n_train`` train, the rest valid).

    Returns ``{"data": path, "split": path or None}``."""
    from qhnetv2.data.build import build_dataset
    from qhnetv2.data.split import write_json_atomic
    from qhnetv2.data.store import HamiltonianReader

    xyz = write_xyz(os.path.join(str(root), "water.xyz"), water_frames(n, seed=seed, scale=scale))
    data = os.path.join(str(root), "water")
    assert build_dataset([xyz], data, {"xc": "hf", "basis": "sto-3g", "conv_tol": 1e-10}, workers=0,
                         progress=False)["n_ok"] == n
    split = None
    if n_train is not None:
        ids = HamiltonianReader(data).ids
        split = os.path.join(str(root), "split.json")
        write_json_atomic(split, {"train": ids[:n_train], "valid": ids[n_train:], "test": []})
    return {"data": data, "split": split}


def tiny_train_config(**overrides):
    """A tiny-preset float64 CPU training config (a few steps), with ``overrides`` applied."""
    from qhnetv2.training.config import TrainConfig

    cfg = {"model": {"preset": "tiny"}, "target": "full", "dtype": "float64", "batch_size": 2, "lr": 3e-3,
           "warmup_steps": 1, "max_steps": 2, "val_every": 2, "log_every": 1, "ema_decay": 0.5, "seed": 0,
           "device": "cpu"}
    cfg.update(overrides)
    return TrainConfig.from_dict(cfg)
