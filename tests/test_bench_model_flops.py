"""Efficiency columns of the model benchmark (``bench/models/qhnetv2_model.py``).

* FLOPs are counted by ``FlopCounterMode`` on the reference implementation,
  *inside* the so2ops custom ops (which a plain counter sees as opaque calls):
  checked on one op against the plain-PyTorch reference function called
  directly, and on the tiny model against the sum of the counter outside the
  ops plus the counter on each op's body, call by call;
* the GEMM-rate measurement returns positive finite numbers and refuses bad sizes;
* a quick in-process run (tiny preset, water, one repetition, no memory
  measurement) puts ``efficiency`` with the GEMM fraction in every ok model row,
  the ``% GEMM`` column in the Markdown and the GEMM target in the targets.

No timing is asserted.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import so2ops
from bench import registry
from bench.models import molecules as mols
from bench.models import qhnetv2_model as QM
from bench.report import markdown
from bench.runner import Options, run
from bench.schema import SchemaError, validate
from bench.so2_backends import force_backend
from bench.timer import Budget

CPU = torch.device("cpu")


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def test_counting_sees_inside_a_reference_op():
    """so2ops.rotate on the reference backend: opaque to a plain counter, the reference's arithmetic inside."""
    g = torch.Generator().manual_seed(0)
    lmax, e, n, c = 3, 7, 5, 4
    x = torch.randn(n, (lmax + 1) ** 2, c, generator=g)
    wig = so2ops.edge_wigner(torch.randn(e, 3, generator=g), lmax)
    idx = torch.randint(0, n, (e,), generator=g)
    probe = torch.randn(e, (lmax + 1) ** 2, c, generator=g)

    def op_fwd():
        return so2ops.rotate(x, wig, lmax, index=idx)

    def op_fwdbwd():
        xx = x.detach().requires_grad_(True)
        return torch.autograd.grad(so2ops.rotate(xx, wig, lmax, index=idx), xx, probe)

    def ref_fwdbwd():
        xx = x.detach().requires_grad_(True)
        return torch.autograd.grad(so2ops.reference.rotate(xx, wig, lmax, idx, False), xx, probe)

    with force_backend("reference"):
        plain = _flops(op_fwd)
        with QM.counting_inside_so2ops():
            inside_fwd = _flops(op_fwd)
            inside_fwdbwd = _flops(op_fwdbwd)
    ref_fwd = _flops(lambda: so2ops.reference.rotate(x, wig, lmax, idx, False))
    ref_both = _flops(ref_fwdbwd)
    assert plain == 0  # the custom op is opaque to a plain counter: the reason for counting_inside_so2ops
    assert ref_fwd > 0 and inside_fwd == ref_fwd
    # the reference backward recomputes the forward under autograd: one forward more than plain autograd
    assert inside_fwdbwd == ref_both + ref_fwd
    # outside the block the rule is inert: a plain counter sees the op as opaque again
    with force_backend("reference"):
        assert _flops(op_fwd) == 0


class _RecordSo2ops(TorchDispatchMode):
    """Records every so2ops custom-op call (name, args, kwargs) and runs it unchanged."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name.startswith("so2ops::"):
            self.calls.append((name, args, kwargs))
        return func(*args, **kwargs)


def _tiny_water(seed=0):
    z, pos, batch = mols.system("water", seed=0)
    model = QM.build_model("tiny", torch.float32, "cpu", seed)
    index = so2ops.HamiltonianIndex.build(QM.LAYOUT, z, batch)
    return lambda: model.forward_batch(z, pos, batch, index=index)[0]


def test_tiny_model_flops_equal_the_counter_sum():
    fwd = _tiny_water()
    got = QM.model_flops("tiny", "water", "fwd", CPU, 0)
    assert got["flops"] > 0 and got["out_numel"] > 0 and got["params"] > 0
    assert got["flops"] == sum(got["by_op"].values())
    # the same forward, decomposed: the counter outside the ops plus the counter on each op's body, call by call
    with force_backend("reference"), torch.no_grad():
        outside = _flops(fwd)
        rec = _RecordSo2ops()
        with rec:
            fwd()
        bodies = QM._so2ops_opdefs()
        inside = 0
        for name, args, kwargs in rec.calls:
            inside += _flops(lambda: bodies[name]._init_fn(*args, **kwargs))
    assert {n for n, _, _ in rec.calls} >= {"so2ops::so2_message", "so2ops::rotate", "so2ops::so2_linear",
                                           "so2ops::assemble_blocks", "so2ops::edge_wigner"}
    assert inside > 0 and got["flops"] == outside + inside
    # a training step does more arithmetic than inference; bwd is their difference; counts are cached
    fb = QM.model_flops("tiny", "water", "fwdbwd", CPU, 0)
    assert fb["flops"] > got["flops"]
    assert QM.model_flops("tiny", "water", "bwd", CPU, 0)["flops"] == fb["flops"] - got["flops"]
    assert QM.model_flops("tiny", "water", "fwd", CPU, 0) is got
    with pytest.raises(ValueError, match="mode"):
        QM.model_flops("tiny", "water", "sideways", CPU, 0)


def test_gemm_rate_is_positive_and_finite():
    budget = Budget(warmup=0, target_s=0.0, min_reps=2, max_reps=2)
    g = QM.measure_gemm(64, 48, 32, CPU, budget)
    assert (g["m"], g["k"], g["n"]) == (64, 48, 32)
    for k in ("gflops", "gflops_best"):
        assert math.isfinite(g[k]) and g[k] > 0
    assert g["gflops_best"] >= g["gflops"]  # best repetition vs median
    with pytest.raises(ValueError, match="k must be a positive int"):
        QM.measure_gemm(4, 0, 4, CPU, budget)
    # the model's own SO(2) GEMM: [E, (lmax+1) C] x [(lmax+1) C, (lmax+1) C] over uracil's edges
    (sq, skinny) = QM.gemm_shapes("tiny")
    assert sq == (1024, 1024, 1024)
    n = 12  # uracil's atoms: most ordered pairs lie within the 5 A cutoff
    assert n * (n - 1) // 2 < skinny[0] <= n * (n - 1) and skinny[1:] == (5 * 32, 5 * 32)


@pytest.fixture()
def tiny_quick_doc(monkeypatch):
    """An in-process quick run of the model entry, tiny preset, water, one repetition, no memory measurement.

    The tiny entry stands in for the registered ``qhnetv2`` (the runner asks the registry for the
    entry's targets, which is where the efficiency is filled in).
    """
    entry = QM.QHNetV2Model("tiny")
    monkeypatch.setitem(registry._REGISTRY, entry.name, entry)
    monkeypatch.setattr(QM, "gemm_shapes", lambda preset: [(128, 128, 128), (30, 160, 160)])
    opts = Options(device=CPU, quick=True, budget=Budget(warmup=0, target_s=0.0, min_reps=1, max_reps=1),
                   memory=False, log=False)
    return run([entry], opts, ["qhnetv2", "--quick"])


def test_quick_run_rows_carry_the_gemm_fraction(tiny_quick_doc):
    doc = tiny_quick_doc
    validate(doc)
    rows = [r for r in doc["rows"] if r["entry"] == "qhnetv2" and r["status"] == "ok"]
    assert {r["impl"] for r in rows} >= {"reference", "fused"}
    assert {r["mode"] for r in rows} == {"fwd", "fwdbwd"}
    for r in rows:
        eff = r["efficiency"]
        assert r["flops"] == QM.model_flops("tiny", "water", r["mode"], CPU, 0)["flops"]
        assert r["bytes"] > 0 and r["flops_per_s"] > 0
        assert math.isclose(eff["achieved_gflops"], r["flops"] / r["time_s"]["median"] / 1e9)
        assert math.isfinite(eff["gemm_gflops"]) and eff["gemm_gflops"] > 0
        assert eff["gemm_gflops"] == max(g["gflops"] for g in eff["gemm"])
        assert math.isclose(eff["frac_gemm"], eff["achieved_gflops"] / eff["gemm_gflops"])
        assert "FlopCounterMode" in eff["flops_source"]
    # every row of one run is measured against the same GEMM rate
    assert len({r["efficiency"]["gemm_gflops"] for r in rows}) == 1
    md = markdown(doc)
    assert "% GEMM" in md and "GEMM rate (float32 torch.mm" in md
    metrics = {t["metric"] for t in doc["targets"] if t["entry"] == "qhnetv2"}
    assert any("GEMM rate" in m for m in metrics) and "uracil fwd seconds" in metrics
    # the schema checks the new field when present
    bad = dict(rows[0], efficiency=dict(rows[0]["efficiency"], frac_gemm="half"))
    doc2 = dict(doc, rows=[bad])
    with pytest.raises(SchemaError, match="efficiency.frac_gemm"):
        validate(doc2)
