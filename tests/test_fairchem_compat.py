"""so2ops.compat.fairchem.convert against fairchem-core itself (UMA / eSCN-MD modules).

The converted so2ops module must give fairchem's outputs and gradients (input
features, edge attributes, envelope, positions through the Wigner matrices, every weight)
on random graphs.  fairchem builds its Wigner matrices with its own code (the
quaternion path UMA uses by default, and the Euler-angle path), each with a
random roll about the edge; so2ops uses ``so2ops.edge_wigner``.  Tolerances
(``_helpers.TOLERANCES``, relative to the largest reference entry):
float64 rtol 1e-9 / atol 1e-10, float32 rtol 2e-4 / atol 2e-5.
Skipped only if fairchem cannot be imported (scripts/install.sh installs it).
"""
from __future__ import annotations

import copy

import pytest
import torch

import so2ops
from so2ops.compat._fairchem_import import FAIRCHEM_TESTED_VERSION, load_fairchem_uma

from _helpers import assert_close

try:
    fc = load_fairchem_uma()
except ImportError as exc:  # pragma: no cover - CI installs fairchem
    pytest.skip(f"fairchem not importable: {exc}", allow_module_level=True)

from so2ops.compat.fairchem import (  # noqa: E402
    convert,
    flip_signs,
    from_fairchem_layout,
    m_major_rows,
    to_fairchem_layout,
)

DTYPES = [torch.float32, torch.float64]
SIZES = [(2, 2), (4, 2), (3, 1)]
EDGE_LIST = [5, 6, 6]  # [edge_attr_dim, hidden, hidden] as in UMA's edge_channels_list


def _perturb(module, gen, scale=0.2):
    """Move every parameter away from its init (LayerNorm ones/zeros included)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))
    return module


def _graph(n, dtype, gen):
    pos = 2.0 * torch.randn(n, 3, generator=gen, dtype=torch.float64).to(dtype)
    ei = torch.tensor([[i, j] for i in range(n) for j in range(n) if i != j and (i + 2 * j) % 3 != 0]).T.contiguous()
    return pos, ei


def _fc_wigner(vec, lmax, mmax, quaternion):
    """fairchem's truncated m-major (wigner, wigner_inv) for fairchem edge vectors, as UMA builds them."""
    if quaternion:
        data = fc.quaternion_wigner_utils.create_wigner_data_module(lmax, lmin=5).to(vec.dtype)
        w, wi = fc.wigner_d_hybrid.axis_angle_wigner_hybrid(
            vec, lmax, coeffs=data.coeffs, U_blocks=data.U_blocks, custom_kernels=data.custom_kernels)
    else:
        jd = [j.to(vec.dtype) for j in torch.load(fc.jd_path)]
        w = fc.rotation.eulers_to_wigner(fc.rotation.init_edge_rot_euler_angles(vec), 0, lmax, jd)
        wi = w.transpose(1, 2).contiguous()
    mapping = fc.so3.CoefficientMapping(lmax, mmax)
    idx = fc.so3.CoefficientMapping(lmax, lmax).coefficient_idx(lmax, mmax) if mmax != lmax else None
    return fc.execution_backends.ExecutionBackend.prepare_wigner(w, wi, mapping, idx)


def _grads_as_module(module):
    """A copy of the fairchem module whose parameters hold their gradients: converting it maps the
    gradients exactly as the weights (every so2ops weight is +-1 times one fairchem weight)."""
    g = copy.deepcopy(module)
    with torch.no_grad():
        for (_, p), (_, q) in zip(module.named_parameters(), g.named_parameters()):
            q.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
    return g


def _check_param_grads(fc_module, ours, dtype, **convert_kw):
    expected = convert(_grads_as_module(fc_module), **convert_kw)
    got = dict(ours.named_parameters())
    for name, p in expected.named_parameters():
        assert got[name].grad is not None, name
        assert_close(got[name].grad, p.detach(), dtype, f"grad {name}")


def test_loader():
    assert fc.version == FAIRCHEM_TESTED_VERSION
    assert fc.mode in ("full", "stub")
    for attr in ("so2_layers", "radial", "activation", "embedding", "execution_backends", "so3", "rotation",
                 "escn_md_block", "wigner_d_hybrid"):
        assert getattr(fc, attr) is not None
    assert load_fairchem_uma() is fc  # cached


@pytest.mark.parametrize("lmax,mmax", [(2, 2), (4, 2), (3, 1), (2, 0)])
def test_layout_maps(lmax, mmax):
    mapping = fc.so3.CoefficientMapping(lmax, mmax)
    full = fc.so3.CoefficientMapping(lmax, lmax)
    idx = full.coefficient_idx(lmax, mmax) if mmax != lmax else torch.arange((lmax + 1) ** 2)
    # fairchem: m-major row r = to_m[r] @ (l-major rows selected by idx)
    expected = idx[mapping.to_m.argmax(dim=1)].tolist()
    assert m_major_rows(lmax, mmax) == expected
    x = torch.randn(3, (lmax + 1) ** 2, 2, dtype=torch.float64)
    back = from_fairchem_layout(to_fairchem_layout(x, lmax, mmax), lmax, mmax)
    keep = m_major_rows(lmax, mmax)
    assert torch.equal(back[:, keep], x[:, keep])


def test_flip_signs_is_half_turn_about_z():
    lmax = 4
    f = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))
    dense = so2ops.wigner_to_dense(so2ops.reference.wigner_from_matrices(f[None], lmax), lmax)[0]
    torch.testing.assert_close(dense, torch.diag(flip_signs(lmax)), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lmax,mmax", SIZES)
@pytest.mark.parametrize("radial,extra", [(True, 7), (False, None)], ids=["radial_extra", "internal"])
def test_so2_convolution(lmax, mmax, dtype, radial, extra):
    gen = torch.Generator().manual_seed(lmax * 10 + mmax)
    cin, cout, e = 3, 4, 9
    conv = fc.so2_layers.SO2_Convolution(
        cin, cout, lmax, mmax, fc.so3.CoefficientMapping(lmax, mmax), internal_weights=not radial,
        edge_channels_list=EDGE_LIST[:2] if radial else None, extra_m0_output_channels=extra).to(dtype)
    _perturb(conv, gen)
    ours = convert(conv)
    assert isinstance(ours, so2ops.nn.SO2EdgeLinear)
    x = torch.randn(e, (lmax + 1) ** 2, cin, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    ea = torch.randn(e, EDGE_LIST[0], generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    out_fc = conv(to_fairchem_layout(x, lmax, mmax), ea if radial else None)
    out_ours = ours(x, ea if radial else None)
    if extra:
        (y_fc, ex_fc), (y_ours, ex_ours) = out_fc, out_ours
        assert_close(ex_ours.detach(), ex_fc.detach(), dtype, "extra m0 outputs")
    else:
        y_fc, y_ours, ex_fc, ex_ours = out_fc, out_ours, None, None
    assert_close(to_fairchem_layout(y_ours, lmax, mmax).detach(), y_fc.detach(), dtype, "output")
    dropped = [r for r in range((lmax + 1) ** 2) if r not in m_major_rows(lmax, mmax)]
    assert not y_ours[:, dropped].any()
    g = torch.randn(y_fc.shape, generator=gen, dtype=torch.float64).to(dtype)
    loss_fc = (y_fc * g).sum() + (ex_fc.sum() if extra else 0)
    loss_ours = (to_fairchem_layout(y_ours, lmax, mmax) * g).sum() + (ex_ours.sum() if extra else 0)
    inputs = (x, ea) if radial else (x,)
    grads_fc = torch.autograd.grad(loss_fc, inputs + tuple(conv.parameters()))
    grads_ours = torch.autograd.grad(loss_ours, inputs + tuple(ours.parameters()))
    for a, b, what in zip(grads_ours, grads_fc, ("x", "edge_attr")[: len(inputs)]):
        assert_close(a, b, dtype, f"grad {what}")
    for p, gp in zip(conv.parameters(), grads_fc[len(inputs):]):
        p.grad = gp
    for p, gp in zip(ours.parameters(), grads_ours[len(inputs):]):
        p.grad = gp
    _check_param_grads(conv, ours, dtype)


@pytest.mark.parametrize("lmax,mmax", SIZES)
def test_fast_backend_blocks(lmax, mmax):
    """fairchem's block-GEMM forms of conv1 / conv2 (UMA's fast backends) convert too."""
    dtype = torch.float64
    gen = torch.Generator().manual_seed(50 + lmax * 10 + mmax)
    cin, cout, e, extra = 3, 4, 8, 6
    mapping = fc.so3.CoefficientMapping(lmax, mmax)
    conv1 = _perturb(fc.so2_layers.SO2_Convolution(
        cin, cout, lmax, mmax, mapping, internal_weights=False, edge_channels_list=EDGE_LIST[:2],
        extra_m0_output_channels=extra).to(dtype), gen)
    conv2 = _perturb(fc.so2_layers.SO2_Convolution(cout, cin, lmax, mmax, mapping).to(dtype), gen)
    # fairchem's converters build float32 modules: cast back (their weights are float32-rounded, on both sides)
    blk1 = fc.so2_layers.convert_so2_conv1(conv1).to(dtype)
    blk2 = fc.so2_layers.convert_so2_conv2(conv2).to(dtype)
    ours1, ours2 = convert(blk1), convert(blk2)
    x = torch.randn(e, (lmax + 1) ** 2, cin, generator=gen, dtype=dtype)
    ea = torch.randn(e, EDGE_LIST[0], generator=gen, dtype=dtype)
    with torch.no_grad():
        rad = blk1.rad_func(ea)  # fast backends precompute the radial outside the layer
        y_fc, gate_fc = blk1(to_fairchem_layout(x, lmax, mmax), rad)
        y_o, gate_o = ours1(x, modulation=rad.view(e, so2ops.num_mod(lmax, mmax), cin))
        y_o2, gate_o2 = ours1(x, ea)
        z_fc = blk2(y_fc)
        z_o = ours2(from_fairchem_layout(y_fc, lmax, mmax))
    for a, b, what in ((to_fairchem_layout(y_o, lmax, mmax), y_fc, "conv1"), (gate_o, gate_fc, "gate"),
                       (y_o2, y_o, "conv1 via edge_attr"), (gate_o2, gate_o, "gate via edge_attr"),
                       (to_fairchem_layout(z_o, lmax, mmax), z_fc, "conv2")):
        assert_close(a, b, dtype, what)


def _edgewise(lmax, mmax, c, h, dtype, gen, chunk=None):
    block = fc.escn_md_block.Edgewise(
        c, h, lmax, mmax, list(EDGE_LIST), fc.so3.CoefficientMapping(lmax, mmax), None, 6.0, chunk,
        fc.execution_backends.ExecutionBackend).to(dtype)
    return _perturb(block, gen)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lmax,mmax", SIZES)
@pytest.mark.parametrize("convention,quaternion", [("so2ops", True), ("fairchem", False)])
def test_edgewise(lmax, mmax, dtype, convention, quaternion):
    gen = torch.Generator().manual_seed(100 + lmax * 10 + mmax)
    n, c, h = 7, 3, 4
    block = _edgewise(lmax, mmax, c, h, dtype, gen)
    ours = convert(block, edge_vec_convention=convention)
    assert isinstance(ours, so2ops.nn.SO2EdgewiseBlock)
    pos, ei = _graph(n, dtype, gen)
    pos.requires_grad_()
    e = ei.shape[1]
    x = torch.randn(n, (lmax + 1) ** 2, c, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    ea = torch.randn(e, EDGE_LIST[0], generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    env = torch.rand(e, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()

    vec_fc = pos[ei[0]] - pos[ei[1]]  # fairchem's edge_distance_vec
    w, wi = _fc_wigner(vec_fc, lmax, mmax, quaternion)
    y_fc = block(x, ea, ei, w, wi * env[:, None, None], n, scatter_target=ei[1])
    vec = pos[ei[1]] - pos[ei[0]] if convention == "so2ops" else pos[ei[0]] - pos[ei[1]]
    y_ours = ours(x, ei, so2ops.edge_wigner(vec, lmax), ea, env)
    assert_close(y_ours.detach(), y_fc.detach(), dtype, "output")

    g = torch.randn(y_fc.shape, generator=gen, dtype=torch.float64).to(dtype)
    (y_fc * g).sum().backward()
    grads_fc = [t.grad.clone() for t in (x, ea, pos, env)]
    for t in (x, ea, pos, env):
        t.grad = None
    (y_ours * g).sum().backward()
    for a, b, what in zip((x.grad, ea.grad, pos.grad, env.grad), grads_fc, ("x", "edge_attr", "pos", "envelope")):
        assert_close(a, b, dtype, f"grad {what}")
    _check_param_grads(block, ours, dtype, edge_vec_convention=convention)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_edgewise_chunked(dtype):
    """fairchem's activation_checkpoint_chunk_size becomes our edge_chunk; same outputs and gradients."""
    lmax, mmax, n, c, h = 3, 2, 6, 3, 4
    gen = torch.Generator().manual_seed(7)
    block = _edgewise(lmax, mmax, c, h, dtype, gen, chunk=5)
    ours = convert(block)
    assert ours.edge_chunk == 5
    pos, ei = _graph(n, dtype, gen)
    e = ei.shape[1]
    x = torch.randn(n, (lmax + 1) ** 2, c, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    ea = torch.randn(e, EDGE_LIST[0], generator=gen, dtype=torch.float64).to(dtype)
    env = torch.rand(e, generator=gen, dtype=torch.float64).to(dtype)
    w, wi = _fc_wigner(pos[ei[0]] - pos[ei[1]], lmax, mmax, True)
    y_fc = block(x, ea, ei, w, wi * env[:, None, None], n, scatter_target=ei[1])
    y_ours = ours(x, ei, so2ops.edge_wigner(pos[ei[1]] - pos[ei[0]], lmax), ea, env)
    assert_close(y_ours.detach(), y_fc.detach(), dtype, "output")
    g = torch.randn(y_fc.shape, generator=gen, dtype=torch.float64).to(dtype)
    (gx_fc,) = torch.autograd.grad((y_fc * g).sum(), x)
    (gx_ours,) = torch.autograd.grad((y_ours * g).sum(), x)
    assert_close(gx_ours, gx_fc, dtype, "grad x")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lmax,mmax", SIZES)
def test_edge_degree_embedding(lmax, mmax, dtype):
    gen = torch.Generator().manual_seed(200 + lmax * 10 + mmax)
    n, c = 7, 4
    emb = fc.embedding.EdgeDegreeEmbedding(
        c, lmax, mmax, list(EDGE_LIST), 5.0, fc.so3.CoefficientMapping(lmax, mmax), None,
        fc.execution_backends.ExecutionBackend).to(dtype)
    _perturb(emb, gen)
    ours = convert(emb)
    assert isinstance(ours, so2ops.nn.EdgeDegreeEmbedding)
    pos, ei = _graph(n, dtype, gen)
    pos.requires_grad_()
    e = ei.shape[1]
    x = torch.randn(n, (lmax + 1) ** 2, c, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    ea = torch.randn(e, EDGE_LIST[0], generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    env = torch.rand(e, generator=gen, dtype=torch.float64).to(dtype)
    _, wi = _fc_wigner(pos[ei[0]] - pos[ei[1]], lmax, mmax, True)
    y_fc = emb(x, ea, ei[1], wi * env[:, None, None])
    y_ours = ours(x, ei, so2ops.edge_wigner(pos[ei[1]] - pos[ei[0]], lmax), ea, env)
    assert_close(y_ours.detach(), y_fc.detach(), dtype, "output")
    g = torch.randn(y_fc.shape, generator=gen, dtype=torch.float64).to(dtype)
    (y_fc * g).sum().backward()
    grads_fc = [t.grad.clone() for t in (x, ea, pos)]
    for t in (x, ea, pos):
        t.grad = None
    (y_ours * g).sum().backward()
    for a, b, what in zip((x.grad, ea.grad, pos.grad), grads_fc, ("x", "edge_attr", "pos")):
        assert_close(a, b, dtype, f"grad {what}")
    _check_param_grads(emb, ours, dtype)


def test_convert_rejects_unsupported():
    lmax, mmax = 2, 2
    with pytest.raises(TypeError, match="cannot convert"):
        convert(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="edge_vec_convention"):
        convert(torch.nn.Linear(2, 2), edge_vec_convention="xyz")
    block = fc.escn_md_block.Edgewise(
        2, 2, lmax, mmax, list(EDGE_LIST), fc.so3.CoefficientMapping(lmax, mmax), None, 6.0, None,
        fc.execution_backends.ExecutionBackend)
    block.act_type = "s2"
    with pytest.raises(NotImplementedError, match="s2"):
        convert(block)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_edgewise_cuda(dtype):
    """Converted block on the GPU (automatic backend: cuda > triton) against fairchem on the GPU."""
    lmax, mmax, n, c, h = 4, 2, 9, 8, 16
    gen = torch.Generator().manual_seed(17)
    block = _edgewise(lmax, mmax, c, h, dtype, gen).cuda()
    ours = convert(block)
    pos, ei = _graph(n, dtype, gen)
    e = ei.shape[1]
    pos, ei = pos.cuda().requires_grad_(), ei.cuda()
    x = torch.randn(n, (lmax + 1) ** 2, c, generator=gen, dtype=torch.float64).to("cuda", dtype).requires_grad_()
    ea = torch.randn(e, EDGE_LIST[0], generator=gen, dtype=torch.float64).to("cuda", dtype)
    env = torch.rand(e, generator=gen, dtype=torch.float64).to("cuda", dtype)
    w, wi = _fc_wigner(pos[ei[0]] - pos[ei[1]], lmax, mmax, True)
    y_fc = block(x, ea, ei, w, wi * env[:, None, None], n, scatter_target=ei[1])
    y_ours = ours(x, ei, so2ops.edge_wigner(pos[ei[1]] - pos[ei[0]], lmax), ea, env)
    assert_close(y_ours.detach().cpu(), y_fc.detach().cpu(), dtype, "output")
    g = torch.randn(y_fc.shape, generator=gen, dtype=torch.float64).to("cuda", dtype)
    gx_fc, gp_fc = torch.autograd.grad((y_fc * g).sum(), (x, pos))
    gx_o, gp_o = torch.autograd.grad((y_ours * g).sum(), (x, pos))
    assert_close(gx_o.cpu(), gx_fc.cpu(), dtype, "grad x")
    assert_close(gp_o.cpu(), gp_fc.cpu(), dtype, "grad pos")
