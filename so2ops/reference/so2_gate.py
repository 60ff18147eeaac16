"""Reference ``so2_gate``: the equivariant gate non-linearity (plain PyTorch).

``so2ops.nn.Gate``'s forward as it was before the fused op (issue 19): the
readable specification, the test oracle of every backend, and what the
``reference`` backend runs.  The op takes the gate *logits* (pre-sigmoid):
the sigmoid is part of the op, so the fused kernels apply it in registers
instead of a separate elementwise kernel (and its backward) in torch.
"""
from __future__ import annotations

import torch


def so2_gate(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``out[:, 0] = silu(x[:, 0])``; ``out[:, rows of l] = x[:, rows of l] * sigmoid(logits[:, l-1])``.

    Args:
        x: ``[N, (lmax+1)**2, C]``.
        logits: ``[N, lmax, C]`` gate logits of the degrees ``l = 1..lmax``.
    Returns:
        ``[N, (lmax+1)**2, C]``.
    """
    lmax = logits.shape[1]
    out = [torch.nn.functional.silu(x[:, :1, :])]
    g = torch.sigmoid(logits)
    for l in range(1, lmax + 1):
        out.append(x[:, l * l : (l + 1) ** 2, :] * g[:, l - 1, None, :])
    return torch.cat(out, dim=1)


def gate_composition(x: torch.Tensor, linear_weight: torch.Tensor, linear_bias: torch.Tensor, lmax: int) -> torch.Tensor:
    """``so2ops.nn.Gate.forward`` before the fused op, verbatim in its steps (kept for the equality test).

    Args:
        x: ``[N, (lmax+1)**2, C]``.
        linear_weight: ``[lmax * C, C]``, linear_bias: ``[lmax * C]``: the ``nn.Linear`` of the gates.
    """
    c = x.shape[2]
    s = x[:, 0, :]
    out = [torch.nn.functional.silu(s)[:, None, :]]
    if lmax > 0:
        g = torch.sigmoid(torch.nn.functional.linear(s, linear_weight, linear_bias)).view(-1, lmax, c)
        for l in range(1, lmax + 1):
            out.append(x[:, l * l : (l + 1) ** 2, :] * g[:, l - 1, None, :])
    return torch.cat(out, dim=1)
