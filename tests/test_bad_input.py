"""Bad input: a clear Python exception naming the argument, on every backend."""
import pytest
import torch

import so2ops

from _helpers import message_inputs, require

F32, F64 = torch.float32, torch.float64
BACKENDS = ["reference", "cpu", "triton"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param != "reference":
        require(request.param, "cpu")
    with so2ops.use_backend(request.param):
        yield request.param


@pytest.fixture
def inputs():
    return message_inputs(6, 10, 2, 1, 4, 3, F64, "cpu")


def _msg(x, wig, ei, w, mod, **kw):
    args = dict(lmax=2, mmax=1, out_channels=3, modulation=mod)
    args.update(kw)
    return so2ops.so2_message(x, wig, ei, w, **args)


def test_wrong_shapes(backend, inputs):
    x, v, wig, ei, w, mod = inputs
    with pytest.raises(ValueError, match="x must have shape"):
        _msg(x[:, :8], wig, ei, w, mod)
    with pytest.raises(ValueError, match="wigner must have shape"):
        _msg(x, wig[:, :-1], ei, w, mod)
    with pytest.raises(ValueError, match="edge_index must have shape"):
        _msg(x, wig, ei[:, :-1], w, mod)
    with pytest.raises(ValueError, match="weight must have shape"):
        _msg(x, wig, ei, w[:-1], mod)
    with pytest.raises(ValueError, match="modulation must have shape"):
        _msg(x, wig, ei, w, mod[:, :-1])
    with pytest.raises(ValueError, match="edge_vec must have shape"):
        so2ops.edge_wigner(v[:, :2], 2)
    with pytest.raises(ValueError, match="x has 6 rows but wigner has 10 edges"):
        so2ops.rotate(x, wig, 2)
    with pytest.raises(ValueError, match="index must have shape"):
        so2ops.rotate(x, wig, 2, index=ei[0, :3])


def test_wrong_dtypes(backend, inputs):
    x, v, wig, ei, w, mod = inputs
    with pytest.raises(TypeError, match="wigner has dtype"):
        _msg(x, wig.float(), ei, w, mod)
    with pytest.raises(TypeError, match="edge_index must be int64"):
        _msg(x, wig, ei.int(), w, mod)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        _msg(x.long(), wig, ei, w, mod)
    with pytest.raises(TypeError, match="float16/bfloat16 on CUDA only"):
        so2ops.edge_wigner(v.half(), 2)
    with pytest.raises(TypeError, match="lmax must be an int"):
        so2ops.edge_wigner(v, 2.0)


def test_wrong_devices(backend, inputs):
    x, v, wig, ei, w, mod = inputs
    with pytest.raises(ValueError, match="weight is on meta"):
        _msg(x, wig, ei, w.to("meta"), mod)
    with pytest.raises(ValueError, match="edge_index is on meta"):
        _msg(x, wig, ei.to("meta"), w, mod)


def test_lmax_above_compiled_maximum(backend):
    v = torch.randn(3, 3)
    with pytest.raises(ValueError, match="exceeds the compiled maximum"):
        so2ops.edge_wigner(v, so2ops.LMAX_SUPPORTED + 1)
    with pytest.raises(ValueError, match="mmax=3 must be in"):
        so2ops.so2_linear(torch.randn(2, 9, 1), torch.randn(1), 2, 3, 1)


@pytest.mark.parametrize("bad", [-1, 6, 1000])
def test_edge_index_out_of_range(backend, inputs, bad):
    x, v, wig, ei, w, mod = inputs
    ei = ei.clone()
    ei[1, 3] = bad
    with pytest.raises(IndexError, match=r"edge_index has entries in"):
        _msg(x, wig, ei, w, mod)
    with pytest.raises(IndexError, match=r"index has entries in"):
        so2ops.rotate(x, wig, 2, index=ei[1])


def test_non_contiguous_inputs_are_handled_not_garbage(backend, inputs):
    x, v, wig, ei, w, mod = inputs
    expected = so2ops.reference.so2_message(x, wig, ei, w, 2, 1, 3, mod)
    xt = x.transpose(0, 2).contiguous().transpose(0, 2)  # same values, other strides
    ei_t = ei.t().contiguous().t()
    mod_t = mod[:, :, ::1].transpose(1, 2).contiguous().transpose(1, 2)
    assert not xt.is_contiguous() and not ei_t.is_contiguous() and not mod_t.is_contiguous()
    torch.testing.assert_close(_msg(xt, wig, ei_t, w, mod_t), expected)
    torch.testing.assert_close(so2ops.edge_wigner(v.t().contiguous().t(), 2), so2ops.reference.edge_wigner(v, 2))


def test_empty_inputs(backend, inputs):
    x, v, wig, ei, w, mod = inputs
    with pytest.raises(ValueError, match="x has 0 channels"):
        so2ops.so2_message(x[:, :, :0], wig, ei, w[:0], 2, 1, 3)
    # no edges is valid: zero messages (and zero gradients)
    out = _msg(x, wig[:0], ei[:, :0], w, mod[:0])
    assert out.shape == (6, 9, 3) and out.abs().max() == 0
    assert so2ops.edge_wigner(v[:0], 2).shape == (0, so2ops.wigner_size(2))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_edge_vectors(backend, inputs, value):
    v = inputs[1].clone()
    v[4, 1] = value
    with pytest.raises(ValueError, match="edge_vec has non-finite .* first at edge 4"):
        so2ops.edge_wigner(v, 2)


def test_zero_length_edges(backend, inputs):
    v = inputs[1].clone()
    v[7] = 0.0
    with pytest.raises(ValueError, match="edge_vec has zero-length edges"):
        so2ops.edge_wigner(v, 2)


def test_forcing_a_backend_that_cannot_run_here_raises():
    if torch.cuda.is_available():
        pytest.skip("the cuda backend can run here")
    with so2ops.use_backend("cuda"), pytest.raises(RuntimeError, match="backend 'cuda' was requested"):
        so2ops.edge_wigner(torch.randn(3, 3), 2)
    with pytest.raises(ValueError, match="unknown backend"):
        with so2ops.use_backend("fast"):
            pass


def test_backend_environment_variable(monkeypatch):
    monkeypatch.setenv("SO2OPS_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="SO2OPS_BACKEND='nonsense'"):
        so2ops.edge_wigner(torch.randn(3, 3), 2)
    monkeypatch.setenv("SO2OPS_BACKEND", "reference")
    assert so2ops.current_backend() == "reference"
