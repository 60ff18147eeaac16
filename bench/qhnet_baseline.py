"""AIRS QHNet as a baseline row of the accuracy yardstick (``python -m bench accuracy --qhnet-src PATH``).

QHNet (Yu et al. 2023; ``divelab/AIRS``, ``OpenDFT/QHBench/QH9/models``) is not part of this
repository and none of its code is copied here (AIRS is GPL-3.0, the QH9 folder carries its
own CC BY-NC-SA licence): this adapter imports the model class from a checkout the user
names, and trains and runs it with our own data plumbing.  What it takes from QHNet is the
*interface*:

* ``models.QHNet(in_node_features, sh_lmax, hidden_size, bottle_hidden_size, num_gnn_layers,
  max_radius, num_nodes, radius_embed_dim)``, ``model.set(device)`` (builds its orbital
  masks), ``model(data)`` with a PyG-like batch carrying ``atoms`` [N, 1] int64, ``pos``
  [N, 3] (Angstrom, as QH9 stores it), ``batch`` [N], ``ptr`` [B + 1], ``num_nodes`` and
  ``edge_index_full`` [2, E] (every ordered atom pair (dst, src) of each molecule, src-major,
  molecules one after the other), returning ``hamiltonian_diagonal_blocks`` [N, 14, 14] and
  ``hamiltonian_non_diagonal_blocks`` [E, 14, 14] (already symmetrised);
* the def2-SVP block layout: every atom owns a 14-slot block ``3 s | p | p | d``; H (and He)
  fill slots ``0, 1, 3, 4, 5`` (s, s, p), C..F all 14; inside a shell the order is QH9's
  ``matrix_transform(..., convention='pyscf_def2svp')`` = our ``qhnetv2.data.conventions``
  ``"qh9"`` convention: p as (py, pz, px), d as PySCF's m = -2..2, no sign changes.
  Edge (dst=j, src=i) holds the block ``H[AOs of j, AOs of i]``.
* its QH9 training recipe (``QH9/main.py`` + ``config/datasets/QH9-*.yaml``, hyperparameter
  values only): the model sizes of :data:`QH9_MODEL`, AdamW (lr 5e-4, betas (0.99, 0.999),
  torch's default weight decay 0.01), linear warm-up then linear ("polynomial", power 1)
  decay to 1e-7, gradient-norm clipping at 5, no EMA (``ema_start_epoch: -1``), float32,
  loss = MSE + MAE of the full Hamiltonian (masked 14x14 blocks, per molecule, mean over
  the batch), the best validation H MAE kept.  The yardstick sets the number of steps
  (equal wall clock) and the batch size (the preset's, like our variants); the warm-up is
  scaled like our variants' (at most a tenth of the run).

Dependencies: QHNet imports ``e3nn``, ``torch_cluster.radius_graph`` and
``torch_scatter.scatter``.  ``torch_cluster``/``torch_scatter`` publish no wheels for every
torch (none for torch 2.14 here), so when they are not importable :func:`install_shims`
puts two small pure-torch stand-ins into ``sys.modules`` before the import (our own code:
``radius_graph`` from ``torch.cdist``, ``scatter`` from ``index_add``/``scatter_reduce``).
``torch_geometric`` is not needed: the batch is our own :class:`Graphs` object.

Checkpoints (``best.pt``: the best-validation weights; ``last.pt``: the whole training
state, so a killed run resumes) are written atomically (temporary file + rename).
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import sys
import time
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

#: QHNet's model arguments in QH9's ``main.py`` (the QH9 benchmark's model)
QH9_MODEL = {"in_node_features": 1, "sh_lmax": 4, "hidden_size": 128, "bottle_hidden_size": 32,
             "num_gnn_layers": 5, "max_radius": 15, "num_nodes": 10, "radius_embed_dim": 16}
#: QH9's optimiser / schedule values (``config/datasets/QH9-stable.yaml``, ``main.py``)
QH9_RECIPE = {"lr": 5e-4, "betas": (0.99, 0.999), "weight_decay": 0.01, "warmup_steps": 1000,
              "lr_end": 1e-7, "clip_norm": 5.0}
#: AO slots each element fills in QHNet's 14-slot def2-SVP atom block (``get_orbital_mask``)
N_SLOTS = 14
SLOTS_LIGHT = (0, 1, 3, 4, 5)        # Z <= 2: s, s, p
SLOTS_HEAVY = tuple(range(N_SLOTS))  # 3 <= Z <= 10: s, s, s, p, p, d
#: angular momenta of the shells QHNet's slots assume (PySCF order); checked against the basis
SHELLS_LIGHT = (0, 0, 1)
SHELLS_HEAVY = (0, 0, 0, 1, 1, 2)
#: elements the yardstick lets QHNet handle (its embedding has ``num_nodes=10`` rows: Z <= 9)
SUPPORTED_ELEMENTS = (1, 6, 7, 8, 9)
CHECKPOINT_FORMAT = "bench-qhnet-baseline"


# ---------------------------------------------------------------- the checkout and its imports
def _shim_radius_graph(x, r, batch=None, loop=False, max_num_neighbors=32, flow="source_to_target",
                       num_workers=1, batch_size=None):
    """Pure-torch stand-in for ``torch_cluster.radius_graph``.

    Args:
        x: [N, 3] positions; r: cutoff (pairs with distance <= r); batch: [N] molecule of
        each node (None: one molecule); loop: keep i -> i; max_num_neighbors: at most this
        many neighbours per centre (the lowest indices, as torch_cluster's CPU search keeps
        the first ones it finds); flow: ``source_to_target`` (row 0 = neighbour j, row 1 =
        centre i) or ``target_to_source`` (swapped).
    Returns:
        int64 [2, E], sorted by centre, then neighbour.  Dense [N, N] distances: fine for
        molecules (QHNet's cutoff of 15 A connects every pair of a QM9/MD17 molecule anyway).
    """
    import torch

    if flow not in ("source_to_target", "target_to_source"):
        raise ValueError(f"flow must be source_to_target or target_to_source, got {flow!r}")
    n = x.shape[0]
    if batch is None:
        batch = torch.zeros(n, dtype=torch.long, device=x.device)
    close = (torch.cdist(x.double(), x.double()) <= float(r)) & (batch[:, None] == batch[None, :])
    if not loop:
        close.fill_diagonal_(False)
    # keep the first max_num_neighbors neighbours of each centre (row = centre)
    close &= torch.cumsum(close.long(), dim=1) <= int(max_num_neighbors)
    centre, neigh = close.nonzero(as_tuple=True)
    if flow == "source_to_target":
        return torch.stack([neigh, centre])
    return torch.stack([centre, neigh])


def _shim_scatter(src, index, dim=-1, out=None, dim_size=None, reduce="sum"):
    """Pure-torch stand-in for ``torch_scatter.scatter`` (``sum``/``add``/``mean``/``max``/``min``).

    ``index`` is 1-D along ``dim`` of ``src`` (the only form QHNet uses); the result has
    ``dim_size`` (default ``index.max() + 1``) rows along ``dim``.
    """
    import torch

    dim = dim % src.dim()
    if index.dim() != 1 or index.numel() != src.shape[dim]:
        raise ValueError(f"scatter shim: index must be 1-D with src.shape[dim] = {src.shape[dim]} entries, "
                         f"got shape {tuple(index.shape)}")
    if dim_size is None:
        dim_size = int(index.max()) + 1 if index.numel() else 0
    shape = list(src.shape)
    shape[dim] = dim_size
    if reduce in ("sum", "add", "mean"):
        res = torch.zeros(shape, dtype=src.dtype, device=src.device).index_add(dim, index, src)
        if reduce == "mean":
            cnt = torch.zeros(dim_size, dtype=src.dtype, device=src.device).index_add(
                0, index, torch.ones_like(index, dtype=src.dtype))
            view = [1] * src.dim()
            view[dim] = dim_size
            res = res / cnt.clamp(min=1).view(view)
    elif reduce in ("max", "min", "amax", "amin"):
        idx = index.view([-1 if d == dim else 1 for d in range(src.dim())]).expand_as(src)
        res = torch.zeros(shape, dtype=src.dtype, device=src.device).scatter_reduce(
            dim, idx, src, "amax" if reduce in ("max", "amax") else "amin", include_self=False)
    else:
        raise ValueError(f"scatter shim: reduce must be sum, add, mean, max or min, got {reduce!r}")
    if out is not None:
        out.copy_(res)
        return out
    return res


def install_shims() -> List[str]:
    """Put the pure-torch ``torch_cluster`` / ``torch_scatter`` stand-ins into ``sys.modules``
    where the real packages do not import.  Returns the names shimmed."""
    done = []
    for name, attrs in (("torch_cluster", {"radius_graph": _shim_radius_graph}),
                        ("torch_scatter", {"scatter": _shim_scatter,
                                           "scatter_sum": lambda src, index, dim=-1, out=None, dim_size=None:
                                           _shim_scatter(src, index, dim, out, dim_size, "sum")})):
        existing = sys.modules.get(name)
        if existing is not None:
            if getattr(existing, "__bench_qhnet_shim__", False):
                done.append(name)
            continue
        try:
            __import__(name)
            continue
        except Exception:  # missing, or built for another torch
            pass
        mod = types.ModuleType(name)
        mod.__doc__ = f"pure-torch stand-in for {name} (bench/qhnet_baseline.py)"
        mod.__bench_qhnet_shim__ = True
        for k, v in attrs.items():
            setattr(mod, k, v)
        sys.modules[name] = mod
        done.append(name)
    return done


def find_qh9_dir(src: str) -> str:
    """The folder holding QHNet's ``models`` package, from an AIRS checkout root, its
    ``OpenDFT/QHBench`` folder or the ``QH9`` folder itself.  Raises ``FileNotFoundError``."""
    if not src:
        raise FileNotFoundError("no QHNet checkout given")
    src = os.path.abspath(os.path.expanduser(src))
    if not os.path.isdir(src):
        raise FileNotFoundError(f"{src} is not a folder")
    for cand in (src, os.path.join(src, "QH9"), os.path.join(src, "OpenDFT", "QHBench", "QH9")):
        if os.path.isfile(os.path.join(cand, "models", "__init__.py")):
            return cand
    raise FileNotFoundError(f"no QHNet in {src}: expected models/__init__.py in it, in QH9/ or in "
                            f"OpenDFT/QHBench/QH9/ (an AIRS checkout: github.com/divelab/AIRS)")


_LOADED: Dict[str, Any] = {}


def load_qhnet_class(src: str):
    """Import ``QHNet`` from the checkout's ``models`` package (under a private module name,
    so that no other ``models`` package is shadowed); shims installed first where needed."""
    qh9 = find_qh9_dir(src)
    key = os.path.realpath(qh9)
    if key not in _LOADED:
        install_shims()
        name = "_bench_qhnet_models_" + hashlib.sha1(key.encode()).hexdigest()[:10]
        pkg_dir = os.path.join(qh9, "models")
        spec = importlib.util.spec_from_file_location(name, os.path.join(pkg_dir, "__init__.py"),
                                                      submodule_search_locations=[pkg_dir])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        if not hasattr(module, "QHNet"):
            raise ImportError(f"{pkg_dir} has no QHNet class")
        _LOADED[key] = module.QHNet
    return _LOADED[key]


def available(src: Optional[str]) -> Tuple[bool, str]:
    """``(True, description)`` when QHNet imports from ``src``; else ``(False, reason)``.  Never raises."""
    try:
        cls = load_qhnet_class(src or "")
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    shims = [n for n in ("torch_cluster", "torch_scatter")
             if getattr(sys.modules.get(n), "__bench_qhnet_shim__", False)]
    return True, (f"QHNet from {find_qh9_dir(src)}" + (f" (pure-torch shims for {', '.join(shims)})" if shims else ""))


def check_data(basis: str, atomic_numbers: Sequence[int]) -> Optional[str]:
    """None when QHNet's def2-SVP block layout fits this basis and these elements, else the reason."""
    from qhnetv2.data.basis import element_shells
    from qhnetv2.inference import normalize_basis

    if normalize_basis(basis) != "def2svp":
        return f"QHNet's output blocks are def2-SVP ones; the data set is labelled in {basis!r}"
    for z in sorted(set(int(z) for z in atomic_numbers)):
        if z not in SUPPORTED_ELEMENTS:
            return f"element Z={z} is outside QHNet's def2-SVP layout (supported: {SUPPORTED_ELEMENTS})"
        want = SHELLS_LIGHT if z <= 2 else SHELLS_HEAVY
        got = tuple(l for l, _ in element_shells(basis, z))
        if got != want:
            return f"element Z={z}: basis shells l={got}, QHNet's layout expects l={want}"
    return None


# ---------------------------------------------------------------- AO order and blocks
def slots_of(z: int) -> Tuple[int, ...]:
    if z not in SUPPORTED_ELEMENTS:
        raise ValueError(f"atomic_numbers: Z={z} is not in QHNet's def2-SVP layout {SUPPORTED_ELEMENTS}")
    return SLOTS_LIGHT if z <= 2 else SLOTS_HEAVY


def to_qhnet_order(h: np.ndarray, atomic_numbers: Sequence[int], basis: str = "def2-svp") -> np.ndarray:
    """PySCF-order [..., n_ao, n_ao] -> QHNet/QH9 order (``qhnetv2.data.conventions``, ``"qh9"``)."""
    from qhnetv2.data.conventions import from_pyscf

    return from_pyscf(h, "qh9", basis, atomic_numbers)


def from_qhnet_order(h: np.ndarray, atomic_numbers: Sequence[int], basis: str = "def2-svp") -> np.ndarray:
    """QHNet/QH9-order [..., n_ao, n_ao] -> PySCF order (inverse of :func:`to_qhnet_order`)."""
    from qhnetv2.data.conventions import to_pyscf

    return to_pyscf(h, "qh9", basis, atomic_numbers)


def _slot_index(atomic_numbers: Sequence[int]) -> np.ndarray:
    """Padded position ``a * 14 + slot`` of every AO (QHNet order), int64 [n_ao]."""
    return np.concatenate([a * N_SLOTS + np.asarray(slots_of(int(z)), dtype=np.int64)
                           for a, z in enumerate(np.asarray(atomic_numbers).reshape(-1))])


def full_edges(n_atoms: int) -> np.ndarray:
    """QHNet's ``edge_index_full`` of one molecule: int64 [2, n (n - 1)] of (dst, src), src-major."""
    src, dst = np.meshgrid(np.arange(n_atoms), np.arange(n_atoms), indexing="ij")
    keep = src != dst
    return np.stack([dst[keep], src[keep]]).astype(np.int64)


def to_blocks(h_qhnet: np.ndarray, atomic_numbers: Sequence[int]) -> Dict[str, np.ndarray]:
    """QHNet-order H [n_ao, n_ao] -> the 14x14 blocks and masks QHNet trains on.

    Returns ``diagonal`` [n, 14, 14], ``non_diagonal`` [n (n-1), 14, 14] (edge order of
    :func:`full_edges`; edge (dst=j, src=i) is ``H[AOs of j, AOs of i]``) and their 0/1
    masks ``diagonal_mask`` / ``non_diagonal_mask``.
    """
    z = np.asarray(atomic_numbers).reshape(-1)
    n = len(z)
    idx = _slot_index(z)
    h = np.asarray(h_qhnet, dtype=np.float64)
    if h.shape != (len(idx), len(idx)):
        raise ValueError(f"hamiltonian: expected [{len(idx)}, {len(idx)}] for these atoms in def2-SVP, got {h.shape}")
    out = {}
    for name, mat in (("", h), ("_mask", np.ones_like(h))):
        pad = np.zeros((n * N_SLOTS, n * N_SLOTS))
        pad[np.ix_(idx, idx)] = mat
        pad = pad.reshape(n, N_SLOTS, n, N_SLOTS)
        dst, src = full_edges(n)
        out["diagonal" + name] = pad[np.arange(n), :, np.arange(n), :]
        out["non_diagonal" + name] = pad[dst, :, src, :]
    return out


def from_blocks(diagonal: np.ndarray, non_diagonal: np.ndarray, atomic_numbers: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`to_blocks`: QHNet-order H [n_ao, n_ao] from the blocks of one molecule."""
    z = np.asarray(atomic_numbers).reshape(-1)
    n = len(z)
    dst, src = full_edges(n)
    if diagonal.shape != (n, N_SLOTS, N_SLOTS) or non_diagonal.shape != (len(dst), N_SLOTS, N_SLOTS):
        raise ValueError(f"blocks: expected [{n}, 14, 14] and [{len(dst)}, 14, 14], "
                         f"got {diagonal.shape} and {non_diagonal.shape}")
    pad = np.zeros((n, N_SLOTS, n, N_SLOTS))
    pad[np.arange(n), :, np.arange(n), :] = diagonal
    pad[dst, :, src, :] = non_diagonal
    idx = _slot_index(z)
    return pad.reshape(n * N_SLOTS, n * N_SLOTS)[np.ix_(idx, idx)]


class Graphs:
    """The PyG-like batch QHNet's ``forward`` reads (and writes its edge features into).

    ``atoms`` int64 [N, 1], ``pos`` float [N, 3] (Angstrom), ``batch`` int64 [N], ``ptr`` int64
    [B + 1], ``edge_index_full`` int64 [2, E] (global node indices), ``num_nodes`` N, and the
    training targets when built with them: ``diagonal_hamiltonian`` [N, 14, 14],
    ``non_diagonal_hamiltonian`` [E, 14, 14] and their ``*_mask``.
    """

    def __init__(self, atomic_numbers_list: Sequence, positions_list: Sequence, blocks: Optional[Sequence] = None,
                 dtype=None):
        import torch

        dtype = dtype or torch.float32
        zs = [np.asarray(z, dtype=np.int64).reshape(-1) for z in atomic_numbers_list]
        counts = [len(z) for z in zs]
        self.ptr = torch.tensor(np.concatenate([[0], np.cumsum(counts)]), dtype=torch.long)
        self.num_nodes = int(sum(counts))
        self.atoms = torch.from_numpy(np.concatenate(zs)).view(-1, 1)
        self.pos = torch.from_numpy(np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 3)
                                                    for p in positions_list])).to(dtype)
        self.batch = torch.repeat_interleave(torch.arange(len(zs)), torch.tensor(counts))
        edges = [full_edges(c) + o for c, o in zip(counts, self.ptr[:-1].tolist())]
        self.edge_index_full = torch.from_numpy(np.concatenate(edges, axis=1))
        self.edge_batch = self.batch[self.edge_index_full[0]]
        self.num_graphs = len(zs)
        if blocks is not None:
            for key in ("diagonal", "non_diagonal"):
                for suffix in ("", "_mask"):
                    arr = np.concatenate([b[key + suffix] for b in blocks])
                    setattr(self, f"{key}_hamiltonian{suffix}", torch.from_numpy(arr).to(dtype))

    def to(self, device):
        for k, v in list(vars(self).items()):
            if hasattr(v, "to") and hasattr(v, "dtype"):
                setattr(self, k, v.to(device))
        return self


def block_errors(out: Dict[str, Any], g: Graphs):
    """Per molecule: summed |err|, summed err^2 and entry count over the masked blocks, float64 [B] each."""
    import torch

    sums = []
    for key, index in (("diagonal", g.batch), ("non_diagonal", g.edge_batch)):
        diff = (out[f"hamiltonian_{key}_blocks"] - getattr(g, f"{key}_hamiltonian")).double()
        mask = getattr(g, f"{key}_hamiltonian_mask").double()
        per = [(diff.abs() * mask).sum((1, 2)), (diff.square() * mask).sum((1, 2)), mask.sum((1, 2))]
        sums.append([torch.zeros(g.num_graphs, dtype=torch.float64, device=diff.device).index_add(0, index, p)
                     for p in per])
    return tuple(a + b for a, b in zip(*sums))


def qh9_loss(out: Dict[str, Any], g: Graphs):
    """QH9's training loss: per molecule MAE + MSE over all its H entries, mean over the batch."""
    abs_sum, sq_sum, count = block_errors(out, g)
    return (abs_sum / count).mean() + (sq_sum / count).mean()


def qh9_lr_factor(step: int, warmup: int, total: int, lr: float, lr_end: float) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup`` steps, then linear decay to
    ``lr_end / lr`` at ``total`` (QH9's polynomial schedule with power 1)."""
    if step < warmup:
        return step / max(1, warmup)
    if step >= total:
        return lr_end / lr
    frac = 1.0 - (step - warmup) / max(1, total - warmup)
    return ((lr - lr_end) * frac + lr_end) / lr


# ---------------------------------------------------------------- training and prediction
def _save_atomic(obj: Any, path: str) -> None:
    import torch

    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def build_model(src: str, model_kwargs: Optional[Dict[str, Any]] = None, device: str = "cpu"):
    """A QHNet from the checkout with QH9's sizes (``model_kwargs`` override them), float32."""
    import torch

    cls = load_qhnet_class(src)
    kwargs = dict(QH9_MODEL, **(model_kwargs or {}))
    model = cls(**kwargs).to(torch.float32)
    if hasattr(model, "set"):  # QHNet builds its orbital masks (on the device) here
        model.set(torch.device(device))
    return model, kwargs


def load_records(data: str, ids: Sequence[str]) -> List[Dict[str, Any]]:
    """Records as QHNet trains on them: atoms, positions (A), blocks of the QHNet-order H."""
    from qhnetv2.data.store import HamiltonianReader

    reader = HamiltonianReader(data, ids=list(ids))
    basis = reader.basis
    out = []
    for i in range(len(reader)):
        r = reader[i]
        z = np.asarray(r["atomic_numbers"], dtype=np.int64)
        out.append({"id": r["id"], "atomic_numbers": z, "positions": np.asarray(r["positions"], dtype=np.float64),
                    "blocks": to_blocks(to_qhnet_order(r["hamiltonian"], z, basis), z)})
    return out


def _batches(recs: Sequence[Dict[str, Any]], batch_size: int):
    for s in range(0, len(recs), batch_size):
        chunk = recs[s:s + batch_size]
        yield Graphs([r["atomic_numbers"] for r in chunk], [r["positions"] for r in chunk],
                     [r["blocks"] for r in chunk])


def validation_mae(model, recs: Sequence[Dict[str, Any]], batch_size: int) -> float:
    """Mean over molecules of the H MAE (Hartree), QHNet-order blocks (the same entries as the full H)."""
    import torch

    model.eval()
    maes = []
    with torch.no_grad():
        for g in _batches(recs, batch_size):
            abs_sum, _, count = block_errors(model(g), g)
            maes.append((abs_sum / count).cpu().numpy())
    model.train()
    return float(np.concatenate(maes).mean())


def train_qhnet(src: str, data_dir: str, split: str, run_dir: str, budget_s: Optional[float] = None,
                threads: int = 1, max_steps: Optional[int] = None, batch_size: int = 10,
                val_every: Optional[int] = None, model_kwargs: Optional[Dict[str, Any]] = None,
                seed: int = 0, log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Train QHNet with its QH9 recipe on the yardstick's records (CPU, float32).

    Args:
        src: the AIRS checkout (see :func:`find_qh9_dir`).
        data_dir, split: the dataset and its split JSON (``train``/``valid`` id lists).
        run_dir: where ``best.pt`` / ``last.pt`` go; a ``last.pt`` of the same run resumes.
        budget_s / max_steps: stop after this training wall clock, or this many steps (the
            schedule runs over ``max_steps``; with only ``budget_s`` the schedule assumes 10^9
            steps, i.e. warm-up then an almost flat lr — give ``max_steps`` for the recipe).
        batch_size: molecules per step.  val_every: steps between validations (default
            ``max(10, max_steps // 6)``, as the yardstick's variants).
        model_kwargs: overrides of :data:`QH9_MODEL`.
    Returns:
        ``{"steps", "steps_per_s" (training loop incl. validations), "wall_s",
        "best_checkpoint", "best_val_mae_uEh", "parameters", "model_kwargs"}``.
    """
    import json

    import torch

    if max_steps is None and budget_s is None:
        raise ValueError("train_qhnet: give max_steps or budget_s")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    log = log or (lambda s: None)
    torch.set_num_threads(int(threads))
    t_start = time.time()
    with open(split) as f:
        sp = json.load(f)
    if not sp.get("train") or not sp.get("valid"):
        raise ValueError(f"split {split!r}: needs non-empty train and valid lists")
    train_recs, valid_recs = load_records(data_dir, sp["train"]), load_records(data_dir, sp["valid"])
    total = int(max_steps) if max_steps else 10 ** 9
    warmup = min(QH9_RECIPE["warmup_steps"], max(1, total // 10))
    val_every = int(val_every or max(10, total // 6))
    torch.manual_seed(seed)
    model, kwargs = build_model(src, model_kwargs)
    opt = torch.optim.AdamW(model.parameters(), lr=QH9_RECIPE["lr"], betas=QH9_RECIPE["betas"],
                            weight_decay=QH9_RECIPE["weight_decay"], amsgrad=False)
    os.makedirs(run_dir, exist_ok=True)
    best_path, last_path = os.path.join(run_dir, "best.pt"), os.path.join(run_dir, "last.pt")
    step, best, epoch = 0, math.inf, 0
    run_key = {"total": total, "batch_size": batch_size, "model": kwargs, "src": os.path.realpath(find_qh9_dir(src))}
    if os.path.exists(last_path):
        state = torch.load(last_path, map_location="cpu", weights_only=False)
        if state.get("run_key") == run_key:
            model.load_state_dict(state["state_dict"])
            opt.load_state_dict(state["optimizer"])
            step, best, epoch = state["step"], state["best_val"], state["epoch"]
            log(f"qhnet: resumed at step {step}")
    gen = torch.Generator().manual_seed(seed + epoch)
    order: List[int] = []

    def checkpoint(kind: str) -> None:
        base = {"format": CHECKPOINT_FORMAT, "qhnet_src": run_key["src"], "model_kwargs": kwargs,
                "step": step, "best_val": best, "epoch": epoch, "run_key": run_key}
        if kind == "best":
            _save_atomic(dict(base, state_dict=model.state_dict()), best_path)
        else:
            _save_atomic(dict(base, state_dict=model.state_dict(), optimizer=opt.state_dict()), last_path)

    model.train()
    t_loop, steps_at_start = time.time(), step
    while step < total and (budget_s is None or time.time() - t_loop < budget_s):
        if not order:  # a fresh shuffled epoch (QH9: DataLoader(shuffle=True), seeded)
            order = torch.randperm(len(train_recs), generator=gen).tolist()
            epoch += 1
        take, order = order[:batch_size], order[batch_size:]
        g = next(_batches([train_recs[i] for i in take], batch_size))
        for grp in opt.param_groups:
            grp["lr"] = QH9_RECIPE["lr"] * qh9_lr_factor(step, warmup, total, QH9_RECIPE["lr"], QH9_RECIPE["lr_end"])
        loss = qh9_loss(model(g), g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), QH9_RECIPE["clip_norm"])
        opt.step()
        step += 1
        done = step >= total or (budget_s is not None and time.time() - t_loop >= budget_s)
        if step % val_every == 0 or done:
            val = validation_mae(model, valid_recs, batch_size)
            log(f"qhnet: step {step} loss {float(loss.detach()):.3e} val H MAE {val * 1e6:.1f} uEh")
            if val < best or not os.path.exists(best_path):
                best = min(best, val)
                checkpoint("best")
            checkpoint("last")
    loop_s = time.time() - t_loop
    n_done = step - steps_at_start
    if not os.path.exists(best_path):  # resumed a finished run: nothing new trained
        best = validation_mae(model, valid_recs, batch_size)
        checkpoint("best")
    return {"steps": int(step), "steps_per_s": (n_done / loop_s) if n_done and loop_s > 0 else None,
            "wall_s": time.time() - t_start, "best_checkpoint": best_path, "best_val_mae_uEh": best * 1e6,
            "parameters": int(sum(p.numel() for p in model.parameters())), "model_kwargs": kwargs}


def load_checkpoint(src: str, checkpoint: str, device: str = "cpu"):
    """``(model in eval mode, checkpoint dict)`` of a :func:`train_qhnet` checkpoint."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{checkpoint}: not a {CHECKPOINT_FORMAT} checkpoint")
    model, _ = build_model(src, state["model_kwargs"], device)
    model.load_state_dict(state["state_dict"])
    return model.eval(), state


def predict_qhnet(src: str, checkpoint: str, atomic_numbers_list: Sequence, positions_list: Sequence,
                  basis: str = "def2-svp", batch_size: int = 8, model=None) -> List[np.ndarray]:
    """PySCF-order Hamiltonians (float64 [n_ao, n_ao], Hartree) of the molecules
    (positions in Angstrom) from a trained QHNet (``model``, if given, instead of loading)."""
    import torch

    if model is None:
        model, _ = load_checkpoint(src, checkpoint)
    out: List[np.ndarray] = []
    with torch.no_grad():
        for s in range(0, len(atomic_numbers_list), batch_size):
            zs = [np.asarray(z, dtype=np.int64).reshape(-1) for z in atomic_numbers_list[s:s + batch_size]]
            g = Graphs(zs, positions_list[s:s + batch_size])
            res = model(g)
            diag = res["hamiltonian_diagonal_blocks"].double().cpu().numpy()
            off = res["hamiltonian_non_diagonal_blocks"].double().cpu().numpy()
            a0 = e0 = 0
            for z in zs:
                n = len(z)
                h = from_blocks(diag[a0:a0 + n], off[e0:e0 + n * (n - 1)], z)
                out.append(from_qhnet_order(h, z, basis))
                a0, e0 = a0 + n, e0 + n * (n - 1)
    return out


def train_worker(args: Dict[str, Any]) -> Dict[str, Any]:
    """The yardstick's job for the ``qhnet`` row (``bench.accuracy._train_worker`` hands it over)."""
    return train_qhnet(args["qhnet_src"], args["data"], args["split"], args["run_dir"], threads=args["threads"],
                       max_steps=int(args["steps"]), batch_size=int(args["batch_size"]),
                       model_kwargs=args.get("qhnet_model") or None,
                       log=lambda line: print(f"yardstick: {line}", flush=True))
