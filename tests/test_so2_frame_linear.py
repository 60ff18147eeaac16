"""so2_frame_linear (so2_gather_linear / so2_linear_scatter): every backend against the
reference and against the ops it fuses, gradients, double backward, equivariance, bad input."""
import pytest
import torch

import so2ops

from _helpers import FAST, assert_close, backend_params, message_inputs, random_edges, require, rotation_and_D

F64 = torch.float64
ALL_BACKENDS = backend_params() + [pytest.param("reference", "cpu", id="reference")]

CASES = [  # lmax, mmax, cin, cout, nodes, edges
    (0, 0, 3, 3, 4, 1),
    (1, 1, 17, 3, 5, 0),
    (2, 1, 3, 17, 10, 37),
    (3, 2, 17, 17, 40, 700),
    (4, 4, 9, 3, 9, 50),
    (6, 3, 3, 5, 12, 30),
]
EXTRAS = {"plain": (False, False, False), "mod": (True, False, False), "all": (True, True, True)}


def _inputs(lmax, mmax, cin, cout, nodes, edges, dtype, device, scatter, extras, seed=0):
    x, v, wig, ei, w, mod = message_inputs(nodes, edges, lmax, mmax, cin, cout, dtype, device, extras[0], seed)
    g = torch.Generator().manual_seed(seed + 1)
    if scatter:  # edge-frame input, one row per edge (rows |m| > mmax included: they must be ignored)
        x = torch.randn(edges, so2ops.num_coeffs(lmax), cin, dtype=dtype, generator=g).to(device)
    bias = torch.randn(lmax + 1, cout, dtype=dtype, generator=g).to(device) if extras[1] else None
    scale = torch.rand(edges, dtype=dtype, generator=g).to(device) if extras[2] else None
    index = ei[1] if scatter else ei[0]
    return x, wig, index, w, mod, bias, scale


def _call(scatter, x, wig, index, w, mod, bias, scale, lmax, mmax, cout, nodes, deterministic=False):
    if scatter:
        return so2ops.so2_linear_scatter(x, wig, index, w, nodes, lmax, mmax, cout, mod, bias, scale, deterministic)
    return so2ops.so2_gather_linear(x, wig, index, w, lmax, mmax, cout, mod, bias, scale, deterministic)


def _leaves(*ts):
    return [None if t is None else t.clone().requires_grad_(True) for t in ts]


NAMES = ("x", "wigner", "weight", "modulation", "bias", "scale")


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("scatter", [False, True], ids=["gather", "scatter"])
@pytest.mark.parametrize("extras", list(EXTRAS), ids=list(EXTRAS))
@pytest.mark.parametrize("lmax,mmax,cin,cout,nodes,edges", CASES)
def test_backend_matches_reference(backend, device, dtype, scatter, extras, lmax, mmax, cin, cout, nodes, edges):
    require(backend, device)
    if backend == "triton" and (lmax, edges) not in ((2, 37), (0, 1), (1, 0)):
        pytest.skip("the Triton interpreter is slow: three cases cover it")
    x, wig, index, w, mod, bias, scale = _inputs(lmax, mmax, cin, cout, nodes, edges, dtype, device, scatter,
                                                 EXTRAS[extras])
    ref = _leaves(x, wig, w, mod, bias, scale)
    act = _leaves(x, wig, w, mod, bias, scale)
    expected = so2ops.reference.so2_frame_linear(ref[0], ref[1], index, ref[2], lmax, mmax, cout, nodes, scatter,
                                                 ref[3], ref[4], ref[5])
    with so2ops.use_backend(backend):
        actual = _call(scatter, act[0], act[1], index, act[2], act[3], act[4], act[5], lmax, mmax, cout, nodes)
    assert actual.shape == ((nodes if scatter else edges), (lmax + 1) ** 2, cout)
    assert_close(actual, expected, dtype, "so2_frame_linear")
    g = torch.randn_like(expected)
    (expected * g).sum().backward()
    (actual * g).sum().backward()
    for name, a, b in zip(NAMES, act, ref):
        if a is not None:
            assert a.grad is not None, name
            assert_close(a.grad, b.grad, dtype, f"grad {name}")


@pytest.mark.parametrize("tile", ["1", "7"])
def test_cpu_tiles_split_destination_segments(monkeypatch, tile):
    """Forced tiny tiles (SO2OPS_TILE_EDGES): segments of one target / source cut across tiles."""
    require("cpu", "cpu")
    monkeypatch.setenv("SO2OPS_TILE_EDGES", tile)
    for scatter in (False, True):
        x, wig, index, w, mod, bias, scale = _inputs(3, 2, 5, 4, 6, 90, F64, "cpu", scatter, EXTRAS["all"])
        index = index % 3  # long segments
        args = _leaves(x, wig, w, mod, bias, scale)
        ref = _leaves(x, wig, w, mod, bias, scale)
        with so2ops.use_backend("cpu"):
            out = _call(scatter, args[0], args[1], index, args[2], args[3], args[4], args[5], 3, 2, 4, 6)
        expected = so2ops.reference.so2_frame_linear(ref[0], ref[1], index, ref[2], 3, 2, 4, 6, scatter, ref[3],
                                                     ref[4], ref[5])
        assert_close(out, expected, F64, "tiled")
        out.square().sum().backward()
        expected.square().sum().backward()
        for name, a, b in zip(NAMES, args, ref):
            assert_close(a.grad, b.grad, F64, f"tiled grad {name}")


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_gather_then_scatter_equals_so2_message(backend, device):
    """An independent oracle: gather with the identity-free layer is ``rotate`` + ``so2_linear``, and
    ``so2_linear_scatter`` of the rotated sources is ``so2_message``."""
    if backend != "reference":
        require(backend, device)
    lmax, mmax, cin, cout = 3, 2, 6, 5
    x, v, wig, ei, w, mod = message_inputs(9, 60, lmax, mmax, cin, cout, F64, device)
    with so2ops.use_backend(backend):
        gathered = so2ops.so2_gather_linear(x, wig, ei[0], w, lmax, mmax, cout, mod)
        by_parts = so2ops.so2_linear(so2ops.rotate(x, wig, lmax, index=ei[0]), w, lmax, mmax, cout, mod)
        scattered = so2ops.so2_linear_scatter(so2ops.rotate(x, wig, lmax, index=ei[0]), wig, ei[1], w, 9, lmax, mmax,
                                              cout, mod)
        message = so2ops.so2_message(x, wig, ei, w, lmax, mmax, cout, mod)
    assert_close(gathered, by_parts, F64, "gather vs rotate + so2_linear")
    assert_close(scattered, message, F64, "scatter vs so2_message")


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("scatter", [False, True], ids=["gather", "scatter"])
def test_gradcheck_through_edge_wigner(backend, scatter):
    require(backend, "cpu")
    x, _, _, ei, w, mod = message_inputs(5, 8, 2, 1, 3, 2, F64, "cpu")
    # generic directions: one side alone depends on the frame's roll about the edge, which jumps on the
    # chart boundary u_y = 0 (docs/math.md 1), where finite differences are meaningless (so2_message's
    # D^T .. D cancels the roll)
    v = random_edges(8, F64, "cpu", torch.Generator().manual_seed(5), singular=False)
    if scatter:
        x = torch.randn(8, 9, 3, dtype=F64)
    index = ei[1] if scatter else ei[0]
    bias, scale = torch.randn(3, 2, dtype=F64), torch.rand(8, dtype=F64) + 0.5
    args = [t.requires_grad_(True) for t in (x, v, w, mod, bias, scale)]

    def f(a, vv, ww, m, b, s):
        return _call(scatter, a, so2ops.edge_wigner(vv, 2), index, ww, m, b, s, 2, 1, 2, 5)

    with so2ops.use_backend(backend):
        assert torch.autograd.gradcheck(f, args, fast_mode=FAST[backend])


@pytest.mark.parametrize("scatter", [False, True], ids=["gather", "scatter"])
def test_gradgradcheck(scatter):
    require("cpu", "cpu")
    x, v, wig, ei, w, mod = message_inputs(4, 7, 2, 2, 3, 2, F64, "cpu")
    if scatter:
        x = torch.randn(7, 9, 3, dtype=F64)
    index = ei[1] if scatter else ei[0]
    bias, scale = torch.randn(3, 2, dtype=F64), torch.rand(7, dtype=F64) + 0.5
    args = [t.requires_grad_(True) for t in (x, wig, w, mod, bias, scale)]
    f = lambda a, d, ww, m, b, s: _call(scatter, a, d, index, ww, m, b, s, 2, 2, 2, 4)  # noqa: E731
    with so2ops.use_backend("cpu"):
        assert torch.autograd.gradgradcheck(f, args)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("scatter", [False, True], ids=["gather", "scatter"])
def test_opcheck(backend, scatter):
    if backend != "reference":
        require(backend, "cpu")
    x, wig, index, w, mod, bias, scale = _inputs(2, 1, 3, 2, 5, 8, F64, "cpu", scatter, EXTRAS["all"])
    with so2ops.use_backend(backend):
        for m, b, s in ((mod, bias, scale), (None, None, None)):
            args = (*_leaves(x, wig), index, *_leaves(w, m, b, s), 2, 1, 2, 5 if scatter else 0, scatter, False)
            torch.library.opcheck(torch.ops.so2ops.so2_frame_linear.default, args)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_equivariance(backend, device):
    """Rotating the node features and edge vectors (e3nn's D): the scattered node features
    rotate, and the gathered edge-frame features change only by a roll about the edge (the
    frame's gauge), so their m = 0 rows are invariant."""
    if backend != "reference":
        require(backend, device)
    lmax, mmax, c = 3, 2, 4
    x, v, _, ei, w, mod = message_inputs(8, 40, lmax, mmax, c, c, F64, device)  # includes +-y edges
    bias, scale = torch.randn(lmax + 1, c, dtype=F64).to(device), torch.rand(40, dtype=F64).to(device)
    rot, d = (t.to(device) for t in rotation_and_D(lmax, F64, seed=3))
    with so2ops.use_backend(backend):
        def block(xx, vv):
            wg = so2ops.edge_wigner(vv, lmax)
            h = so2ops.so2_gather_linear(xx, wg, ei[0], w, lmax, mmax, c, mod, bias, scale)
            return h, so2ops.so2_linear_scatter(h, wg, ei[1], w, 8, lmax, mmax, c, mod, bias, scale)

        h, out = block(x, v)
        h_rot, out_rot = block(d @ x, v @ rot.T)
    m0 = [l * l + l for l in range(lmax + 1)]
    assert float((h_rot[:, m0] - h[:, m0]).abs().max() / h[:, m0].abs().max()) < 1e-11
    assert float((out_rot - d @ out).abs().max() / out.abs().max()) < 1e-11


def test_forward_saves_only_its_inputs():
    """The backward recomputes per tile: autograd keeps nothing but the op's inputs."""
    require("cpu", "cpu")
    for scatter in (False, True):
        x, wig, index, w, mod, bias, scale = _inputs(3, 2, 6, 7, 5, 50, F64, "cpu", scatter, EXTRAS["all"])
        leaves = _leaves(x, wig, w, mod, bias, scale)
        saved = []
        with so2ops.use_backend("cpu"), torch.autograd.graph.saved_tensors_hooks(
                lambda t: saved.append(t) or t, lambda t: t):
            _call(scatter, leaves[0], leaves[1], index, leaves[2], leaves[3], leaves[4], leaves[5], 3, 2, 7, 5)
        inputs = {id(t) for t in leaves} | {id(index)}
        assert saved and all(id(t) in inputs for t in saved), [tuple(t.shape) for t in saved]


def test_deterministic_scatter_is_bitwise_reproducible():
    require("cpu", "cpu")
    x, wig, index, w, mod, bias, scale = _inputs(3, 3, 8, 8, 6, 400, torch.float32, "cpu", True, EXTRAS["all"])
    index = index % 3
    outs = []
    for _ in range(3):
        leaves = _leaves(x, wig, w, mod, bias, scale)
        with so2ops.use_backend("cpu"):
            out = _call(True, leaves[0], leaves[1], index, leaves[2], leaves[3], leaves[4], leaves[5], 3, 3, 8, 6, True)
        out.square().sum().backward()
        outs.append([out] + [t.grad for t in leaves])
    for run in outs[1:]:
        for a, b in zip(run, outs[0]):
            assert torch.equal(a, b)


def test_autocast_bf16_cpu():
    require("cpu", "cpu")
    x, wig, index, w, mod, bias, scale = _inputs(2, 2, 8, 8, 6, 30, torch.float32, "cpu", True, EXTRAS["all"])
    expected = so2ops.reference.so2_frame_linear(x, wig, index, w, 2, 2, 8, 6, True, mod, bias, scale)
    with so2ops.use_backend("cpu"), torch.autocast("cpu", dtype=torch.bfloat16):
        out = so2ops.so2_linear_scatter(x.bfloat16(), wig, index, w.bfloat16(), 6, 2, 2, 8, mod, bias, scale)
    assert out.dtype == torch.float32
    assert float((out - expected).abs().max() / expected.abs().max()) < 3e-2


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bad_input_names_the_argument(backend):
    if backend != "reference":
        require(backend, "cpu")
    x, wig, index, w, mod, bias, scale = _inputs(2, 1, 3, 2, 5, 8, F64, "cpu", True, EXTRAS["all"])
    with so2ops.use_backend(backend):
        bad = index.clone()
        bad[3] = 5
        with pytest.raises((ValueError, IndexError, RuntimeError), match="index"):
            so2ops.so2_linear_scatter(x, wig, bad, w, 5, 2, 1, 2, mod, bias, scale)
        with pytest.raises(ValueError, match="bias"):
            so2ops.so2_linear_scatter(x, wig, index, w, 5, 2, 1, 2, mod, bias[:2], scale)
        with pytest.raises(ValueError, match="scale"):
            so2ops.so2_linear_scatter(x, wig, index, w, 5, 2, 1, 2, mod, bias, scale[:3])
        with pytest.raises(ValueError, match="x"):
            so2ops.so2_linear_scatter(x[:4], wig, index, w, 5, 2, 1, 2, mod, bias, scale)
        with pytest.raises(ValueError, match="index"):
            so2ops.so2_gather_linear(x, wig, index[:3], w, 2, 1, 2)
        neg = index.clone()
        neg[0] = -1
        with pytest.raises((ValueError, IndexError, RuntimeError), match="index"):
            so2ops.so2_gather_linear(x, wig, neg, w, 2, 1, 2)
