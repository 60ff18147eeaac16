"""Mixed precision: every op under ``torch.autocast`` (docs/conventions.md "Mixed precision").

The ops are fp32-list ops: under autocast their floating inputs are brought to
float32 (float64 stays float64) and they return float32.  The surrounding
autocast ops (``nn.Linear`` of the radial MLP) run in bfloat16/float16, so an
autocast model differs from its float32 run by the half-precision MLP only:
``AUTOCAST_TOL`` (relative to the largest magnitude) covers that.
"""
import pytest
import torch
from torch import nn

import so2ops
from so2ops.nn import SO2Convolution

from _helpers import backend_params, message_inputs, require

#: |autocast - fp32| <= rtol * |fp32| + atol * max|fp32| for bfloat16 / float16 autocast
AUTOCAST_TOL = {torch.bfloat16: (3e-2, 3e-2), torch.float16: (5e-3, 5e-3)}

LMAX, MMAX, CIN, COUT, N, E, ATTR = 2, 1, 4, 3, 6, 10, 5


class _Model(nn.Module):
    """Radial MLP (runs in half precision under autocast) + SO2Convolution + a final autocast Linear."""

    def __init__(self):
        super().__init__()
        self.conv = SO2Convolution(LMAX, MMAX, CIN, COUT, ATTR, hidden_dim=8)
        self.head = nn.Linear(COUT, 1)

    def forward(self, x, edge_index, edge_vec, edge_attr):
        y = self.conv(x, edge_index, edge_vec, edge_attr)
        return self.head(y[:, 0, :]).sum() + (y * y).sum()


def _graph(device="cpu"):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, so2ops.num_coeffs(LMAX), CIN, generator=g)
    ei = torch.randint(0, N, (2, E), generator=g)
    v = torch.randn(E, 3, generator=g)
    attr = torch.randn(E, ATTR, generator=g)
    return x.to(device), ei.to(device), v.to(device), attr.to(device)


def _close(actual, expected, dtype, what):
    rtol, atol = AUTOCAST_TOL[dtype]
    actual, expected = actual.detach(), expected.detach()
    scale = max(float(expected.abs().max()), 1.0)
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=atol * scale, msg=lambda m: f"{what}: {m}")


def _model_run(device, dtype, backend, autocast):
    torch.manual_seed(0)
    model = _Model().to(device)
    x, ei, v, attr = _graph(device)
    x.requires_grad_(True)
    v.requires_grad_(True)
    with so2ops.use_backend(backend):
        if autocast:
            with torch.autocast(device, dtype=dtype):
                loss = model(x, ei, v, attr)
        else:
            loss = model(x, ei, v, attr)
        loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return loss, x.grad, v.grad, grads


def _check_model(device, dtype, backend):
    loss_ref, gx_ref, gv_ref, g_ref = _model_run(device, dtype, backend, autocast=False)
    loss, gx, gv, g = _model_run(device, dtype, backend, autocast=True)
    assert torch.isfinite(loss)
    _close(loss, loss_ref, dtype, "loss")
    _close(gx, gx_ref, dtype, "grad x")
    _close(gv, gv_ref, dtype, "grad edge_vec")
    for name in g_ref:
        _close(g[name], g_ref[name], dtype, f"grad {name}")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_so2_convolution_autocast_cpu_bf16(backend):
    if backend != "reference":
        require(backend, "cpu")
    _check_model("cpu", torch.bfloat16, backend)


def test_so2_convolution_output_dtype_cpu():
    model = SO2Convolution(LMAX, MMAX, CIN, COUT, ATTR, hidden_dim=8)
    x, ei, v, attr = _graph()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.radial(attr).dtype == torch.bfloat16  # the MLP does run in half precision
        y = model(x, ei, v, attr)
    assert y.dtype == torch.float32


def _op_cases(device):
    """``name -> (fn(*tensors), tensors)``; every op, inputs half where autocast would produce them."""
    x, v, wig, ei, w, mod = message_inputs(N, E, LMAX, MMAX, CIN, COUT, torch.float32, device)
    g = torch.Generator().manual_seed(5)
    nu, hid = 2, 3
    tp_x = torch.randn(N, so2ops.num_coeffs(LMAX), CIN, generator=g).to(device)
    w_in = torch.randn(nu, so2ops.tp_in_size(LMAX, MMAX, CIN, hid), generator=g).to(device) * 0.3
    coeffs = torch.randn(N, nu, hid, generator=g).to(device)
    w_out = torch.randn(so2ops.tp_out_size(LMAX, MMAX, hid, COUT), generator=g).to(device) * 0.3
    local = so2ops.reference.rotate(x, wig, LMAX, ei[0])
    return {
        "edge_wigner": (lambda vv: so2ops.edge_wigner(vv, LMAX), [v]),
        "rotate": (lambda xx, ww: so2ops.rotate(xx, ww, LMAX, index=ei[0]), [x, wig]),
        "so2_linear": (lambda xx, ww, mm: so2ops.so2_linear(xx, ww, LMAX, MMAX, COUT, mm), [local, w, mod]),
        "so2_message": (lambda xx, wg, ww, mm: so2ops.so2_message(xx, wg, ei, ww, LMAX, MMAX, COUT, mm), [x, wig, w, mod]),
        "so2_tensor_product": (lambda xx, a, c, b: so2ops.so2_tensor_product(xx, a, c, b, LMAX, MMAX, COUT),
                               [tp_x, w_in, coeffs, w_out]),
    }


OPS = ["edge_wigner", "rotate", "so2_linear", "so2_message", "so2_tensor_product"]


def _check_op(device, dtype, backend, op):
    fn, tensors = _op_cases(device)[op]
    # fp32 run on the half-rounded inputs vs autocast run with half inputs (one of each kind)
    half = [t.to(dtype) for t in tensors]
    ref_in = [t.float().requires_grad_(True) for t in half]
    with so2ops.use_backend(backend):
        expected = fn(*ref_in)
        gout = torch.randn_like(expected)
        (expected * gout).sum().backward()
        # modulation / weights half (as autocast Linear outputs are), the rest float32: mixed inputs
        mixed = [h.clone().requires_grad_(True) if i % 2 else h.float().requires_grad_(True) for i, h in enumerate(half)]
        with torch.autocast(device, dtype=dtype):
            actual = fn(*mixed)
            assert actual.dtype == torch.float32, f"{op} under autocast returned {actual.dtype}"
            (actual * gout).sum().backward()  # backward inside the autocast block too
    _close(actual, expected, dtype, op)
    for a, r in zip(mixed, ref_in):
        assert a.grad is not None and a.grad.dtype == a.dtype
        _close(a.grad, r.grad, dtype, f"{op} grad")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_ops_autocast_cpu_bf16(backend, op):
    if backend != "reference":
        require(backend, "cpu")
    _check_op("cpu", torch.bfloat16, backend, op)


def test_edge_wigner_autocast_returns_fp32():
    v = torch.randn(5, 3)
    for inp in (v, v.bfloat16()):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert so2ops.edge_wigner(inp, 3).dtype == torch.float32
            assert torch.ops.so2ops.edge_wigner(inp, 3).dtype == torch.float32  # the custom op's own rule
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert so2ops.edge_wigner(v.double(), 3).dtype == torch.float64  # float64 is never demoted


def test_float64_promotes_under_autocast():
    x, v, wig, ei, w, mod = message_inputs(N, E, LMAX, MMAX, CIN, COUT, torch.float64, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = so2ops.so2_message(x, wig, ei, w, LMAX, MMAX, COUT, mod.bfloat16())
    assert out.dtype == torch.float64


def test_no_autocast_keeps_dtype_checks():
    x, v, wig, ei, w, mod = message_inputs(N, E, LMAX, MMAX, CIN, COUT, torch.float32, "cpu")
    with pytest.raises(TypeError, match="modulation has dtype"):
        so2ops.so2_message(x, wig, ei, w, LMAX, MMAX, COUT, mod.bfloat16())


# ------------------------------------------------------------------ GPU variants
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_so2_convolution_autocast_gpu(backend, dtype):
    require(backend, "cuda")
    _check_model("cuda", dtype, backend)


@pytest.mark.gpu
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_ops_autocast_gpu(backend, op):
    require(backend, "cuda")
    _check_op("cuda", torch.bfloat16, backend, op)


@pytest.mark.parametrize("op", ["rotate", "so2_linear", "so2_message"])
def test_ops_autocast_triton_interpret(op):
    """The Triton kernels (interpreter on CPU) under CPU autocast."""
    params = {p.id: p.values for p in backend_params()}
    backend, device = params["triton"]
    require(backend, device)
    if device != "cpu":
        pytest.skip("covered by the gpu variant")
    _check_op("cpu", torch.bfloat16, "triton", op)


def test_autocast_inside_torch_compile():
    """The wrappers' autocast cast traces (fullgraph) and matches eager."""
    x, v, _, ei, w, _ = message_inputs(N, E, LMAX, MMAX, CIN, COUT, torch.float32, "cpu")
    torch.manual_seed(0)
    lin = nn.Linear(ATTR, so2ops.num_mod(LMAX, MMAX) * CIN)
    attr = torch.randn(E, ATTR)

    def f(x, v, attr):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mod = lin(attr).view(E, -1, CIN)
            return so2ops.so2_message(x, so2ops.edge_wigner(v, LMAX), ei, w, LMAX, MMAX, COUT, mod)

    out = torch.compile(f, fullgraph=True, backend="aot_eager")(x, v, attr)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, f(x, v, attr))


def test_assemble_blocks_autocast_cpu():
    layout = so2ops.BasisLayout({1: [0], 6: [0, 1]}, name="s+sp")
    z = torch.tensor([6, 1, 1])
    items = torch.tensor([[0, 0], [1, 1], [2, 2], [0, 1], [0, 2], [1, 2]])
    lmax = layout.features_lmax
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(items.shape[0], so2ops.num_coeffs(lmax), so2ops.block_channels(layout, lmax), generator=g)
    wig = so2ops.edge_wigner(torch.randn(items.shape[0], 3, generator=g), lmax)
    half = feat.bfloat16()
    expected = so2ops.assemble_blocks(half.float(), wig, layout, z, items)
    a = half.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = so2ops.assemble_blocks(a, wig, layout, z, items)
        assert out.dtype == torch.float32
        out.square().sum().backward()
    _close(out, expected, torch.bfloat16, "assemble_blocks")
    assert a.grad.dtype == torch.bfloat16
