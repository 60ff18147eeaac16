"""Distance features once per unordered edge (``GraphTopology.upper_edges`` / ``edge_upper``):
the bookkeeping is right for batches, cutoffs and empty graphs, and the model's messages
get exactly the per-edge values (the radial MLP runs on half the rows)."""
import numpy as np
import pytest
import torch

from qhnetv2.model import QHNetV2
from qhnetv2.model.graph import build_topology

from test_model import CHO_POS, CHO_Z


def _batch(seed, sizes):
    g = torch.Generator().manual_seed(seed)
    pos = torch.cat([torch.randn(n, 3, dtype=torch.float64, generator=g) * 1.6 for n in sizes])
    batch = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    return pos, batch


@pytest.mark.parametrize("sizes,cutoff", [((5,), 10.0), ((4, 1, 7), 2.5), ((1,), 5.0), ((3, 3), 0.1), ((40,), 3.0)])
def test_every_edge_maps_to_its_unordered_edge(sizes, cutoff):
    pos, batch = _batch(sum(sizes), sizes)
    topo = build_topology(pos, batch, cutoff)
    src, tgt = topo.edge_index
    up = topo.upper_edges
    assert bool((src[up] < tgt[up]).all())
    assert 2 * up.numel() == src.numel()  # the edge set is symmetric
    e = topo.edge_upper
    assert e.shape == src.shape
    lo, hi = torch.minimum(src, tgt), torch.maximum(src, tgt)
    assert torch.equal(src[up][e], lo) and torch.equal(tgt[up][e], hi)


def test_cdist_asymmetry_cannot_break_the_edge_set():
    """An atom pair at the cutoff up to rounding: the distance matrix is symmetrised, so
    both orientations are edges or neither is."""
    pos = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [2.5, 4.330127018922193, 0.0]], dtype=torch.float64)
    for cutoff in (5.0, np.nextafter(5.0, 0.0), np.nextafter(5.0, 10.0)):
        topo = build_topology(pos, torch.zeros(3, dtype=torch.long), float(cutoff))
        assert 2 * topo.upper_edges.numel() == topo.edge_index.shape[1]


def test_messages_see_the_per_edge_modulation():
    """The model with the shared rows gives the H of the per-edge evaluation."""
    torch.manual_seed(0)
    model = QHNetV2(basis="def2-svp", elements=[1, 6, 8], channels=8, pair_channels=6, layers=2, mmax=2, num_rbf=8,
                    body_order=2).double()
    z, pos = torch.tensor(CHO_Z), torch.tensor(CHO_POS)
    inputs = model.prepare(z, pos)
    seen = []
    hook = model.messages[0].radial.register_forward_hook(lambda mod, args, out: seen.append(out.shape[0]))
    h_shared = model.forward_prepared(pos, inputs)
    hook.remove()
    assert seen == [inputs.topology.edge_index.shape[1] // 2]
    inputs.topology.edge_upper = None  # the per-edge path
    h_edge = model.forward_prepared(pos, inputs)
    torch.testing.assert_close(h_shared, h_edge, rtol=0, atol=1e-13)
