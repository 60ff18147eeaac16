"""Capture-safe, compile-friendly ops (docs/conventions.md "Value checks and CUDA graphs").

* value checks: on by default for CPU tensors, off for GPU tensors, switched by
  ``so2ops.set_value_checks`` / ``so2ops.value_checks`` / ``SO2OPS_CHECK_VALUES``,
  never run while compiling or capturing;
* ``torch.compile(dynamic=True)`` over graphs of different sizes: no recompile
  per size, values equal to eager;
* CUDA graphs (gpu): forward + backward of ``so2_message`` captured and replayed,
  and no host synchronisation in the per-call path of the ops;
* no silent fallback when ``so2ops._C`` does not import.
"""
import sys
import warnings

import pytest
import torch

import so2ops
from so2ops import dispatch
from so2ops.validation import check_values_enabled

from _helpers import message_inputs, require

F32 = torch.float32
L, M, C = 2, 1, 3


# ------------------------------------------------------------------ the switch
@pytest.fixture(autouse=True)
def _default_checks(monkeypatch):
    monkeypatch.delenv("SO2OPS_CHECK_VALUES", raising=False)
    so2ops.set_value_checks(None)
    yield
    so2ops.set_value_checks(None)


def test_default_on_for_cpu_off_for_gpu():
    assert check_values_enabled("cpu")
    assert check_values_enabled(None)
    assert not check_values_enabled("cuda")


def test_switches(monkeypatch):
    so2ops.set_value_checks(False)
    assert not check_values_enabled("cpu")
    so2ops.set_value_checks(True)
    assert check_values_enabled("cpu") and check_values_enabled("cuda")
    with so2ops.value_checks(False):
        assert not check_values_enabled("cpu")  # the context manager wins over the global switch
        with so2ops.value_checks(None):
            assert check_values_enabled("cpu") and check_values_enabled("cuda")  # None: back to the global one
    so2ops.set_value_checks(None)
    monkeypatch.setenv("SO2OPS_CHECK_VALUES", "1")
    assert check_values_enabled("cuda")
    monkeypatch.setenv("SO2OPS_CHECK_VALUES", "0")
    assert not check_values_enabled("cpu")
    with so2ops.value_checks(True):
        assert check_values_enabled("cpu")
    with pytest.raises(TypeError):
        so2ops.set_value_checks("yes")


def test_checks_on_by_default_on_cpu_and_can_be_switched_off():
    v = torch.randn(4, 3, dtype=torch.float64)
    v[2] = 0.0
    x, _, wig, ei, w, mod = message_inputs(4, 5, L, M, C, C, torch.float64, "cpu")
    bad = ei.clone()
    bad[0, 1] = 4
    with so2ops.use_backend("reference"):
        with pytest.raises(ValueError, match="zero-length edges"):
            so2ops.edge_wigner(v, L)
        with pytest.raises(IndexError, match=r"edge_index has entries in \[0, 4\]"):
            so2ops.so2_message(x, wig, bad, w, L, M, C, mod)
        with so2ops.value_checks(False):
            so2ops.edge_wigner(v, L)  # no check: the zero vector just gets some frame
        so2ops.set_value_checks(False)
        so2ops.edge_wigner(v, L)
        so2ops.set_value_checks(None)
        with pytest.raises(ValueError, match="zero-length edges"):
            so2ops.edge_wigner(v, L)


def test_checks_skipped_while_compiling():
    """Traced code sees the checks off: no graph break even with the checks forced on."""

    def f(t):
        return t + (1.0 if check_values_enabled(t.device) else 0.0)

    t = torch.zeros(3)
    with so2ops.value_checks(True):
        assert float(f(t)[0]) == 1.0
        assert float(torch.compile(f, fullgraph=True, backend="eager")(t)[0]) == 0.0


def _small_assemble():
    layout = so2ops.BasisLayout({1: [0], 6: [0, 1]}, name="s+sp")
    z = torch.tensor([6, 1, 1])
    items = torch.tensor([[0, 0], [1, 1], [2, 2], [0, 1], [0, 2], [1, 2]])
    lmax = layout.features_lmax
    g = torch.Generator().manual_seed(0)
    x = torch.randn(items.shape[0], so2ops.num_coeffs(lmax), so2ops.block_channels(layout, lmax), generator=g)
    w = so2ops.edge_wigner(torch.randn(items.shape[0], 3, generator=g), lmax)
    return layout, z, items, x, w


def test_compile_fullgraph_with_value_checks_on():
    """The ops' wrappers (assemble_blocks reads ``items`` on the host when checking) trace
    without a graph break: the value checks are skipped while compiling."""
    layout, z, items, x, w = _small_assemble()
    index = so2ops.HamiltonianIndex.build(layout, z)  # the one legitimate host read, outside the graph
    vec = torch.randn(6, 3)
    xm, vm, wig, ei, wm, mod = message_inputs(5, 6, L, M, C, C, F32, "cpu")

    def f(feat, wg, v):
        h = so2ops.assemble_blocks(feat, wg, layout, z, items, index=index)
        d = so2ops.edge_wigner(v, L)
        out = so2ops.so2_message(xm, d, ei, wm, L, M, C, mod)
        return h.square().sum() + out.square().sum()

    with so2ops.value_checks(True):
        expected = f(x, w, vec)
        actual = torch.compile(f, fullgraph=True, backend="aot_eager")(x, w, vec)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ dynamic shapes
def _ops(x, wig, ei, w, mod):
    a = so2ops.rotate(x, wig, L, index=ei[0])
    b = so2ops.so2_linear(a, w, L, M, C, mod)
    back = so2ops.rotate(b, wig, L, inverse=True)
    c = so2ops.so2_message(x, wig, ei, w, L, M, C, mod)
    h = so2ops.so2_gather_linear(x, wig, ei[0], w, L, M, C, mod)  # the two ends of a block; num_nodes symbolic
    d = so2ops.so2_linear_scatter(h, wig, ei[1], w, x.shape[0], L, M, C, mod)
    return c + d + torch.zeros_like(c).index_add_(0, ei[1], back)


@pytest.mark.parametrize("compiler", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_compile_dynamic_no_recompile_per_size(backend, compiler):
    """Three graph sizes (E = 7, 11, 19 edges, N = 6, 8, 10 nodes), one compiled graph.

    (Sizes that equal a fixed dimension, e.g. N = num_mod = 5 here, would be "duck sized"
    into that constant by dynamo on the first call: a torch.compile rule, not an so2ops one.)"""
    if backend != "reference":
        require(backend, "cpu")
    torch._dynamo.reset()
    compiled = torch.compile(_ops, dynamic=True, fullgraph=True, backend=compiler)
    torch._dynamo.utils.counters.clear()
    with so2ops.use_backend(backend):
        for i, (n, e) in enumerate([(6, 7), (8, 11), (10, 19)]):
            x, v, _, ei, w, mod = message_inputs(n, e, L, M, C, C, F32, "cpu", seed=e)
            wig = so2ops.edge_wigner(v, L)
            args = [t.clone().requires_grad_(True) for t in (x, wig, w, mod)]
            ref = [t.clone().requires_grad_(True) for t in (x, wig, w, mod)]
            with torch._dynamo.config.patch(error_on_recompile=i > 0):
                out = compiled(args[0], args[1], ei, args[2], args[3])
            expected = _ops(ref[0], ref[1], ei, ref[2], ref[3])
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
            g = torch.randn_like(expected)
            (out * g).sum().backward()
            (expected * g).sum().backward()
            for a, r in zip(args, ref):
                torch.testing.assert_close(a.grad, r.grad, rtol=1e-4, atol=1e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


# ------------------------------------------------------------------ CUDA graphs and host syncs (gpu)
def _cuda_message_inputs(seed):
    x, v, wig, ei, w, mod = message_inputs(7, 12, L, M, C, C, F32, "cuda", seed=seed)
    return x, so2ops.edge_wigner(v, L), ei, w, mod


@pytest.mark.gpu
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "det"])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_graph_capture_forward_backward(backend, deterministic):
    require(backend, "cuda")
    static = [t.clone() for t in _cuda_message_inputs(0)]
    x, wig, ei, w, mod = static
    leaves = [t.requires_grad_(True) for t in (x, wig, w, mod)]

    def step():
        out = so2ops.so2_message(x, wig, ei, w, L, M, C, mod, deterministic=deterministic)
        loss = out.square().sum()
        return (out,) + torch.autograd.grad(loss, leaves)

    with so2ops.use_backend(backend), so2ops.value_checks(True):  # checks forced on: skipped while capturing
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up: Triton compilation, caches, allocator
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = step()
        fresh = _cuda_message_inputs(1)
        with torch.no_grad():
            for s, f in zip(static, fresh):
                s.copy_(f)
        graph.replay()
        torch.cuda.synchronize()
        expected = step()
    for a, b in zip(captured, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_no_host_sync_per_call(backend):
    """After a warm-up call, the ops neither synchronise with the host nor copy tables (checks default off)."""
    require(backend, "cuda")
    x, wig, ei, w, mod = _cuda_message_inputs(0)
    v = torch.randn(12, 3, device="cuda")

    def calls():
        d = so2ops.edge_wigner(v, L)
        a = so2ops.rotate(x, d, L, index=ei[0])
        b = so2ops.so2_linear(a, w, L, M, C, mod)
        c = so2ops.so2_message(x, wig, ei, w, L, M, C, mod)
        h = so2ops.so2_gather_linear(x, wig, ei[0], w, L, M, C, mod)
        return b, c, so2ops.so2_linear_scatter(h, wig, ei[1], w, x.shape[0], L, M, C, mod)

    with so2ops.use_backend(backend):
        calls()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            calls()
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_triton_assemble_blocks_reads_no_host_value_per_call(monkeypatch):
    """Triton ``assemble_blocks`` sizes its launch by a host-side bound and reads the unit count on the
    device: after the first call (which reads the block table's bound once), forward and backward read
    no tensor value on the host (any ``int()`` / ``.item()`` / ``.tolist()`` / ``bool()`` of a tensor raises
    here), and the results equal the reference backend's."""
    require("triton", "cpu")
    g = torch.Generator().manual_seed(3)
    layout = so2ops.BasisLayout({1: [0, 0, 1], 6: [0, 0, 0, 1, 1, 2], 8: [0, 1]}, name="mixed")
    z = torch.tensor([8, 1, 1, 6, 1])
    batch = torch.tensor([0, 0, 0, 1, 1])
    items = torch.tensor([[0, 0], [1, 1], [2, 2], [0, 1], [0, 2], [1, 2], [3, 3], [4, 4], [3, 4]])
    invariant = torch.zeros(items.shape[0], dtype=torch.bool)
    c = so2ops.block_channels(layout, 4)  # d shells: features of degree 4
    x = torch.randn(items.shape[0], 25, c, dtype=torch.float64, generator=g)
    w = so2ops.reference.edge_wigner(torch.randn(items.shape[0], 3, dtype=torch.float64, generator=g), 2)
    index = so2ops.HamiltonianIndex.build(layout, z, batch)

    def run(backend):
        xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
        with so2ops.use_backend(backend), so2ops.value_checks(False):
            h = so2ops.assemble_blocks(xx, ww, layout, z, items, batch, invariant, index=index)
            gx, gw = torch.autograd.grad(h.square().sum(), (xx, ww))
        return h, gx, gw

    run("triton")  # warm-up: the block tables and their bound

    def refuse(*args, **kwargs):
        raise AssertionError("host read of a tensor value inside the op")

    with monkeypatch.context() as m:
        for name in ("__int__", "__index__", "item", "tolist", "__bool__"):
            m.setattr(torch.Tensor, name, refuse)
        got = run("triton")
    for a, b in zip(got, run("reference")):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_assemble_blocks_tables_first_built_under_inference_mode(backend):
    """Block tables (and Triton's launch bounds) first built inside ``torch.inference_mode()`` still serve
    a training step afterwards (no inference tensors in the caches), with the same results."""
    from so2ops import block_tables

    require(backend, "cpu")
    g = torch.Generator().manual_seed(4)
    layout = so2ops.BasisLayout({1: [0, 1], 8: [0, 0, 1, 2]}, name="inference-first")
    z, batch = torch.tensor([8, 1, 1]), torch.tensor([0, 0, 0])
    items = torch.tensor([[0, 0], [1, 1], [2, 2], [0, 1], [0, 2], [1, 2]])
    invariant = torch.zeros(items.shape[0], dtype=torch.bool)
    x = torch.randn(items.shape[0], 25, so2ops.block_channels(layout, 4), dtype=torch.float64, generator=g)
    w = so2ops.reference.edge_wigner(torch.randn(items.shape[0], 3, dtype=torch.float64, generator=g), 2)

    def train():
        xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
        with so2ops.use_backend(backend):
            h = so2ops.assemble_blocks(xx, ww, layout, z, items, batch, invariant)
            return (h,) + torch.autograd.grad(h.square().sum(), (xx, ww))

    expected = train()
    block_tables._tables.cache_clear()
    with torch.inference_mode(), so2ops.use_backend(backend):
        so2ops.assemble_blocks(x, w, layout, z, items, batch, invariant)
    for a, b in zip(train(), expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ no silent fallback
def test_missing_extension_warns_once(monkeypatch):
    """A failed ``import so2ops._C`` is reported (once), with the ImportError's text."""
    monkeypatch.setitem(sys.modules, "so2ops._C", None)  # import of so2ops._C raises ImportError
    dispatch._reset_extension_state()
    try:
        with pytest.warns(RuntimeWarning, match=r"so2ops\._C could not be imported \((ModuleNotFound|Import)Error: .*so2ops\._C"):
            assert dispatch._extension() is None
        assert not dispatch.runnable("cpu", torch.device("cpu"))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert dispatch._extension() is None  # once: no second warning
            assert so2ops.backends()["cpu"]["built"] is False
    finally:
        monkeypatch.undo()
        dispatch._reset_extension_state()
    assert dispatch._extension() is not None or pytest.fail("so2ops._C no longer imports after the test")
