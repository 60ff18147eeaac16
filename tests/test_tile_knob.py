"""The tile-size knob (``so2ops.testing.tile_size``, ``csrc/include/so2ops/tile_knob.h``).

* it reaches the compiled tiled driver: forced small tiles multiply the GEMMs of one
  ``so2_linear`` call (counted with the profiler), and the setting is restored on exit;
* the cpu (here) and cuda (on a GPU) backends give the reference's values and gradients
  with tiny tiles: several tiles per pass, destination / source segments cut across tiles
  (long segments: many edges share few nodes), several Wigner-gradient slabs on CUDA
  (C > n channels) and several grid-stride steps per thread.
"""
from __future__ import annotations

import pytest
import torch

import so2ops
import so2ops.testing
from so2ops.dispatch import _extension

from _helpers import assert_close, message_inputs, require

F64 = torch.float64
TILE_BACKENDS = [pytest.param("cpu", "cpu", id="cpu"),
                 pytest.param("cuda", "cuda", id="cuda", marks=pytest.mark.gpu)]


@pytest.fixture(autouse=True)
def _no_tile_env(monkeypatch):
    monkeypatch.delenv(so2ops.testing.TILE_ENV, raising=False)


def test_tile_size_sets_and_restores():
    assert so2ops.testing.tile_override() == 0
    with so2ops.testing.tile_size(3):
        assert so2ops.testing.tile_override() == 3
        with so2ops.testing.tile_size(1):
            assert so2ops.testing.tile_override() == 1
        assert so2ops.testing.tile_override() == 3
        with so2ops.testing.tile_size(None):
            assert so2ops.testing.tile_override() == 0
        assert so2ops.testing.tile_override() == 3
    assert so2ops.testing.tile_override() == 0


def test_tile_size_restores_after_an_error():
    with pytest.raises(RuntimeError, match="inside"):
        with so2ops.testing.tile_size(2):
            raise RuntimeError("inside")
    assert so2ops.testing.tile_override() == 0


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "4"])
def test_tile_size_rejects(bad):
    with pytest.raises(ValueError, match="tile_size: n must be a positive int"):
        with so2ops.testing.tile_size(bad):
            pass


def test_compiled_extension_has_the_knob():
    """The extension exports the setter (else tile_size falls back to the environment variable)."""
    ext = _extension()
    if ext is None:
        pytest.skip("no compiled extension")
    assert hasattr(ext, "set_tile_override") and hasattr(ext, "tile_override")
    before = ext.set_tile_override(5)
    try:
        assert ext.tile_override() == 5
    finally:
        ext.set_tile_override(before)
    assert ext.tile_override() == before


def _gemms(fn) -> int:
    """aten GEMM calls (mm, addmm, mm.out) made while ``fn`` runs, on this thread."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for ev in prof.events() if ev.name in ("aten::mm", "aten::addmm", "aten::addmm_", "aten::mm_out"))


def test_forced_tiles_reach_the_cpu_driver():
    """One so2_linear call on the cpu backend: E = 40 edges are one tile by default, ten of 4 edges
    under tile_size(4), so the per-tile GEMMs run ten times as often (one thread: tiles in sequence)."""
    require("cpu", "cpu")
    lmax, mmax, c = 2, 2, 3
    x, _, _, _, w, mod = message_inputs(40, 40, lmax, mmax, c, c, F64, "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with so2ops.use_backend("cpu"):
            run = lambda: so2ops.so2_linear(x, w, lmax, mmax, c, mod)  # noqa: E731
            auto = _gemms(run)
            with so2ops.testing.tile_size(4):
                tiled = _gemms(run)
    finally:
        torch.set_num_threads(threads)
    assert auto > 0
    assert tiled == 10 * auto, (auto, tiled)


def _leaves(*ts):
    return [t.clone().requires_grad_() if t is not None else None for t in ts]


@pytest.mark.parametrize("tile", [1, 3])
@pytest.mark.parametrize("backend,device", TILE_BACKENDS)
def test_ops_with_forced_tiles_match_the_reference(backend, device, tile):
    """so2_message, so2_gather_linear, so2_linear_scatter, so2_linear, rotate, so2_tensor_product and
    edge_wigner under tile_size(tile) == the reference (values and every gradient, float64).  Few
    nodes and many edges: every destination segment is cut across tiles; C = 5 > tile: several
    Wigner-gradient slabs on CUDA."""
    require(backend, device)
    lmax, mmax, c, n, e = 3, 2, 5, 4, 37
    x, v, wig, ei, w, mod = message_inputs(n, e, lmax, mmax, c, c, F64, device, seed=tile)
    g = torch.Generator().manual_seed(7)
    scale = torch.rand(e, generator=g, dtype=F64).to(device)
    w_in = (torch.randn(2, so2ops.tp_in_size(lmax, mmax, c, 3), generator=g, dtype=F64) * 0.3).to(device)
    coeffs = torch.randn(n, 2, 3, generator=g, dtype=F64).to(device)
    w_out = (torch.randn(so2ops.tp_out_size(lmax, mmax, 3, c), generator=g, dtype=F64) * 0.3).to(device)
    cases = {
        "so2_message": (lambda xx, wg, ww, mm: so2ops.so2_message(xx, wg, ei, ww, lmax, mmax, c, mm), [x, wig, w, mod]),
        "so2_gather_linear": (lambda xx, wg, ww, mm: so2ops.so2_gather_linear(xx, wg, ei[0], ww, lmax, mmax, c, mm),
                              [x, wig, w, mod]),
        "so2_linear_scatter": (lambda xx, wg, ww, s: so2ops.so2_linear_scatter(
            so2ops.rotate(xx, wg, lmax, index=ei[0]), wg, ei[1], ww, n, lmax, mmax, c, scale=s), [x, wig, w, scale]),
        "so2_linear": (lambda xx, ww, mm: so2ops.so2_linear(so2ops.rotate(xx, wig, lmax, index=ei[0]), ww, lmax, mmax,
                                                            c, mm), [x, w, mod]),
        "rotate": (lambda xx, wg: so2ops.rotate(xx, wg, lmax, index=ei[1], inverse=True), [x, wig]),
        "so2_tensor_product": (lambda xx, a, b, d: so2ops.so2_tensor_product(xx, a, b, d, lmax, mmax, c),
                               [x, w_in, coeffs, w_out]),
        "edge_wigner": (lambda vv: so2ops.edge_wigner(vv, lmax), [v]),
    }
    for name, (fn, tensors) in cases.items():
        ref = _leaves(*tensors)
        with so2ops.use_backend("reference"):
            expected = fn(*ref)
        gout = torch.randn(expected.shape, generator=torch.Generator().manual_seed(3), dtype=F64).to(device)
        (expected * gout).sum().backward()
        act = _leaves(*tensors)
        with so2ops.use_backend(backend), so2ops.testing.tile_size(tile):
            actual = fn(*act)
            (actual * gout).sum().backward()
        assert_close(actual.detach(), expected.detach(), F64, f"{name} tile {tile}")
        for i, (a, b) in enumerate(zip(act, ref)):
            assert_close(a.grad, b.grad, F64, f"{name} tile {tile}: grad {i}")


@pytest.mark.parametrize("backend,device", TILE_BACKENDS)
def test_deterministic_with_forced_tiles(backend, device):
    """Split segments keep the deterministic reductions bitwise reproducible."""
    require(backend, device)
    lmax, mmax, c, n, e = 2, 1, 4, 3, 29
    x, _, wig, ei, w, mod = message_inputs(n, e, lmax, mmax, c, c, F64, device, seed=5)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            xx, ww = _leaves(x, w)
            with so2ops.use_backend(backend), so2ops.testing.tile_size(2):
                out = so2ops.so2_message(xx, wig, ei, ww, lmax, mmax, c, mod)
                out.square().sum().backward()
            runs.append((out.detach(), xx.grad, ww.grad))
    finally:
        torch.use_deterministic_algorithms(before)
    for a, b in zip(*runs):
        assert torch.equal(a, b)
