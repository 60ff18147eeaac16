"""Sanity rows: a large matmul and a large copy, measured in the same run.

They give the *measured* compute and bandwidth ceilings of the device, shown
next to the datasheet peaks (``bench.peaks``); on a CPU, whose datasheet peak
is unknown here, they are the peaks the other rows' percentages use.
"""
from __future__ import annotations

import contextlib

import torch

from .. import inputs as inp
from ..counts import Count
from ..registry import Case, Entry, Impl, Workload, register


@contextlib.contextmanager
def tf32(enabled: bool):
    """Allow TF32 tensor-core matmuls inside the block (float32 inputs only)."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


class Matmul(Entry):
    name = "matmul"
    kind = "sanity"
    bound = "flops"
    description = "n x n x n matmul: the measured compute peak"

    def cases(self, quick, device):
        if device.type == "cuda":
            n = 4096 if quick else 8192
            return [Case({"n": n, "tf32": True}, torch.float32, ("fwd",), ("peak",)),
                    Case({"n": n, "tf32": False}, torch.float32, ("fwd",), ("peak",)),
                    Case({"n": n, "tf32": False}, torch.bfloat16, ("fwd",), ("peak",)),
                    Case({"n": n, "tf32": False}, torch.float64, ("fwd",), ("peak",))]
        n = 1024 if quick else 2048
        return [Case({"n": n, "tf32": False}, torch.float32, ("fwd",), ("peak",)),
                Case({"n": n, "tf32": False}, torch.float64, ("fwd",), ("peak",))]

    def make_inputs(self, shape, dtype, device, seed):
        g = inp.generator(seed)
        n = shape["n"]
        return {"a": inp.randn((n, n), g, dtype, device), "b": inp.randn((n, n), g, dtype, device)}

    def impls(self, device):
        def build(inputs, shape):
            return Workload(lambda: inputs["a"] @ inputs["b"], [], context=lambda: tf32(shape["tf32"]))

        return [Impl("torch", "baseline", build, same_math=False, note="torch.matmul")]

    def count(self, shape, mode, itemsize):
        n = shape["n"]
        return Count(2 * n ** 3, 3 * n * n * itemsize)


class Copy(Entry):
    name = "copy"
    kind = "sanity"
    bound = "bytes"
    description = "large device copy: the measured bandwidth"

    def cases(self, quick, device):
        mb = (256 if quick else 1024) if device.type == "cuda" else (32 if quick else 256)
        return [Case({"MiB": mb}, torch.float32, ("fwd",), ("peak",))]

    def make_inputs(self, shape, dtype, device, seed):
        n = shape["MiB"] * (1 << 20) // 4
        return {"src": torch.ones(n, dtype=dtype, device=device), "dst": torch.empty(n, dtype=dtype, device=device)}

    def impls(self, device):
        def build(inputs, shape):
            return Workload(lambda: inputs["dst"].copy_(inputs["src"]), [])

        return [Impl("torch", "baseline", build, same_math=False, note="Tensor.copy_")]

    def count(self, shape, mode, itemsize):
        return Count(0, 2 * shape["MiB"] * (1 << 20))


register(Matmul())
register(Copy())
