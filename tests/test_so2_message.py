"""so2_message: every backend against the reference, determinism, memory contract."""
import pytest
import torch

import so2ops

from _helpers import FAST, assert_close, backend_params, message_inputs, require

F64 = torch.float64

CASES = [  # lmax, mmax, cin, cout, nodes, edges, modulation
    (0, 0, 3, 3, 4, 1, True),
    (1, 1, 17, 3, 5, 0, True),
    (2, 1, 3, 17, 10, 37, False),
    (3, 2, 17, 17, 40, 1000, True),
    (4, 4, 63, 3, 9, 50, True),
    (6, 3, 3, 17, 12, 30, True),
]


def _run(fn, x, wig, ei, w, mod, lmax, mmax, cout, deterministic=False):
    leaves = [t.clone().requires_grad_(True) if t is not None else None for t in (x, wig, w, mod)]
    out = fn(leaves[0], leaves[1], ei, leaves[2], lmax, mmax, cout, leaves[3], deterministic)
    return out, leaves


def _reference(x, wig, ei, w, lmax, mmax, cout, mod, deterministic=False):
    return so2ops.reference.so2_message(x, wig, ei, w, lmax, mmax, cout, mod)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "det"])
@pytest.mark.parametrize("lmax,mmax,cin,cout,nodes,edges,modulation", CASES)
def test_backend_matches_reference(backend, device, dtype, deterministic, lmax, mmax, cin, cout, nodes, edges, modulation):
    require(backend, device)
    x, v, wig, ei, w, mod = message_inputs(nodes, edges, lmax, mmax, cin, cout, dtype, device, modulation)
    expected, ref_leaves = _run(_reference, x, wig, ei, w, mod, lmax, mmax, cout)
    with so2ops.use_backend(backend):
        actual, leaves = _run(so2ops.so2_message, x, wig, ei, w, mod, lmax, mmax, cout, deterministic)
    assert actual.shape == (nodes, (lmax + 1) ** 2, cout)
    assert_close(actual, expected, dtype, "so2_message")
    g = torch.randn_like(expected)
    (expected * g).sum().backward()
    (actual * g).sum().backward()
    for name, a, b in zip(("x", "wigner", "weight", "modulation"), leaves, ref_leaves):
        if a is not None:
            assert_close(a.grad, b.grad, dtype, f"grad {name}")


@pytest.mark.parametrize("backend,device", backend_params())
def test_backend_gradcheck_through_edge_wigner(backend, device):
    require(backend, device)
    x, v, _, ei, w, mod = message_inputs(5, 8, 2, 1, 3, 2, F64, device)
    args = [t.requires_grad_(True) for t in (x, v, w, mod)]
    with so2ops.use_backend(backend):
        f = lambda a, b, c, d: so2ops.so2_message(a, so2ops.edge_wigner(b, 2), ei, c, 2, 1, 2, d)  # noqa: E731
        assert torch.autograd.gradcheck(f, args, fast_mode=FAST[backend])


@pytest.mark.parametrize("backend,device", backend_params() + [pytest.param("reference", "cpu", id="reference")])
def test_deterministic_mode_is_bitwise_reproducible(backend, device):
    if backend != "reference":
        require(backend, device)
    x, v, wig, ei, w, mod = message_inputs(6, 400, 3, 3, 8, 8, torch.float32, device)
    ei[1] = ei[1] % 3  # many edges per target: order of summation matters
    with so2ops.use_backend(backend):
        runs = [_run(so2ops.so2_message, x, wig, ei, w, mod, 3, 3, 8, True) for _ in range(3)]
        grads = []
        for out, leaves in runs:
            out.square().sum().backward()
            grads.append([l.grad for l in leaves])
    for out, _ in runs[1:]:
        assert torch.equal(out, runs[0][0])
    for g in grads[1:]:
        for a, b in zip(g, grads[0]):
            assert torch.equal(a, b)


@pytest.mark.parametrize("backend,device", backend_params() + [pytest.param("reference", "cpu", id="reference")])
def test_forward_saves_no_edge_sized_feature_tensor(backend, device):
    """The backward recomputes: nothing of shape [E, (lmax+1)^2, C] is kept alive by autograd."""
    if backend != "reference":
        require(backend, device)
    lmax, e, cin, cout = 3, 50, 6, 7
    x, v, wig, ei, w, mod = message_inputs(5, e, lmax, lmax, cin, cout, torch.float64, device)
    saved = []
    with so2ops.use_backend(backend), torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        leaves = [t.requires_grad_(True) for t in (x, wig, w, mod)]
        so2ops.so2_message(leaves[0], leaves[1], ei, leaves[2], lmax, lmax, cout, leaves[3])
    edge_sized = [s for s in saved if len(s) == 3 and s[0] == e and s[1] == (lmax + 1) ** 2 and s[2] in (cin, cout)]
    assert saved, "autograd saved nothing at all: the hook did not run"
    assert not edge_sized, f"forward saved edge-sized feature tensors {edge_sized}"


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_opcheck(backend):
    if backend != "reference":
        require(backend, "cpu")
    x, v, wig, ei, w, mod = message_inputs(5, 8, 2, 1, 3, 2, F64, "cpu")
    with so2ops.use_backend(backend):
        for m in (mod, None):
            args = (x.clone().requires_grad_(True), wig.clone().requires_grad_(True), ei, w.clone().requires_grad_(True),
                    None if m is None else m.clone().requires_grad_(True), 2, 1, 2, False)
            torch.library.opcheck(torch.ops.so2ops.so2_message.default, args)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_precision_inputs_accumulate_in_float32(backend, dtype):
    require(backend, "cuda")
    lmax, mmax, cin, cout = 3, 2, 17, 9
    x, v, wig, ei, w, mod = message_inputs(30, 300, lmax, mmax, cin, cout, torch.float32, "cuda")
    expected = so2ops.reference.so2_message(x, wig, ei, w, lmax, mmax, cout, mod)
    half = [t.to(dtype) for t in (x, wig, w, mod)]
    with so2ops.use_backend(backend):
        actual = so2ops.so2_message(half[0], half[1], ei, half[2], lmax, mmax, cout, half[3])
        wig_half = so2ops.edge_wigner(v.to(dtype), lmax)
    assert actual.dtype == dtype
    assert_close(actual.float(), expected, dtype, "so2_message half")
    assert_close(wig_half.float(), wig, dtype, "edge_wigner half")
