"""FAIR-Chem's general (non-fused) edgewise path, run from the installed ``fairchem-core``.

The peer path the so2ops issue compares ``so2_message`` with (UMA's
``Edgewise.forward_chunk`` without the GPU fusions, one SO(2) convolution):

1. the Wigner matrices are precomputed, as for so2ops: FAIR-Chem's
   ``ExecutionBackend.prepare_wigner`` keeps the rows ``|m| <= mmax``
   (``CoefficientMapping.coefficient_idx``) and folds in the l -> m
   permutation (``to_m``), giving ``[E, K', K]`` and its transpose ``[E, K, K']``;
2. gather ``x[src]`` and ``torch.bmm`` with the truncated m-major Wigner;
3. FAIR-Chem's ``SO2_Convolution`` with the radial modulation given as its
   ``x_edge`` input (``internal_weights=True``: no ``rad_func`` MLP, the
   modulation is what that MLP would output; one ``fc_m0`` and one
   ``SO2_m_Conv`` Linear per m), ``fc_m0``'s bias removed so that it computes
   so2ops' function exactly;
4. ``ExecutionBackend.permute_wigner_inv_edge_to_node``: ``bmm`` with the
   transposed Wigner and ``index_add`` into the targets.

FAIR-Chem's package ``__init__`` imports its whole calculator stack (ASE,
hydra, ...); only the three leaf modules used here are loaded, by file, under
their own names (``so2ops.compat._fairchem_import.load_fairchem_uma`` when that
loader exists, otherwise the local fallback below).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from so2ops.reference import wigner_to_dense

from .escn_dense import packed_grad, per_m_weights

VERSION = "2.24.0"
_MODS = ("models.uma.nn.matmul", "models.uma.nn.radial", "models.uma.nn.so2_layers",
         "models.uma.nn.unified_radial", "models.uma.nn.execution_backends", "models.uma.common.so3")
_CACHE: Dict[str, object] = {}


def _core_dir() -> Optional[str]:
    spec = importlib.util.find_spec("fairchem")
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        d = os.path.join(base, "core")
        if os.path.isdir(d):
            return d
    return None


def _load_local():
    """``(so2_layers, so3, execution_backends)`` modules, loaded without FAIR-Chem's package ``__init__``."""
    core = _core_dir()
    if core is None:
        raise ImportError("fairchem-core is not installed (pip install --no-deps fairchem-core==" + VERSION + ")")
    # namespace stand-ins for the packages whose __init__ would pull in the calculator stack
    for pkg in ("fairchem", "fairchem.core", "fairchem.core.models", "fairchem.core.models.uma",
                "fairchem.core.models.uma.nn", "fairchem.core.models.uma.common"):
        if pkg in sys.modules:
            continue
        path = os.path.join(os.path.dirname(core), *pkg.split(".")[1:]) if pkg != "fairchem" else os.path.dirname(core)
        mod = types.ModuleType(pkg)
        mod.__path__ = [path]
        sys.modules[pkg] = mod
    out = {}
    for rel in _MODS:
        name = "fairchem.core." + rel
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, os.path.join(core, *rel.split(".")) + ".py")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        out[rel.rsplit(".", 1)[1]] = sys.modules[name]
    return out["so2_layers"], out["so3"], out["execution_backends"]


def load():
    """FAIR-Chem's ``(SO2_Convolution, CoefficientMapping, ExecutionBackend)``."""
    if "mods" not in _CACHE:
        try:
            from so2ops.compat._fairchem_import import load_fairchem_uma  # the shared loader, when it exists

            m = load_fairchem_uma()
            mods = (m.so2_layers.SO2_Convolution, m.so3.CoefficientMapping, m.execution_backends.ExecutionBackend)
        except Exception:  # noqa: BLE001 - no shared loader (yet) or another layout: local fallback
            so2, so3, eb = _load_local()
            mods = (so2.SO2_Convolution, so3.CoefficientMapping, eb.ExecutionBackend)
        _CACHE["mods"] = mods
    return _CACHE["mods"]


def available() -> Optional[str]:
    """None when FAIR-Chem's UMA layers load, else why not."""
    try:
        load()
    except Exception as exc:  # noqa: BLE001
        return f"fairchem-core not loadable ({type(exc).__name__}: {exc})"
    return None


def prepare_wigner(wigner: torch.Tensor, lmax: int, mmax: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """FAIR-Chem's ``(wigner [E, K', K], wigner_inv [E, K, K'])`` from so2ops' packed Wigner blocks."""
    _, CoefficientMapping, ExecutionBackend = load()
    dense = wigner_to_dense(wigner, lmax)
    reduced = CoefficientMapping(lmax, mmax)
    index = None if mmax == lmax else CoefficientMapping(lmax, lmax).coefficient_idx(lmax, mmax)
    w, w_inv = ExecutionBackend.prepare_wigner(dense, dense.transpose(1, 2), reduced, index)
    return w.contiguous(), w_inv.contiguous()


def make_conv(weight: torch.Tensor, lmax: int, mmax: int, cin: int, cout: int):
    """FAIR-Chem ``SO2_Convolution`` (no bias, no radial MLP) holding so2ops' packed ``weight``."""
    SO2_Convolution, CoefficientMapping, _ = load()
    conv = SO2_Convolution(cin, cout, lmax, mmax, CoefficientMapping(lmax, mmax), internal_weights=True)
    conv.fc_m0.register_parameter("bias", None)
    conv = conv.to(device=weight.device, dtype=weight.dtype)
    ws = per_m_weights(weight, lmax, mmax, cin, cout)
    with torch.no_grad():
        conv.fc_m0.weight.copy_(ws[0])
        for m in range(1, mmax + 1):
            conv.so2_m_conv[m - 1].fc.weight.copy_(ws[m])
    return conv


def conv_weights(conv) -> List[torch.Tensor]:
    """The per-m weights of ``conv`` in ``escn_dense.per_m_weights`` order."""
    return [conv.fc_m0.weight] + [c.fc.weight for c in conv.so2_m_conv]


def build(inputs: Dict[str, torch.Tensor], shape: Dict):
    """``(forward, grad_inputs, to_reference)`` of FAIR-Chem's general edgewise path."""
    _, _, ExecutionBackend = load()
    lmax, mmax, c = shape["lmax"], shape["mmax"], shape["C"]
    w, w_inv = prepare_wigner(inputs["wigner"], lmax, mmax)
    conv = make_conv(inputs["weight"].detach(), lmax, mmax, c, c)
    x = inputs["x"].detach().requires_grad_(True)
    mod = inputs["modulation"].detach().requires_grad_(True)
    src, dst = inputs["edge_index"][0], inputs["edge_index"][1]
    n, e = x.shape[0], mod.shape[0]

    def forward() -> torch.Tensor:
        msg = torch.bmm(w, x[src])
        msg = conv(msg, mod.view(e, -1))
        return ExecutionBackend.permute_wigner_inv_edge_to_node(msg, w_inv, dst, n)

    def to_reference(out: torch.Tensor, grads: Sequence[torch.Tensor]):
        gx, gm, gws = grads[0], grads[1], grads[2:]
        return out, [gx, packed_grad(gws, lmax, mmax, c), gm]

    return forward, [x, mod, *conv_weights(conv)], to_reference


def mem_estimate(shape: Dict, itemsize: int) -> int:
    """Bytes of the two dense Wigner tensors plus ~10 ``[E, K, C]`` activations and gradients."""
    k = (shape["lmax"] + 1) ** 2
    return itemsize * (2 * shape["E"] * k * k + 10 * shape["E"] * k * shape["C"])
