"""What so2ops needs to run on every torch of its supported range (pyproject.toml:
``torch>=2.11,<2.15``; the oldest is checked by ``scripts/check_torch_range.sh``).

``assume_constant_result``
    ``torch.compiler.assume_constant_result`` for functions that take a
    :class:`~so2ops.BasisLayout` (``so2ops.block_tables.block_tables``).  Dynamo runs
    such a function once at trace time and keeps its result as a graph constant,
    but torch 2.11's Dynamo can hand it only Python constants and tensors: a
    ``BasisLayout`` argument stops a ``fullgraph=True`` compile with
    ``AsPythonConstantNotImplementedError: UserDefinedObjectVariable(BasisLayout)``
    (newer torch passes user objects, guarded on their identity).  Here the
    wrapper, which Dynamo traces, turns each ``BasisLayout`` argument into a
    tuple of ints and strings, which every torch accepts, and the marked function
    turns it back.  One code path on every torch, so the main test run and the
    range check exercise the same code; the graph is then guarded on the
    layout's contents (equal layouts share it) rather than on its identity.
"""
from __future__ import annotations

import functools
import re
from typing import Callable, Tuple, TypeVar

import torch

from .basis_layout import BasisLayout

__all__ = ["TORCH_VERSION", "assume_constant_result"]

#: (major, minor) of the running torch, for version gates
TORCH_VERSION: Tuple[int, int] = tuple(int(v) for v in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())

F = TypeVar("F", bound=Callable)

_LAYOUT_TAG = "so2ops.BasisLayout"


def _to_constant(x):
    # a tuple of ints and strings: a Python constant for Dynamo on every torch
    if isinstance(x, BasisLayout):
        return (_LAYOUT_TAG, x.name, tuple((z, ls) for z, ls in x.shells.items()))
    return x


@functools.lru_cache(maxsize=None)
def _layout(name: str, shells: Tuple[Tuple[int, Tuple[int, ...]], ...]) -> BasisLayout:
    # one object per distinct layout: BasisLayout compares (and hashes) by its shells, so the
    # caches behind the marked function hit as they do for the caller's own object
    return BasisLayout(dict(shells), name=name)


def _from_constant(x):
    if isinstance(x, tuple) and len(x) == 3 and x[0] == _LAYOUT_TAG:
        return _layout(x[1], x[2])
    return x


def assume_constant_result(fn: F) -> F:
    """``torch.compiler.assume_constant_result`` that also accepts ``BasisLayout`` positional
    arguments on torch 2.11 (see the module docstring).  Positional arguments only."""

    @torch.compiler.assume_constant_result
    def on_constants(*args):
        return fn(*[_from_constant(a) for a in args])

    @functools.wraps(fn)
    def wrapper(*args):
        return on_constants(*[_to_constant(a) for a in args])

    return wrapper  # type: ignore[return-value]
