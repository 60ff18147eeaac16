"""The capture-safe QHNetV2 forward: ``prepare`` (checks, graph, index: host work) and
``forward_prepared`` (tensor work only), docs/model.md "Capture-safe forward".

* no host read in ``forward_prepared`` nor in its backward: a dispatch mode refuses the
  aten ops that read a tensor's value on the host or give a data-dependent shape
  (``_local_scalar_dense`` behind ``.item()`` / ``bool(t)`` / ``float(t)``, ``nonzero``,
  boolean-mask indexing, ...), and ``tolist`` / ``numpy`` / ``__bool__`` ... are patched to
  raise (they catch reads inside the so2ops custom ops' Python code too);
* ``torch.compile(fullgraph=True)`` traces it into one graph in which no value or shape
  depends on data (a backend checks the captured graph) and matches eager to 1e-10 in
  float64, positions' gradients included;
* ``forward_batch`` == ``prepare`` + ``forward_prepared`` exactly, also with a prepared
  batch reused at new positions of the same molecules.

Molecules with several frame rounds: a symmetric water (O's two hydrogens tie: 2 candidate
frames) and a symmetric ammonia (N: 3), batched with an isolated atom (no frame).
"""
import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import so2ops
from qhnetv2.model import QHNetV2

aten = torch.ops.aten

LAYOUT = so2ops.BasisLayout({1: [0, 0, 1], 7: [0, 0, 0, 1, 1, 2], 8: [0, 0, 0, 1, 1, 2]}, name="svp-like")
TINY = dict(elements=[1, 7, 8], channels=8, layers=2, mmax=2, num_rbf=8, body_order=2)
CONFIGS = {
    "average+options": dict(pair_product=2, pair_norm=True, readout_hidden=8, element_pair_readout=True),
    "average": dict(),
    "tied+options": dict(pair_scheme="tied", pair_norm=True, readout_hidden=8, element_pair_readout=True),
    "nearest": dict(node_frame="nearest"),
    "soft": dict(node_frame="soft"),
}

_ANG = np.deg2rad(104.5)
WATER = (np.array([8, 1, 1]), np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0],
                                        [0.96 * np.cos(_ANG), 0.96 * np.sin(_ANG), 0.0]]))
AMMONIA = (np.array([7, 1, 1, 1]), np.array([[0.0, 0.0, 0.1]] + [[0.94 * np.cos(t), 0.94 * np.sin(t), -0.28]
                                                                  for t in (0.0, 2 * np.pi / 3, 4 * np.pi / 3)]))
ATOM = (np.array([8]), np.array([[0.3, -0.2, 0.4]]))


def make_model(name, seed=0, **overrides):
    torch.manual_seed(seed)
    model = QHNetV2(layout=LAYOUT, **{**TINY, **CONFIGS[name], **overrides}).double()
    with torch.no_grad():  # a non-zero atomic reference exercises the invariant path too
        model.atom_reference.normal_()
    return model


def batch_of(*mols):
    z = torch.as_tensor(np.concatenate([m[0] for m in mols])).long()
    pos = torch.as_tensor(np.concatenate([m[1] for m in mols]), dtype=torch.float64)
    batch = torch.cat([torch.full((len(m[0]),), i, dtype=torch.long) for i, m in enumerate(mols)])
    return z, pos, batch


def weights(h):
    # a fixed, entry-dependent cotangent: every entry's gradient counts
    return torch.sin(torch.arange(h.numel(), dtype=h.dtype))


def forward_and_grads(model, inputs, pos, fn=None):
    p = pos.clone().requires_grad_(True)
    h = (fn or model.forward_prepared)(p, inputs)
    gp, gw = torch.autograd.grad((h * weights(h)).sum(), [p, model.embedding.weight])
    return h, gp, gw


# ------------------------------------------------------------------ host-read detection
_DATA_DEPENDENT = {aten._local_scalar_dense, aten.nonzero, aten.nonzero_numpy, aten.argwhere, aten.masked_select,
                   aten._unique, aten._unique2, aten.unique_dim, aten.unique_consecutive, aten.bincount,
                   aten.equal, aten.is_nonzero, aten.histc}
_INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}


class NoHostReads(TorchDispatchMode):
    """Raises on an aten op that reads a value on the host or has a data-dependent output shape."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in _DATA_DEPENDENT or (packet is aten.repeat_interleave and "output_size" not in kwargs
                                         and isinstance(args[0], torch.Tensor) and len(args) < 3):
            raise AssertionError(f"host read / data-dependent shape: {func}")
        if packet in _INDEXING:  # boolean-mask indexing is a nonzero inside the kernel
            idx = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in idx):
                raise AssertionError(f"boolean-mask indexing (data-dependent shape): {func}")
        return func(*args, **kwargs)


@pytest.fixture
def no_host_reads(monkeypatch):
    """A context manager factory: inside, any host read of a tensor value raises."""
    import contextlib

    def refuse(*args, **kwargs):
        raise AssertionError("host read of a tensor value")

    @contextlib.contextmanager
    def guard():
        with monkeypatch.context() as m:
            for name in ("__int__", "__index__", "__float__", "__bool__", "item", "tolist", "numpy", "__array__"):
                m.setattr(torch.Tensor, name, refuse)
            with NoHostReads():
                yield

    return guard


def test_detector_catches_host_reads(no_host_reads):
    """The detector itself: each kind of host read raises inside it, plain tensor work does not."""
    t = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    reads = [lambda: float(t.min()), lambda: bool(t.any()), lambda: t.sum().item(), lambda: t.tolist(),
             lambda: torch.nonzero(t), lambda: t[t > 0], lambda: int(t.argmax()), lambda: torch.unique(t),
             lambda: torch.bincount(t.long()), lambda: torch.equal(t, t)]
    with no_host_reads():
        (t * 2).sum()
        t[torch.tensor([2, 0])]
        for read in reads:
            with pytest.raises(AssertionError):
                read()
    _ = bool(t.any())  # back to normal outside


@pytest.mark.parametrize("config", list(CONFIGS))
def test_forward_prepared_reads_nothing_on_the_host(config, no_host_reads):
    """Forward and backward of ``forward_prepared`` (water, ammonia with 3 frame rounds, an
    isolated atom, one batch) with the so2ops value checks off (their default on a GPU)."""
    model = make_model(config)
    z, pos, batch = batch_of(WATER, AMMONIA, ATOM)
    inputs = model.prepare(z, pos, batch)
    if config.startswith("average"):
        assert inputs.frame_rounds == 3 and not inputs.topology.one_frame_per_atom
    with so2ops.value_checks(False):
        expected = forward_and_grads(model, inputs, pos)  # warm-up: so2ops' constant tables are built once
        with no_host_reads():
            got = forward_and_grads(model, inputs, pos)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def test_prepare_and_forward_batch_do_read_the_host(no_host_reads):
    """The detector sees the host work that ``prepare`` exists for (and so ``forward_batch``)."""
    model = make_model("average")
    z, pos, batch = batch_of(WATER, AMMONIA)
    model.prepare(z, pos, batch)  # warm-up
    with so2ops.value_checks(False), no_host_reads():
        with pytest.raises(AssertionError):
            model.prepare(z, pos, batch)
        with pytest.raises(AssertionError):
            model.forward_batch(z, pos, batch)


# ------------------------------------------------------------------ exactness
@pytest.mark.parametrize("config", ["average+options", "tied+options", "nearest", "soft"])
def test_prepared_equals_forward_batch(config):
    """``forward_prepared`` gives exactly what ``forward_batch`` gives, position gradients too; a
    prepared batch reused at displaced positions (same graph) equals a fresh ``forward_batch``."""
    model = make_model(config)
    z, pos, batch = batch_of(WATER, AMMONIA, ATOM)
    inputs = model.prepare(z, pos, batch)

    def via_batch(p, _inputs):
        h, index = model.forward_batch(z, p, batch)
        assert index.total == inputs.index.total
        return h

    moved = pos + 1e-3 * torch.sin(torch.arange(pos.numel(), dtype=pos.dtype)).view_as(pos)
    # reuse at moved positions only where the graph cannot change: frame averaging keeps the
    # same candidates (all within the window); the nearest / soft frames' tie-breaking
    # neighbour of the symmetric N may change with any displacement
    for p in (pos, moved) if config.startswith("average") else (pos,):
        h, gp, gw = forward_and_grads(model, inputs, p)
        hb, gpb, gwb = forward_and_grads(model, inputs, p, via_batch)
        assert torch.equal(h, hb) and torch.equal(gp, gpb) and torch.equal(gw, gwb)
        assert gp.abs().max() > 0  # the positions matter
    # the prepared batch follows the positions: reused at moved positions it changes H
    assert not torch.equal(forward_and_grads(model, inputs, moved)[0], forward_and_grads(model, inputs, pos)[0])


def test_prepare_checks_the_input():
    """Validation happens in ``prepare``: unknown element, atoms too close, wrong shapes."""
    model = make_model("average")
    z, pos, batch = batch_of(WATER)
    with pytest.raises(ValueError, match="atomic_numbers: element"):
        model.prepare(torch.tensor([8, 1, 6]), pos, batch)
    close = pos.clone()
    close[2] = close[0] + 0.1
    with pytest.raises(ValueError, match="Angstrom apart"):
        model.prepare(z, close, batch)
    with pytest.raises(ValueError, match="same number of atoms"):
        model.prepare(z, pos[:2], batch)
    inputs = model.prepare(z, pos, batch)
    with pytest.raises(ValueError, match=r"positions must have shape \[3, 3\]"):
        model.forward_prepared(pos[:2], inputs)


# ------------------------------------------------------------------ torch.compile
def checked_aot_eager(graphs):
    """A ``torch.compile`` backend: ``aot_eager`` after checking that no node of the captured
    graph has a data-dependent value or shape (dynamo captures ``.item()`` / ``bool(t)`` /
    ``nonzero`` as unbacked symbols instead of breaking the graph, so ``fullgraph=True``
    alone would not catch them); the graphs are appended to ``graphs``."""
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

    def backend(gm, example_inputs):
        for node in gm.graph.nodes:
            value = node.meta.get("example_value")
            if value is not None and free_unbacked_symbols(value):
                raise AssertionError(f"data-dependent value in the compiled forward: {node.format_node()}")
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    return backend


def test_compile_backend_catches_host_reads():
    """The checking backend refuses what ``fullgraph=True`` lets through."""
    def reads(x):
        return x * float(x.max()), x[torch.nonzero(x > 0)]

    for i in range(2):
        torch._dynamo.reset()
        with pytest.raises(Exception, match="data-dependent value"):
            torch.compile(lambda x: reads(x)[i], fullgraph=True, backend=checked_aot_eager([]))(torch.randn(4))


def test_compile_fullgraph_matches_eager():
    """``torch.compile(forward_prepared, fullgraph=True)``: one graph without a data-dependent
    value, equal to eager to 1e-10 in float64, forward and position / weight gradients; the
    so2ops value checks forced on are skipped while compiling."""
    torch._dynamo.reset()
    model = make_model("average+options", layers=1)  # one layer: tracing time grows with the layers
    z, pos, batch = batch_of(WATER, AMMONIA)
    inputs = model.prepare(z, pos, batch)
    assert inputs.frame_rounds == 3
    graphs = []
    compiled = torch.compile(model.forward_prepared, fullgraph=True, backend=checked_aot_eager(graphs))
    with so2ops.value_checks(True):
        expected = forward_and_grads(model, inputs, pos)
        got = forward_and_grads(model, inputs, pos, compiled)
    assert len(graphs) == 1
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ CUDA graphs (gpu)
@pytest.mark.gpu
def test_cuda_graph_capture_forward_and_position_gradients():
    """On a GPU: after a warm-up, ``forward_prepared`` and its position gradient run under
    ``torch.cuda.set_sync_debug_mode("error")`` (any synchronisation raises), are captured in
    a CUDA graph, and a replay at moved positions (same graph) equals eager to 1e-10."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model = make_model("average+options").cuda()
    z, pos, batch = batch_of(WATER, AMMONIA, ATOM)
    pos = pos.cuda()
    moved = pos + 1e-3 * torch.sin(torch.arange(pos.numel(), dtype=pos.dtype, device="cuda")).view_as(pos)
    inputs = model.prepare(z.cuda(), pos, batch.cuda())
    static = pos.clone().requires_grad_(True)

    def step():
        h = model.forward_prepared(static, inputs)
        return (h,) + torch.autograd.grad((h * weights(h)).sum(), [static, model.embedding.weight])

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up: so2ops' tables, Triton compilation, the allocator
            step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    with torch.no_grad():
        static.copy_(moved)
    graph.replay()
    torch.cuda.synchronize()
    expected = forward_and_grads(model, inputs, moved)
    for a, b in zip(captured, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
