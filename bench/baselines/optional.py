"""Optional third-party baselines, used only when importable.

* ``cueq_tp``: cuEquivariance's channel-wise tensor-product convolution
  (``cuequivariance_torch.ChannelWiseTensorProduct`` with per-edge weights,
  gather, scatter-sum, ``cuequivariance_torch.Linear``): the same layer as the
  e3nn baseline, on NVIDIA's kernels.  Its API has moved between releases, so
  any construction error is reported as the row's skip reason instead of
  failing the run.

FAIR-Chem's own general edgewise path (its ``SO2_Convolution`` between
Wigner ``bmm``s) is ``fairchem_general``, timed by the ``edgewise`` entry when
``fairchem-core`` is installed; ``escn_dense`` is the same algorithm written
out in plain PyTorch (no dependency).
"""
from __future__ import annotations

from typing import Optional

import torch

from .e3nn_tp import paths, to_e3nn_layout


def cueq_available(device: torch.device) -> Optional[str]:
    """None when cuEquivariance's torch package imports and the device is CUDA."""
    if device.type != "cuda":
        return "cuEquivariance kernels are CUDA-only"
    try:
        import cuequivariance  # noqa: F401
        import cuequivariance_torch  # noqa: F401
    except ImportError as exc:
        return f"cuequivariance_torch not importable ({exc})"
    return None


def cueq_build(inputs: dict, shape: dict):
    """``(forward, grad_inputs)`` of the cuEquivariance channel-wise TP convolution."""
    import cuequivariance as cue
    import cuequivariance_torch as cuet
    from e3nn import o3

    x, edge_index, edge_vec = inputs["x"], inputs["edge_index"], inputs["edge_vec"]
    lmax, c = shape["lmax"], shape["C"]
    dtype, device = x.dtype, x.device
    irreps_in = cue.Irreps("O3", " + ".join(f"{c}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1)))
    irreps_sh = cue.Irreps("O3", " + ".join(f"1x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1)))
    keep = [cue.O3(l, (-1) ** l) for l in range(lmax + 1)]
    tp = cuet.ChannelWiseTensorProduct(
        irreps_in, irreps_sh, filter_irreps_out=keep, layout=cue.mul_ir,
        shared_weights=False, internal_weights=False, device=device, dtype=dtype,
    )
    irreps_out = cue.Irreps("O3", " + ".join(f"{c}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1)))
    lin = cuet.Linear(tp.irreps_out, irreps_out, layout=cue.mul_ir, internal_weights=True, device=device, dtype=dtype)
    sh = o3.spherical_harmonics(o3.Irreps.spherical_harmonics(lmax), edge_vec.to(dtype), normalize=True, normalization="component")
    g = torch.Generator(device="cpu")
    g.manual_seed(1234)
    w = torch.randn(edge_index.shape[1], tp.weight_numel, generator=g).to(device=device, dtype=dtype).requires_grad_(True)
    xe = to_e3nn_layout(x.detach(), lmax).requires_grad_(True)
    src, dst, n = edge_index[0], edge_index[1], x.shape[0]
    assert len(paths(lmax)) > 0

    def forward():
        msg = tp(xe.index_select(0, src), sh, w)
        agg = msg.new_zeros(n, msg.shape[1]).index_add(0, dst, msg)
        return lin(agg)

    return forward, [xe, w] + [p for p in lin.parameters() if p.requires_grad]
