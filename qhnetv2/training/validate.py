"""Validation with the QH9 metrics (``qhnetv2.metrics``), sharded over ranks.

``validate`` returns dataset means: ``hamiltonian_mae``, ``hamiltonian_diagonal_mae``,
``hamiltonian_off_diagonal_mae`` (Hartree) and, with ``orbitals=True``,
``orbital_energy_mae`` (Hartree) and ``orbital_coefficient_similarity``;
``to_micro_hartree`` of them for the log.  Predictions are compared as full
Hamiltonians (``prediction + base`` against the label) in float64.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import torch

from . import distributed as ddp
from .collate import Batch

_KEYS = ("hamiltonian_mae", "hamiltonian_diagonal_mae", "hamiltonian_off_diagonal_mae",
         "orbital_energy_mae", "orbital_coefficient_similarity")


def ao_slices_of(batch: Batch, index, layout) -> List[np.ndarray]:
    """Per molecule int ``[n_atoms, 2]`` (start, stop) AO range of each atom."""
    n_ao_atom = torch.tensor([layout.n_ao(int(z)) for z in batch.atomic_numbers.tolist()])
    start = index.atom_ao.cpu()
    both = torch.stack([start, start + n_ao_atom], 1).numpy()
    return [both[s : s + n] for s, n in zip((torch.cumsum(batch.n_atoms, 0) - batch.n_atoms).tolist(),
                                             batch.n_atoms.tolist())]


def full_predictions(batch: Batch, pred_flat: torch.Tensor) -> torch.Tensor:
    """float64 ``[T]``: the model output plus the base (if the target is residual)."""
    pred = pred_flat.detach().to("cpu", torch.float64)
    return pred + batch.base if batch.base is not None else pred


def batch_metrics(batch: Batch, pred_flat: torch.Tensor, index, layout, orbitals: bool) -> Dict[str, List[float]]:
    """Per-molecule metric lists of one batch."""
    from qhnetv2.metrics import hamiltonian_metrics

    pred = batch.unpack(full_predictions(batch, pred_flat))
    true = batch.unpack(batch.hamiltonian)
    slices = ao_slices_of(batch, index, layout)
    if orbitals:
        m = hamiltonian_metrics(pred, true, batch.overlap, batch.n_occ.numpy(), ao_slices=slices)
        return {k: [float(v) for v in m["per_molecule"][k]] for k in _KEYS}
    out: Dict[str, List[float]] = {k: [] for k in _KEYS[:3]}
    for p, t, s in zip(pred, true, slices):
        err = (p - t).abs().numpy()
        owner = np.repeat(np.arange(len(s)), s[:, 1] - s[:, 0])
        diag = owner[:, None] == owner[None, :]
        out["hamiltonian_mae"].append(float(err.mean()))
        out["hamiltonian_diagonal_mae"].append(float(err[diag].mean()))
        out["hamiltonian_off_diagonal_mae"].append(float(err[~diag].mean()) if (~diag).any() else float("nan"))
    return out


@torch.no_grad()
def validate(model, batches, device, dtype, orbitals: bool = True) -> Dict[str, float]:
    """Metrics over ``batches`` (this rank's share), averaged over all ranks' molecules.

    ``model``: the bare ``QHNetV2`` (not the DDP wrapper); ``batches``: iterable of :class:`Batch`.
    """
    was_training = model.training
    model.eval()
    per: Dict[str, List[float]] = {}
    for batch in batches:
        b = batch.to(device, dtype)
        h, index = model.forward_batch(b.atomic_numbers, b.positions, b.batch)
        for k, v in batch_metrics(batch, h, index, model.layout, orbitals).items():
            per.setdefault(k, []).extend(v)
    model.train(was_training)
    gathered = ddp.all_gather_objects(per)
    out: Dict[str, float] = {}
    for k in _KEYS:
        vals = [x for g in gathered for x in g.get(k, [])]
        if vals:
            out[k] = float(np.nanmean(vals)) if not np.isnan(vals).all() else float("nan")
    out["n_molecules"] = sum(len(g.get("hamiltonian_mae", [])) for g in gathered)
    return out
