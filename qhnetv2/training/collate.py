"""Batching molecules of different sizes: ``collate(records) -> Batch``.

The model returns every molecule's ``n_ao x n_ao`` Hamiltonian row-major in one
flat buffer (``so2ops.HamiltonianIndex``); ``collate`` lays the targets out the
same way, so the loss is a plain elementwise op over two flat vectors.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Sequence

import torch


@dataclass
class Batch:
    """A batch of B molecules with N atoms in total and T = sum(n_ao^2) H entries.

    Attributes:
        ids: the B molecule ids.
        atomic_numbers: long ``[N]``; positions: ``[N, 3]`` Angstrom;
        batch: long ``[N]`` molecule of each atom (sorted, 0..B-1).
        n_atoms, n_ao, n_occ: long ``[B]``; offsets: long ``[B]`` start of each
            molecule's matrix in the flat buffers.
        target: ``[T]`` what the model learns: ``H - H_base`` (residual targets) or ``H``.
        hamiltonian: float64 ``[T]`` the true H (PySCF AO order, Hartree).
        base: float64 ``[T]`` the base Hamiltonian, or None (``target: full``).
        overlap: B float64 matrices ``[n_ao, n_ao]``, or empty when the records have none
            (training batches: the loss does not use S; validation's orbital metrics do).
        eigvecs: B float64 matrices ``[n_ao, k]``, the label's generalised eigenvectors
            (``C^T S C = I``, ascending; for the eigenbasis loss), or empty;
        eigvals: B float64 ``[k]`` their orbital energies (kept on the CPU), or empty.
    """

    ids: List[str]
    atomic_numbers: torch.Tensor
    positions: torch.Tensor
    batch: torch.Tensor
    n_atoms: torch.Tensor
    n_ao: torch.Tensor
    n_occ: torch.Tensor
    offsets: torch.Tensor
    target: torch.Tensor
    hamiltonian: torch.Tensor
    base: Optional[torch.Tensor]
    overlap: List[torch.Tensor] = field(default_factory=list)
    eigvecs: List[torch.Tensor] = field(default_factory=list)
    eigvals: List[torch.Tensor] = field(default_factory=list)

    @property
    def num_molecules(self) -> int:
        return len(self.ids)

    def to(self, device=None, dtype: Optional[torch.dtype] = None,
           target_dtype: Optional[torch.dtype] = None) -> "Batch":
        """Model inputs moved to ``device`` and cast to ``dtype``; ``target`` moved to ``device`` and
        cast to ``target_dtype`` (default: ``dtype``; float64 keeps the label's digits, see
        ``TrainConfig.target_dtype``); ``eigvecs`` (if any: only when the eigenbasis loss is on)
        moved to ``device`` in float64; the other float64 reference matrices stay on the CPU
        (for the metrics)."""
        return Batch(self.ids, self.atomic_numbers.to(device), self.positions.to(device=device, dtype=dtype),
                     self.batch.to(device), self.n_atoms, self.n_ao, self.n_occ, self.offsets,
                     self.target.to(device=device, dtype=target_dtype or dtype), self.hamiltonian, self.base,
                     self.overlap, [c.to(device) for c in self.eigvecs], self.eigvals)

    def unpack(self, flat: torch.Tensor) -> List[torch.Tensor]:
        """Per-molecule ``[n_ao, n_ao]`` views of a flat ``[T]`` buffer."""
        return [flat[o : o + n * n].view(n, n) for o, n in zip(self.offsets.tolist(), self.n_ao.tolist())]


def n_occupied(record: Dict) -> int:
    """Doubly occupied orbitals of a closed-shell record: (sum Z - charge) // 2."""
    return (int(torch.as_tensor(record["atomic_numbers"]).long().sum()) - _charge(record)) // 2


def _charge(record: Dict) -> int:
    settings = record.get("settings")
    if isinstance(settings, str):
        try:
            settings = json.loads(settings)
        except ValueError:
            settings = None
    if isinstance(settings, dict):
        return int(settings.get("charge", 0) or 0)
    return 0


def collate(records: Sequence[Dict], dtype: torch.dtype = torch.float64) -> Batch:
    """Collate ``HamiltonianDataset`` items (dicts) into a :class:`Batch`.

    Each record needs ``atomic_numbers [n]``, ``positions [n, 3]``,
    ``hamiltonian [n_ao, n_ao]`` and ``id``, and may have ``overlap [n_ao, n_ao]``
    (all records or none; validation's orbital metrics need it); if it has
    ``base_hamiltonian [n_ao, n_ao]`` (see ``qhnetv2.training.data.ResidualDataset``)
    the target is ``hamiltonian - base_hamiltonian``; ``label_eigenvectors [n_ao, k]``
    and ``label_orbital_energies [k]`` (same dataset, with an ``EigenCache``) become
    ``eigvecs``/``eigvals``.  ``positions`` and ``target`` are cast to ``dtype``.
    """
    if not records:
        raise ValueError("collate: empty batch")
    zs = [torch.as_tensor(r["atomic_numbers"]).long().reshape(-1) for r in records]
    pos = [torch.as_tensor(r["positions"]).reshape(-1, 3) for r in records]
    hs = [torch.as_tensor(r["hamiltonian"], dtype=torch.float64) for r in records]
    has_base = ["base_hamiltonian" in r and r["base_hamiltonian"] is not None for r in records]
    if any(has_base) and not all(has_base):
        raise ValueError("collate: some records have base_hamiltonian and some do not")
    for r, z, h in zip(records, zs, hs):
        if h.dim() != 2 or h.shape[0] != h.shape[1]:
            raise ValueError(f"collate: molecule {r.get('id')}: hamiltonian must be square, got {list(h.shape)}")
    n_atoms = torch.tensor([z.numel() for z in zs], dtype=torch.long)
    n_ao = torch.tensor([h.shape[0] for h in hs], dtype=torch.long)
    sq = n_ao * n_ao
    offsets = torch.cumsum(sq, 0) - sq
    n_occ = torch.tensor([(int(z.sum()) - _charge(r)) // 2 for r, z in zip(records, zs)], dtype=torch.long)
    has_eig = ["label_eigenvectors" in r and r["label_eigenvectors"] is not None for r in records]
    if any(has_eig) and not all(has_eig):
        raise ValueError("collate: some records have label_eigenvectors and some do not")
    eigvecs = [torch.as_tensor(r["label_eigenvectors"], dtype=torch.float64) for r in records] if all(has_eig) else []
    eigvals = [torch.as_tensor(r["label_orbital_energies"], dtype=torch.float64).reshape(-1)
               for r in records] if all(has_eig) else []
    for c, h, r in zip(eigvecs, hs, records):
        if c.dim() != 2 or c.shape[0] != h.shape[0]:
            raise ValueError(f"collate: molecule {r.get('id')}: label_eigenvectors {list(c.shape)} "
                             f"do not fit hamiltonian {list(h.shape)}")
    has_s = ["overlap" in r and r["overlap"] is not None for r in records]
    if any(has_s) and not all(has_s):
        raise ValueError("collate: some records have overlap and some do not")
    h_flat = torch.cat([h.reshape(-1) for h in hs])
    base = None
    if all(has_base):
        base = torch.cat([torch.as_tensor(r["base_hamiltonian"], dtype=torch.float64).reshape(-1) for r in records])
        if base.shape != h_flat.shape:
            raise ValueError("collate: base_hamiltonian and hamiltonian differ in shape")
        target = h_flat - base
    else:
        target = h_flat
    return Batch(
        ids=[str(r.get("id", i)) for i, r in enumerate(records)],
        atomic_numbers=torch.cat(zs),
        positions=torch.cat(pos).to(dtype),
        batch=torch.repeat_interleave(torch.arange(len(records)), n_atoms),
        n_atoms=n_atoms, n_ao=n_ao, n_occ=n_occ, offsets=offsets,
        target=target.to(dtype), hamiltonian=h_flat, base=base,
        overlap=[torch.as_tensor(r["overlap"], dtype=torch.float64) for r in records] if all(has_s) else [],
        eigvecs=eigvecs, eigvals=eigvals,
    )
