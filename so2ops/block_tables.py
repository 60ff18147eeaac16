"""The SO(2) block tables of ``assemble_blocks``: which feature entry feeds which block entry.

In a local frame (polar axis = the pair axis or the node frame's axis) a block
between a shell of degree ``l1`` and one of degree ``l2`` transforms under a
roll by ``phi`` as ``B -> D^{l1}(phi) B D^{l2}(phi)^T``.  Split ``B`` into the
sub-blocks of orders ``(a, b) = (|m1|, |m2|)``; a ``2 x 2`` sub-block (``a, b > 0``,
rows ``(+a, -a)``, columns ``(+b, -b)``) is uniquely

    M = (alpha I + beta J + gamma K + delta K J) / sqrt(2),
    J = [[0, -1], [1, 0]],  K = diag(1, -1),

where ``w = alpha + i beta`` carries SO(2) order ``a - b`` and ``u = gamma + i delta``
order ``-(a + b)``.  A feature coefficient of order ``k`` is
``z_k = x(l, +k) + i x(l, -k)`` (it becomes ``e^{ik phi} z_k`` under the roll), so

    w = z_{a-b} (a > b),  conj(z_{b-a}) (a < b),  two order-0 reals (a = b);
    u = conj(z_{a+b});

a ``1 x 2`` sub-block ``(0, b)`` is ``z_b`` (entries ``(0, +b), (0, -b)``), a
``2 x 1`` one ``(a, 0)`` is ``z_a``, and ``(0, 0)`` is one order-0 real.  Every block
entry is thus one or two feature entries with coefficient ``+-1`` or ``+-1/sqrt(2)``:
the SO(2) analogue of the Clebsch-Gordan coefficients, sparse and basis
independent (docs/math.md section 6).

Feature layout ("slots"): for one item type (element pair, diagonal or not)
the requests of order ``k`` are numbered ``p = 0, 1, ...`` in shell-pair order,
then sub-block order; request ``p`` of order ``k`` lives in channel
``p // (lmax - k + 1)`` at degree ``l = k + p % (lmax - k + 1)`` (rows
``(l, +k)`` and ``(l, -k)``; ``(l, 0)`` for order 0).  A model produces these
features with one ``so2_linear`` (or ``so2_message``) of ``block_channels``
output channels.

Invariant-only items (an atom with no frame, e.g. an isolated atom): without a
frame only degree 0 is rotation invariant, so such an item's block is
``c_q I`` for the ``q``-th equal-degree shell pair of its type, with ``c_q`` read
from row 0 (``l = m = 0``), channel ``q``; blocks between shells of different
degree are zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch

from ._tensor_cache import tensor_cache
from ._compat import assume_constant_result
from .basis_layout import BasisLayout, e3nn_to_pyscf
from .layout import coeff_index, wigner_offset, wigner_size

_R2 = 1.0 / math.sqrt(2.0)


def _requests(l1: int, l2: int):
    """Per shell pair: list of ``(k, entries)`` requests.

    ``entries`` is a list of ``(row_part, r, c, coef)``: block entry ``(r, c)`` (indices
    ``m + l``) gets ``coef * Re`` (``row_part = +1``: row ``(l, +k)``) or ``coef * Im``
    (``row_part = -1``: row ``(l, -k)``) of the slot's complex value; order-0 slots
    are real (``row_part = 0``).
    """
    reqs = []
    for a in range(l1 + 1):
        for b in range(l2 + 1):
            pa, na, pb, nb = l1 + a, l1 - a, l2 + b, l2 - b  # indices of +a, -a, +b, -b
            if a == 0 and b == 0:
                reqs.append((0, [(0, l1, l2, 1.0)]))
            elif a == 0:
                reqs.append((b, [(+1, l1, pb, 1.0), (-1, l1, nb, 1.0)]))
            elif b == 0:
                reqs.append((a, [(+1, pa, l2, 1.0), (-1, na, l2, 1.0)]))
            else:
                # w = alpha + i beta: B(+a,+b) += a, B(-a,-b) += a, B(+a,-b) -= b, B(-a,+b) += b
                if a == b:
                    reqs.append((0, [(0, pa, pb, _R2), (0, na, nb, _R2)]))  # alpha
                    reqs.append((0, [(0, pa, nb, -_R2), (0, na, pb, _R2)]))  # beta
                else:
                    k = abs(a - b)
                    s = 1.0 if a > b else -1.0  # beta = +Im z (a > b) or -Im z (conj)
                    reqs.append((k, [(+1, pa, pb, _R2), (+1, na, nb, _R2),
                                     (-1, pa, nb, -s * _R2), (-1, na, pb, s * _R2)]))
                # u = gamma + i delta = conj(z_{a+b}): gamma = Re z, delta = -Im z
                # B(+a,+b) += g, B(-a,-b) -= g, B(+a,-b) -= d, B(-a,+b) -= d
                reqs.append((a + b, [(+1, pa, pb, _R2), (+1, na, nb, -_R2),
                                     (-1, pa, nb, _R2), (-1, na, pb, _R2)]))
    return reqs


def item_shell_pairs(layout: BasisLayout, zi: int, zj: int, diagonal: bool) -> List[Tuple[int, int, int, int, int]]:
    """``[(l1, l2, r0, c0, sym)]`` shell pairs of one item type.

    Off-diagonal (atom pair) items: every shell of ``zi`` with every shell of ``zj``.
    Diagonal (atom) items: shell pairs ``s1 <= s2``; ``sym = 1`` for ``s1 == s2``
    (written symmetrised), the others are written with their transposes.
    """
    li, lj = layout.shell_ls(zi), layout.shell_ls(zj)
    ri = [0]
    for l in li:
        ri.append(ri[-1] + 2 * l + 1)
    rj = [0]
    for l in lj:
        rj.append(rj[-1] + 2 * l + 1)
    out = []
    for s1, l1 in enumerate(li):
        for s2, l2 in enumerate(lj):
            if diagonal and s2 < s1:
                continue
            out.append((l1, l2, ri[s1], rj[s2], int(diagonal and s1 == s2)))
    return out


@dataclass
class BlockTables:
    """Tensors shared by every backend of ``assemble_blocks`` (one set per layout, lmax, channels).

    Attributes:
        types: ``{(zi, zj, diagonal): type id}``.
        sp_start: ``[T + 1]`` int64: shell pairs of type ``t`` are ``sp_start[t]:sp_start[t+1]``.
        sp_info: ``[SP, 6]`` int64 ``(l1, l2, r0, c0, sym, entry_start)``.
        entry_src: ``[NE, 2]`` int64 flat feature index ``row * C + channel`` (-1: none)
            of the two terms of each local block entry; entries of a shell pair are
            ``(2 l1 + 1) x (2 l2 + 1)`` row-major from ``entry_start``.
        entry_coef: ``[NE, 2]`` coefficients of those terms.
        inv_src: ``[SP]`` int64 flat index (row 0, channel ``q`` = index of the shell pair
            among the type's equal-degree pairs) of the scalar of an invariant-only
            item when ``l1 == l2`` (its block is that scalar times I), else -1.
        basis_change: ``[wigner_size(lmax_shell)]`` packed ``U_l`` (e3nn -> PySCF).
        type_lut: ``[n_elements, n_elements, 2]`` int64 type id of ``(zi, zj, diagonal)`` (-1: none).
        z_index: ``[max Z + 1]`` int64 element index of each atomic number (-1: not in the layout).
        channels: channels the features need; lmax: their degree.
    """

    types: Dict[Tuple[int, int, bool], int]
    sp_start: torch.Tensor
    sp_info: torch.Tensor
    entry_src: torch.Tensor
    entry_coef: torch.Tensor
    inv_src: torch.Tensor
    basis_change: torch.Tensor
    type_lut: torch.Tensor
    z_index: torch.Tensor
    channels: int
    lmax: int
    lmax_shell: int


def _type_slots(layout, zi, zj, diagonal, lmax, channels):
    """Entry table of one item type; also returns the channels it needs."""
    counts: Dict[int, int] = {}
    sps = item_shell_pairs(layout, zi, zj, diagonal)
    per_sp = []
    need = 0
    n_equal = 0
    for l1, l2, r0, c0, sym in sps:
        src = [[-1, -1] for _ in range((2 * l1 + 1) * (2 * l2 + 1))]
        coef = [[0.0, 0.0] for _ in range((2 * l1 + 1) * (2 * l2 + 1))]
        inv = -1
        for k, entries in _requests(l1, l2):
            p = counts.get(k, 0)
            counts[k] = p + 1
            per_l = lmax - k + 1
            ch, l = p // per_l, k + p % per_l
            need = max(need, ch + 1)
            for part, r, c, cf in entries:
                row = coeff_index(l, 0 if part == 0 else part * k)
                e = r * (2 * l2 + 1) + c
                slot = 0 if src[e][0] < 0 else 1
                src[e][slot] = row * channels + ch
                coef[e][slot] = cf
        if l1 == l2 and diagonal:
            # invariant-only items read the degree-0 row (the only rotation-invariant
            # row without a frame), channel = index among the equal-degree shell pairs
            inv = n_equal
            n_equal += 1
            need = max(need, n_equal)
        per_sp.append((l1, l2, r0, c0, sym, src, coef, inv))
    return per_sp, need


def block_channels(layout: BasisLayout, lmax: int) -> int:
    """Feature channels ``assemble_blocks`` needs for ``layout`` with features of degree ``lmax``."""
    check_block_lmax(layout, lmax)
    need = 0
    for zi in layout.elements:
        for zj in layout.elements:
            for diag in ((False, True) if zi == zj else (False,)):
                need = max(need, _type_slots(layout, zi, zj, diag, lmax, 1)[1])
    return need


def check_block_lmax(layout: BasisLayout, lmax: int) -> None:
    if lmax < layout.features_lmax:
        raise ValueError(
            f"features have lmax={lmax} but the basis {layout.name or ''} needs lmax >= "
            f"{layout.features_lmax} (twice its largest shell degree {layout.lmax_shell})".replace("  ", " "))


@assume_constant_result
def block_tables(layout: BasisLayout, lmax: int, channels: int, dtype, device) -> BlockTables:
    """The (cached) tables for ``layout``, features of degree ``lmax`` with ``channels`` channels.

    Built on the host and moved to ``(device, dtype)`` once, then reused: no
    host-to-device copy per call.  ``torch.compile`` calls this at trace time
    and keeps the cached tensors as constants of the graph (it neither traces
    the construction nor copies the tables per call).
    """
    return _tables(layout, lmax, channels, dtype, str(torch.device(device)))


@tensor_cache(maxsize=64)
def _tables(layout, lmax, channels, dtype, device):
    check_block_lmax(layout, lmax)
    types: Dict[Tuple[int, int, bool], int] = {}
    sp_start, sp_info, entry_src, entry_coef, inv_src = [0], [], [], [], []
    for zi in layout.elements:
        for zj in layout.elements:
            for diag in ((False, True) if zi == zj else (False,)):
                types[(zi, zj, diag)] = len(types)
                per_sp, need = _type_slots(layout, zi, zj, diag, lmax, channels)
                if need > channels:
                    raise ValueError(f"features have {channels} channels but the basis needs "
                                     f"{block_channels(layout, lmax)} at lmax={lmax} (so2ops.block_channels)")
                for l1, l2, r0, c0, sym, src, coef, inv in per_sp:
                    sp_info.append((l1, l2, r0, c0, sym, len(entry_src)))
                    entry_src.extend(src)
                    entry_coef.extend(coef)
                    inv_src.append(inv)
                sp_start.append(len(sp_info))
    lsh = layout.lmax_shell
    basis = torch.cat([e3nn_to_pyscf(l).reshape(-1) for l in range(lsh + 1)])
    assert basis.numel() == wigner_size(lsh)
    i64 = dict(dtype=torch.int64, device=device)
    els = layout.elements
    lut = torch.full((len(els), len(els), 2), -1, dtype=torch.int64)
    for (zi, zj, diag), t in types.items():
        lut[els.index(zi), els.index(zj), int(diag)] = t
    z_index = torch.full((max(els) + 1,), -1, dtype=torch.int64)
    for e, z in enumerate(els):
        z_index[z] = e
    return BlockTables(
        types=types,
        sp_start=torch.tensor(sp_start, **i64),
        sp_info=torch.tensor(sp_info, **i64).reshape(-1, 6),
        entry_src=torch.tensor(entry_src, **i64).reshape(-1, 2),
        entry_coef=torch.tensor(entry_coef, dtype=dtype, device=device).reshape(-1, 2),
        inv_src=torch.tensor(inv_src, **i64),
        basis_change=basis.to(dtype=dtype, device=device),
        type_lut=lut.to(device),
        z_index=z_index.to(device),
        channels=channels,
        lmax=lmax,
        lmax_shell=lsh,
    )


__all__ = ["BlockTables", "block_channels", "block_tables", "check_block_lmax", "item_shell_pairs", "wigner_offset"]
