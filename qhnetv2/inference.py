"""Turning a trained QHNetV2 checkpoint into full Kohn-Sham Hamiltonians.

Shared by ``QHNetV2.predict`` / ``predict_many``, ``qhnetv2 evaluate``, ``qhnetv2
predict`` and the demo.

A checkpoint's ``extra`` dict says what the network was trained on:

* ``extra["target"]``: ``"full"`` (default: the network predicts H itself),
  ``"core"`` or ``"minao"`` (the network predicts ``H - H_base``, see
  :mod:`qhnetv2.baseline`; the base is added back here);
* ``extra["settings"]``: the SCF settings of the labels (xc, basis, grid level,
  ...), needed to rebuild ``H_base`` exactly as in training;
* ``extra["domain"]``: the training domain (:mod:`qhnetv2.domain`).

``QHNetV2.from_checkpoint`` copies these onto the model (``model.target``,
``model.settings``, ``model.domain``), so a loaded model knows them by itself; a
model built directly has target ``full`` and no domain.  :func:`training_info`
decides which to use when a model comes with an ``extra`` too, and
:func:`full_hamiltonians` is the one place where the base is added back.

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


def training_info(model, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``{"target", "settings", "domain"}`` that apply to ``model``'s predictions.

    An ``extra`` that names a ``target`` (a checkpoint's ``extra``, or one written by
    hand for a model built directly) wins: its target and settings are used, its
    domain if it has one, else the model's.  Without one (``None`` or ``{}``) the
    model's own, set by ``QHNetV2.from_checkpoint`` (``full`` and no domain for a
    model built directly).  Raises ``ValueError`` for an unknown target.
    """
    extra = dict(extra or {})
    own = {"target": getattr(model, "target", "full") or "full",
           "settings": dict(getattr(model, "settings", None) or {}),
           "domain": getattr(model, "domain", None)}
    if "target" not in extra:
        info = own
    else:
        info = {"target": extra.get("target") or "full", "settings": dict(extra.get("settings") or {}),
                "domain": extra.get("domain", own["domain"])}
    info["target"] = target_of(info)
    if info["domain"] is not None:
        from .domain import check_domain_record

        check_domain_record(info["domain"])  # ValueError naming what is wrong with extra["domain"]
    return info


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
    if "domain" in extra:  # the record from_checkpoint accepted (None if it dropped a malformed one)
        extra["domain"] = model.domain
    model.eval()
    if device is not None:
        model.to(resolve_device(device))
    return model, extra


def model_and_extra(model_or_ckpt, device: Optional[str] = None,
                    extra: Optional[Dict[str, Any]] = None) -> Tuple[Any, Dict[str, Any], Optional[str]]:
    """``(model, extra, checkpoint path or None)`` from a checkpoint path or a model (+ its ``extra``).

    For a model object, ``extra`` is :func:`training_info` of the model and the given
    ``extra`` (so a model from ``QHNetV2.load`` brings its own target, settings, domain).
    """
    if isinstance(model_or_ckpt, str):
        model, extra = load_model(model_or_ckpt, device=device or "auto")
        return model, extra, model_or_ckpt
    if device is not None:
        model_or_ckpt.to(resolve_device(device))
    # a loaded model knows its target, settings and domain; an explicit extra wins
    return model_or_ckpt, training_info(model_or_ckpt, extra), None


def resolve_device(device: Optional[str]):
    """``torch.device`` for a ``--device`` value (None/"auto": cuda if available, else cpu)."""
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    return dev


def full_hamiltonians(model, target: str, settings: Optional[Dict[str, Any]], atomic_numbers_list: Sequence,
                      positions_list: Sequence, network: Sequence[np.ndarray],
                      charges: Optional[Sequence[int]] = None) -> List[np.ndarray]:
    """The network outputs ``network`` plus the base Hamiltonian of ``target``: full Hamiltonians.

    The one place where a residual target's base is added back (``QHNetV2.predict_many``
    and :func:`predict_hamiltonians` both come here).  ``full``: ``network`` unchanged.
    ``core`` / ``minao``: ``H_base`` of each geometry (:func:`qhnetv2.baseline.base_hamiltonian`,
    PySCF) with ``settings`` (the labels' SCF settings; the model's basis) is added.
    ``charges`` (default 0) only matter for the ``minao`` base.
    """
    from .baseline import base_hamiltonian, check_target

    target = check_target(target or "full")
    hs = list(network)
    if not len(hs) == len(atomic_numbers_list) == len(positions_list):
        raise ValueError(f"{len(atomic_numbers_list)} atomic-number arrays, {len(positions_list)} position "
                         f"arrays and {len(hs)} network outputs: they must match")
    if target == "full":
        return hs
    settings = base_settings(model, {"settings": settings})
    charges = [0] * len(hs) if charges is None else list(charges)
    if len(charges) != len(hs):
        raise ValueError(f"charges: {len(charges)} values for {len(hs)} molecules")
    out = []
    for h, z, pos, q in zip(hs, atomic_numbers_list, positions_list, charges):
        base = base_hamiltonian(np.asarray(z), np.asarray(pos, dtype=np.float64), target, settings, charge=int(q))
        if base.shape != h.shape:
            raise ValueError(f"base Hamiltonian has shape {base.shape} but the model predicts {h.shape}: "
                             f"the model's basis layout does not match basis {settings['basis']!r}")
        out.append(h + base)
    return out


def predict_hamiltonians(model, extra: Optional[Dict[str, Any]], atomic_numbers_list: Sequence,
                         positions_list: Sequence, charges: Optional[Sequence[int]] = None,
                         batch_size: int = 16) -> List[np.ndarray]:
    """Full Hamiltonians ``H[n_ao, n_ao]`` (float64, Hartree, PySCF AO order), one per molecule.

    The network output (``model.predict_many(..., full=False)``) plus, for a residual
    target, the base (:func:`full_hamiltonians`); the target and settings are
    :func:`training_info` of ``model`` and ``extra``: a model from ``QHNetV2.load`` needs no
    ``extra``, a model built directly takes its checkpoint's.  Positions in Angstrom.
    ``charges`` (default 0) only matter for the ``minao`` base.  Does not check the
    training domain (``qhnetv2 predict`` / ``evaluate`` do, per molecule id).
    """
    if len(atomic_numbers_list) != len(positions_list):
        raise ValueError(f"{len(atomic_numbers_list)} atomic-number arrays but "
                         f"{len(positions_list)} position arrays")
    info = training_info(model, extra)
    was_training = model.training
    model.eval()
    try:
        hs = model.predict_many(list(atomic_numbers_list), list(positions_list), batch_size=batch_size,
                                full=False, check_domain=False)
    finally:
        model.train(was_training)
    return full_hamiltonians(model, info["target"], info["settings"], atomic_numbers_list, positions_list, hs,
                             charges)


def domain_flags(model, extra: Optional[Dict[str, Any]], atomic_numbers_list: Sequence, positions_list: Sequence,
                 ids: Optional[Sequence[str]] = None, source: Optional[str] = None,
                 warn: bool = True) -> List[Dict[str, Any]]:
    """``[{"in_domain": bool, "domain_reasons": [str, ...]}]`` per molecule against the training domain.

    The domain is :func:`training_info`'s (the checkpoint's ``extra["domain"]``).  With
    ``warn``, a :class:`qhnetv2.domain.DomainWarning` per out-of-domain molecule (named
    by ``ids``), and, without a recorded domain, one note (everything counts as inside).
    """
    from .domain import domain_reasons, formula, note_no_domain, warn_out_of_domain

    domain = training_info(model, extra)["domain"]
    if domain is None:
        # a model built directly was trained on nothing in particular: no note; a checkpoint
        # written before domains were recorded: say once that nothing is checked
        if warn and (source is not None or getattr(model, "from_trained_checkpoint", False)):
            note_no_domain(source or getattr(model, "checkpoint_path", None))
        return [{"in_domain": True, "domain_reasons": []} for _ in atomic_numbers_list]
    out = []
    for k, (z, pos) in enumerate(zip(atomic_numbers_list, positions_list)):
        z = np.asarray(z).reshape(-1)
        reasons = domain_reasons(domain, z, pos, n_ao=_n_ao(model, z))
        if warn:
            label = f"molecule {ids[k]}" if ids is not None else f"molecule {k} ({formula(z)})"
            warn_out_of_domain(label, reasons)
        out.append({"in_domain": not reasons, "domain_reasons": reasons})
    return out


def _n_ao(model, atomic_numbers) -> Optional[int]:
    """AO count of a molecule in the model's basis (None if an element is not in its layout)."""
    layout = getattr(model, "layout", None)
    if layout is None or not {int(a) for a in atomic_numbers} <= {int(e) for e in layout.elements}:
        return None
    return int(sum(layout.n_ao(int(a)) for a in atomic_numbers))
