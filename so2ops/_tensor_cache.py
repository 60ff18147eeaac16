"""``tensor_cache``: ``functools.lru_cache`` for functions that build constant tensors.

The tensors are built with inference mode switched off: a cache first filled
inside ``torch.inference_mode()`` would otherwise hold inference tensors, which
autograd refuses to save for a backward later (``index_select`` / ``index_add``
indices, the block tables the custom ops save), so one inference call would
break every later training step.
"""
from __future__ import annotations

import functools

import torch

__all__ = ["tensor_cache"]


def tensor_cache(maxsize=None):
    """Decorator: ``lru_cache(maxsize)`` whose misses run under ``torch.inference_mode(False)``."""

    def decorate(fn):
        @functools.lru_cache(maxsize=maxsize)
        @functools.wraps(fn)
        def cached(*args):
            with torch.inference_mode(False):
                return fn(*args)

        return cached

    return decorate
