"""so2_tensor_product: roll equivariance, the body-order-1 reduction to so2_linear,
grid independence, truncation, bad input, and every backend against the reference."""
import math

import pytest
import torch

import so2ops
from so2ops.dispatch import implementations
from so2ops.layout import coeff_index, tp_grid_size, tp_in_blocks, tp_in_size, tp_out_blocks, tp_out_size, weight_blocks

from _helpers import FAST, assert_close, backend_params, require

F32, F64 = torch.float32, torch.float64
OP = "so2_grid_product"  # the inner op every backend implements
ALL_BACKENDS = [pytest.param("reference", "cpu", id="reference")] + backend_params()


def _require(backend, device):
    """``require``, then skip only when the backend has not registered the inner op yet."""
    if backend != "reference":
        require(backend, device)
    if backend not in implementations(OP):
        pytest.skip(f"backend {backend!r} has not registered {OP!r} yet (registered: {implementations(OP)})")


def tp_inputs(n, lmax, mmax, cin, hidden, cout, nu, dtype, device, seed=0):
    """``x[N, K, C]``, ``w_in[nu, *]``, ``coeffs[N, nu, H]``, ``w_out[*]`` of order-one outputs."""
    g = torch.Generator().manual_seed(seed)
    k = so2ops.num_coeffs(lmax)
    x = torch.randn(n, k, cin, dtype=F64, generator=g)
    w_in = torch.randn(nu, tp_in_size(lmax, mmax, cin, hidden), dtype=F64, generator=g) / math.sqrt((lmax + 1) * cin)
    coeffs = torch.randn(n, nu, hidden, dtype=F64, generator=g)
    w_out = torch.randn(tp_out_size(lmax, mmax, hidden, cout), dtype=F64, generator=g) / math.sqrt(hidden)
    return [t.to(dtype=dtype, device=device) for t in (x, w_in, coeffs, w_out)]


def _roll_dense(lmax, angle):
    """Dense Wigner-D of the rotation by ``angle`` about the polar axis +y."""
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=F64)
    return so2ops.wigner_to_dense(so2ops.reference.wigner_from_matrices(rot[None], lmax), lmax)[0]


def _rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ------------------------------------------------------------------ properties (every backend, float64)
@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("lmax,mmax,nu", [(2, 2, 2), (4, 2, 3), (3, 1, 4), (5, 5, 2)])
def test_commutes_with_rolls_about_the_polar_axis(backend, device, lmax, mmax, nu):
    _require(backend, device)
    x, w_in, coeffs, w_out = tp_inputs(11, lmax, mmax, 4, 6, 3, nu, F64, device, seed=lmax)
    g = torch.Generator().manual_seed(100 + lmax)
    with so2ops.use_backend(backend):
        y = so2ops.so2_tensor_product(x, w_in, coeffs, w_out, lmax, mmax, 3)
        for angle in (torch.rand(3, generator=g, dtype=F64) * 2 * math.pi).tolist():
            d = _roll_dense(lmax, angle).to(device)
            y_rot = so2ops.so2_tensor_product(d @ x, w_in, coeffs, w_out, lmax, mmax, 3)
            assert _rel_err(y_rot, d @ y) < 1e-12, angle


def test_roll_helper_is_a_roll():
    """``_roll_dense`` is e3nn's D(angle, 0, 0), so the test above really rolls about +y."""
    from e3nn import o3

    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        a = torch.tensor(0.7, dtype=F64)
        expected = o3.Irreps.spherical_harmonics(4).D_from_angles(a, a * 0, a * 0)
    finally:
        torch.set_default_dtype(old)
    torch.testing.assert_close(_roll_dense(4, 0.7), expected, rtol=1e-12, atol=1e-12)


def _composed_so2_linear_weight(w_in, alpha, w_out, lmax, mmax, cin, hidden, cout):
    """Packed ``so2_linear`` weight of ``W_out diag(alpha) W_in`` per order m (complex product for m > 0)."""
    wi = {(m, kind): w_in[0, o : o + r * c].view(r, c) for m, kind, o, r, c in tp_in_blocks(lmax, mmax, cin, hidden)}
    wo = {(m, kind): w_out[o : o + r * c].view(r, c) for m, kind, o, r, c in tp_out_blocks(lmax, mmax, hidden, cout)}
    a = torch.diag(alpha)
    blocks = {(0, "w0"): wo[0, "w0"] @ a @ wi[0, "w0"]}
    for m in range(1, mmax + 1):
        o1, o2, i1, i2 = wo[m, "w1"], wo[m, "w2"], wi[m, "w1"], wi[m, "w2"]
        # (O1 + i O2) A (I1 + i I2) = (O1 A I1 - O2 A I2) + i (O1 A I2 + O2 A I1)
        blocks[m, "w1"] = o1 @ a @ i1 - o2 @ a @ i2
        blocks[m, "w2"] = o1 @ a @ i2 + o2 @ a @ i1
    parts = []
    for m, kind, off, rows, cols in weight_blocks(lmax, mmax, cin, cout):
        assert blocks[m, kind].shape == (rows, cols) and off == sum(p.numel() for p in parts)
        parts.append(blocks[m, kind].reshape(-1))
    return torch.cat(parts)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("lmax,mmax,cin,hidden,cout", [(0, 0, 3, 4, 2), (3, 3, 3, 5, 4), (4, 2, 5, 7, 3)])
def test_body_order_one_is_the_composed_so2_linear(backend, device, lmax, mmax, cin, hidden, cout):
    _require(backend, device)
    x, w_in, _, w_out = tp_inputs(13, lmax, mmax, cin, hidden, cout, 1, F64, device, seed=3)
    alpha = torch.randn(hidden, dtype=F64, generator=torch.Generator().manual_seed(4)).to(device)
    coeffs = alpha.expand(13, 1, hidden)  # node-constant, so it folds into the weights
    weight = _composed_so2_linear_weight(w_in, alpha, w_out, lmax, mmax, cin, hidden, cout)
    with so2ops.use_backend(backend):
        actual = so2ops.so2_tensor_product(x, w_in, coeffs, w_out, lmax, mmax, cout)
        expected = so2ops.so2_linear(x, weight, lmax, mmax, cout)
    assert _rel_err(actual, expected) < 1e-12


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("mmax,nu", [(1, 1), (2, 3), (3, 2)])
def test_doubling_the_grid_changes_nothing_but_rounding(backend, device, mmax, nu):
    _require(backend, device)
    lmax = 3
    x, w_in, coeffs, w_out = tp_inputs(9, lmax, mmax, 3, 5, 4, nu, F64, device, seed=mmax)
    need = tp_grid_size(mmax, nu)
    with so2ops.use_backend(backend):
        y = so2ops.so2_tensor_product(x, w_in, coeffs, w_out, lmax, mmax, 4)
        y_min = so2ops.so2_tensor_product(x, w_in, coeffs, w_out, lmax, mmax, 4, grid=need)
        y_2x = so2ops.so2_tensor_product(x, w_in, coeffs, w_out, lmax, mmax, 4, grid=2 * need)
        y_odd = so2ops.so2_tensor_product(x, w_in, coeffs, w_out, lmax, mmax, 4, grid=2 * need + 3)
    assert torch.equal(y, y_min)  # the default is the smallest exact grid
    assert _rel_err(y_2x, y) < 1e-12
    assert _rel_err(y_odd, y) < 1e-12


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("lmax,mmax", [(4, 1), (3, 0), (5, 3)])
def test_output_rows_above_mmax_are_zero(backend, device, lmax, mmax):
    _require(backend, device)
    x, w_in, coeffs, w_out = tp_inputs(7, lmax, mmax, 3, 4, 5, 2, F64, device)
    with so2ops.use_backend(backend):
        y = so2ops.so2_tensor_product(x, w_in, coeffs, w_out, lmax, mmax, 5)
    for l in range(lmax + 1):
        for m in range(-l, l + 1):
            row = y[:, coeff_index(l, m)]
            assert (row.abs().max() == 0) == (abs(m) > mmax), (l, m)


def test_reference_grid_product_is_the_product_of_circle_functions():
    """Independent check of the grid stage: evaluate the Fourier series at off-grid angles."""
    mmax, nu, h = 2, 3, 4
    g = torch.Generator().manual_seed(7)
    s = torch.randn(2, nu, 2 * mmax + 1, h, dtype=F64, generator=g)
    c = torch.randn(2, nu, h, dtype=F64, generator=g)
    q = so2ops.reference.grid_product(s, c, mmax, tp_grid_size(mmax, nu))
    # the product has orders up to nu * mmax; project it by a fine quadrature
    big = 4 * nu * mmax + 1
    theta = torch.arange(big, dtype=F64) * (2 * math.pi / big)

    def series(coef, order):  # coef[..., 2*order+1, H] -> [..., big, H]
        terms = [coef[..., order, None, :] * torch.ones(big, 1, dtype=F64)]
        for m in range(1, order + 1):
            terms.append(coef[..., order + m, None, :] * torch.cos(m * theta)[:, None])
            terms.append(coef[..., order - m, None, :] * torch.sin(m * theta)[:, None])
        return sum(terms)

    f = series(s, mmax)  # [2, nu, big, H]
    prod, total = torch.ones_like(f[:, 0]), torch.zeros_like(f[:, 0])
    for k in range(nu):
        prod = prod * f[:, k]
        total = total + c[:, k, None, :] * prod
    expected = torch.zeros_like(q)
    expected[:, mmax] = total.mean(1)
    for m in range(1, mmax + 1):
        expected[:, mmax + m] = 2 * (total * torch.cos(m * theta)[:, None]).mean(1)
        expected[:, mmax - m] = 2 * (total * torch.sin(m * theta)[:, None]).mean(1)
    torch.testing.assert_close(q, expected, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ every backend against the reference
CASES = [  # lmax, mmax, cin, hidden, cout, nu, nodes
    (0, 0, 3, 17, 3, 1, 1),
    (1, 1, 17, 3, 63, 2, 0),
    (2, 1, 3, 8, 17, 3, 37),
    (3, 3, 63, 17, 3, 2, 1),
    (4, 2, 17, 63, 17, 4, 25),
    (6, 4, 3, 5, 3, 3, 12),
]
TRITON_INTERPRETER_NODES = 3


def _tp_with_grads(fn, inputs, lmax, mmax, cout, grad_seed):
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves, lmax, mmax, cout)
    g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(grad_seed)).to(out.device)
    (out * g).sum().backward()
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("lmax,mmax,cin,hidden,cout,nu,nodes", CASES)
def test_backend_matches_reference(backend, device, dtype, lmax, mmax, cin, hidden, cout, nu, nodes):
    _require(backend, device)
    if backend == "triton" and device == "cpu":
        nodes = min(nodes, TRITON_INTERPRETER_NODES)  # each interpreted program loops over the grid: keep CI short
    inputs = tp_inputs(nodes, lmax, mmax, cin, hidden, cout, nu, dtype, device)
    grid = tp_grid_size(mmax, nu)
    ref = lambda a, b, c, d, *r: so2ops.reference.so2_tensor_product(a, b, c, d, *r, grid)  # noqa: E731
    expected, ref_grads = _tp_with_grads(ref, inputs, lmax, mmax, cout, 1)
    with so2ops.use_backend(backend):
        actual, grads = _tp_with_grads(so2ops.so2_tensor_product, inputs, lmax, mmax, cout, 1)
    assert actual.shape == (nodes, (lmax + 1) ** 2, cout) and actual.dtype == dtype
    assert_close(actual, expected, dtype, "so2_tensor_product")
    for name, a, b in zip(("x", "w_in", "coeffs", "w_out"), grads, ref_grads):
        assert_close(a, b, dtype, f"grad {name}")


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_backend_gradcheck(backend, device):
    _require(backend, device)
    x, w_in, coeffs, w_out = tp_inputs(2, 2, 1, 1, 2, 1, 3, F64, device)
    args = [t.requires_grad_(True) for t in (x, w_in, coeffs, w_out)]
    with so2ops.use_backend(backend):
        f = lambda a, b, c, d: so2ops.so2_tensor_product(a, b, c, d, 2, 1, 1)  # noqa: E731
        assert torch.autograd.gradcheck(f, args, fast_mode=FAST[backend])


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_opcheck(backend):
    _require(backend, "cpu")
    x, w_in, coeffs, w_out = tp_inputs(4, 2, 1, 3, 2, 2, 2, F64, "cpu")
    with so2ops.use_backend(backend):
        args = tuple(t.clone().requires_grad_(True) for t in (x, w_in, coeffs, w_out)) + (2, 1, 2, tp_grid_size(1, 2))
        torch.library.opcheck(torch.ops.so2ops.so2_tensor_product.default, args)


def test_compiles_fullgraph_and_matches_eager():
    """Dynamo traces the wrapper without graph breaks; AOT autograd runs the fake kernels
    of the forward and backward ops (the aot_eager backend skips Inductor's codegen: cheap)."""
    x, w_in, coeffs, w_out = tp_inputs(6, 3, 2, 4, 5, 3, 2, F32, "cpu")
    f = lambda a, b, c, d: so2ops.so2_tensor_product(a, b, c, d, 3, 2, 3)  # noqa: E731
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    with so2ops.use_backend("reference"):
        xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        eager = f(xe, w_in, coeffs, w_out)
        out = compiled(xc, w_in, coeffs, w_out)
        torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
        eager.square().sum().backward()
        out.square().sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ bad input: a clear error naming the argument
@pytest.fixture(params=["reference", "cpu", "triton"])
def backend(request):
    _require(request.param, "cpu")
    with so2ops.use_backend(request.param):
        yield request.param


@pytest.fixture
def inputs():
    return tp_inputs(5, 2, 1, 3, 4, 2, 2, F64, "cpu")


def _tp(x, w_in, coeffs, w_out, **kw):
    return so2ops.so2_tensor_product(x, w_in, coeffs, w_out, 2, 1, 2, **kw)


def test_wrong_w_in_shape(backend, inputs):
    x, w_in, coeffs, w_out = inputs
    with pytest.raises(ValueError, match=r"w_in must have shape \[2, "):
        _tp(x, w_in[:, :-1], coeffs, w_out)
    with pytest.raises(ValueError, match=r"w_in must have shape \[2, "):
        _tp(x, w_in[:1], coeffs, w_out)  # one factor short of coeffs' body order


def test_wrong_w_out_shape(backend, inputs):
    x, w_in, coeffs, w_out = inputs
    with pytest.raises(ValueError, match=r"w_out must have shape"):
        _tp(x, w_in, coeffs, w_out[:-1])
    with pytest.raises(ValueError, match=r"w_out must have shape"):
        _tp(x, w_in, coeffs, w_out[None])


def test_wrong_coeffs_shape(backend, inputs):
    x, w_in, coeffs, w_out = inputs
    with pytest.raises(ValueError, match=r"coeffs must have shape \[5, \*, \*\]"):
        _tp(x, w_in, coeffs[:4], w_out)
    with pytest.raises(ValueError, match=r"coeffs must have shape"):
        _tp(x, w_in, coeffs[0], w_out)
    with pytest.raises(ValueError, match=r"w_in must have shape"):  # hidden size disagrees with w_in
        _tp(x, w_in, coeffs[:, :, :-1], w_out)


def test_nan_x(backend, inputs):
    x, w_in, coeffs, w_out = inputs
    x = x.clone()
    x[3, 2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"x has non-finite"):
        _tp(x, w_in, coeffs, w_out)


def test_body_order_zero(backend, inputs):
    x, w_in, coeffs, w_out = inputs
    with pytest.raises(ValueError, match=r"body order \(coeffs.shape\[1\]\)=0"):
        _tp(x, w_in[:0], coeffs[:, :0], w_out)


def test_grid_below_the_exact_size(backend, inputs):
    x, w_in, coeffs, w_out = inputs
    need = tp_grid_size(1, 2)
    with pytest.raises(ValueError, match=rf"grid={need - 1} must be in \[{need}, "):
        _tp(x, w_in, coeffs, w_out, grid=need - 1)
    _tp(x, w_in, coeffs, w_out, grid=need)


# ------------------------------------------------------------------ the hand-written GEMM backward (issue 19)
GEMM_CASES = [  # lmax, mmax, cin, hidden, cout, nu, nodes: N = 0 / 1, hidden != C, mmax 0, 1, 2 and = lmax
    (0, 0, 3, 4, 2, 1, 1),
    (2, 0, 3, 5, 2, 2, 4),
    (3, 1, 4, 2, 3, 3, 0),
    (4, 2, 5, 7, 3, 3, 1),
    (2, 2, 2, 6, 5, 2, 5),
    (3, 3, 3, 2, 4, 4, 3),
]
NEEDS = [tuple(bool(i >> b & 1) for b in range(4)) for i in range(16)]  # (x, w_in, coeffs, w_out), every subset


def _ids(case):
    return "l{}m{}c{}h{}o{}nu{}n{}".format(*case)


@pytest.mark.parametrize("case", GEMM_CASES, ids=_ids)
def test_gemm_stages_match_autograd_through_the_reference(case):
    """``_tp_gemm``'s forward equals the reference stages, its backward their autograd (float64), per need."""
    from so2ops.ops import _tp_gemm
    from so2ops.reference.so2_tensor_product import from_spectral, to_spectral

    lmax, mmax, cin, hidden, cout, nu, n = case
    x, w_in, _, w_out = tp_inputs(n, lmax, mmax, cin, hidden, cout, nu, F64, "cpu", seed=5)
    g = torch.Generator().manual_seed(6)
    q = torch.randn(n, 2 * mmax + 1, hidden, dtype=F64, generator=g)
    leaves = [t.clone().requires_grad_(True) for t in (x, w_in, q, w_out)]
    s_ref = to_spectral(leaves[0], leaves[1], lmax, mmax, hidden)
    out_ref = from_spectral(leaves[2], leaves[3], lmax, mmax, cout)
    gs = torch.randn(s_ref.shape, dtype=F64, generator=g)
    gout = torch.randn(out_ref.shape, dtype=F64, generator=g)
    gx, gwi = torch.autograd.grad(s_ref, leaves[:2], gs)
    gq, gwo = torch.autograd.grad(out_ref, leaves[2:], gout)

    s, gathered = _tp_gemm.to_spectral_gathered(x, w_in, lmax, mmax, hidden)
    torch.testing.assert_close(s, s_ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_tp_gemm.from_spectral(q, w_out, lmax, mmax, cout), out_ref.detach(),
                               rtol=1e-12, atol=1e-12)
    for need_a, need_b in [(True, True), (True, False), (False, True)]:
        for rows in (gathered, None):  # rows reused from the forward, or gathered again
            a, b = _tp_gemm.to_spectral_backward(gs, x, w_in, lmax, mmax, need_a, need_b, rows)
            assert (a is None) != need_a and (b is None) != need_b
            if need_a:
                torch.testing.assert_close(a, gx, rtol=1e-12, atol=1e-12)
            if need_b:
                torch.testing.assert_close(b, gwi, rtol=1e-12, atol=1e-12)
        # q is only read for the w_out gradient: pass None otherwise
        a, b = _tp_gemm.from_spectral_backward(gout, q if need_b else None, w_out, lmax, mmax, hidden, need_a, need_b)
        assert (a is None) != need_a and (b is None) != need_b
        if need_a:
            torch.testing.assert_close(a, gq, rtol=1e-12, atol=1e-12)
        if need_b:
            torch.testing.assert_close(b, gwo, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("case", GEMM_CASES, ids=_ids)
def test_backward_op_every_need_combination(backend, case):
    """``so2_tensor_product_backward`` for each subset of gradients equals autograd through
    ``so2ops.reference.so2_tensor_product`` (float64); gradients not asked for are ``[0]`` placeholders."""
    _require(backend, "cpu")
    lmax, mmax, cin, hidden, cout, nu, n = case
    inputs = tp_inputs(n, lmax, mmax, cin, hidden, cout, nu, F64, "cpu", seed=8)
    grid = tp_grid_size(mmax, nu)
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    out = so2ops.reference.so2_tensor_product(*leaves, lmax, mmax, cout, grid)
    grad = torch.randn(out.shape, dtype=F64, generator=torch.Generator().manual_seed(9))
    expected = torch.autograd.grad(out, leaves, grad)
    with so2ops.use_backend(backend):
        for needs in NEEDS:
            got = torch.ops.so2ops.so2_tensor_product_backward(grad, *inputs, lmax, mmax, cout, grid, *needs)
            for name, need, a, b in zip(("x", "w_in", "coeffs", "w_out"), needs, got, expected):
                if need:
                    assert a.shape == b.shape, (needs, name)
                    torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11, msg=lambda m: f"{needs} {name}: {m}")
                else:
                    assert a.shape == (0,), (needs, name)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_backend_gradcheck_all_orders(backend, device):
    """gradcheck where every order is kept (mmax = lmax), hidden != C and C_out != C."""
    _require(backend, device)
    x, w_in, coeffs, w_out = tp_inputs(2, 2, 2, 2, 3, 1, 2, F64, device, seed=11)
    args = [t.requires_grad_(True) for t in (x, w_in, coeffs, w_out)]
    with so2ops.use_backend(backend):
        f = lambda a, b, c, d: so2ops.so2_tensor_product(a, b, c, d, 2, 2, 1)  # noqa: E731
        assert torch.autograd.gradcheck(f, args, fast_mode=FAST[backend])


@pytest.mark.parametrize("needs", [(True, True, True, True), (True, False, False, True), (False, True, True, False)],
                         ids=["all", "x_wout", "win_coeffs"])
def test_opcheck_backward_op(needs):
    """The backward op's schema, fake kernel and (double-backward) autograd registration."""
    x, w_in, coeffs, w_out = tp_inputs(3, 2, 1, 3, 2, 2, 2, F64, "cpu", seed=12)
    grad = torch.randn(3, 9, 2, dtype=F64, generator=torch.Generator().manual_seed(13))
    args = (grad, x, w_in, coeffs, w_out, 2, 1, 2, tp_grid_size(1, 2), *needs)
    with so2ops.use_backend("reference"):
        torch.library.opcheck(torch.ops.so2ops.so2_tensor_product_backward.default, args,
                              test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.parametrize("mmax", [2, 4])
def test_forward_backward_fill_nothing(mmax):
    """No zero-filled full-size buffer (``fill_`` / ``zero_`` / ``zeros_like``) in a forward+backward with
    the C++ grid kernel: only the rows ``|m| > mmax`` are zeroed (``index_fill_``), and none when mmax = lmax."""
    _require("cpu", "cpu")
    from torch.profiler import ProfilerActivity, profile

    lmax = 4
    leaves = [t.requires_grad_(True) for t in tp_inputs(3, lmax, mmax, 4, 5, 3, 3, F32, "cpu", seed=14)]
    grad = torch.randn(3, (lmax + 1) ** 2, 3, generator=torch.Generator().manual_seed(15))
    with so2ops.use_backend("cpu"), so2ops.value_checks(False):
        torch.autograd.grad(so2ops.so2_tensor_product(*leaves, lmax, mmax, 3), leaves, grad)  # warm the index tables
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            grads = torch.autograd.grad(so2ops.so2_tensor_product(*leaves, lmax, mmax, 3), leaves, grad)
    assert all(g.shape == t.shape for g, t in zip(grads, leaves))
    counts = {e.key: e.count for e in prof.key_averages()}
    for op in ("aten::fill_", "aten::zero_", "aten::zeros_like", "aten::index_put_"):
        assert counts.get(op, 0) == 0, (op, counts.get(op))
    # forward output and grad_x: one index_fill_ each, only for truncated rows
    assert counts.get("aten::index_fill_", 0) == (2 if mmax < lmax else 0)
