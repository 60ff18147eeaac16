"""Helpers shared by the custom-op wrappers."""
from __future__ import annotations

import contextlib
from typing import Callable, List, Optional, Sequence

import torch

_AUTOGRAD_KEYS = (
    torch._C.DispatchKey.AutogradFunctionality,
    torch._C.DispatchKey.AutogradOther,
    torch._C.DispatchKey.AutogradNestedTensor,
)


@contextlib.contextmanager
def autograd_enabled():
    """Re-enable autograd inside a custom op's implementation.

    The dispatcher runs custom-op kernels below the Autograd keys (they are in
    the thread-local exclude set), so ``torch.enable_grad()`` alone records
    nothing there.  The reference backward needs a real autograd graph.
    """
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in _AUTOGRAD_KEYS:
        exclude = exclude.remove(key)
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude), torch.enable_grad():
        yield


def extension_loaded() -> bool:
    """True when the compiled ``so2ops._C`` extension imports (and registered its ops)."""
    try:
        import so2ops._C  # noqa: F401
    except ImportError:
        return False
    return True


def autograd_backward(
    fn: Callable[..., torch.Tensor],
    inputs: Sequence[Optional[torch.Tensor]],
    needs: Sequence[bool],
    grad_out: torch.Tensor,
) -> List[torch.Tensor]:
    """Gradients of ``fn(*inputs)`` by recomputing it under autograd.

    The reference backend's backward: it differentiates the readable forward,
    so it is correct by construction.  Inputs that are not needed (or None)
    get an empty ``[0]`` tensor, the convention of every ``*_backward`` op.
    """
    with autograd_enabled():
        leaves = [
            None if t is None else (t.detach().requires_grad_(True) if n else t.detach())
            for t, n in zip(inputs, needs)
        ]
        wrt = [l for l, n in zip(leaves, needs) if n and l is not None]
        out = fn(*leaves)
        # an output that does not depend on the inputs (e.g. D^0 = 1) has no graph: zero gradients
        differentiable = wrt and out.requires_grad
        grads = iter(torch.autograd.grad(out, wrt, grad_out, allow_unused=True) if differentiable else [None] * len(wrt))
    out = []
    for t, n in zip(inputs, needs):
        if n and t is not None:
            g = next(grads)
            out.append(torch.zeros_like(t) if g is None else g.contiguous())
        else:
            out.append(grad_out.new_empty(0))
    return out


def empty_or(flag: bool, like: Optional[torch.Tensor], ref: torch.Tensor) -> torch.Tensor:
    """Fake-kernel helper: ``empty_like(like)`` if ``flag`` else a ``[0]`` tensor."""
    if flag and like is not None:
        return torch.empty_like(like)
    return ref.new_empty(0)


def none_if_empty(flag: bool, t: torch.Tensor) -> Optional[torch.Tensor]:
    """Autograd helper: map the ``[0]`` placeholder of an unneeded gradient to None."""
    return t if flag else None


def distinct_outputs(outs, needs, like: torch.Tensor) -> tuple:
    """Backward-op outputs with a fresh ``[0]`` placeholder per unneeded gradient.

    A custom op may not return the same tensor twice (or an input); backends
    that share one empty placeholder between outputs would trip that check.
    """
    return tuple(o if n else like.new_empty(0) for o, n in zip(outs, needs))
