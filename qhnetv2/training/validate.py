"""Validation with the QH9 metrics (``qhnetv2.metrics``), sharded over ranks.

``validate`` returns dataset means: ``hamiltonian_mae``, ``hamiltonian_diagonal_mae``,
``hamiltonian_off_diagonal_mae`` (Hartree) and, with ``orbitals=True``,
``orbital_energy_mae`` (Hartree), ``orbital_coefficient_similarity`` and the
spectrum metrics (cheap: same eigenvalues) ``virtual_orbital_energy_mae``,
``lumo_error``, ``gap_error``, ``max_orbital_energy_error`` (Hartree) with
``gap_error_max`` and ``max_orbital_energy_error_max`` (worst molecule); with
``density=True`` also ``energy_error`` (signed), ``energy_abs_error`` (Hartree)
and ``dipole_error`` (Debye), which cost one PySCF Fock build per density.
``to_micro_hartree`` of them for the log (uEh, eV, Debye, %).  Predictions are
compared as full Hamiltonians (``prediction + base`` against the label) in float64.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch

from qhnetv2.metrics import DENSITY_KEYS, METRIC_KEYS, summarize

from . import distributed as ddp
from .collate import Batch

#: per-molecule keys gathered over ranks (``summarize`` adds the ``*_max`` ones)
_KEYS = METRIC_KEYS + DENSITY_KEYS


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


def batch_metrics(batch: Batch, pred_flat: torch.Tensor, index, layout, orbitals: bool,
                  density_settings: Optional[Mapping[str, Any]] = None) -> Dict[str, List[float]]:
    """Per-molecule metric lists of one batch; the density metrics when
    ``density_settings`` (the labels' SCF settings) is given."""
    from qhnetv2.metrics import density_metrics, hamiltonian_metrics

    pred = batch.unpack(full_predictions(batch, pred_flat))
    true = batch.unpack(batch.hamiltonian)
    slices = ao_slices_of(batch, index, layout)
    if orbitals:
        if len(batch.overlap) != batch.num_molecules:
            raise ValueError("validation with orbital metrics needs the overlap matrices in the batch "
                             "(a dataset read with the overlap field)")
        m = hamiltonian_metrics(pred, true, batch.overlap, batch.n_occ.numpy(), ao_slices=slices)
        out = {k: [float(v) for v in m["per_molecule"][k]] for k in METRIC_KEYS}
    else:
        out = {k: [] for k in METRIC_KEYS[:3]}
        for p, t, s in zip(pred, true, slices):
            err = (p - t).abs().numpy()
            owner = np.repeat(np.arange(len(s)), s[:, 1] - s[:, 0])
            diag = owner[:, None] == owner[None, :]
            out["hamiltonian_mae"].append(float(err.mean()))
            out["hamiltonian_diagonal_mae"].append(float(err[diag].mean()))
            out["hamiltonian_off_diagonal_mae"].append(float(err[~diag].mean()) if (~diag).any() else float("nan"))
    if density_settings is not None:
        starts = (torch.cumsum(batch.n_atoms, 0) - batch.n_atoms).tolist()
        zs = [batch.atomic_numbers[s : s + n].numpy() for s, n in zip(starts, batch.n_atoms.tolist())]
        pos = [batch.positions[s : s + n].to(torch.float64).numpy() for s, n in zip(starts, batch.n_atoms.tolist())]
        # closed shell: the charge is what n_occ leaves of the nuclear charge
        charges = [int(z.sum()) - 2 * int(k) for z, k in zip(zs, batch.n_occ.tolist())]
        d = density_metrics(pred, true, zs, pos, dict(density_settings), charges=charges)
        out.update({k: [float(v) for v in d["per_molecule"][k]] for k in DENSITY_KEYS})
    return out


@torch.no_grad()
def validate(model, batches, device, dtype, orbitals: bool = True, density: bool = False,
             settings: Optional[Mapping[str, Any]] = None) -> Dict[str, float]:
    """Metrics over ``batches`` (this rank's share), averaged over all ranks' molecules.

    ``model``: the bare ``QHNetV2`` (not the DDP wrapper); ``batches``: iterable of :class:`Batch`.
    ``density``: also the energy and dipole errors (:func:`qhnetv2.metrics.density_metrics`,
    PySCF, one Fock build per density), with ``settings`` the labels' SCF settings
    (``xc``, ``basis``, ``grid_level``, ...; the dataset's ``__meta__`` settings).
    """
    if density and settings is None:
        raise ValueError("validate(density=True) needs the labels' settings (xc, basis, ...)")
    was_training = model.training
    model.eval()
    per: Dict[str, List[float]] = {}
    for batch in batches:
        b = batch.to(device, dtype)
        h, index = model.forward_batch(b.atomic_numbers, b.positions, b.batch)
        for k, v in batch_metrics(batch, h, index, model.layout, orbitals,
                                  settings if density else None).items():
            per.setdefault(k, []).extend(v)
    model.train(was_training)
    gathered = ddp.all_gather_objects(per)
    merged = {k: [x for g in gathered for x in g.get(k, [])] for k in _KEYS}
    out: Dict[str, float] = summarize({k: v for k, v in merged.items() if v})
    out["n_molecules"] = sum(len(g.get("hamiltonian_mae", [])) for g in gathered)
    return out
