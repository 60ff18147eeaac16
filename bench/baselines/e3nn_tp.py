"""SO(3) Clebsch-Gordan tensor-product convolution with e3nn (QHNet / NequIP style).

What a user without an SO(2) kernel runs for the same message-passing layer:

* node features ``C x (0e + 1o + 2e + ...)`` up to ``lmax`` (the same
  ``(lmax+1)^2 * C`` numbers as the so2ops input, in e3nn's mul-major layout);
* edge spherical harmonics ``1x0e + 1x1o + ... `` up to ``lmax`` (precomputed,
  like the packed Wigner blocks are for so2ops: both are per-edge setup);
* ``o3.TensorProduct`` with ``"uvu"`` (channel-wise) instructions for every
  path ``l1 x l2 -> l3`` with ``l3 <= lmax`` and natural parity, and per-edge
  weights (``shared_weights=False``) given as an input ``[E, weight_numel]``:
  the output of the radial network, as ``modulation`` is for so2ops;
* scatter-sum onto the targets, then ``o3.Linear`` on the nodes to
  ``C_out x (0e + 1o + ...)``: the channel mixing that the SO(2) linear map
  does per edge.  Mixing after the aggregation is the cheaper order, so the
  baseline is not handicapped by it.

It computes a different (though equally expressive in kind) function from
so2ops' message op, so no output comparison: the harness checks that it is
finite.  Its analytic count is its own: ``sum over paths (2l1+1)(2l2+1)(2l3+1)``
multiply-adds per edge and channel (the dense CG contraction), which grows
like ``lmax^6`` against the SO(2) path's ``lmax^3``.
"""
from __future__ import annotations

from functools import lru_cache
from typing import List, Optional, Tuple

import torch

from ..counts import Count, combine


def available() -> Optional[str]:
    """None if e3nn imports, else why not."""
    try:
        import e3nn  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the machine
        return f"e3nn not importable ({exc})"
    return None


@lru_cache(maxsize=None)
def paths(lmax: int) -> Tuple[Tuple[int, int, int], ...]:
    """``(l1, l2, l3)`` of every channel-wise path kept: ``|l1-l2| <= l3 <= min(l1+l2, lmax)``, natural parity."""
    out = []
    for l1 in range(lmax + 1):
        for l2 in range(lmax + 1):
            for l3 in range(abs(l1 - l2), min(l1 + l2, lmax) + 1):
                if (l1 + l2 + l3) % 2 == 0:  # p1 p2 = (-1)^(l1+l2) must equal (-1)^l3
                    out.append((l1, l2, l3))
    return tuple(out)


def tp_macs(lmax: int) -> int:
    """Multiply-adds per edge and channel of the dense CG contractions."""
    return sum((2 * a + 1) * (2 * b + 1) * (2 * c + 1) for a, b, c in paths(lmax))


def count(shape: dict, mode: str, itemsize: int) -> Count:
    """Own analytic count (see the module docstring); backward = 2x (grads of x and of the weights)."""
    e, n, lmax, c = shape["E"], shape["N"], shape["lmax"], shape["C"]
    k = (lmax + 1) ** 2
    p = paths(lmax)
    mid = sum(2 * l3 + 1 for _, _, l3 in p)  # per channel, the TP output size
    lin_macs = n * c * c * mid  # node-level o3.Linear: each path output mixes channels into its l3
    f_fwd = 2 * (e * c * tp_macs(lmax) + lin_macs)
    w = e * c * len(p)
    b_fwd = itemsize * (n * k * c + e * k + w + n * k * c + c * c * len(p)) + 16 * e
    b_bwd = itemsize * (n * k * c + n * k * c + e * k + w + n * k * c + w + 2 * c * c * len(p)) + 16 * e
    return combine(Count(f_fwd, b_fwd), Count(2 * f_fwd, b_bwd), mode)


def mem_estimate(shape: dict, itemsize: int) -> int:
    """Rough fwd+bwd bytes: the per-path outer products and TP outputs per edge, a few times over."""
    e, c, lmax = shape["E"], shape["C"], shape["lmax"]
    p = paths(lmax)
    outer = sum((2 * a + 1) * (2 * b + 1) for a, b, _ in p)
    mid = sum(2 * l3 + 1 for _, _, l3 in p)
    return 3 * itemsize * e * c * (outer + 2 * mid) + 2 * itemsize * e * c * (lmax + 1) ** 2


def to_e3nn_layout(x: torch.Tensor, lmax: int) -> torch.Tensor:
    """``[N, (lmax+1)^2, C]`` l-major, channels last -> e3nn ``[N, sum_l C*(2l+1)]`` (mul-major per l)."""
    n, _, c = x.shape
    parts = [x[:, l * l : (l + 1) ** 2, :].transpose(1, 2).reshape(n, c * (2 * l + 1)) for l in range(lmax + 1)]
    return torch.cat(parts, 1).contiguous()


def build_modules(lmax: int, cin: int, cout: int, dtype: torch.dtype, device: torch.device):
    """``(tp, linear, irreps_sh)`` e3nn modules of the convolution."""
    from e3nn import o3

    irreps_in = o3.Irreps([(cin, (l, (-1) ** l)) for l in range(lmax + 1)])
    irreps_sh = o3.Irreps.spherical_harmonics(lmax)
    index = {l: i for i, l in enumerate(range(lmax + 1))}
    mid: List = []
    instructions = []
    for l1, l2, l3 in paths(lmax):
        instructions.append((index[l1], index[l2], len(mid), "uvu", True))
        mid.append((cin, (l3, (-1) ** l3)))
    irreps_mid = o3.Irreps(mid)
    tp = o3.TensorProduct(irreps_in, irreps_sh, irreps_mid, instructions, shared_weights=False, internal_weights=False)
    irreps_out = o3.Irreps([(cout, (l, (-1) ** l)) for l in range(lmax + 1)])
    lin = o3.Linear(irreps_mid, irreps_out)
    return tp.to(device=device, dtype=dtype), lin.to(device=device, dtype=dtype), irreps_sh


def build(inputs: dict, shape: dict, weight_scale: float = 1.0):
    """Workload pieces ``(forward, grad_inputs)`` of the e3nn convolution on the case's graph."""
    from e3nn import o3

    x, edge_index, edge_vec = inputs["x"], inputs["edge_index"], inputs["edge_vec"]
    lmax, c = shape["lmax"], shape["C"]
    dtype, device = x.dtype, x.device
    tp, lin, irreps_sh = build_modules(lmax, c, c, dtype, device)
    sh = o3.spherical_harmonics(irreps_sh, edge_vec.to(dtype), normalize=True, normalization="component")
    g = torch.Generator(device="cpu")
    g.manual_seed(1234)
    tp_w = (torch.randn(edge_index.shape[1], tp.weight_numel, generator=g, dtype=torch.float64) * weight_scale)
    tp_w = tp_w.to(device=device, dtype=dtype).requires_grad_(True)
    xe = to_e3nn_layout(x.detach(), lmax).requires_grad_(True)
    src, dst = edge_index[0], edge_index[1]
    n = x.shape[0]

    def forward():
        msg = tp(xe.index_select(0, src), sh, tp_w)
        agg = msg.new_zeros(n, msg.shape[1]).index_add(0, dst, msg)
        return lin(agg)

    return forward, [xe, tp_w, lin.weight]
