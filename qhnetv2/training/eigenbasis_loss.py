"""A training loss in the eigenbasis of the label (``loss: {eigen: w}``), after Li et al.'s WALoss.

An element-wise loss on ``H`` does not control the generalised eigenproblem
``H C = S C e``: an error along a poorly conditioned direction of the overlap
``S`` is small entry by entry but large in the orthonormal orbital basis, where
it can pull a high virtual orbital far below the LUMO (a spurious low orbital,
a wrong HOMO-LUMO gap).  With the label's generalised eigenvectors ``C``
(``C^T S C = I``, columns in ascending energy),

    M = C^T (H_pred - H_true) C

is the prediction error in the label's orbital basis: ``M_pp`` is the
first-order error of orbital energy ``p``, and a large negative entry in the
high-virtual block is what creates a spurious low orbital.  The term is

    sum_mol sum_pq w_p w_q |M_pq|  /  sum_mol sum_pq w_p w_q        (``eigen``)
    sum_mol sum_pq w_p w_q  M_pq^2 /  sum_mol sum_pq w_p w_q        (``eigen_mse``)

pooled over the molecules of the global batch like the entry-wise loss, with
``w_p = 1`` for the occupied orbitals and the lowest ``n_virtual`` virtuals and
``w_p = w_rest`` for the others (``w_rest = 0``: only those columns of ``C``
are cached and used).

Gauge freedom of ``C``: a column's sign and, within a set of degenerate
orbitals (energies closer than :data:`DEGENERACY_TOL`), any rotation, are
arbitrary.  Both terms are invariant to them: the squared term because it is a
weighted Frobenius norm with equal weights on a degenerate set; the absolute
term because on a degenerate set it uses the Frobenius norm of the whole block
(``|M_pq|`` between non-degenerate orbitals, ``||M_PQ||_F`` between degenerate
sets P, Q: a group-lasso that equals the plain sum when nothing is degenerate).

``M`` is computed in float64 whatever the training dtype: the columns of ``C``
along poorly conditioned overlap directions have entries of order
``1/sqrt(lambda_min(S))``, so ``M_pq`` is a sum of large terms of alternating
sign that cancel to a small number -- exactly the entries this loss is about.
The cost (two ``n x n`` by ``n x k`` products per molecule) is small next to
the network.

``C`` comes from ``scipy.linalg.eigh(H, S)`` in float64, once per molecule, cached
on disk by :class:`EigenCache` (the training loop precomputes it on rank 0).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ..atomic import atomic_file

#: orbitals whose label energies differ by less than this (Hartree) count as degenerate
DEGENERACY_TOL = 1e-5
#: defaults of the eigenbasis sub-options (``loss.n_virtual``, ``loss.w_rest``)
DEFAULT_N_VIRTUAL = 4
DEFAULT_W_REST = 0.3


def label_eigenvectors(hamiltonian, overlap) -> Tuple[np.ndarray, np.ndarray]:
    """``(e [n], C [n, n])`` of ``H C = S C e`` in float64, ascending, ``C^T S C = I``."""
    import scipy.linalg

    h = np.asarray(hamiltonian, dtype=np.float64)
    s = np.asarray(overlap, dtype=np.float64)
    e, c = scipy.linalg.eigh(0.5 * (h + h.T), 0.5 * (s + s.T))
    return e, c


def n_columns(n_ao: int, n_occ: int, n_virtual: int, energies: Optional[np.ndarray] = None) -> int:
    """Columns of ``C`` the ``w_rest = 0`` loss needs: occupied + ``n_virtual``, extended over a
    degenerate set cut by that boundary (so a rotation within it stays a gauge freedom)."""
    k = min(n_ao, n_occ + n_virtual)
    if energies is not None:
        while 0 < k < n_ao and energies[k] - energies[k - 1] < DEGENERACY_TOL:
            k += 1
    return k


def degenerate_groups(energies) -> Optional[np.ndarray]:
    """int ``[k]`` group id (0, 1, ...) of each orbital, consecutive orbitals closer than
    :data:`DEGENERACY_TOL` sharing one; None if no two orbitals are degenerate."""
    e = np.asarray(energies, dtype=np.float64).reshape(-1)
    if e.size < 2:
        return None
    new = np.diff(e) >= DEGENERACY_TOL
    if new.all():
        return None
    return np.concatenate([[0], np.cumsum(new)]).astype(np.int64)


def orbital_weights(k: int, n_occ: int, n_virtual: int, w_rest: float,
                    groups: Optional[np.ndarray] = None) -> np.ndarray:
    """float64 ``[k]``: 1 for the occupied + lowest ``n_virtual`` orbitals, ``w_rest`` for the others;
    a degenerate group takes the largest weight of its members."""
    w = np.full(k, float(w_rest))
    w[: min(k, n_occ + n_virtual)] = 1.0
    if groups is not None:
        top = np.zeros(int(groups.max()) + 1)
        np.maximum.at(top, groups, w)
        w = top[groups]
    return w


class EigenCache:
    """Disk cache of the label's eigenpairs, one float64 ``.npy`` per molecule, written atomically.

    The file holds ``[n_ao + 1, k]``: row 0 the orbital energies, rows 1.. the
    columns of ``C`` (``k = n_ao`` with ``all_columns``, else :func:`n_columns`).
    The folder is created on the first write, so a reader that never writes
    (ranks > 0) leaves no trace.
    """

    def __init__(self, folder: str, n_virtual: int, all_columns: bool):
        self.folder, self.n_virtual, self.all_columns = folder, int(n_virtual), bool(all_columns)

    def path(self, key: str) -> str:
        spec = "all" if self.all_columns else f"occ+{self.n_virtual}"
        return os.path.join(self.folder, f"eig-{spec}-{key}.npy")

    def _fits(self, arr: np.ndarray, n_ao: int, n_occ: int) -> bool:
        if arr.ndim != 2 or arr.shape[0] != n_ao + 1:
            return False
        return arr.shape[1] == n_ao if self.all_columns else min(n_ao, n_occ + self.n_virtual) <= arr.shape[1] <= n_ao

    def get(self, key: str, hamiltonian, overlap, n_occ: int, write: bool = True) -> Tuple[np.ndarray, np.ndarray]:
        """``(energies [k], C [n_ao, k])`` of one molecule: read from the cache, or computed
        (:func:`label_eigenvectors`) and, with ``write``, stored.  ``overlap`` may be a
        zero-argument callable returning it, called only when the cache misses."""
        n_ao = int(np.shape(hamiltonian)[0])
        path = self.path(key)
        if os.path.exists(path):
            arr = np.load(path)
            if self._fits(arr, n_ao, n_occ):
                return arr[0], arr[1:]
        if callable(overlap):
            overlap = overlap()
        e, c = label_eigenvectors(hamiltonian, overlap)
        k = n_ao if self.all_columns else n_columns(n_ao, n_occ, self.n_virtual, e)
        arr = np.ascontiguousarray(np.vstack([e[None, :k], c[:, :k]]))
        if write:
            with atomic_file(path) as f:
                np.save(f, arr)
        return arr[0], arr[1:]


def eigenbasis_sums(errors: Sequence[torch.Tensor], eigvecs: Sequence[torch.Tensor],
                    energies: Sequence[torch.Tensor], n_occ: Sequence[int], n_virtual: int,
                    w_rest: float) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """Un-normalised eigenbasis sums over the given molecules.

    Args:
        errors: per molecule ``H_pred - H_true`` ``[n, n]`` (any float dtype; differentiable).
        eigvecs: per molecule the label's ``C [n, k]`` (float64, on the errors' device).
        energies: per molecule the label's orbital energies ``[k]`` (any device).
        n_occ: occupied orbitals per molecule.

    Returns:
        ``(abs_sum, sq_sum, weight_sum)``: float64 0-d tensors
        ``sum_mol sum_pq w_p w_q |M_pq|`` (group form on degenerate sets, see the module
        docstring) and ``sum_mol sum_pq w_p w_q M_pq^2``, and the float ``sum_mol sum_pq w_p w_q``.
    """
    abs_sum: Optional[torch.Tensor] = None
    sq_sum: Optional[torch.Tensor] = None
    weight_sum = 0.0
    for err, c, e, no in zip(errors, eigvecs, energies, n_occ):
        c = c.to(dtype=torch.float64)
        m = c.T @ err.to(torch.float64) @ c                       # [k, k]
        k = c.shape[1]
        groups = degenerate_groups(torch.as_tensor(e).detach().cpu().numpy()[:k])
        w_np = orbital_weights(k, int(no), n_virtual, w_rest, groups)
        w = torch.as_tensor(w_np, dtype=torch.float64, device=m.device)
        ww = w[:, None] * w[None, :]
        m2 = m * m
        sq = (ww * m2).sum()
        if groups is None:
            a = (ww * m.abs()).sum()
        else:  # Frobenius norm of each (group, group) block: invariant to rotations within a group
            g = torch.as_tensor(groups, device=m.device)
            one_hot = torch.zeros(k, int(groups.max()) + 1, dtype=torch.float64, device=m.device)
            one_hot[torch.arange(k, device=m.device), g] = 1.0
            blocks = one_hot.T @ m2 @ one_hot
            wg = torch.as_tensor(w_np[np.unique(groups, return_index=True)[1]], dtype=torch.float64, device=m.device)
            a = (wg[:, None] * wg[None, :] * torch.sqrt(blocks.clamp_min(1e-300))).sum()
        abs_sum, sq_sum = (a, sq) if abs_sum is None else (abs_sum + a, sq_sum + sq)
        weight_sum += float(w_np.sum()) ** 2
    if abs_sum is None:
        zero = torch.zeros((), dtype=torch.float64)
        return zero, zero, 0.0
    return abs_sum, sq_sum, weight_sum


def eigenbasis_loss(pred: Sequence[torch.Tensor], target: Sequence[torch.Tensor], eigvecs: Sequence[torch.Tensor],
                    energies: Sequence[torch.Tensor], n_occ: Sequence[int], n_virtual: int = DEFAULT_N_VIRTUAL,
                    w_rest: float = DEFAULT_W_REST, w_abs: float = 1.0, w_sq: float = 0.0) -> torch.Tensor:
    """``w_abs * weighted-mean |M| + w_sq * weighted-mean M^2`` of a set of molecules on one process
    (float64 0-d tensor); ``pred``/``target`` per molecule ``[n, n]`` (full or residual: only the
    difference matters)."""
    a, s, wsum = eigenbasis_sums([p - t for p, t in zip(pred, target)], eigvecs, energies, n_occ, n_virtual, w_rest)
    return (w_abs * a + w_sq * s) / wsum


def batch_eigenbasis_sums(err_flat: torch.Tensor, batch, n_virtual: int,
                          w_rest: float) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """:func:`eigenbasis_sums` of a :class:`~qhnetv2.training.collate.Batch` (with ``eigvecs``)
    and the flat error ``pred - batch.target``."""
    if not batch.eigvecs:
        raise ValueError("the eigenbasis loss needs the label's eigenvectors in the batch "
                         "(ResidualDataset with an EigenCache)")
    return eigenbasis_sums(batch.unpack(err_flat), batch.eigvecs, batch.eigvals, batch.n_occ.tolist(),
                           n_virtual, w_rest)



def orbital_energy_sums(errors: Sequence[torch.Tensor], eigvecs: Sequence[torch.Tensor],
                        energies: Sequence[torch.Tensor], n_occ: Sequence[int], n_virtual: int,
                        w_rest: float = 0.0) -> Tuple[torch.Tensor, float]:
    """Un-normalised orbital-energy error sum over the given molecules (``loss: {orbital: w}``).

    With the label's full eigenbasis (``C [n, n]``, ``C^T S C = I``) the predicted
    orbital energies are *exactly* the eigenvalues of ``diag(e) + M``,
    ``M = C^T (H_pred - H_true) C`` (a congruence of ``H_pred C = S C e_pred``), so
    they come from one small symmetric ``eigvalsh`` per molecule, differentiable,
    without solving the generalised problem.  The term is
    ``sum_mol sum_k w_k |e_pred[k] - e[k]|`` (sorted energies matched in order) with
    ``w_k = 1`` for the occupied orbitals, the LUMO and the lowest ``n_virtual - 1``
    further virtuals (what the gap and the density depend on) and ``w_rest`` for the
    higher virtuals (0: they are free, and drift far; measured).  A spurious low
    orbital (an eigenvalue of the prediction pulled below the true LUMO from the high
    virtuals) shows directly as a large error of ``e_pred[n_occ]``, which the
    first-order diagonal ``M_kk`` cannot see.  Sorted eigenvalues are invariant to the
    gauge of ``C``.

    Returns ``(abs_sum, weight_sum)``: float64 0-d tensor and the float ``sum_mol sum_k w_k``.
    """
    total: Optional[torch.Tensor] = None
    weight_sum = 0.0
    for err, c, e, no in zip(errors, eigvecs, energies, n_occ):
        c = c.to(dtype=torch.float64)
        n = c.shape[0]
        if c.shape[1] != n:
            raise ValueError(f"the orbital-energy loss needs the full eigenbasis ([n, n]); got C of shape "
                             f"{list(c.shape)} (loss.w_rest = 0 caches only the low orbitals)")
        e = torch.as_tensor(e, dtype=torch.float64, device=c.device).reshape(-1)
        m = c.T @ err.to(torch.float64) @ c
        f = torch.diag(e) + 0.5 * (m + m.T)
        w = torch.full((n,), float(w_rest), dtype=torch.float64, device=c.device)
        w[: min(n, int(no) + int(n_virtual))] = 1.0
        keep = w > 0
        pred = torch.linalg.eigvalsh(f)
        term = (w[keep] * (pred[keep] - e[keep]).abs()).sum()
        total = term if total is None else total + term
        weight_sum += float(w.sum())
    if total is None:
        return torch.zeros((), dtype=torch.float64), 0.0
    return total, weight_sum


def batch_orbital_energy_sums(err_flat: torch.Tensor, batch, n_virtual: int,
                              w_rest: float = 0.0) -> Tuple[torch.Tensor, float]:
    """:func:`orbital_energy_sums` of a :class:`~qhnetv2.training.collate.Batch` (with ``eigvecs``)."""
    if not batch.eigvecs:
        raise ValueError("the orbital-energy loss needs the label's eigenvectors in the batch "
                         "(ResidualDataset with an EigenCache)")
    return orbital_energy_sums(batch.unpack(err_flat), batch.eigvecs, batch.eigvals, batch.n_occ.tolist(),
                               n_virtual, w_rest)
