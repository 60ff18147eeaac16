"""Exponential moving average of a model's parameters (validation / best checkpoint weights).

``shadow = d * shadow + (1 - d) * param`` after every optimizer step, with
``d = min(decay, (1 + n) / (10 + n))`` (n = updates so far) so early
averages are not dominated by the random initialisation.  Buffers are copied.

The update is two ``torch._foreach_*`` calls over all floating-point parameters
(one fused kernel per dtype/device group on GPUs instead of two launches per
tensor), with exactly the arithmetic of the per-tensor loop
``shadow.mul_(d).add_(param, alpha=1 - d)`` (tested equal).
"""
from __future__ import annotations

import contextlib
from typing import Dict

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.model, self.decay, self.updates = model, float(decay), 0
        self.shadow: Dict[str, torch.Tensor] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @property
    def enabled(self) -> bool:
        return self.decay > 0

    def _current(self):
        """The model's tensors behind the shadow keys: ``(averaged keys, their tensors,
        copied keys, their tensors)``; looked up on every call because ``model.to()``
        and friends may swap a parameter's storage."""
        params = dict(self.model.named_parameters(remove_duplicate=False))
        buffers = dict(self.model.named_buffers(remove_duplicate=False))
        avg_k, avg_v, copy_k, copy_v = [], [], [], []
        state = None
        for k in self.shadow:
            if k in params:
                v = params[k].detach()
            elif k in buffers:
                v = buffers[k]
            else:  # extra state: only the state_dict has it
                state = self.model.state_dict() if state is None else state
                v = state[k]
            if k in params and v.is_floating_point():
                avg_k.append(k)
                avg_v.append(v)
            else:
                copy_k.append(k)
                copy_v.append(v)
        return avg_k, avg_v, copy_k, copy_v

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates)) if self.enabled else 0.0
        avg_k, avg_v, copy_k, copy_v = self._current()
        if avg_k:
            shadow = [self.shadow[k] for k in avg_k]
            torch._foreach_mul_(shadow, d)
            torch._foreach_add_(shadow, avg_v, alpha=1.0 - d)
        for k, v in zip(copy_k, copy_v):
            self.shadow[k].copy_(v)

    def state_dict(self) -> Dict[str, object]:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)

    @contextlib.contextmanager
    def applied(self):
        """Temporarily load the EMA weights into the model (restored on exit)."""
        backup = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.shadow)
        try:
            yield self.model
        finally:
            self.model.load_state_dict(backup)
