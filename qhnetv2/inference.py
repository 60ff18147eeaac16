"""Turning a trained QHNetV2 checkpoint into full Kohn-Sham Hamiltonians.

Shared by ``qhnetv2 evaluate``, ``qhnetv2 predict`` and the demo.

A checkpoint's ``extra`` dict may say what the network was trained on:

* ``extra["target"]``: ``"full"`` (default: the network predicts H itself),
  ``"core"`` or ``"minao"`` (the network predicts ``H - H_base``, see
  :mod:`qhnetv2.baseline`; the base is added back here);
* ``extra["settings"]``: the SCF settings of the labels (xc, basis, grid level,
  ...), needed to rebuild ``H_base`` exactly as in training.

Torch is imported inside the functions (the CLI imports this lazily anyway).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np


def normalize_basis(name: str) -> str:
    """Basis name as PySCF compares them: case, spaces, '-' and '_' do not matter."""
    return str(name).strip().lower().replace(" ", "").replace("-", "").replace("_", "")


def target_of(extra: Optional[Dict[str, Any]]) -> str:
    """The checkpoint's training target (``full`` when it does not say)."""
    from .baseline import check_target

    return check_target((extra or {}).get("target", "full") or "full")


def base_settings(model, extra: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """SCF settings for the base Hamiltonian: the checkpoint's, with the model's basis.

    Raises ``ValueError`` if the checkpoint's settings name another basis than the model.
    """
    settings = dict((extra or {}).get("settings") or {})
    basis = model.config.basis
    if settings.get("basis") is not None and normalize_basis(settings["basis"]) != normalize_basis(basis):
        raise ValueError(f"checkpoint is inconsistent: the model has basis {basis!r} but its "
                         f"training settings say basis {settings['basis']!r}")
    settings["basis"] = basis
    return settings


def load_model(checkpoint: str, device: Optional[str] = None) -> Tuple[Any, Dict[str, Any]]:
    """``(model, extra)`` from a checkpoint file, the model in eval mode on ``device``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a corrupt,
    truncated or foreign one, or one with an unknown ``extra["target"]``.
    """
    from .model import QHNetV2, load_checkpoint

    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    try:
        model = QHNetV2.from_checkpoint(ckpt)
    except (KeyError, TypeError, RuntimeError) as exc:  # missing fields, wrong tensor shapes
        raise ValueError(f"checkpoint {checkpoint} cannot be loaded: {type(exc).__name__}: {exc}") from None
    extra = dict(ckpt.get("extra") or {})
    target_of(extra)  # validate early
    model.eval()
    if device is not None:
        model.to(resolve_device(device))
    return model, extra


def model_and_extra(model_or_ckpt, device: Optional[str] = None,
                    extra: Optional[Dict[str, Any]] = None) -> Tuple[Any, Dict[str, Any], Optional[str]]:
    """``(model, extra, checkpoint path or None)`` from a checkpoint path or a model (+ its ``extra``)."""
    if isinstance(model_or_ckpt, str):
        model, extra = load_model(model_or_ckpt, device=device or "auto")
        return model, extra, model_or_ckpt
    if device is not None:
        model_or_ckpt.to(resolve_device(device))
    return model_or_ckpt, dict(extra or {}), None


def resolve_device(device: Optional[str]):
    """``torch.device`` for a ``--device`` value (None/"auto": cuda if available, else cpu)."""
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    return dev


def predict_hamiltonians(model, extra: Optional[Dict[str, Any]], atomic_numbers_list: Sequence,
                         positions_list: Sequence, charges: Optional[Sequence[int]] = None,
                         batch_size: int = 16) -> List[np.ndarray]:
    """Full Hamiltonians ``H[n_ao, n_ao]`` (float64, Hartree, PySCF AO order), one per molecule.

    ``model.predict_many`` gives the network output; when the checkpoint was trained on a
    residual target (``extra["target"]`` ``core``/``minao``) the base Hamiltonian of each
    geometry, computed with ``extra["settings"]``, is added.  Positions in Angstrom.
    ``charges`` (default 0) only matter for the ``minao`` base.
    """
    from .baseline import base_hamiltonian

    if len(atomic_numbers_list) != len(positions_list):
        raise ValueError(f"{len(atomic_numbers_list)} atomic-number arrays but "
                         f"{len(positions_list)} position arrays")
    target = target_of(extra)
    was_training = model.training
    model.eval()
    try:
        hs = model.predict_many(list(atomic_numbers_list), list(positions_list), batch_size=batch_size)
    finally:
        model.train(was_training)
    if target == "full":
        return hs
    settings = base_settings(model, extra)
    charges = [0] * len(hs) if charges is None else list(charges)
    out = []
    for h, z, pos, q in zip(hs, atomic_numbers_list, positions_list, charges):
        base = base_hamiltonian(np.asarray(z), np.asarray(pos, dtype=np.float64), target, settings, charge=int(q))
        if base.shape != h.shape:
            raise ValueError(f"base Hamiltonian has shape {base.shape} but the model predicts {h.shape}: "
                             f"the model's basis layout does not match basis {settings['basis']!r}")
        out.append(h + base)
    return out
