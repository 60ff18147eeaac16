"""Convert fairchem's eSCN-MD / UMA building blocks into so2ops modules.

Tested against fairchem-core 2.24.0 (``tests/test_fairchem_compat.py``); the mapping
is documented in docs/fairchem.md.  ``convert`` accepts

* ``fairchem.core.models.uma.nn.so2_layers.SO2_Convolution`` -> ``so2ops.nn.SO2EdgeLinear``
  (edge-frame layer: input/output in our l-major layout, see ``to_fairchem_layout``),
  and its fast-backend forms ``SO2_Conv2_InternalBlock`` (same call) and
  ``SO2_Conv1_WithRadialBlock`` (whose ``forward`` takes the radial MLP's *output*:
  call the converted layer with ``modulation=x_edge.view(E, num_mod, C_in)``; with
  ``edge_attr`` it applies the copied ``rad_func`` itself);
* ``fairchem.core.models.uma.escn_md_block.Edgewise`` (``act_type="gate"``) ->
  ``so2ops.nn.SO2EdgewiseBlock``;
* ``fairchem.core.models.uma.nn.embedding.EdgeDegreeEmbedding`` ->
  ``so2ops.nn.EdgeDegreeEmbedding``.

fairchem's edge vector is ``pos[source] - pos[target]`` (``edge_distance_vec``; source
= ``edge_index[0]``, messages are summed at ``edge_index[1]``), the opposite of
so2ops' ``edge_vec = pos[target] - pos[source]``.  Both libraries' frames send
their edge vector to ``+y`` (fairchem with a random roll about it, which the
layers are exactly equivariant to), so fairchem's frame for an edge is ours for
the reversed vector: ``D_fc = D_y(phi) S D_ours`` with ``S = D(diag(-1, -1, 1))``
(a half turn about ``z``), which in e3nn's basis is diagonal:
``S(l, m) = (-1)^(l+|m|)`` for ``m >= 0`` and ``-(-1)^(l+|m|)`` for ``m < 0``.
With ``edge_vec_convention="so2ops"`` (default) ``S`` is folded into the
converted weights (``W -> S W S``: entry ``(l_out, l_in)`` times ``(-1)^(l_out+l_in)``,
plus an extra minus on the ``W2`` / imaginary blocks), so the converted module takes
``so2ops.edge_wigner(pos[target] - pos[source])``; with ``"fairchem"`` nothing
is folded and it takes ``so2ops.edge_wigner(pos[source] - pos[target])``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..layout import coeff_index, num_coeffs, num_mod, weight_blocks, weight_size
from ..nn.edge_degree import EdgeDegreeEmbedding
from ..nn.edgewise import RadialMLP, SO2EdgeLinear, SO2EdgewiseBlock
from ._fairchem_import import load_fairchem_uma

__all__ = [
    "convert",
    "m_major_rows",
    "to_fairchem_layout",
    "from_fairchem_layout",
    "flip_signs",
]

_CONVENTIONS = ("so2ops", "fairchem")


# ------------------------------------------------------------------ layouts
def m_major_rows(lmax: int, mmax: int) -> list[int]:
    """Our l-major row of each entry of fairchem's truncated m-major layout.

    fairchem (``CoefficientMapping(lmax, mmax).to_m`` after ``coefficient_idx``):
    ``(l, 0)`` for ``l = 0..lmax``, then for ``m = 1..mmax`` the "real" rows
    ``(l, +m)``, ``l = m..lmax``, then the "imaginary" rows ``(l, -m)``.
    """
    rows = [coeff_index(l, 0) for l in range(lmax + 1)]
    for m in range(1, mmax + 1):
        rows += [coeff_index(l, m) for l in range(m, lmax + 1)]
        rows += [coeff_index(l, -m) for l in range(m, lmax + 1)]
    return rows


def to_fairchem_layout(x: torch.Tensor, lmax: int, mmax: int) -> torch.Tensor:
    """``[E, (lmax+1)**2, C]`` (ours) -> ``[E, M, C]`` fairchem's truncated m-major rows."""
    return x[:, m_major_rows(lmax, mmax), :]


def from_fairchem_layout(x: torch.Tensor, lmax: int, mmax: int) -> torch.Tensor:
    """``[E, M, C]`` fairchem m-major -> ``[E, (lmax+1)**2, C]`` ours (rows ``|m| > mmax`` zero)."""
    out = x.new_zeros(x.shape[0], num_coeffs(lmax), x.shape[2])
    out[:, m_major_rows(lmax, mmax), :] = x
    return out


def flip_signs(lmax: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Diagonal of ``D(diag(-1, -1, 1))`` in our layout, ``[(lmax+1)**2]``."""
    s = [(-1.0) ** (l + abs(m)) * (1.0 if m >= 0 else -1.0) for l in range(lmax + 1) for m in range(-l, l + 1)]
    return torch.tensor(s, dtype=dtype, device=device)


# ------------------------------------------------------------------ weights
def _linear(fc, what: str) -> nn.Linear:
    if type(fc) is not nn.Linear:
        raise TypeError(f"{what} is a {type(fc).__name__}, expected torch.nn.Linear "
                        "(merge fairchem's MoLE experts into plain Linear layers before converting)")
    return fc


def _parity(n: int, device, dtype) -> torch.Tensor:
    """``[n, n]`` matrix ``(-1)^(i+j)``."""
    p = torch.tensor([(-1.0) ** i for i in range(n)], dtype=dtype, device=device)
    return p[:, None] * p[None, :]


def _pack_so2(conv, cin_slice: slice, cout: int, flip: bool) -> torch.Tensor:
    """Packed so2ops weight of fairchem's ``SO2_Convolution`` ``conv`` restricted to input channels ``cin_slice``."""
    lmax, mmax = conv.lmax, conv.mmax
    cin_total = conv.sphere_channels
    cin = len(range(cin_total)[cin_slice])
    extra = getattr(conv, "extra_m0_output_channels", None) or 0
    fc0 = _linear(conv.fc_m0, "fc_m0")
    parts = []
    for m, kind, off, rows, cols in weight_blocks(lmax, mmax, cin, cout):
        L = lmax - m + 1
        if m == 0:
            w = fc0.weight[extra:]
        else:
            fc = _linear(conv.so2_m_conv[m - 1].fc, f"so2_m_conv[{m - 1}].fc")
            half = fc.weight.shape[0] // 2
            w = fc.weight[:half] if kind == "w1" else fc.weight[half:]
        w = w.reshape(L, cout, L, cin_total)[:, :, :, cin_slice]
        if flip:
            sign = _parity(L, w.device, w.dtype)[:, None, :, None]
            w = w * (-sign if kind == "w2" else sign)
        parts.append(w.reshape(-1))
    packed = torch.cat(parts)
    assert packed.numel() == weight_size(lmax, mmax, cin, cout)
    return packed


def _m0_bias(conv, cout: int, flip: bool) -> torch.Tensor:
    extra = getattr(conv, "extra_m0_output_channels", None) or 0
    b = conv.fc_m0.bias
    if b is None:
        return torch.zeros(conv.lmax + 1, cout, dtype=conv.fc_m0.weight.dtype, device=conv.fc_m0.weight.device)
    b = b[extra:].reshape(conv.lmax + 1, cout)
    if flip:
        b = b * _parity(conv.lmax + 1, b.device, b.dtype)[0][:, None]
    return b


def _extra_linear(conv, flip: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Weight ``[extra, (lmax+1)*C_in]`` and bias of the extra m = 0 outputs."""
    extra = getattr(conv, "extra_m0_output_channels", None) or 0
    w = conv.fc_m0.weight[:extra]
    if flip:
        sign = _parity(conv.lmax + 1, w.device, w.dtype)[0]
        w = (w.reshape(extra, conv.lmax + 1, -1) * sign[None, :, None]).reshape(extra, -1)
    b = None if conv.fc_m0.bias is None else conv.fc_m0.bias[:extra]
    return w, b


def _radial_channels(rad_func) -> list[int]:
    lins = [mod for mod in rad_func.net if isinstance(mod, nn.Linear)]
    return [lins[0].in_features] + [lin.out_features for lin in lins]


def _copy_radial(rad_func, out_sign: Optional[torch.Tensor] = None) -> RadialMLP:
    """Our ``RadialMLP`` with fairchem's ``RadialMLP`` weights (final rows times ``out_sign``)."""
    net = rad_func.net
    kinds = [type(mod) for mod in net]
    channels = _radial_channels(rad_func)
    eps = next((mod.eps for mod in net if isinstance(mod, nn.LayerNorm)), 1e-5)
    ours = RadialMLP(channels, eps=eps)
    if kinds != [type(mod) for mod in ours]:
        raise TypeError(f"unexpected fairchem RadialMLP structure {kinds}")
    if any(isinstance(mod, nn.LayerNorm) and (mod.eps != eps or not mod.elementwise_affine) for mod in net):
        raise TypeError("fairchem RadialMLP LayerNorms differ from the expected (affine, shared eps) form")
    ref = next(iter(rad_func.parameters()))
    ours = ours.to(dtype=ref.dtype, device=ref.device)
    with torch.no_grad():
        for src, dst in zip(net, ours):
            if isinstance(src, (nn.Linear, nn.LayerNorm)):
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)
        if out_sign is not None:
            last = ours[len(ours) - 1]
            last.weight.mul_(out_sign.to(last.weight)[:, None])
            last.bias.mul_(out_sign.to(last.bias))
    return ours


# ------------------------------------------------------------------ modules
def _convert_so2_convolution(conv) -> SO2EdgeLinear:
    lmax, mmax, cin, cout = conv.lmax, conv.mmax, conv.sphere_channels, conv.m_output_channels
    extra = getattr(conv, "extra_m0_output_channels", None) or 0
    rad = getattr(conv, "rad_func", None)
    edge_list = _radial_channels(rad)[:-1] if rad is not None else None
    w = conv.fc_m0.weight
    ours = SO2EdgeLinear(lmax, mmax, cin, cout, bias=True, edge_channels_list=edge_list,
                         extra_m0_channels=extra).to(dtype=w.dtype, device=w.device)
    with torch.no_grad():
        ours.weight.copy_(_pack_so2(conv, slice(None), cout, flip=False))
        ours.bias.copy_(_m0_bias(conv, cout, flip=False))
        if extra:
            we, be = _extra_linear(conv, flip=False)
            ours.extra.weight.copy_(we)
            if be is None:
                ours.extra.bias.zero_()
            else:
                ours.extra.bias.copy_(be)
    if rad is not None:
        if _radial_channels(rad)[-1] != num_mod(lmax, mmax) * cin:
            raise ValueError("fairchem rad_func output does not match num_mod * sphere_channels")
        ours.radial = _copy_radial(rad)
    return ours


def _convert_edgewise(block, flip: bool) -> SO2EdgewiseBlock:
    if getattr(block, "act_type", "gate") != "gate":
        raise NotImplementedError(f"Edgewise act_type={block.act_type!r}: only 'gate' is supported "
                                  "(the 's2' grid activation has no so2ops counterpart yet)")
    conv1, conv2 = block.so2_conv_1, block.so2_conv_2
    lmax, mmax, c, h = block.lmax, block.mmax, block.sphere_channels, block.hidden_channels
    if conv1.rad_func is None or conv1.sphere_channels != 2 * c or conv2.rad_func is not None:
        raise TypeError("unexpected Edgewise structure (conv1 must have a rad_func over 2C inputs, conv2 none)")
    if (conv1.extra_m0_output_channels or 0) != lmax * h or conv2.extra_m0_output_channels:
        raise TypeError("unexpected Edgewise gate channels")
    channels = _radial_channels(conv1.rad_func)
    w = conv1.fc_m0.weight
    ours = SO2EdgewiseBlock(lmax, mmax, c, h, channels[:-1],
                            edge_chunk=getattr(block, "activation_checkpoint_chunk_size", None))
    ours = ours.to(dtype=w.dtype, device=w.device)
    with torch.no_grad():
        ours.weight1_source.copy_(_pack_so2(conv1, slice(0, c), h, flip))
        ours.weight1_target.copy_(_pack_so2(conv1, slice(c, 2 * c), h, flip))
        ours.bias1.copy_(_m0_bias(conv1, h, flip))
        if ours.gate_linear is not None:
            we, be = _extra_linear(conv1, flip)
            ours.gate_linear.weight.copy_(we)
            ours.gate_linear.bias.copy_(be if be is not None else torch.zeros_like(ours.gate_linear.bias))
        ours.conv2.weight.copy_(_pack_so2(conv2, slice(None), c, flip))
        ours.conv2.bias.copy_(_m0_bias(conv2, c, flip))
    ours.radial = _copy_radial(conv1.rad_func)
    return ours


def _convert_edge_degree(emb, flip: bool) -> EdgeDegreeEmbedding:
    lmax, c = emb.lmax, emb.sphere_channels
    if emb.m_0_num_coefficients != lmax + 1:
        raise TypeError("unexpected EdgeDegreeEmbedding: m=0 coefficients != lmax + 1")
    channels = _radial_channels(emb.rad_func)
    ref = next(iter(emb.rad_func.parameters()))
    ours = EdgeDegreeEmbedding(lmax, c, channels[:-1], rescale_factor=float(emb.rescale_factor),
                               edge_chunk=getattr(emb, "activation_checkpoint_chunk_size", None))
    ours = ours.to(dtype=ref.dtype, device=ref.device)
    sign = None
    if flip:
        sign = torch.tensor([(-1.0) ** l for l in range(lmax + 1)]).repeat_interleave(c)
    ours.radial = _copy_radial(emb.rad_func, sign)
    return ours


def convert(module: nn.Module, edge_vec_convention: str = "so2ops") -> nn.Module:
    """so2ops equivalent of a fairchem UMA / eSCN-MD module (weights copied, not shared).

    Args:
        module: ``SO2_Convolution`` (or ``SO2_Conv1_WithRadialBlock`` / ``SO2_Conv2_InternalBlock``),
            ``Edgewise`` (gate activation) or ``EdgeDegreeEmbedding`` from fairchem-core (MoLE layers must be merged into plain ``Linear`` first).
        edge_vec_convention: which edge vector the converted block's ``wigner`` is
            built from (``Edgewise`` / ``EdgeDegreeEmbedding`` only; ``SO2_Convolution``
            acts inside the edge frame and needs no choice):
            ``"so2ops"``: ``so2ops.edge_wigner(pos[target] - pos[source])``;
            ``"fairchem"``: ``so2ops.edge_wigner(pos[source] - pos[target])`` (fairchem's
            ``edge_distance_vec``).
    Returns:
        ``SO2EdgeLinear`` / ``SO2EdgewiseBlock`` / ``EdgeDegreeEmbedding`` giving the same
        outputs (and gradients) as ``module`` (docs/fairchem.md for the call mapping).
    """
    if edge_vec_convention not in _CONVENTIONS:
        raise ValueError(f"edge_vec_convention must be one of {_CONVENTIONS}, got {edge_vec_convention!r}")
    flip = edge_vec_convention == "so2ops"
    fc = load_fairchem_uma()
    if isinstance(module, fc.escn_md_block.Edgewise):
        return _convert_edgewise(module, flip)
    if isinstance(module, (fc.so2_layers.SO2_Convolution, fc.so2_layers.SO2_Conv1_WithRadialBlock,
                           fc.so2_layers.SO2_Conv2_InternalBlock)):
        return _convert_so2_convolution(module)
    if isinstance(module, fc.embedding.EdgeDegreeEmbedding):
        return _convert_edge_degree(module, flip)
    raise TypeError(f"cannot convert {type(module).__module__}.{type(module).__name__}: supported are "
                    "SO2_Convolution (and its SO2_Conv1_WithRadialBlock / SO2_Conv2_InternalBlock forms), "
                    "Edgewise (act_type='gate') and EdgeDegreeEmbedding")
