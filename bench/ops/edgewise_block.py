"""``edgewise_block``: the whole two-conv eSCN-MD / UMA ``Edgewise`` block, FAIR-Chem's module against so2ops'.

The peer is FAIR-Chem's own ``fairchem.core.models.uma.escn_md_block.Edgewise``
(``act_type="gate"``, ``ExecutionBackend``: the general, non-fused path it runs
on the CPU): ``x[src]``/``x[dst]`` gather and concatenation, truncated m-major
Wigner ``bmm``, ``SO2_Convolution`` 2C -> H with its radial MLP and the extra
m = 0 gate outputs, ``GateActivation``, ``SO2_Convolution`` H -> C, transposed
Wigner ``bmm`` (the envelope folded into it, as UMA precomputes it) and
``index_add``.  so2ops runs ``so2ops.compat.fairchem.convert`` of that very
module (``edge_vec_convention="fairchem"``: both take the Wigner blocks of the
same edge vectors), so both compute the same function with the same weights.

Wigner blocks and the envelope are precomputed for both and need no gradient;
a training step differentiates the node features ``x``, the edge attributes
(radial MLP input) and every parameter.  FAIR-Chem's parameter gradients are
mapped to so2ops' layout with ``convert`` itself (each so2ops weight is one
FAIR-Chem weight, sliced), and every row's output and gradients are checked
against the oracle: the plain composition (``lean=False``) on the so2ops
``reference`` backend (not timed).

Rows (all so2ops rows on the ``cpu`` backend on a CPU, ``cuda`` on a GPU):

* ``cpu``: ``SO2EdgewiseBlock`` as converted, i.e. the default ``lean=True``;
* ``cpu_plain``: ``lean=False`` (the composition of differentiable ops);
* ``cpu_chunk`` / ``cpu_plain_chunk``: the same with ``edge_chunk=CHUNK``
  (checkpointed edge chunks).

Sizes (lmax / mmax / C / H / E): 4/2/128/128/1e4 (the issue's memory case),
2/2/64/64/2e4, 4/2/64/64/2e4, 4/4/64/64/2e4, 6/2/64/64/1e4; ``--quick``: the
first two at E 500.  Goals (``targets``, float32 fwd+bwd): >= 2x FAIR-Chem's
speed at <= 1/4 of its peak extra memory, and at 4/2/128/128 <= 1/3 of its
peak (the issue's "same block written the plain PyTorch way").
"""
from __future__ import annotations

import copy
from typing import Dict, Optional

import torch

from so2ops.layout import num_coeffs, num_mod

from .. import gemm_floor
from .. import inputs as inp
from ..baselines import fairchem_general
from ..counts import Count, combine, rotate_macs, so2_macs
from ..registry import Case, Entry, Impl, Workload, register
from ..so2_backends import force_backend
from .edgewise import peer_targets

#: (lmax, mmax, C, H, E)
SHAPES = ((4, 2, 128, 128, 10_000), (2, 2, 64, 64, 20_000), (4, 2, 64, 64, 20_000), (4, 4, 64, 64, 20_000),
          (6, 2, 64, 64, 10_000))
QUICK_E = 500
#: UMA's radial MLP form ``[num_distance_basis + 2 * edge_channels, edge_channels, edge_channels]`` (64 / 64)
EDGE_LIST = (192, 64, 64)
#: edges per checkpointed chunk of the ``*_chunk`` rows
CHUNK = 4096
CUTOFF = 6.0
WEIGHT_SEED = 1234
SPEEDUP_GOAL = 2.0
MEM_GOAL = 0.25
MEM_GOAL_HEADLINE = 1 / 3
HEADLINE = dict(lmax=4, mmax=2, C=128, H=128)

#: so2ops rows: name -> (lean, chunked)
VARIANTS = {"cpu": (True, False), "cpu_plain": (False, False), "cpu_chunk": (True, True),
            "cpu_plain_chunk": (False, True)}


def _fairchem_block(shape: Dict, dtype: torch.dtype, device: torch.device):
    """FAIR-Chem's ``Edgewise`` (general execution backend), seeded weights."""
    fc = _fc()
    lmax, mmax = shape["lmax"], shape["mmax"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(WEIGHT_SEED)
        block = fc.escn_md_block.Edgewise(
            shape["C"], shape["H"], lmax, mmax, list(EDGE_LIST), fc.so3.CoefficientMapping(lmax, mmax), None,
            CUTOFF, None, fc.execution_backends.ExecutionBackend)
        # move the LayerNorm affine parameters (ones / zeros at init) off their init too
        with torch.no_grad():
            for name, p in block.named_parameters():
                if "net" in name and p.dim() == 1:
                    p.add_(0.1 * torch.randn_like(p))
    return block.to(device=device, dtype=dtype)


def _fc():
    from so2ops.compat._fairchem_import import load_fairchem_uma

    return load_fairchem_uma()


def _available() -> Optional[str]:
    try:
        fc = _fc()
        fc.escn_md_block.Edgewise  # noqa: B018
    except Exception as exc:  # noqa: BLE001
        return f"fairchem-core not loadable ({type(exc).__name__}: {exc})"
    return None


def _convert(block, **kw):
    from so2ops.compat.fairchem import convert

    return convert(block, edge_vec_convention="fairchem", **kw)


class EdgewiseBlock(Entry):
    name = "edgewise_block"
    kind = "op"
    bound = "flops"
    description = ("two-conv eSCN-MD/UMA Edgewise block: FAIR-Chem's module (general CPU path) vs "
                   "so2ops.nn.SO2EdgewiseBlock converted from it (lean, plain, chunked)")

    def cases(self, quick, device):
        shapes = SHAPES[:2] if quick else SHAPES
        out = []
        for i, (lmax, mmax, c, h, e) in enumerate(shapes):
            if quick:
                e = QUICK_E
            shape = dict(lmax=lmax, mmax=mmax, C=c, H=h, E=e, N=inp.default_nodes(e))
            tags = ("peer", "memory_case") if (lmax, mmax, c, h) == tuple(HEADLINE.values()) else ("peer",)
            out.append(Case(shape, torch.float32, ("fwd", "fwdbwd"), tags,
                            {"reference": "oracle only (plain composition on the reference backend), not timed"},
                            memory=not quick or i == 0))
        return out

    def make_inputs(self, shape, dtype, device, seed):
        g = inp.generator(seed)
        lmax, e, n = shape["lmax"], shape["E"], shape["N"]
        edge_index, edge_vec = inp.random_graph(e, n, g)
        base = torch.float64 if dtype == torch.float64 else torch.float32
        return {
            "x": inp.randn((n, num_coeffs(lmax), shape["C"]), g, dtype, device),
            "wigner": inp.wigner_of(edge_vec, lmax, dtype, device),
            "edge_index": edge_index.to(device),
            "edge_attr": inp.randn((e, EDGE_LIST[0]), g, dtype, device),
            "envelope": torch.rand(e, generator=g, dtype=base).to(device=device, dtype=dtype),
        }

    def impls(self, device):
        reason = _available()
        fast = "cuda" if device.type == "cuda" else "cpu"
        impls = [Impl("reference", "backend", _so2ops_builder("reference", lean=False, chunk=False),
                      skip=lambda shape, dtype: reason,
                      note="oracle: plain composition (lean=False) on the reference backend")]
        for name, (lean, chunk) in VARIANTS.items():
            label = name.replace("cpu", fast, 1)
            what = ("lean (default)" if lean else "lean=False (plain composition)") + (
                f", edge_chunk={CHUNK}" if chunk else "")
            impls.append(Impl(label, "backend", _so2ops_builder(fast, lean, chunk), skip=lambda shape, dtype: reason,
                              mem_estimate=_so2ops_mem, note=f"SO2EdgewiseBlock converted from FAIR-Chem's, {what}"))
        impls.append(gemm_floor.impl(_floor_gemms, "the block's GEMMs"))
        impls.append(Impl(
            "fairchem_general", "baseline", _fairchem_build, is_baseline=True, mem_estimate=_fairchem_mem,
            skip=lambda shape, dtype: reason,
            note=f"FAIR-Chem {fairchem_general.VERSION} Edgewise, ExecutionBackend (general path): gather+cat, "
                 "Wigner bmm, SO2_Convolution x2 + GateActivation, bmm back (envelope folded in), index_add",
        ))
        return impls

    def count(self, shape, mode, itemsize):
        lmax, mmax, c, h, e, n = (shape[k] for k in ("lmax", "mmax", "C", "H", "E", "N"))
        s, q = rotate_macs(lmax), so2_macs(lmax, mmax)
        k, l0 = num_coeffs(lmax), lmax + 1
        # forward MACs per edge: two rotations in, conv1 (2C -> H), gate linear, conv2 (H -> C), rotation out
        fm = 2 * s * c + 2 * q * c * h + l0 * 2 * c * lmax * h + q * h * c + s * c
        f = 2 * e * fm
        b = 2 * f  # grads of the inputs and of the weights: about twice the forward
        ins = n * k * c + e * (k * k + EDGE_LIST[0] + 1) + 2 * e
        fwd = Count(f, itemsize * (ins + n * k * c) + 16 * e)
        bwd = Count(b, itemsize * (2 * ins + 2 * n * k * c) + 16 * e)
        return combine(fwd, bwd, mode)

    def mem_estimate(self, shape, itemsize):
        return _fairchem_mem(shape, itemsize)

    def targets(self, rows, device):
        fast = {name.replace("cpu", "cuda" if device.type == "cuda" else "cpu", 1) for name in VARIANTS}

        def goals(r):
            out = [("speedup vs fairchem_general", "speedup", SPEEDUP_GOAL, ">="),
                   ("peak memory / fairchem_general", "mem_ratio", MEM_GOAL, "<=")]
            if all(r["shape"].get(k) == v for k, v in HEADLINE.items()):
                out.append(("peak memory / fairchem_general (issue: <= 1/3 at lmax 4, mmax 2, C 128)",
                            "mem_ratio", MEM_GOAL_HEADLINE, "<="))
            return out

        return peer_targets(self.name, rows, fast, goals, lambda r: r["impl"] in ("cpu", "cuda"), SPEEDUP_GOAL)


def _floor_gemms(shape):
    lmax, mmax, c, h = shape["lmax"], shape["mmax"], shape["C"], shape["H"]
    gemms = gemm_floor.so2_gemms(lmax, mmax, 2 * c, h) + gemm_floor.so2_gemms(lmax, mmax, h, c)
    gemms.append((EDGE_LIST[-1], num_mod(lmax, mmax) * 2 * c, True))  # the radial MLP's last layer
    if lmax > 0:
        gemms.append(((lmax + 1) * 2 * c, lmax * h, True))  # the gate logits
    return gemms


def _so2ops_mem(shape, itemsize):
    k = num_coeffs(shape["lmax"])
    return itemsize * 10 * shape["E"] * k * max(shape["C"], shape["H"])


def _fairchem_mem(shape, itemsize):
    # dense truncated Wigner and its transpose, ~14 [E, K, max(C, H)] activations and gradients
    k = num_coeffs(shape["lmax"])
    return itemsize * (2 * shape["E"] * k * k + 14 * shape["E"] * k * max(shape["C"], shape["H"]))


def _so2ops_builder(backend: str, lean: bool, chunk: bool):
    def build(inputs, shape):
        dtype, device = inputs["x"].dtype, inputs["x"].device
        block = _convert(_fairchem_block(shape, dtype, device))
        block.lean = lean
        block.edge_chunk = CHUNK if chunk else None
        x = inputs["x"].detach().requires_grad_(True)
        ea = inputs["edge_attr"].detach().requires_grad_(True)
        wig, ei, env = inputs["wigner"], inputs["edge_index"], inputs["envelope"]

        def forward():
            return block(x, ei, wig, ea, env)

        return Workload(forward=forward, grad_inputs=[x, ea, *block.parameters()],
                        context=lambda: force_backend(backend))

    return build


def _fairchem_build(inputs, shape):
    lmax, mmax = shape["lmax"], shape["mmax"]
    dtype, device = inputs["x"].dtype, inputs["x"].device
    block = _fairchem_block(shape, dtype, device)
    w, w_inv = fairchem_general.prepare_wigner(inputs["wigner"], lmax, mmax)
    w_inv_env = (w_inv * inputs["envelope"][:, None, None]).contiguous()  # UMA: wigner_inv * envelope, once per graph
    del w_inv
    x = inputs["x"].detach().requires_grad_(True)
    ea = inputs["edge_attr"].detach().requires_grad_(True)
    ei = inputs["edge_index"]
    n = x.shape[0]
    params = list(block.parameters())

    def forward():
        return block(x, ea, ei, w, w_inv_env, n, scatter_target=ei[1])

    def to_reference(out, grads):
        gx, gea, gps = grads[0], grads[1], grads[2:]
        g_module = copy.deepcopy(block)
        with torch.no_grad():
            for q, gp in zip(g_module.parameters(), gps):
                q.copy_(gp)
        mapped = [p.detach() for p in _convert(g_module).parameters()]
        return out, [gx, gea, *mapped]

    return Workload(forward=forward, grad_inputs=[x, ea, *params], to_reference=to_reference)


ENTRY = register(EdgewiseBlock())
