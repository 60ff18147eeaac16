"""Training checkpoints: ``RUN/checkpoints/last.pt`` (resumable) and ``best.pt`` (EMA weights).

Both are ``QHNetV2.checkpoint(extra=...)`` dicts written atomically
(``qhnetv2.model.save_atomic``), loadable by ``QHNetV2.load`` and with
``torch.load(weights_only=True)``: only tensors, numbers, strings, lists, dicts.

``extra`` always holds ``target`` (full/core/minao), ``scf_settings`` (the
dataset's labelling settings: what ``qhnetv2.baseline.base_hamiltonian`` needs
to add the base back), ``basis``, ``train_config``, ``step``, ``best_val_mae``
and ``best_step``; ``last.pt`` also has ``train_state``: optimizer, scheduler,
EMA and RNG states.  ``last.pt``'s ``state_dict`` is the raw trained weights,
``best.pt``'s the EMA weights at the best validation.
"""
from __future__ import annotations

import os
from typing import Any, Dict

import torch

BEST, LAST = "best.pt", "last.pt"


def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def rng_state() -> Dict[str, Any]:
    state: Dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        except (RuntimeError, IndexError):  # different GPU count: only the data order matters
            pass


def save_training_checkpoint(model, path: str, extra: Dict[str, Any], state_dict=None) -> None:
    """``model.checkpoint(extra)`` (optionally with another ``state_dict``, e.g. EMA weights), atomically."""
    from qhnetv2.model import save_atomic

    ckpt = model.checkpoint(extra=extra)
    if state_dict is not None:
        ckpt["state_dict"] = {k: v.detach().clone() for k, v in state_dict.items()}
    save_atomic(ckpt, path)


def load_training_checkpoint(path: str, map_location="cpu") -> Dict[str, Any]:
    from qhnetv2.model import load_checkpoint

    ckpt = load_checkpoint(path, map_location)
    if "train_state" not in ckpt.get("extra", {}):
        raise ValueError(f"{path} is not a resumable training checkpoint (no train_state)")
    return ckpt
