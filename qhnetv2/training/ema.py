"""Exponential moving average of a model's parameters (validation / best checkpoint weights).

``shadow = d * shadow + (1 - d) * param`` after every optimizer step, with
``d = min(decay, (1 + n) / (10 + n))`` (n = updates so far) so early
averages are not dominated by the random initialisation.  Buffers are copied.
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

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates)) if self.enabled else 0.0
        params = dict(self.model.named_parameters())
        for k, v in self.model.state_dict().items():
            if k in params and v.is_floating_point():
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1.0 - d)
            else:
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
