"""Triton backend safety: index bounds, device guards, deterministic ``so2_frame_linear``.

* Bad ``edge_index`` / ``index`` values (negative, ``>= rows``) raise an
  ``IndexError`` naming the argument, from the public ops and from the Triton
  launchers themselves (their backward included).  With value checks off (the
  GPU default: no host synchronisation) the kernels must still never touch
  memory outside the tensors: a bad row reads zeros and receives nothing, as
  in the cuda backend.  The inputs sit between NaN guard rows, so a read of
  row ``-1`` or ``N`` would poison the result; the expected values come from
  the reference with the bad index redirected to an extra zero row.
* Every ``kernel[grid](...)`` launch in ``so2ops/triton`` sits inside
  ``with on_device(tensor):`` (checked on the source), and ``on_device`` makes
  the tensor's CUDA device current.
* ``so2_frame_linear`` with ``deterministic=True`` issues no atomic operation
  (counted in the interpreter) and is bitwise reproducible.
"""
from __future__ import annotations

import ast
import os
import types

import pytest
import torch

import so2ops
from so2ops import reference

from _helpers import assert_close, message_inputs, require

F64 = torch.float64
LMAX, MMAX, CIN, COUT, N, E = 2, 1, 3, 2, 5, 9
TRITON_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "so2ops", "triton")


@pytest.fixture(autouse=True)
def _triton():
    require("triton", "cpu")
    with so2ops.use_backend("triton"):
        yield


def _guarded(x: torch.Tensor) -> torch.Tensor:
    """``x`` (``[rows, ...]``) stored between two NaN rows: an access to row -1 or ``rows`` reads NaN."""
    big = torch.full((x.shape[0] + 2,) + tuple(x.shape[1:]), float("nan"), dtype=x.dtype)
    big[1:-1] = x
    return big[1:-1]


def _inputs():
    x, _, wig, ei, w, mod = message_inputs(N, E, LMAX, MMAX, CIN, COUT, F64, "cpu")
    return x, wig, ei, w, mod


def _redirect(index: torch.Tensor, rows: int) -> torch.Tensor:
    """Bad entries -> ``rows`` (the extra zero row of the expected computation)."""
    return torch.where((index < 0) | (index >= rows), torch.full_like(index, rows), index)


def _zero_row(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t, t.new_zeros((1,) + tuple(t.shape[1:]))])


def _grads(out, leaves, weight_seed=1):
    r = torch.randn(out.shape, dtype=F64, generator=torch.Generator().manual_seed(weight_seed)).to(out.dtype)
    return torch.autograd.grad((out * r).sum(), leaves)


def _leaves(*ts):
    return [t.detach().clone().requires_grad_(True) for t in ts]


# ------------------------------------------------------------------ index bounds: errors
@pytest.mark.parametrize("bad", [-1, N, 1 << 40])
@pytest.mark.parametrize("row", [0, 1], ids=["src", "tgt"])
def test_so2_message_bad_edge_index_raises(bad, row):
    x, wig, ei, w, mod = _inputs()
    ei = ei.clone()
    ei[row, 4] = bad
    with pytest.raises(IndexError, match=r"edge_index has entries in"):
        so2ops.so2_message(x, wig, ei, w, LMAX, MMAX, COUT, modulation=mod)
    # the launchers check too (the backward op is reachable on its own)
    from so2ops.triton import so2_message as tm

    with pytest.raises(IndexError, match=r"edge_index has entries in"):
        tm.so2_message_forward(x, wig, ei, w, mod, LMAX, MMAX, COUT, False)
    g = torch.ones(N, so2ops.num_coeffs(LMAX), COUT, dtype=F64)
    with pytest.raises(IndexError, match=r"edge_index has entries in"):
        tm.so2_message_backward(g, x, wig, ei, w, mod, LMAX, MMAX, COUT, True, True, True, True, True)


@pytest.mark.parametrize("bad", [-3, N])
def test_index_ops_bad_index_raises(bad):
    x, wig, ei, w, mod = _inputs()
    idx = ei[0].clone()
    idx[2] = bad
    with pytest.raises(IndexError, match=r"index has entries in"):
        so2ops.rotate(x, wig, LMAX, index=idx)
    with pytest.raises(IndexError, match=r"index has entries in"):
        so2ops.so2_gather_linear(x, wig, idx, w, LMAX, MMAX, COUT, modulation=mod)
    xe = torch.randn(E, so2ops.num_coeffs(LMAX), CIN, dtype=F64)
    with pytest.raises(IndexError, match=r"index has entries in"):
        so2ops.so2_linear_scatter(xe, wig, idx, w, N, LMAX, MMAX, COUT, modulation=mod)
    from so2ops.triton import rotate as tr

    with pytest.raises(IndexError, match=r"index has entries in"):
        tr.rotate_backward(torch.ones(E, so2ops.num_coeffs(LMAX), CIN, dtype=F64), x, wig, LMAX, idx, False, True,
                           True)


# ------------------------------------------------------------------ index bounds: no out-of-bounds access
@pytest.mark.parametrize("bad", [-1, N])
@pytest.mark.parametrize("row", [0, 1], ids=["src", "tgt"])
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_so2_message_unchecked_bad_index_reads_zeros(bad, row, deterministic):
    x, wig, ei, w, mod = _inputs()
    ei = ei.clone()
    ei[row, 4] = bad
    ei[row, 7] = bad
    lx, lwig, lw, lmod = _leaves(x, wig, w, mod)
    with so2ops.value_checks(False):
        out = so2ops.so2_message(_guarded(lx), lwig, ei, lw, LMAX, MMAX, COUT, modulation=lmod,
                                 deterministic=deterministic)
        got = _grads(out, [lx, lwig, lw, lmod])
    rx, rwig, rw, rmod = _leaves(x, wig, w, mod)
    expected = reference.so2_message(_zero_row(rx), rwig, _redirect(ei, N), rw, LMAX, MMAX, COUT, rmod)[:N]
    want = _grads(expected, [rx, rwig, rw, rmod])
    assert torch.isfinite(out).all()
    assert_close(out, expected, F64, "out")
    for name, a, b in zip(("x", "wigner", "weight", "modulation"), got, want):
        assert torch.isfinite(a).all(), name
        assert_close(a, b, F64, f"grad {name}")


@pytest.mark.parametrize("bad", [-1, N])
def test_rotate_unchecked_bad_index_reads_zeros(bad):
    x, wig, ei, _, _ = _inputs()
    idx = ei[0].clone()
    idx[3] = bad
    lx, lwig = _leaves(x, wig)
    with so2ops.value_checks(False):
        out = so2ops.rotate(_guarded(lx), lwig, LMAX, index=idx)
        got = _grads(out, [lx, lwig])
    rx, rwig = _leaves(x, wig)
    expected = reference.rotate(_zero_row(rx), rwig, LMAX, index=_redirect(idx, N))
    want = _grads(expected, [rx, rwig])
    assert torch.isfinite(out).all() and bool((out[3] == 0).all())
    assert_close(out, expected, F64, "out")
    for a, b in zip(got, want):
        assert_close(a, b, F64, "grad")


@pytest.mark.parametrize("scatter", [False, True], ids=["gather", "scatter"])
def test_frame_linear_unchecked_bad_index(scatter):
    x, wig, ei, w, mod = _inputs()
    g = torch.Generator().manual_seed(3)
    bias = torch.randn(LMAX + 1, COUT, dtype=F64, generator=g)
    scale = torch.rand(E, dtype=F64, generator=g) + 0.5
    idx = ei[0].clone()
    idx[1] = -1
    idx[6] = N
    x_in = torch.randn(E, so2ops.num_coeffs(LMAX), CIN, dtype=F64, generator=g) if scatter else x
    lv = _leaves(x_in, wig, w, mod, bias, scale)
    with so2ops.value_checks(False):
        if scatter:
            out = so2ops.so2_linear_scatter(lv[0], lv[1], idx, lv[2], N, LMAX, MMAX, COUT, modulation=lv[3],
                                            bias=lv[4], scale=lv[5])
        else:
            out = so2ops.so2_gather_linear(_guarded(lv[0]), lv[1], idx, lv[2], LMAX, MMAX, COUT, modulation=lv[3],
                                           bias=lv[4], scale=lv[5])
        got = _grads(out, lv)
    rv = _leaves(x_in, wig, w, mod, bias, scale)
    if scatter:
        expected = reference.so2_frame_linear(rv[0], rv[1], _redirect(idx, N), rv[2], LMAX, MMAX, COUT, N + 1, True,
                                              rv[3], rv[4], rv[5])[:N]
    else:
        expected = reference.so2_frame_linear(_zero_row(rv[0]), rv[1], _redirect(idx, N), rv[2], LMAX, MMAX, COUT,
                                              0, False, rv[3], rv[4], rv[5])
    want = _grads(expected, rv)
    assert_close(out, expected, F64, "out")
    for name, a, b in zip(("x", "wigner", "weight", "modulation", "bias", "scale"), got, want):
        assert torch.isfinite(a).all(), name
        assert_close(a, b, F64, f"grad {name}")


# ------------------------------------------------------------------ device guards
def _launches_outside_guard(path: str):
    """``name[grid](...)`` calls in ``path`` not lexically inside ``with on_device(...)``."""
    tree = ast.parse(open(path).read(), path)
    bad = []

    def visit(node, guarded):
        if isinstance(node, ast.With):
            guarded = guarded or any(
                isinstance(it.context_expr, ast.Call) and getattr(it.context_expr.func, "id", "") == "on_device"
                for it in node.items)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)
                and isinstance(node.func.value, ast.Name) and node.func.value.id.endswith("_kernel") and not guarded):
            bad.append(f"{os.path.basename(path)}:{node.lineno} {node.func.value.id}")
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return bad


def test_every_triton_launch_runs_under_a_device_guard():
    files = [os.path.join(TRITON_DIR, f) for f in sorted(os.listdir(TRITON_DIR)) if f.endswith(".py")]
    bad = [b for f in files for b in _launches_outside_guard(f)]
    assert not bad, f"Triton launches without `with on_device(...)`: {bad}"
    # the scan does see launches: with the guard name changed every one of them is reported
    src = open(os.path.join(TRITON_DIR, "rotate.py")).read().replace("on_device(", "elsewhere(")
    tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"so2ops_guard_probe_{os.getpid()}.py")
    with open(tmp, "w") as f:
        f.write(src)
    try:
        assert len(_launches_outside_guard(tmp)) == 2  # _rotate_kernel and _rotate_grad_wigner_kernel
    finally:
        os.remove(tmp)


def test_on_device_makes_the_tensor_device_current(monkeypatch):
    from so2ops.triton._launch import on_device

    entered = []

    class FakeDevice:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "device", FakeDevice)
    with on_device(types.SimpleNamespace(device=torch.device("cuda", 1))):
        pass
    assert entered == [torch.device("cuda", 1)]
    with on_device(torch.zeros(2)):  # CPU tensors (the interpreter): no CUDA call at all
        pass
    assert entered == [torch.device("cuda", 1)]


# ------------------------------------------------------------------ deterministic so2_frame_linear
class _AtomicCounter:
    """Counts the atomic read-modify-write operations the Triton interpreter executes."""

    def __init__(self, monkeypatch):
        from triton.runtime import interpreter

        self.count = 0
        orig = interpreter.InterpreterBuilder.create_atomic_rmw

        def spy(builder, *args, **kwargs):
            self.count += 1
            return orig(builder, *args, **kwargs)

        monkeypatch.setattr(interpreter.InterpreterBuilder, "create_atomic_rmw", spy)


def _frame_linear_run(scatter, deterministic, inputs):
    x_in, wig, idx, w, mod, bias, scale = inputs
    lv = _leaves(x_in, wig, w, mod, bias, scale)
    if scatter:
        out = so2ops.so2_linear_scatter(lv[0], lv[1], idx, lv[2], 4, LMAX, LMAX, 4, modulation=lv[3], bias=lv[4],
                                        scale=lv[5], deterministic=deterministic)
    else:
        out = so2ops.so2_gather_linear(lv[0], lv[1], idx, lv[2], LMAX, LMAX, 4, modulation=lv[3], bias=lv[4],
                                       scale=lv[5], deterministic=deterministic)
    return [out.detach()] + list(_grads(out, lv))


@pytest.mark.parametrize("scatter", [False, True], ids=["gather", "scatter"])
def test_frame_linear_deterministic_has_no_atomics_and_is_reproducible(monkeypatch, scatter):
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("counts atomics in the Triton interpreter")
    g = torch.Generator().manual_seed(5)
    e, n, c = 40, 4, 4
    k = so2ops.num_coeffs(LMAX)
    x_in = torch.randn(e if scatter else n, k, c, generator=g)
    wig = reference.edge_wigner(torch.randn(e, 3, generator=g), LMAX)
    idx = torch.randint(0, n, (e,), generator=g)
    w = torch.randn(so2ops.weight_size(LMAX, LMAX, c, 4), generator=g) / 2
    mod = torch.randn(e, so2ops.num_mod(LMAX, LMAX), c, generator=g)
    bias = torch.randn(LMAX + 1, 4, generator=g)
    scale = torch.rand(e, generator=g)
    inputs = (x_in, wig, idx, w, mod, bias, scale)
    counter = _AtomicCounter(monkeypatch)
    runs = [_frame_linear_run(scatter, True, inputs) for _ in range(2)]
    assert counter.count == 0, "deterministic so2_frame_linear used atomics"
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    # against the reference (float64)
    d64 = [t.double() for t in inputs]
    d64[2] = idx
    rv = _leaves(d64[0], d64[1], d64[3], d64[4], d64[5], d64[6])
    expected = reference.so2_frame_linear(rv[0], rv[1], idx, rv[2], LMAX, LMAX, 4, n if scatter else 0, scatter,
                                          rv[3], rv[4], rv[5])
    want = [expected.detach()] + list(_grads(expected, rv))
    for a, b in zip(runs[0], want):
        assert_close(a.double(), b, torch.float32)
    # the probe sees the atomic path: the default (non-deterministic) mode does scatter with atomics
    _frame_linear_run(scatter, False, inputs)
    assert counter.count > 0
