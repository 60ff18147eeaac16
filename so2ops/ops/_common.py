"""Helpers shared by the custom-op wrappers."""
from __future__ import annotations

import contextlib
import os
import warnings
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
    """True when the compiled ``so2ops._C`` extension imports (and registered its ops).

    A failed import is not silent: ``so2ops.dispatch._extension`` warns once,
    quoting the ``ImportError``.
    """
    from ..dispatch import _extension

    return _extension() is not None


def register_compiled(op: str, forward: Callable, backward: Callable, symbol: str) -> None:
    """Register ``forward`` / ``backward`` as op ``op``'s cpu and cuda implementations when the
    compiled extension has ``torch.ops.so2ops_C.<symbol>``; an extension that loads but
    lacks it (built before the op existed) gets a warning, never a silent fallback."""
    if not extension_loaded():
        return
    if hasattr(torch.ops.so2ops_C, symbol):
        from ..dispatch import register_impl

        for backend in ("cpu", "cuda"):
            register_impl(op, backend, forward, backward)
        return
    import warnings

    warnings.warn(f"so2ops._C was built before {op} existed (a stale build): {op} runs on the reference / "
                  f"triton backends; rebuild the extension (pip install -e .)", RuntimeWarning)


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


# ------------------------------------------------------------------ autocast
_HALF = (torch.float16, torch.bfloat16)


def autocast_inputs(device: torch.device, *tensors):
    """Inputs of an op called inside ``torch.autocast`` for ``device``'s type.

    so2ops ops are "fp32-list" ops (docs/conventions.md "Mixed precision"):
    under autocast every floating input is brought to one dtype, float64 if
    any input is float64, else float32; outside autocast nothing changes.
    Returns the tensors (``None`` and non-floating entries unchanged).
    """
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda") or not torch.is_autocast_enabled(kind):
        return tensors
    floats = [t for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()]
    target = torch.float64 if any(t.dtype == torch.float64 for t in floats) else torch.float32
    return tuple(
        t.to(target) if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != target else t
        for t in tensors
    )


def register_fp32_autocast(op) -> None:
    """Autocast rule of a custom op called directly (``torch.ops.so2ops.*``): half inputs run in float32.

    The public wrappers already cast with ``autocast_inputs`` (which also
    promotes mixed float32/float64); this covers direct calls of the op.
    """
    for kind in ("cpu", "cuda"):
        try:
            torch.library.register_autocast(op, kind, torch.float32)
        except (ValueError, RuntimeError):  # a build without that autocast backend
            pass


# ------------------------------------------------------------------ determinism
def want_deterministic(flag: bool = False) -> bool:
    """``flag`` or ``torch.use_deterministic_algorithms(True)`` in effect."""
    return bool(flag) or torch.are_deterministic_algorithms_enabled()


# ------------------------------------------------------------------ cuBLAS workspace (determinism on CUDA)
#: The value set when the user has not chosen one: one of the two PyTorch accepts as deterministic,
#: and PyTorch's own default workspace size on Hopper (8 x 4 MiB per handle and stream).
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def ensure_cublas_workspace_config() -> bool:
    """Set ``CUBLAS_WORKSPACE_CONFIG`` when it is unset, so that ``torch.use_deterministic_algorithms(True)``
    works on the cuda backend without the user setting it.  Returns True when it set the variable.

    Why an environment variable, and why at import: the CUDA ops of so2ops (the tile driver of
    ``so2_linear`` / ``so2_message`` / ``so2_frame_linear``, the GEMM stages of ``so2_tensor_product``)
    and the layers around them (radial MLPs, ``F.linear`` in ``so2ops.nn``) multiply with cuBLAS
    through ATen, and ATen refuses every cuBLAS GEMM in deterministic mode unless the variable holds
    ``:4096:8`` or ``:16:8``.  ATen reads it once, at the first cuBLAS call of the process (a static
    in ``Context::alertCuBLASConfigNotDeterministic``; the workspace size is parsed once too), so
    it must be in the environment before then, whether or not deterministic mode is on yet; setting
    it later does nothing.  ``import so2ops`` normally precedes any CUDA work, and the user may
    switch deterministic mode on at any time afterwards, so the module sets it when imported.  A
    deterministic path of our own (no cuBLAS in so2ops' kernels) would not help: the users'
    ``nn.Linear`` layers next to the ops would still be refused.  A value the user chose is kept.
    """
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") is not None:
        return False
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE_CONFIG
    if torch.cuda.is_initialized() and torch.are_deterministic_algorithms_enabled():
        # cuBLAS may already have run: ATen then keeps refusing (it read the variable then)
        warnings.warn("so2ops set CUBLAS_WORKSPACE_CONFIG=:4096:8 after CUDA was initialised; if cuBLAS already "
                      "ran, deterministic mode still refuses cuBLAS GEMMs: import so2ops before any CUDA work or "
                      "set the variable before starting Python", RuntimeWarning, stacklevel=2)
    return True


ensure_cublas_workspace_config()
