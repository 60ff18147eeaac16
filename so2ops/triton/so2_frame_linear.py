"""Triton ``so2_frame_linear``: the composition of the Triton ``rotate`` and ``so2_linear``
kernels (``so2ops.ops.so2_frame_linear.unfused_frame_linear`` on this backend).

Not fused: the rotated (gather) or output (scatter) ``[E, K, C]`` tensor exists
for the op's duration and the backward differentiates the composition.  The
fused form of this op is the cpu / cuda tiled driver; a fused Triton kernel
would reuse ``so2_message``'s per-degree kernel with one side's rotation
dropped.
"""
from __future__ import annotations

from ..dispatch import register_impl, use_backend
from ..ops._common import autograd_backward
from ..ops.so2_frame_linear import unfused_frame_linear


def _forward(x, wigner, index, weight, modulation, bias, scale, lmax, mmax, out_channels, num_nodes, to_nodes,
             deterministic):
    with use_backend("triton"):
        return unfused_frame_linear(x, wigner, index, weight, modulation, bias, scale, lmax, mmax, out_channels,
                                    num_nodes, to_nodes)


def _backward(grad, x, wigner, index, weight, modulation, bias, scale, lmax, mmax, out_channels, num_nodes, to_nodes,
              deterministic, *needs):
    fn = lambda xx, wg, ww, mm, bb, ss: unfused_frame_linear(  # noqa: E731
        xx, wg, index, ww, mm, bb, ss, lmax, mmax, out_channels, num_nodes, to_nodes)
    with use_backend("triton"):
        return tuple(autograd_backward(fn, [x, wigner, weight, modulation, bias, scale], list(needs), grad))


register_impl("so2_frame_linear", "triton", _forward, _backward)
