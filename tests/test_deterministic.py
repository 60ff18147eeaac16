"""``torch.use_deterministic_algorithms(True)`` is honoured by every op on every backend.

Two forward + backward runs are bitwise equal, and the request reaches the
backend: ``so2_message`` and ``so2_frame_linear`` get ``deterministic=True`` (their segmented, atomic-free
reduction) even when called with ``deterministic=False``, and the Triton
``rotate`` backward with a gather index takes its segmented sum instead of
atomics.  The other kernels have no atomics whose order matters (docs/conventions.md).

The tests do not set ``CUBLAS_WORKSPACE_CONFIG``: ``import so2ops`` does when it is unset
(``so2ops.ops._common.ensure_cublas_workspace_config``), and the cuda cases would catch a
regression (ATen refuses cuBLAS GEMMs in deterministic mode without it); the subprocess tests
check it from a clean environment.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import so2ops
from so2ops import dispatch
from so2ops.ops import _common

from _helpers import backend_params, message_inputs, require

L, M, CI, CO, N, E = 2, 1, 3, 2, 5, 9
F32 = torch.float32


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def _cases(device):
    x, v, wig, ei, w, mod = message_inputs(N, E, L, M, CI, CO, F32, device)
    local = so2ops.reference.rotate(x, wig, L, ei[0])
    g = torch.Generator().manual_seed(4)
    nu, hid = 2, 2
    w_in = (torch.randn(nu, so2ops.tp_in_size(L, M, CI, hid), generator=g) * 0.3).to(device)
    coeffs = torch.randn(N, nu, hid, generator=g).to(device)
    w_out = (torch.randn(so2ops.tp_out_size(L, M, hid, CO), generator=g) * 0.3).to(device)
    layout = so2ops.BasisLayout({1: [0], 6: [0, 1]}, name="s+sp")
    z = torch.tensor([6, 1, 1], device=device)
    items = torch.tensor([[0, 0], [1, 1], [2, 2], [0, 1], [0, 2], [1, 2]], device=device)
    fl = layout.features_lmax
    feat = torch.randn(items.shape[0], so2ops.num_coeffs(fl), so2ops.block_channels(layout, fl), generator=g).to(device)
    fw = so2ops.reference.edge_wigner(torch.randn(items.shape[0], 3, generator=g).to(device), fl)
    return {
        "edge_wigner": (lambda vv: so2ops.edge_wigner(vv, L), [v]),
        "rotate": (lambda xx, ww: so2ops.rotate(xx, ww, L, index=ei[0]), [x, wig]),
        "rotate_inverse": (lambda xx, ww: so2ops.rotate(xx, ww, L, index=ei[1], inverse=True), [x, wig]),
        "so2_linear": (lambda xx, ww, mm: so2ops.so2_linear(xx, ww, L, M, CO, mm), [local, w, mod]),
        "so2_message": (lambda xx, wg, ww, mm: so2ops.so2_message(xx, wg, ei, ww, L, M, CO, mm), [x, wig, w, mod]),
        "so2_gather_linear": (lambda xx, wg, ww, mm: so2ops.so2_gather_linear(xx, wg, ei[0], ww, L, M, CO, mm),
                              [x, wig, w, mod]),
        "so2_linear_scatter": (lambda xx, wg, ww, mm, s: so2ops.so2_linear_scatter(xx, wg, ei[1], ww, N, L, M, CO, mm,
                                                                                   scale=s),
                               [local, wig, w, mod, torch.rand(E, generator=g).to(device)]),
        "so2_tensor_product": (lambda xx, a, c, b: so2ops.so2_tensor_product(xx, a, c, b, L, M, CO),
                               [x, w_in, coeffs, w_out]),
        "assemble_blocks": (lambda f, ww: so2ops.assemble_blocks(f, ww, layout, z, items), [feat, fw]),
    }


OPS = ["edge_wigner", "rotate", "rotate_inverse", "so2_linear", "so2_message", "so2_gather_linear", "so2_linear_scatter",
       "so2_tensor_product", "assemble_blocks"]


def _run(fn, tensors, seed=0):
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    (out * g).sum().backward()
    return [out.detach()] + [t.grad for t in leaves]


def _backends():
    return [pytest.param("reference", "cpu", id="reference")] + backend_params()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend,device", _backends())
def test_two_runs_are_bitwise_equal(deterministic, backend, device, op):
    if backend != "reference":
        require(backend, device)
    fn, tensors = _cases(device)[op]
    with so2ops.use_backend(backend):
        first = _run(fn, tensors)
        second = _run(fn, tensors)
    for a, b in zip(first, second):
        assert a is not None and b is not None
        assert torch.equal(a, b), f"{op} on {backend}: runs differ by {float((a - b).abs().max())}"


def _spy(monkeypatch, op, backend, seen, fwd_pos=8, bwd_pos=9):
    """Record the ``deterministic`` argument (positions ``fwd_pos`` / ``bwd_pos``) the backend gets."""
    impl = dispatch._IMPLS[op][backend]
    fwd, bwd = impl.forward, impl.backward

    def forward(*args):
        seen.append(("forward", args[fwd_pos]))
        return fwd(*args)

    def backward(*args):
        seen.append(("backward", args[bwd_pos]))
        return bwd(*args)

    monkeypatch.setattr(impl, "forward", forward)
    monkeypatch.setattr(impl, "backward", backward)


@pytest.mark.parametrize("backend,device", _backends())
def test_so2_message_backend_gets_deterministic(deterministic, backend, device, monkeypatch):
    if backend != "reference":
        require(backend, device)
    dispatch._load_backends()
    seen = []
    _spy(monkeypatch, "so2_message", backend, seen)
    fn, tensors = _cases(device)["so2_message"]
    with so2ops.use_backend(backend):
        _run(fn, tensors)  # so2_message(..., deterministic=False)
    assert seen == [("forward", True), ("backward", True)]


@pytest.mark.parametrize("op", ["so2_gather_linear", "so2_linear_scatter"])
@pytest.mark.parametrize("backend,device", _backends())
def test_so2_frame_linear_backend_gets_deterministic(deterministic, backend, device, op, monkeypatch):
    if backend != "reference":
        require(backend, device)
    dispatch._load_backends()
    seen = []
    _spy(monkeypatch, "so2_frame_linear", backend, seen, 12, 13)
    fn, tensors = _cases(device)[op]
    with so2ops.use_backend(backend):
        _run(fn, tensors)  # called with deterministic=False
    assert seen == [("forward", True), ("backward", True)]


def test_so2_message_flag_off_without_deterministic_algorithms(monkeypatch):
    assert not torch.are_deterministic_algorithms_enabled()
    seen = []
    _spy(monkeypatch, "so2_message", "reference", seen)
    fn, tensors = _cases("cpu")["so2_message"]
    with so2ops.use_backend("reference"):
        _run(fn, tensors)
    assert seen == [("forward", False), ("backward", False)]


def test_triton_rotate_backward_uses_the_segmented_sum(deterministic, monkeypatch):
    params = {p.id: p.values for p in backend_params()}
    backend, device = params["triton"]
    require(backend, device)
    import so2ops.triton.so2_message as tmsg

    calls = []
    real = tmsg.segment_sum
    monkeypatch.setattr(tmsg, "segment_sum", lambda *a: calls.append(a[2]) or real(*a))
    fn, tensors = _cases(device)["rotate"]
    with so2ops.use_backend("triton"):
        _run(fn, tensors)
    assert calls == [N]  # grad x: one segmented sum over the N gathered rows, no atomics
    torch.use_deterministic_algorithms(False)
    calls.clear()
    with so2ops.use_backend("triton"):
        _run(fn, tensors)
    assert calls == []  # the atomic scatter otherwise


# ---------------------------------------------------------------------- cuBLAS workspace config
def _python(code: str, env_update=None, drop=("CUBLAS_WORKSPACE_CONFIG",)) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (the repository's so2ops) without the variables in ``drop``."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_update or {})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=root)


def test_import_sets_the_cublas_workspace_config():
    """A clean process: ``import so2ops`` sets the deterministic workspace before any CUDA work."""
    r = _python("""
        import os
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        import so2ops
        print(os.environ["CUBLAS_WORKSPACE_CONFIG"])
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == _common.CUBLAS_WORKSPACE_CONFIG == ":4096:8"


@pytest.mark.parametrize("value", [":16:8", ":0:0"])
def test_import_keeps_the_users_cublas_workspace_config(value):
    r = _python("import os, so2ops; print(os.environ['CUBLAS_WORKSPACE_CONFIG'])", {"CUBLAS_WORKSPACE_CONFIG": value})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == value


def test_ensure_cublas_workspace_config(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert _common.ensure_cublas_workspace_config()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert not _common.ensure_cublas_workspace_config()  # set: left alone
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    assert not _common.ensure_cublas_workspace_config()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


@pytest.mark.gpu
def test_cuda_deterministic_without_the_env_var():
    """A clean process without ``CUBLAS_WORKSPACE_CONFIG``: deterministic mode switched on after
    ``import so2ops``; so2_message, so2_tensor_product (cuBLAS inside the ops) and an edgewise block
    (nn.Linear around them) run forward and backward on the cuda backend, twice, bitwise equal."""
    require("cuda", "cuda")
    r = _python("""
        import os
        import torch
        import so2ops
        from so2ops.nn import SO2EdgewiseBlock
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        torch.use_deterministic_algorithms(True)
        dev, L, M, C = "cuda", 2, 1, 8
        g = torch.Generator().manual_seed(0)
        n, e = 12, 60
        x = torch.randn(n, (L + 1) ** 2, C, generator=g).to(dev)
        wig = so2ops.edge_wigner(torch.randn(e, 3, generator=g).to(dev), L)
        ei = torch.randint(0, n, (2, e), generator=g).to(dev)
        w = torch.randn(so2ops.weight_size(L, M, C, C), generator=g).to(dev) * 0.3
        w_in = torch.randn(2, so2ops.tp_in_size(L, M, C, 4), generator=g).to(dev) * 0.3
        coeffs = torch.randn(n, 2, 4, generator=g).to(dev)
        w_out = torch.randn(so2ops.tp_out_size(L, M, 4, C), generator=g).to(dev) * 0.3
        block = SO2EdgewiseBlock(L, M, C, 8, [5, 6]).to(dev)
        ea = torch.randn(e, 5, generator=g).to(dev)

        def run():
            block.zero_grad()
            leaves = [t.clone().requires_grad_() for t in (x, w, w_in, coeffs)]
            with so2ops.use_backend(dev):
                y = so2ops.so2_message(leaves[0], wig, ei, leaves[1], L, M, C)
                y = y + so2ops.so2_tensor_product(leaves[0], leaves[2], leaves[3], w_out, L, M, C)
                y = y + block(leaves[0], ei, wig, ea)
            y.square().sum().backward()
            return [y.detach()] + [t.grad for t in leaves] + [p.grad.clone() for p in block.parameters()]

        a, b = run(), run()
        assert all(torch.equal(u, v) for u, v in zip(a, b))
        print("ok")
    """)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.strip().endswith("ok")
