"""so2_layer_norm and so2_gate: every backend against the reference, gradients, equivariance,
bad input, the nn modules against their pre-fusion composition, torch.compile."""
import pytest
import torch

import so2ops
from so2ops.nn import Gate, SO2LayerNorm
from so2ops.reference.so2_gate import gate_composition

from _helpers import FAST, backend_params, require, rotation_and_D

F32, F64 = torch.float32, torch.float64

#: (rtol, atol relative to the reference's largest entry): values and gradients.  float32: the
#: kernels sum a row's K * C squares in another order than torch's reductions.
TOL = {F64: (1e-10, 1e-11), F32: (1e-4, 2e-5)}

NORM_CASES = [  # lmax, rows N, channels C
    (0, 4, 3),
    (1, 0, 5),
    (1, 1, 1),
    (2, 7, 3),
    (4, 12, 17),
    (6, 3, 8),
]
GATE_CASES = NORM_CASES + [(2, 1, 1)]


def _close(actual, expected, dtype, what):
    rtol, atol = TOL[dtype]
    if expected is None:  # autograd's "no dependence" (e.g. the logits at lmax 0)
        expected = torch.zeros_like(actual)
    scale = max(float(expected.detach().abs().max()) if expected.numel() else 0.0, 1.0)
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=rtol, atol=atol * scale,
                               msg=lambda m: f"{what}: {m}")


def _norm_inputs(lmax, n, c, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 2 + 3 * torch.randn(n, so2ops.num_coeffs(lmax), c, dtype=dtype, generator=g)
    w = 1 + 0.5 * torch.randn(lmax + 1, c, dtype=dtype, generator=g)
    b = 0.5 * torch.randn(c, dtype=dtype, generator=g)
    return [t.to(device) for t in (x, w, b)]


def _gate_inputs(lmax, n, c, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, so2ops.num_coeffs(lmax), c, dtype=dtype, generator=g)
    z = 3 * torch.randn(n, lmax, c, dtype=dtype, generator=g)
    return [t.to(device) for t in (x, z)]


def _leaves(ts):
    return [t.clone().requires_grad_(True) for t in ts]


# ------------------------------------------------------------------ backends vs reference
@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("joint", [True, False], ids=["joint", "separate"])
@pytest.mark.parametrize("lmax,n,c", NORM_CASES)
def test_layer_norm_matches_reference(backend, device, dtype, joint, lmax, n, c):
    require(backend, device)
    inputs = _norm_inputs(lmax, n, c, dtype, device)
    ref_leaves, leaves = _leaves(inputs), _leaves(inputs)
    expected = so2ops.reference.so2_layer_norm(*ref_leaves, lmax, 1e-6, joint)
    with so2ops.use_backend(backend):
        actual = so2ops.so2_layer_norm(*leaves, lmax, 1e-6, joint)
    _close(actual, expected, dtype, "out")
    g = torch.randn(expected.shape, dtype=dtype, generator=torch.Generator().manual_seed(1)).to(device)
    (expected * g).sum().backward()
    (actual * g).sum().backward()
    for a, r, what in zip(leaves, ref_leaves, ("x", "weight", "bias")):
        _close(a.grad, r.grad, dtype, f"grad {what}")


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("lmax,n,c", GATE_CASES)
def test_gate_matches_reference(backend, device, dtype, lmax, n, c):
    require(backend, device)
    inputs = _gate_inputs(lmax, n, c, dtype, device)
    ref_leaves, leaves = _leaves(inputs), _leaves(inputs)
    expected = so2ops.reference.so2_gate(*ref_leaves)
    with so2ops.use_backend(backend):
        actual = so2ops.so2_gate(*leaves)
    _close(actual, expected, dtype, "out")
    g = torch.randn(expected.shape, dtype=dtype, generator=torch.Generator().manual_seed(1)).to(device)
    (expected * g).sum().backward()
    (actual * g).sum().backward()
    for a, r, what in zip(leaves, ref_leaves, ("x", "logits")):
        _close(a.grad, r.grad, dtype, f"grad {what}")


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_gate_extreme_and_non_finite_values(backend, device, dtype):
    """Logits and scalars across and beyond the exp range (+-120, +-1e30), +-inf and NaN: the
    fast exp's clamps give the reference's values (sigmoid(-inf) = 0, silu(-inf) = NaN, NaN
    stays NaN), up to the float range's last few ulps near exp's overflow."""
    require(backend, device)
    vals = torch.tensor([-1e30, -120.0, -100.0, -90.0, -87.5, -30.0, -1.0, 0.0, 2.0, 30.0, 87.5, 90.0, 120.0, 1e30,
                         float("inf"), float("-inf"), float("nan")], dtype=dtype)
    n = vals.numel()
    x = vals[:, None, None].expand(n, 9, 3).contiguous().to(device)  # lmax 2
    logits = vals.roll(3)[:, None, None].expand(n, 2, 3).contiguous().to(device)
    expected = so2ops.reference.so2_gate(x, logits)
    with so2ops.use_backend(backend):
        actual = so2ops.so2_gate(x, logits)
    assert torch.equal(actual.isnan(), expected.isnan())
    torch.testing.assert_close(actual, expected, rtol=TOL[dtype][0], atol=1e-30, equal_nan=True)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True), (False, True, True)],
                         ids=["x", "weight", "bias", "weight+bias"])
def test_layer_norm_partial_gradients(backend, device, needs):
    """Only the requested gradients are computed, and each equals the full backward's."""
    require(backend, device)
    inputs = _norm_inputs(2, 9, 5, F64, device)
    full = _leaves(inputs)
    with so2ops.use_backend(backend):
        g = torch.randn(9, 9, 5, dtype=F64, generator=torch.Generator().manual_seed(2)).to(device)
        (so2ops.so2_layer_norm(*full, 2, 1e-6, True) * g).sum().backward()
        some = [t.clone().requires_grad_(need) for t, need in zip(inputs, needs)]
        (so2ops.so2_layer_norm(*some, 2, 1e-6, True) * g).sum().backward()
    for s, f, need in zip(some, full, needs):
        if need:
            _close(s.grad, f.grad, F64, "partial grad")
        else:
            assert s.grad is None


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("joint", [True, False], ids=["joint", "separate"])
def test_layer_norm_gradcheck(backend, device, joint):
    require(backend, device)
    x, w, b = _leaves(_norm_inputs(2, 3, 4, F64, device))
    with so2ops.use_backend(backend):
        assert torch.autograd.gradcheck(lambda a, ww, bb: so2ops.so2_layer_norm(a, ww, bb, 2, 1e-6, joint), (x, w, b),
                                        fast_mode=FAST[backend])


@pytest.mark.parametrize("backend,device", backend_params())
def test_gate_gradcheck(backend, device):
    require(backend, device)
    x, z = _leaves(_gate_inputs(2, 3, 4, F64, device))
    with so2ops.use_backend(backend):
        assert torch.autograd.gradcheck(so2ops.so2_gate, (x, z), fast_mode=FAST[backend])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_double_backward(backend):
    """gradgradcheck: the backward ops are differentiable (force training through the modules)."""
    require(backend, "cpu")
    x, w, b = _leaves(_norm_inputs(2, 3, 4, F64))
    xg, z = _leaves(_gate_inputs(2, 3, 4, F64))
    with so2ops.use_backend(backend):
        for joint in (True, False):
            assert torch.autograd.gradgradcheck(lambda a, ww, bb: so2ops.so2_layer_norm(a, ww, bb, 2, 1e-6, joint),
                                                (x, w, b))
        assert torch.autograd.gradgradcheck(so2ops.so2_gate, (xg, z))


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_opcheck(backend):
    require(backend, "cpu")
    x, w, b = _norm_inputs(2, 3, 4, F64)
    xg, z = _gate_inputs(2, 3, 4, F64)
    with so2ops.use_backend(backend):
        for joint in (True, False):
            torch.library.opcheck(torch.ops.so2ops.so2_layer_norm.default, tuple(_leaves([x, w, b])) + (2, 1e-6, joint))
        torch.library.opcheck(torch.ops.so2ops.so2_gate.default, tuple(_leaves([xg, z])))
        g = torch.randn_like(x)
        torch.library.opcheck(torch.ops.so2ops.so2_layer_norm_backward.default,
                              (g, x, w, 2, 1e-6, True, True, False, True))
        torch.library.opcheck(torch.ops.so2ops.so2_gate_backward.default, (g, xg, z, False, True))


def test_cpu_weight_gradient_independent_of_thread_count():
    """The cpu backward sums the weight / bias gradients per fixed chunk of rows, then in chunk
    order: bitwise the same result with 1 and 2 threads."""
    require("cpu", "cpu")
    x, w, b = _norm_inputs(4, 301, 48, F32)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    old = torch.get_num_threads()
    grads = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            leaves = _leaves([x, w, b])
            with so2ops.use_backend("cpu"):
                (so2ops.so2_layer_norm(*leaves, 4, 1e-6, True) * g).sum().backward()
            grads.append([t.grad for t in leaves])
    finally:
        torch.set_num_threads(old)
    for a, b_ in zip(*grads):
        assert torch.equal(a, b_)


# ------------------------------------------------------------------ equivariance
@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("lmax", [1, 3])
def test_norm_and_gate_commute_with_rotations(backend, device, lmax):
    """``f(D x) = D f(x)`` with e3nn's Wigner-D (the gate logits are invariants: the same for both)."""
    require(backend, device)
    _, d = rotation_and_D(lmax, F64, seed=lmax)
    d = d.to(device)
    rot = lambda t: torch.einsum("ij,njc->nic", d, t)  # noqa: E731
    x, w, b = _norm_inputs(lmax, 6, 5, F64, device)
    _, z = _gate_inputs(lmax, 6, 5, F64, device)
    with so2ops.use_backend(backend):
        for joint in (True, False):
            _close(so2ops.so2_layer_norm(rot(x), w, b, lmax, 1e-6, joint),
                   rot(so2ops.so2_layer_norm(x, w, b, lmax, 1e-6, joint)), F64, f"norm joint={joint}")
        _close(so2ops.so2_gate(rot(x), z), rot(so2ops.so2_gate(x, z)), F64, "gate")


# ------------------------------------------------------------------ bad input
def test_layer_norm_bad_input_names_the_argument():
    x, w, b = _norm_inputs(2, 3, 4, F32)
    op = so2ops.so2_layer_norm
    with pytest.raises(ValueError, match=r"x must have shape \[\*, 9, \*\]"):
        op(x[:, :4], w, b, 2)
    with pytest.raises(ValueError, match=r"x must have shape \[\*, 16, \*\]"):
        op(x, w, b, 3)  # lmax does not match x
    with pytest.raises(ValueError, match=r"weight must have shape \[3, 4\]"):
        op(x, w[:2], b, 2)
    with pytest.raises(ValueError, match=r"bias must have shape \[4\]"):
        op(x, w, b[:3], 2)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        op(x.to(torch.int32), w, b, 2)
    with pytest.raises(TypeError, match="weight has dtype torch.float64"):
        op(x, w.double(), b, 2)
    with pytest.raises(ValueError, match="lmax=9 exceeds"):
        op(x, w, b, 9)
    with pytest.raises(TypeError, match="lmax must be an int"):
        op(x, w, b, 2.0)
    with pytest.raises(ValueError, match="eps must be a real number >= 0"):
        op(x, w, b, 2, -1.0)
    with pytest.raises(TypeError, match="joint must be a bool"):
        op(x, w, b, 2, 1e-6, "joint")
    with pytest.raises(ValueError, match="x has 0 channels"):
        op(x[..., :0], w[:, :0], b[:0], 2)


def test_gate_bad_input_names_the_argument():
    x, z = _gate_inputs(2, 3, 4, F32)
    with pytest.raises(ValueError, match=r"logits must have shape \[3, \*, 4\]"):
        so2ops.so2_gate(x, z[:2])
    with pytest.raises(ValueError, match=r"logits must have shape \[3, \*, 4\]"):
        so2ops.so2_gate(x, z[..., :3])
    with pytest.raises(ValueError, match=r"x has 9 coefficient rows but logits has lmax=3"):
        so2ops.so2_gate(x, torch.zeros(3, 3, 4))
    with pytest.raises(ValueError, match=r"x must have shape \[\*, \*, \*\]"):
        so2ops.so2_gate(x[0], z)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        so2ops.so2_gate(x.to(torch.int64), z)
    with pytest.raises(TypeError, match="logits has dtype torch.float64"):
        so2ops.so2_gate(x, z.double())
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        so2ops.so2_gate(x, None)


# ------------------------------------------------------------------ the modules
def _perturbed(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


@pytest.mark.parametrize("degrees", ["joint", "separate"])
@pytest.mark.parametrize("lmax", [0, 2, 4])
def test_layer_norm_module_matches_pre_fusion_composition(degrees, lmax):
    """``SO2LayerNorm`` keeps its parameters and state_dict keys, and an old checkpoint gives the
    outputs and gradients of the composition it had before the fused op (kept as the reference)."""
    old_state = {"weight": 1 + 0.3 * torch.randn(lmax + 1, 16), "bias": 0.2 * torch.randn(16)}  # a "checkpoint"
    ln = SO2LayerNorm(lmax, 16, degrees=degrees)
    assert set(ln.state_dict()) == {"weight", "bias"}
    ln.load_state_dict(old_state)
    x = 1 + 2 * torch.randn(12, so2ops.num_coeffs(lmax), 16)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    w, b = (t.clone().requires_grad_(True) for t in (old_state["weight"], old_state["bias"]))
    expected = so2ops.reference.so2_layer_norm(xb, w, b, lmax, 1e-6, degrees == "joint")
    out = ln(xa)
    _close(out, expected, F32, "module")
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (expected * g).sum().backward()
    _close(xa.grad, xb.grad, F32, "grad x")
    _close(ln.weight.grad, w.grad, F32, "grad weight")
    _close(ln.bias.grad, b.grad, F32, "grad bias")


@pytest.mark.parametrize("lmax", [0, 1, 4])
def test_gate_module_matches_pre_fusion_composition(lmax):
    gate = _perturbed(Gate(lmax, 16), 4)
    assert set(gate.state_dict()) == (set() if lmax == 0 else {"gates.weight", "gates.bias"})
    x = torch.randn(12, so2ops.num_coeffs(lmax), 16)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = gate(xa)
    lw, lb = (None, None) if lmax == 0 else (gate.gates.weight, gate.gates.bias)
    expected = gate_composition(xb, lw, lb, lmax)
    _close(out, expected, F32, "module")
    g = torch.randn_like(out)
    (out * g).sum().backward()
    if lmax > 0:
        lin_grads = [p.grad.clone() for p in gate.parameters()]
        gate.zero_grad()
    (expected * g).sum().backward()
    _close(xa.grad, xb.grad, F32, "grad x")
    if lmax > 0:
        for a, p in zip(lin_grads, gate.parameters()):
            _close(a, p.grad, F32, "grad linear")


def test_modules_run_the_reference_math_on_the_reference_backend(monkeypatch):
    """``use_backend("reference")`` runs the plain-PyTorch functions (the readable spec)."""
    from so2ops import dispatch

    calls = []
    for op in ("so2_layer_norm", "so2_gate"):
        impl = dispatch._IMPLS[op]["reference"]
        monkeypatch.setattr(impl, "forward", (lambda f, name: lambda *a: (calls.append(name), f(*a))[1])(impl.forward, op))
    with so2ops.use_backend("reference"):
        Gate(2, 4)(SO2LayerNorm(2, 4, degrees="joint")(torch.randn(3, 9, 4)))
    assert calls == ["so2_layer_norm", "so2_gate"]


def test_modules_compile_fullgraph():
    """``torch.compile(fullgraph=True)`` over the two modules (fake kernels, autograd): values and
    gradients equal to eager."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(_perturbed(SO2LayerNorm(2, 6, degrees="joint"), 1), _perturbed(Gate(2, 6), 2),
                                _perturbed(SO2LayerNorm(2, 6, degrees="separate"), 3))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(5, 9, 6)
    xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    eager = model(xe)
    eager.square().sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out = compiled(xc)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-4, atol=1e-4)
    for a, p in zip(eager_grads, model.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-4, atol=1e-4)


def test_autocast_computes_in_float32():
    x, w, b = _norm_inputs(2, 3, 4, F32)
    xg, z = _gate_inputs(2, 3, 4, F32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = so2ops.so2_layer_norm(x.bfloat16(), w, b, 2)
        h = so2ops.so2_gate(xg.bfloat16(), z.bfloat16())
    assert y.dtype == F32 and h.dtype == F32
    _close(y, so2ops.reference.so2_layer_norm(x.bfloat16().float(), w, b, 2, 1e-6, True), F32, "norm")
    _close(h, so2ops.reference.so2_gate(xg.bfloat16().float(), z.bfloat16().float()), F32, "gate")
