"""The training loop: ``train(config, data_dir, split_file, out_dir, resume=False, progress=True) -> dict``.

One optimizer step = one global batch of ``config.batch_size`` molecules
(split over the torchrun ranks).  Loss: ``w_mae * MAE + w_mse * MSE`` over all
Hamiltonian entries of the global batch (of ``H - H_base`` for residual
targets), plus, with ``loss.eigen``/``loss.eigen_mse`` > 0, the eigenbasis term
of ``qhnetv2.training.eigenbasis_loss`` (weighted mean over the global batch of
the error in the label's orbital basis).  Each rank's loss is its share of the
global sums divided by the global entry count (eigenbasis term: the global sum
of its weights), times the world size, so after DDP's gradient averaging the
step is exactly that of one process on the whole batch.  Targets, errors and
loss sums are in ``config.target_dtype`` (float64 by default; see ``TrainConfig``).

Startup reads no matrices: sizes, elements and the training domain come from the
dataset's index (``qhnetv2.data.store``); training batches decode only
``TRAINING_FIELDS`` (no overlap).  Validation and the atomic-reference fit use
seeded random subsets (``val_max_molecules``, ``atom_reference_molecules``), the same
on every rank and after a resume.  A resume refuses a changed learning-rate schedule
(``max_steps``, ``warmup_steps``, ``lr``, ``lr_decay``, ``lr_floor``) unless
``allow_schedule_change``.

Run folder: ``checkpoints/{best,last}.pt``, ``log.csv``, ``tb/`` (TensorBoard,
if installed), ``learning_curve.png``, ``config.yaml``, ``base_cache/``
(residual targets), ``eigen_cache/`` (eigenbasis loss), ``summary.json``.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Dict, Optional

import torch
from torch import nn

from ..atomic import atomic_file
from . import distributed as ddp
from .checkpoint import BEST, LAST, checkpoint_dir, load_training_checkpoint, rng_state, save_training_checkpoint, set_rng_state
from .collate import collate
from .config import TrainConfig
from .ema import EMA
from .logs import RunLog, plot_learning_curve
from .sampler import BucketBatchSampler
from .schedule import make_scheduler
from .validate import validate

_COMPAT_KEYS = ("model", "target", "dtype", "target_dtype", "batch_size", "seed", "bucket", "loss")
#: the learning-rate schedule: a resume with other values reshapes the rest of the run
SCHEDULE_KEYS = ("max_steps", "warmup_steps", "lr", "lr_decay", "lr_floor")


class _BatchForward(nn.Module):
    """``forward(atomic_numbers, positions, batch) -> H_flat``: what DDP wraps (it hooks ``forward`` only)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, atomic_numbers, positions, batch):
        return self.model.forward_batch(atomic_numbers, positions, batch)[0]


def _build_model(config: TrainConfig, basis: str, elements, dtype: torch.dtype, device):
    from qhnetv2.model import QHNetV2

    torch.manual_seed(config.seed)
    model = QHNetV2.from_preset(config.model["preset"], basis=basis, elements=elements, **config.model_overrides())
    if config.readout_init_scale is not None:
        with torch.no_grad():
            for name in ("diag_readout", "pair_readout"):
                readout = getattr(model, name)
                # the map that writes the blocks: the readout itself, or a gated readout's last layer
                getattr(readout, "lin2", readout).weight.mul_(config.readout_init_scale)
    return model.to(device=device, dtype=dtype)


def _write_yaml(path: str, data: Dict[str, Any]) -> None:
    import yaml

    with atomic_file(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)


def _fit_reference(model, dataset, indices) -> None:
    """``model.fit_atom_reference`` on the training targets (``H - base`` if residual) of ``indices``."""
    def molecules():
        for i in indices:
            item = dataset[i]
            h = item["hamiltonian"]
            if "base_hamiltonian" in item:
                h = h - item["base_hamiltonian"]
            yield {"atomic_numbers": item["atomic_numbers"], "hamiltonian": h}
    model.fit_atom_reference(molecules())


def _discard(records) -> None:
    return None


def _precompute_bases(dataset, num_workers: int, progress: bool) -> None:
    """Fill the base-Hamiltonian cache and the label-eigenvector cache (those the dataset has; rank 0),
    in DataLoader workers when ``num_workers`` > 0."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=num_workers, collate_fn=_discard)
    it = loader
    if progress:
        from tqdm import tqdm
        what = ([f"base H ({dataset.cache.kind})"] if dataset.cache is not None else []) + \
            (["label C"] if dataset.eigen is not None else [])
        it = tqdm(loader, total=len(dataset), desc=" + ".join(what), unit="mol", leave=False)
    for _ in it:
        pass


def entry_errors(pred: torch.Tensor, target: torch.Tensor):
    """``(err, abs_sum, sq_sum)``: ``err = pred - target`` ``[T]`` in ``target``'s dtype (a float32
    model output is cast up to float64 targets before the subtraction, so the label keeps its
    digits; the gradient flows back to ``pred`` in its own dtype) and the 0-d sums of ``|err|``
    and ``err^2`` accumulated in that dtype."""
    err = pred.to(target.dtype) - target
    return err, err.abs().sum(), err.pow(2).sum()


def check_resume_config(old: Dict[str, Any], config: TrainConfig, run_dir: str,
                        allow_schedule_change: bool = False) -> TrainConfig:
    """Refuse to resume the run whose ``train_config`` is ``old`` with ``config`` if they differ
    in a key that changes what is trained (``_COMPAT_KEYS``) or, unless ``allow_schedule_change``,
    in the learning-rate schedule (:data:`SCHEDULE_KEYS`).  Returns ``config`` (adjusted for
    runs from before ``target_dtype`` existed: those keep float32 targets)."""
    from .config import normalize_loss

    if "target_dtype" not in old:  # runs from before the option trained on float32 targets
        old = dict(old, target_dtype="float32")
        config = TrainConfig.from_dict(dict(config.to_dict(), target_dtype="float32"))
        print(f"resume: the run in {run_dir} predates target_dtype; it keeps float32 targets", flush=True)
    now = config.to_dict()
    for key in _COMPAT_KEYS:
        was = old.get(key)
        if key == "loss" and isinstance(was, dict):  # runs from before the eigenbasis keys
            was = normalize_loss(was)
        if was != now[key]:
            raise ValueError(f"--resume: {key} differs from the run in {run_dir} "
                             f"({was!r} there, {now[key]!r} now)")
    changed = [k for k in SCHEDULE_KEYS if k in old and old[k] != now[k]]
    if changed and not allow_schedule_change:
        what = ", ".join(f"{k}: {old[k]!r} there, {now[k]!r} now" for k in changed)
        raise ValueError(f"--resume: the learning-rate schedule differs from the run in {run_dir} ({what}); "
                         f"resuming would reshape the rest of its schedule.  Use the run's values, or "
                         f"pass --allow-schedule-change (train(..., allow_schedule_change=True)) to "
                         f"continue on the new schedule from the current step")
    return config


def _apply_schedule(optimizer, scheduler, config: TrainConfig) -> None:
    """After loading a scheduler state under an allowed schedule change: the new base lr and
    the new schedule's lr at the current step (``LambdaLR`` restores the old ones)."""
    from .schedule import lr_factor

    factor = lr_factor(scheduler.last_epoch, config.warmup_steps, config.max_steps, config.lr_decay,
                       config.lr_floor)
    scheduler.base_lrs = [config.lr for _ in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["initial_lr"] = config.lr
        group["lr"] = config.lr * factor
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def train(config: TrainConfig, data_dir: str, split_file: str, out_dir: str, resume: bool = False,
          progress: bool = True, allow_schedule_change: bool = False) -> Dict[str, Any]:
    """Train a QHNetV2 model; returns a summary dict.

    Args:
        config: a :class:`TrainConfig` (``load_config(path_or_preset)``).
        data_dir: dataset directory (``qhnetv2 data build``/``import``).
        split_file: split JSON (``qhnetv2 data split``); trains on ``train``, validates on ``valid``.
        out_dir: run folder (created).  Without ``resume`` it must not hold a run already.
        resume: continue from ``out_dir/checkpoints/last.pt`` exactly where it stopped
            (weights, optimizer, scheduler, EMA, data order, RNG); a fresh start if there is none.
            Refused (``ValueError``) if ``config`` differs from the run's in what is trained or
            in the learning-rate schedule.
        allow_schedule_change: resume even if ``max_steps``, ``warmup_steps``, ``lr``,
            ``lr_decay`` or ``lr_floor`` changed; the new schedule applies from the current step.
        progress: tqdm progress bar (rank 0).

    Returns:
        ``steps``, ``best_val_mae`` (Hartree; NaN without a validation set),
        ``best_val_mae_uEh``, ``best_step``, ``final_val`` (metrics of the last validation),
        ``wall_s``, ``steps_per_s``, ``resumed_from``, ``world_size``, ``run_dir``,
        ``best_checkpoint``, ``last_checkpoint``, ``log_csv``, ``learning_curve``, ``tensorboard``.
    """
    from qhnetv2.baseline import BaseCache
    from qhnetv2.data import HamiltonianDataset
    from qhnetv2.data.torch_dataset import TRAINING_FIELDS
    from qhnetv2.domain import build_domain

    from .data import ResidualDataset, dataset_settings, molecule_sizes, seeded_subset, split_summaries

    t_start = time.time()
    config = TrainConfig.from_dict(config.to_dict()) if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    rank, world, device = ddp.setup(config.device)
    is_main = rank == 0
    run_dir = os.path.abspath(out_dir)
    ckdir = checkpoint_dir(run_dir)
    last_path, best_path = os.path.join(ckdir, LAST), os.path.join(ckdir, BEST)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"dataset {data_dir!r} does not exist")
    if not os.path.exists(split_file):
        raise FileNotFoundError(f"split file {split_file!r} does not exist")

    ckpt = None
    if resume and os.path.exists(last_path):
        ckpt = load_training_checkpoint(last_path)
        config = check_resume_config(ckpt["extra"]["train_config"], config, run_dir, allow_schedule_change)
    elif not resume and os.path.exists(last_path):
        raise FileExistsError(f"{run_dir} already holds a run (checkpoints/last.pt); "
                              f"use --resume to continue it or choose another --out")
    elif resume and is_main:
        print(f"resume: no checkpoint in {ckdir}; starting a fresh run", flush=True)
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    loss_dtype = torch.float64 if config.loss_dtype == "float64" else torch.float32

    # ------------------------------------------------------------------ data
    # training batches: no overlap (the loss does not use it); validation keeps it for the
    # orbital metrics
    train_raw = HamiltonianDataset(data_dir, split_file=split_file, split="train", fields=TRAINING_FIELDS)
    valid_raw = HamiltonianDataset(data_dir, split_file=split_file, split="valid",
                                   fields=TRAINING_FIELDS + (("overlap",) if config.val_orbitals else ()))
    if len(train_raw) == 0:
        raise ValueError(f"split {split_file}: the train split is empty")
    if config.val_max_molecules is not None and config.val_max_molecules < len(valid_raw):
        keep = seeded_subset(valid_raw.ids, config.val_max_molecules, config.seed, "valid")
        valid_raw = HamiltonianDataset(data_dir, ids=[valid_raw.ids[i] for i in keep], fields=valid_raw.fields)
    # atomic numbers, positions and AO counts from the dataset's index (no matrices read);
    # rank 0 first, so that it alone writes the index of an old dataset
    if is_main:
        split_summaries(train_raw)
    ddp.barrier()
    train_summ = split_summaries(train_raw, write_cache=False)
    valid_summ = split_summaries(valid_raw, write_cache=False)
    settings = dataset_settings(train_raw)
    basis = config.model.get("basis") or train_raw.meta.get("basis") or settings.get("basis")
    if not basis:
        raise ValueError("the dataset does not say its basis; set model.basis in the config")
    if settings.get("basis") and settings["basis"] != basis:
        raise ValueError(f"model.basis {basis!r} differs from the dataset's basis {settings['basis']!r}")
    train_z = [z for z, _, _ in train_summ]
    elements = config.model.get("elements")
    if elements is None:
        import numpy as np
        elements = sorted({int(a) for z in train_z + [z for z, _, _ in valid_summ] for a in np.unique(z)})
    cache = None
    if config.target != "full":
        cache = BaseCache(os.path.join(run_dir, "base_cache"), config.target, settings) if is_main else \
            _ReadOnlyCache(os.path.join(run_dir, "base_cache"), config.target, settings)
    eigen = None
    if config.eigen_loss:  # the label's eigenvectors, training molecules only (validation does not need them)
        from .eigenbasis_loss import EigenCache
        eigen = EigenCache(os.path.join(run_dir, "eigen_cache"), config.loss["n_virtual"],
                           all_columns=config.loss["w_rest"] > 0 or config.loss["orbital"] > 0)
    train_ds = ResidualDataset(train_raw, cache, write=is_main, eigen=eigen)
    valid_ds = ResidualDataset(valid_raw, cache, write=is_main)
    if is_main:
        os.makedirs(ckdir, exist_ok=True)
        if cache is not None or eigen is not None:
            _precompute_bases(train_ds, config.num_workers, progress)
        if cache is not None:
            _precompute_bases(valid_ds, config.num_workers, progress)
    ddp.barrier()

    # ------------------------------------------------------------------ model, optimizer, state
    if ckpt is not None:
        from qhnetv2.model import QHNetV2

        model = QHNetV2.from_checkpoint(ckpt).to(device=device, dtype=dtype)
    else:
        model = _build_model(config, basis, elements, dtype, device)
        if is_main:
            _fit_reference(model, train_ds, seeded_subset(train_ds.ids, config.atom_reference_molecules,
                                                          config.seed, "atom_reference"))
    net = _BatchForward(model)
    if world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, config)
    ema = EMA(model, config.ema_decay)
    step, best_val, best_step = 0, math.inf, -1
    if ckpt is not None:
        st = ckpt["extra"]["train_state"]
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        old = ckpt["extra"]["train_config"]
        if any(k in old and old[k] != config.to_dict()[k] for k in SCHEDULE_KEYS):  # allowed (checked above)
            _apply_schedule(optimizer, scheduler, config)
        ema.load_state_dict(st["ema"])
        set_rng_state(st["rng"])
        step = int(ckpt["extra"]["step"])
        best_val = float(ckpt["extra"]["best_val_mae"])
        best_step = int(ckpt["extra"]["best_step"])
    resumed_from = step if ckpt is not None else None

    sizes = molecule_sizes(train_z, model.layout)
    sampler = BucketBatchSampler(sizes, config.batch_size, config.seed, rank, world, config.bucket)
    sampler.set_start(step, config.max_steps)
    loader = torch.utils.data.DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=config.num_workers)
    val_ids = list(range(len(valid_ds)))[rank::world]
    val_sizes = molecule_sizes([z for z, _, _ in valid_summ], model.layout) if len(valid_ds) else []
    val_order = sorted(val_ids, key=lambda i: val_sizes[i])
    val_batches = [val_order[i : i + config.batch_size] for i in range(0, len(val_order), config.batch_size)]
    val_loader = torch.utils.data.DataLoader(valid_ds, batch_sampler=val_batches, collate_fn=collate,
                                             num_workers=config.num_workers) if val_batches or world > 1 else None

    log = None
    if is_main:
        _write_yaml(os.path.join(run_dir, "config.yaml"), config.to_dict())
        log = RunLog(run_dir, resume_step=step if ckpt is not None else None)
    # what the model saw (elements, distances, bonding environments, sizes): predict/evaluate flag
    # molecules outside it (qhnetv2.domain); positions only, rank 0 writes the checkpoints
    domain = build_domain(((z, pos) for z, pos, _ in train_summ), model.config.cutoff,
                          model.layout.n_ao) if is_main else None
    base_extra = {"target": config.target, "settings": settings, "scf_settings": settings, "basis": basis,
                  "domain": domain,
                  "train_config": config.to_dict(), "data_dir": os.path.abspath(data_dir),
                  "split_file": os.path.abspath(split_file)}
    has_val = len(valid_ds) > 0
    ck_every = config.checkpoint_every or config.val_every
    w_mae, w_mse = config.loss["mae"], config.loss["mse"]
    w_eig, w_eig_sq, w_orb = config.loss["eigen"], config.loss["eigen_mse"], config.loss["orbital"]
    use_basis_term = w_eig > 0 or w_eig_sq > 0
    from .eigenbasis_loss import batch_eigenbasis_sums, batch_orbital_energy_sums
    bar = None
    if is_main and progress and step < config.max_steps:
        from tqdm import tqdm
        bar = tqdm(total=config.max_steps, initial=step, unit="step", desc="training", dynamic_ncols=True)
    final_val: Dict[str, float] = {}
    t_loop, steps_done = time.time(), 0
    # entry loss sum, abs-error sum, entries, eigenbasis loss sum, eigenbasis weight sum,
    # orbital-energy error sum, orbital count (since the last log)
    acc = torch.zeros(7, dtype=torch.float64)
    coll_dev = ddp.collective_device()  # where the per-step statistics are reduced

    def run_validation() -> Dict[str, float]:
        batches = (b for b in val_loader) if val_loader is not None else iter(())
        if ema.enabled:
            with ema.applied():
                return validate(model, batches, device, dtype, config.val_orbitals,
                                density=config.val_density, settings=settings)
        return validate(model, batches, device, dtype, config.val_orbitals,
                        density=config.val_density, settings=settings)

    def save_last(at_step: int) -> None:
        extra = dict(base_extra, step=at_step, best_val_mae=best_val, best_step=best_step,
                     train_state={"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                  "ema": ema.state_dict(), "rng": rng_state()})
        save_training_checkpoint(model, last_path, extra)

    model.train()
    for batch in loader:
        b = batch.to(device, dtype, target_dtype=loss_dtype)
        pred = net(b.atomic_numbers, b.positions, b.batch)
        err, abs_sum, sq_sum = entry_errors(pred, b.target)
        eig_sum, eig_weight, orb_sum, orb_count = None, 0.0, None, 0
        if use_basis_term:
            e_abs, e_sq, eig_weight = batch_eigenbasis_sums(err, b, config.loss["n_virtual"], config.loss["w_rest"])
            eig_sum = w_eig * e_abs + w_eig_sq * e_sq  # float64 (see eigenbasis_loss)
        if w_orb > 0:
            # frontier orbitals only: weighting the higher virtuals too made every metric worse (measured,
            # bench/results/cpu-amd-epyc-2t/spectrum_loss_demo)
            orb_sum, orb_count = batch_orbital_energy_sums(err, b, config.loss["n_virtual"], 0.0)
            orb_sum = w_orb * orb_sum
        # built on the collective device (the model's GPU under NCCL) and reduced there;
        # one copy back to the host for the scalars below
        parts = [w_mae * abs_sum.detach() + w_mse * sq_sum.detach(), abs_sum.detach(), float(err.numel()),
                 eig_sum.detach() if eig_sum is not None else 0.0, float(eig_weight),
                 orb_sum.detach() if orb_sum is not None else 0.0, float(orb_count)]
        stats = torch.stack([torch.as_tensor(x, dtype=torch.float64, device=coll_dev).reshape(()) for x in parts])
        stats = ddp.all_reduce_sum(stats).cpu()
        loss = (w_mae * abs_sum + w_mse * sq_sum) * (world / stats[2].item())
        if eig_sum is not None:
            loss = loss + (eig_sum * (world / stats[4].item())).to(loss.dtype)
        if orb_sum is not None:
            loss = loss + (orb_sum * (world / stats[6].item())).to(loss.dtype)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = (nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip) if config.grad_clip
                     else torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None)))
        optimizer.step()
        scheduler.step()
        ema.update()
        step += 1
        steps_done += 1
        acc += stats
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{_total_loss(stats):.3g}",
                            mae_uEh=f"{stats[1].item() / stats[2].item() * 1e6:.0f}", refresh=False)
        last_step = step >= config.max_steps
        row: Optional[Dict[str, Any]] = None
        if step % config.log_every == 0 or last_step:
            elapsed = time.time() - t_loop
            row = {"step": step, "epoch": (step - 1) // sampler.batches_per_epoch, "lr": scheduler.get_last_lr()[0],
                   "loss": _total_loss(acc), "train_mae_uEh": acc[1].item() / acc[2].item() * 1e6,
                   "loss_eigen": acc[3].item() / acc[4].item() if use_basis_term else None,
                   "loss_orbital": acc[5].item() / acc[6].item() if w_orb > 0 else None,
                   "grad_norm": float(grad_norm), "steps_per_s": steps_done / elapsed if elapsed > 0 else None,
                   "wall_s": time.time() - t_start}
            acc.zero_()
        if has_val and (step % config.val_every == 0 or last_step):
            final_val = run_validation()
            if is_main:
                from qhnetv2.metrics import to_micro_hartree
                micro = to_micro_hartree(final_val)
                row = row or {"step": step, "epoch": (step - 1) // sampler.batches_per_epoch,
                              "lr": scheduler.get_last_lr()[0], "wall_s": time.time() - t_start}
                row.update(val_mae_uEh=micro.get("hamiltonian_mae_uEh"),
                           val_diag_mae_uEh=micro.get("hamiltonian_diagonal_mae_uEh"),
                           val_offdiag_mae_uEh=micro.get("hamiltonian_off_diagonal_mae_uEh"),
                           val_orbital_energy_mae_uEh=micro.get("orbital_energy_mae_uEh"),
                           val_coef_similarity_percent=micro.get("orbital_coefficient_similarity_percent"),
                           val_virtual_mae_uEh=micro.get("virtual_orbital_energy_mae_uEh"),
                           val_lumo_error_eV=micro.get("lumo_error_eV"),
                           val_gap_error_eV=micro.get("gap_error_eV"),
                           val_gap_error_max_eV=micro.get("gap_error_max_eV"),
                           val_max_orbital_error_eV=micro.get("max_orbital_energy_error_max_eV"),
                           val_energy_error_uEh=micro.get("energy_error_uEh"),
                           val_energy_abs_error_uEh=micro.get("energy_abs_error_uEh"),
                           val_dipole_error_D=micro.get("dipole_error_D"))
            if final_val["hamiltonian_mae"] < best_val:
                best_val, best_step = final_val["hamiltonian_mae"], step
                if is_main:
                    save_training_checkpoint(model, best_path, dict(base_extra, step=step, best_val_mae=best_val,
                                                                   best_step=step, val_metrics=final_val),
                                             state_dict=ema.shadow)
        elif not has_val and (step % ck_every == 0 or last_step) and is_main:
            # no validation set: best = the latest EMA weights
            best_step = step
            save_training_checkpoint(model, best_path, dict(base_extra, step=step, best_val_mae=best_val,
                                                           best_step=step), state_dict=ema.shadow)
        if is_main and row is not None:
            log.write(row)
            if bar is not None and "val_mae_uEh" in row:
                bar.write(f"step {step}: valid H MAE {row['val_mae_uEh']:.1f} uEh "
                          f"(best {best_val * 1e6:.1f} at step {best_step})")
        if is_main and (step % ck_every == 0 or last_step):
            save_last(step)
            if "val_mae_uEh" in (row or {}) or last_step:
                plot_learning_curve(log.csv_path, os.path.join(run_dir, "learning_curve.png"))
    if bar is not None:
        bar.close()
    ddp.barrier()
    wall = time.time() - t_start
    summary = {
        "steps": step, "best_val_mae": best_val if best_step >= 0 and has_val else float("nan"),
        "best_val_mae_uEh": best_val * 1e6 if best_step >= 0 and has_val else float("nan"),
        "best_step": best_step, "final_val": final_val, "wall_s": wall,
        "steps_per_s": steps_done / (time.time() - t_loop) if steps_done else 0.0,
        "resumed_from": resumed_from, "world_size": world, "target": config.target, "run_dir": run_dir,
        "best_checkpoint": best_path, "last_checkpoint": last_path,
        "log_csv": os.path.join(run_dir, "log.csv"), "learning_curve": os.path.join(run_dir, "learning_curve.png"),
        "tensorboard": os.path.join(run_dir, "tb") if log is not None and log.tb is not None else None,
    }
    if is_main:
        log.close()
        if not os.path.exists(summary["learning_curve"]):
            plot_learning_curve(log.csv_path, summary["learning_curve"])
        from qhnetv2.data.split import write_json_atomic
        write_json_atomic(os.path.join(run_dir, "summary.json"), _jsonable(summary))
    return summary


def _total_loss(stats: torch.Tensor) -> float:
    """The loss (entry-wise + eigenbasis + orbital-energy terms) pooled over the steps summed in ``stats``."""
    out = stats[0].item() / stats[2].item()
    if stats[4].item() > 0:
        out += stats[3].item() / stats[4].item()
    if stats[6].item() > 0:
        out += stats[5].item() / stats[6].item()
    return out


class _ReadOnlyCache:
    """A ``BaseCache`` look-alike for ranks > 0: same paths, never writes."""

    def __init__(self, folder: str, kind: str, settings: Dict[str, Any]):
        from qhnetv2.baseline import BaseCache

        self._inner = BaseCache.__new__(BaseCache)
        self._inner.folder, self._inner.kind, self._inner.settings = folder, kind, dict(settings)
        self.kind, self.settings = kind, dict(settings)

    def _path(self, key: str) -> str:
        return self._inner._path(key)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
