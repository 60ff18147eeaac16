"""eSCN-MD / UMA / EquiformerV2-style edge-wise message block built on so2ops ops.

Notation: ``N`` nodes, ``E`` edges, ``K = (lmax+1)**2`` coefficients (l-major,
e3nn basis, docs/conventions.md), ``C`` sphere channels, ``H`` hidden channels,
``L0 = lmax + 1`` (the ``m = 0`` rows ``(l, 0)``), ``NM = num_mod(lmax, mmax)``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..dispatch import current_backend, use_backend
from ..layout import coeff_index, m0_index, num_coeffs, num_mod, weight_size
from ..ops import rotate, so2_linear, so2_linear_scatter
from .edgewise_lean import lean_block_messages
from .so2_linear import init_so2_weight

__all__ = ["RadialMLP", "SO2EdgeLinear", "SO2EdgewiseBlock", "m0_rows"]


def m0_rows(lmax: int) -> list[int]:
    """Rows ``(l, 0)``, ``l = 0..lmax``, of the l-major layout."""
    return [coeff_index(l, 0) for l in range(lmax + 1)]


def _degree_of_rows(lmax: int) -> list[int]:
    return [l for l in range(lmax + 1) for _ in range(2 * l + 1)]


class RadialMLP(nn.Sequential):
    """``Linear -> LayerNorm -> SiLU -> ... -> Linear`` over ``channels = [in, hidden..., out]``.

    Maps invariant edge features ``[E, channels[0]]`` to ``[E, channels[-1]]``
    (e.g. the per-``(m, l, channel)`` modulation of an SO(2) convolution).
    """

    def __init__(self, channels: Sequence[int], eps: float = 1e-5):
        channels = list(channels)
        if len(channels) < 2:
            raise ValueError(f"RadialMLP needs at least [in, out] channels, got {channels}")
        layers: list[nn.Module] = []
        for i in range(1, len(channels)):
            layers.append(nn.Linear(channels[i - 1], channels[i]))
            if i < len(channels) - 1:
                layers += [nn.LayerNorm(channels[i], eps=eps), nn.SiLU()]
        super().__init__(*layers)
        self.channels = channels


def _bias_rows(bias: torch.Tensor, lmax: int) -> torch.Tensor:
    """``[L0, C] -> [K, C]``: the bias on rows ``(l, 0)``, zero elsewhere (differentiable)."""
    return bias.new_zeros(num_coeffs(lmax), bias.shape[1]).index_copy(0, m0_index(lmax, bias.device), bias)


class SO2EdgeLinear(nn.Module):
    """SO(2) linear layer in the edge frame with the eSCN extras.

    ``y = so2_linear(x * mod) + b``: the packed SO(2) weight (``so2ops.layout``),
    a bias on the ``m = 0`` rows ``(l, 0)`` only (a bias elsewhere would break
    the roll equivariance), an optional radial modulation
    ``mod = radial(edge_attr)`` per ``(m, l, in-channel)`` and optional extra
    invariant outputs ``extra = Linear_extra(flatten(x_0 * mod_0))`` from the
    ``m = 0`` rows (fairchem's ``extra_m0_output_channels``, used as gates).

    Args:
        lmax, mmax, in_channels, out_channels: as in ``so2_linear``.
        bias: add the ``m = 0`` bias ``[lmax+1, out_channels]``.
        edge_channels_list: ``[edge_attr_dim, hidden...]``; a ``RadialMLP`` to
            ``num_mod * in_channels`` outputs is built from it.  ``None``: no
            internal radial function (``modulation`` may still be passed).  A
            ``modulation`` passed to ``forward`` is used as is (the radial
            function is then skipped: precomputed radials).
        extra_m0_channels: number of extra invariant outputs (0: none).
    Shapes:
        ``forward(x[E, K, C_in], edge_attr[E, D] = None, modulation[E, NM, C_in] = None)
        -> y[E, K, C_out]`` or ``(y, extra[E, extra_m0_channels])``.
    """

    def __init__(self, lmax: int, mmax: int, in_channels: int, out_channels: int, bias: bool = True,
                 edge_channels_list: Optional[Sequence[int]] = None, extra_m0_channels: int = 0):
        super().__init__()
        self.lmax, self.mmax, self.in_channels, self.out_channels = lmax, mmax, in_channels, out_channels
        self.extra_m0_channels = int(extra_m0_channels)
        self.weight = nn.Parameter(torch.empty(weight_size(lmax, mmax, in_channels, out_channels)))
        init_so2_weight(self.weight, lmax, mmax, in_channels, out_channels)
        self.bias = nn.Parameter(torch.zeros(lmax + 1, out_channels)) if bias else None
        self.radial = (RadialMLP(list(edge_channels_list) + [num_mod(lmax, mmax) * in_channels])
                       if edge_channels_list is not None else None)
        self.extra = nn.Linear((lmax + 1) * in_channels, self.extra_m0_channels) if self.extra_m0_channels else None

    def forward(self, x: torch.Tensor, edge_attr: Optional[torch.Tensor] = None,
                modulation: Optional[torch.Tensor] = None):
        e = x.shape[0]
        if modulation is None and self.radial is not None:
            if edge_attr is None:
                raise ValueError("edge_attr (or a precomputed modulation) is required: "
                                 "this SO2EdgeLinear has a radial function")
            modulation = self.radial(edge_attr).view(e, num_mod(self.lmax, self.mmax), self.in_channels)
        y = so2_linear(x, self.weight, self.lmax, self.mmax, self.out_channels, modulation)
        if self.bias is not None:
            y = y + _bias_rows(self.bias, self.lmax)
        if self.extra is None:
            return y
        x0 = x[:, m0_rows(self.lmax), :]
        if modulation is not None:
            x0 = x0 * modulation[:, : self.lmax + 1, :]
        return y, self.extra(x0.reshape(e, -1))

    def extra_repr(self) -> str:
        return (f"lmax={self.lmax}, mmax={self.mmax}, in_channels={self.in_channels}, "
                f"out_channels={self.out_channels}, extra_m0_channels={self.extra_m0_channels}")


class SO2EdgewiseBlock(nn.Module):
    """The eSCN-MD / UMA ``Edgewise`` message (EquiformerV2 without attention).

    For every edge ``e = (s -> t)`` with frame ``D_e`` (``so2ops.edge_wigner``)::

        a, b  = D_e x[s], D_e x[t]                         # [K, C] each, edge frame
        mod   = radial(edge_attr_e)                         # [NM, 2C], per (m, l, channel)
        h     = conv1(cat(a, b) * mod) + bias1              # SO(2) linear 2C -> H, bias on m = 0
        gates = sigmoid(W_g flatten(cat(a_0, b_0) * mod_0) + b_g)   # [lmax, H], extra m = 0 outputs
        g     = [silu(h_00), h_l * gates[l - 1] for l >= 1] # gate activation per degree and channel
        y     = conv2(g) + bias2                            # SO(2) linear H -> C, bias on m = 0
        out[t] += envelope_e * D_e^T y

    ``conv1`` applied to ``cat(a, b)`` is computed as ``so2_linear(a, W_src) +
    so2_linear(b, W_dst)`` (the weight split by input channel), so no
    ``[E, K, 2C]`` tensor is built.  Rows ``|m| > mmax`` are dropped by the
    SO(2) layers (the truncated eSCN layout).

    Args:
        lmax, mmax: degrees of the node features and orders kept on edges.
        sphere_channels: ``C`` (input and output channels).
        hidden_channels: ``H``.
        edge_channels_list: ``[edge_attr_dim, hidden...]`` of the radial MLP
            (fairchem: ``[num_distance_basis + 2 * edge_channels, edge_channels,
            edge_channels]``); its output has ``NM * 2C`` entries.
        edge_chunk: if set, edges are processed ``edge_chunk`` at a time under
            ``torch.utils.checkpoint``: the ``[E, K, *]`` intermediates kept for
            the backward (the rotated ``a``, ``b``, the result of ``conv1``, the
            expanded gates and the gated features: about ``K (2 C + 3 H)``
            numbers per edge) exist for one chunk at a time
            instead of for the whole graph, at the cost
            of recomputing the block's forward during backward (one extra
            forward pass of the block per training step) and one ``[N, K, C]`` sum
            per chunk.  Results equal the unchunked ones up to summation order.
        lean: (default) run the block as one autograd Function
            (``so2ops.nn.edgewise_lean``) that keeps for the backward only its
            inputs, conv1's output on the ``R`` rows ``|m| <= mmax`` and the
            gate logits (about ``R H + lmax H`` numbers per edge instead of
            ``K (2 C + 3 H) + 2 NM C + 2 (lmax+1) C``).  Forward and backward
            walk the edges in slices of ``LEAN_SLICE``; the backward takes each
            slice end to end (conv2, gate and conv1 backwards), so conv1's
            gradient exists for one slice at a time.  The rotated features, the
            modulation and the gated features are recomputed per slice (no SO(2)
            layer is, except conv2's forward when the Wigner blocks or the
            envelope need gradients).  Same values and gradients as
            ``lean=False`` (the composition of differentiable ops) up to
            rounding; double backward works.  With ``edge_chunk`` the lean path
            runs inside each checkpointed chunk.
    Shapes:
        ``forward(x[N, K, C], edge_index[2, E], wigner[E, wigner_size(lmax)],
        edge_attr[E, edge_attr_dim], envelope[E] or [E, 1] or None) -> [N, K, C]``:
        the summed messages (no residual, no normalisation).
    """

    def __init__(self, lmax: int, mmax: int, sphere_channels: int, hidden_channels: int,
                 edge_channels_list: Sequence[int], edge_chunk: Optional[int] = None, lean: bool = True):
        super().__init__()
        self.lmax, self.mmax = lmax, mmax
        self.sphere_channels, self.hidden_channels = sphere_channels, hidden_channels
        self.edge_chunk = edge_chunk
        self.lean = bool(lean)
        c, h, l0 = sphere_channels, hidden_channels, lmax + 1
        self.radial = RadialMLP(list(edge_channels_list) + [num_mod(lmax, mmax) * 2 * c])
        ws = weight_size(lmax, mmax, c, h)
        self.weight1_source = nn.Parameter(torch.empty(ws))
        self.weight1_target = nn.Parameter(torch.empty(ws))
        # cat(a, b) has 2C inputs: fan-in init of the 2C-wide layer, split in two
        for w in (self.weight1_source, self.weight1_target):
            init_so2_weight(w, lmax, mmax, c, h, gain=1.0 / math.sqrt(2.0))
        self.bias1 = nn.Parameter(torch.zeros(l0, h))
        self.gate_linear = nn.Linear(l0 * 2 * c, lmax * h) if lmax > 0 else None
        self.conv2 = SO2EdgeLinear(lmax, mmax, h, c, bias=True)
        self.register_buffer("_m0_rows", torch.tensor(m0_rows(lmax)), persistent=False)
        self.register_buffer("_gate_index", torch.tensor(_degree_of_rows(lmax)[1:]) - 1, persistent=False)

    # ------------------------------------------------------------------ pieces
    def gate(self, h: torch.Tensor, gates: Optional[torch.Tensor]) -> torch.Tensor:
        """``[E, K, H]``: SiLU on row ``(0, 0)``, degree ``l >= 1`` rows times ``gates[:, l - 1]``."""
        s = torch.nn.functional.silu(h[:, :1, :])
        if gates is None:
            return s
        return torch.cat((s, h[:, 1:, :] * gates.index_select(1, self._gate_index)), dim=1)

    def gated_hidden(self, x: torch.Tensor, wigner: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                     edge_attr: torch.Tensor) -> torch.Tensor:
        """``gate(conv1(...))``: conv2's input in the edge frames, ``[E, K, H]``."""
        lmax, mmax, c, h = self.lmax, self.mmax, self.sphere_channels, self.hidden_channels
        e = wigner.shape[0]
        mod = self.radial(edge_attr).view(e, num_mod(lmax, mmax), 2 * c)
        mod_s, mod_t = mod[..., :c], mod[..., c:]
        a = rotate(x, wigner, lmax, index=src)
        b = rotate(x, wigner, lmax, index=dst)
        hid = so2_linear(a, self.weight1_source, lmax, mmax, h, mod_s)
        hid = hid + so2_linear(b, self.weight1_target, lmax, mmax, h, mod_t)
        hid = hid + _bias_rows(self.bias1, lmax)
        gates = None
        if self.gate_linear is not None:
            x0 = torch.cat((a.index_select(1, self._m0_rows), b.index_select(1, self._m0_rows)), dim=2)
            x0 = x0 * mod[:, : lmax + 1, :]
            gates = torch.sigmoid(self.gate_linear(x0.reshape(e, -1))).view(e, lmax, h)
        return self.gate(hid, gates)

    def edge_messages(self, x: torch.Tensor, wigner: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                      edge_attr: torch.Tensor, envelope: Optional[torch.Tensor]) -> torch.Tensor:
        """Per-edge messages in the global frame, ``[E, K, C]`` (before the sum over targets)."""
        y = self.conv2(self.gated_hidden(x, wigner, src, dst, edge_attr))
        if envelope is not None:
            y = y * envelope.reshape(wigner.shape[0], 1, 1)
        return rotate(y, wigner, self.lmax, inverse=True)

    def summed_messages(self, x: torch.Tensor, wigner: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                        edge_attr: torch.Tensor, envelope: Optional[torch.Tensor]) -> torch.Tensor:
        """The messages summed at their targets, ``[N, K, C]`` (lean or plain path, see ``lean``).

        The plain path's consumer (conv2, bias, envelope, rotation back, sum) is one fused
        ``so2_linear_scatter``: no ``[E, K, C]`` messages."""
        lmax, mmax, h = self.lmax, self.mmax, self.hidden_channels
        if not self.lean:
            conv2 = self.conv2
            return so2_linear_scatter(self.gated_hidden(x, wigner, src, dst, edge_attr), wigner, dst, conv2.weight,
                                      x.shape[0], lmax, mmax, self.sphere_channels, bias=conv2.bias,
                                      scale=envelope)
        backend = current_backend()
        # the radial MLP up to its last layer; that layer is applied per input half and edge slice
        # inside the lean Function (the [E, NM, 2C] modulation is never stored for the backward)
        *body, last = list(self.radial)
        feat = edge_attr
        for layer in body:
            feat = layer(feat)
        gl = self.gate_linear
        return lean_block_messages(x, wigner, src, dst, feat, last.weight, last.bias, self.weight1_source,
                                   self.weight1_target, self.bias1, None if gl is None else gl.weight,
                                   None if gl is None else gl.bias, self.conv2.weight, self.conv2.bias, envelope,
                                   lmax, mmax, h, backend)

    def _chunk(self, backend, *args):
        # checkpoint recomputes on the autograd thread: keep the forward's backend choice
        with use_backend(backend):
            return self.summed_messages(*args)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, wigner: torch.Tensor, edge_attr: torch.Tensor,
                envelope: Optional[torch.Tensor] = None) -> torch.Tensor:
        src, dst = edge_index[0], edge_index[1]
        e = wigner.shape[0]
        if envelope is not None:
            envelope = envelope.reshape(e)
        chunk = self.edge_chunk
        if chunk is None or e <= chunk:
            return self.summed_messages(x, wigner, src, dst, edge_attr, envelope)
        out = x.new_zeros(x.shape[0], x.shape[1], self.sphere_channels)
        backend = current_backend()
        for s in range(0, e, chunk):
            sl = slice(s, min(s + chunk, e))
            env = None if envelope is None else envelope[sl]
            part = checkpoint(self._chunk, backend, x, wigner[sl], src[sl], dst[sl], edge_attr[sl], env,
                              use_reentrant=False)
            out.add_(part)  # summed at the targets already
        return out

    def extra_repr(self) -> str:
        return (f"lmax={self.lmax}, mmax={self.mmax}, sphere_channels={self.sphere_channels}, "
                f"hidden_channels={self.hidden_channels}, edge_chunk={self.edge_chunk}, lean={self.lean}")
