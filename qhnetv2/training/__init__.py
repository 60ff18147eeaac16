"""Training QHNetV2: config, batching, the loop (AdamW, warm-up + decay, EMA, DDP), checkpoints, logs.

Public API (stable)::

    from qhnetv2.training import load_config, train, collate
    cfg = load_config("tiny")                     # a preset name or a YAML file
    summary = train(cfg, "data/water", "split.json", "runs/water", resume=False)

Modules: ``config`` (TrainConfig, load_config), ``collate`` (Batch, collate),
``data`` (residual targets over a cached base Hamiltonian), ``sampler``
(size-bucketed, seeded, DDP-aware batches), ``schedule``, ``ema``,
``distributed``, ``checkpoint``, ``validate``, ``logs``, ``loop`` (train),
``commands`` (the ``qhnetv2 train`` CLI).  Attributes are imported lazily so
that ``qhnetv2 --help`` does not import torch.
"""
from __future__ import annotations

import importlib
import sys
import types

_EXPORTS = {
    "TrainConfig": "config", "load_config": "config", "PRESET_NAMES": "config",
    "Batch": "collate", "collate": "collate",
    "BucketBatchSampler": "sampler",
    "ResidualDataset": "data",
    "EMA": "ema",
    "lr_factor": "schedule",
    "validate": "validate",
    "train": "loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: exported functions that share their module's name (``collate.collate``, ``validate.validate``)
_SHADOWED = frozenset(name for name, module in _EXPORTS.items() if name == module)


class _TrainingPackage(types.ModuleType):
    """The import system binds every imported submodule to its package attribute
    (``qhnetv2.training.collate = <module>``) once anything imports it, which would turn
    ``from qhnetv2.training import collate`` into the module instead of the function.
    For the names in :data:`_SHADOWED` the function wins; the modules stay importable as
    ``from qhnetv2.training.collate import ...``."""

    def __setattr__(self, name, value):
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _TrainingPackage
