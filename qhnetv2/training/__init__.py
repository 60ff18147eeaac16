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
