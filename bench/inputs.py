"""Random inputs: graphs, edge vectors, irreps features, Wigner blocks.

Graphs have ``N = E // 16`` nodes (about the neighbour count of a molecular
radius graph) and edges sorted by target, as radius-graph builders return them.
"""
from __future__ import annotations

import torch

import so2ops

#: Edges per chunk when building Wigner blocks (bounds the reference's SH temporaries).
_CHUNK = 16384


def generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def default_nodes(num_edges: int) -> int:
    return max(2, num_edges // 16)


def random_graph(num_edges: int, num_nodes: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``edge_index[2, E]`` (sorted by target, no self loops) and ``edge_vec[E, 3]`` (nonzero)."""
    src = torch.randint(0, num_nodes, (num_edges,), generator=g)
    off = torch.randint(1, num_nodes, (num_edges,), generator=g)
    dst = (src + off) % num_nodes
    order = torch.argsort(dst, stable=True)
    edge_index = torch.stack([src[order], dst[order]])
    vec = torch.randn(num_edges, 3, generator=g, dtype=torch.float64)
    vec = vec / vec.norm(dim=1, keepdim=True) * (1.0 + torch.rand(num_edges, 1, generator=g, dtype=torch.float64))
    return edge_index, vec


def wigner_of(edge_vec: torch.Tensor, lmax: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Packed Wigner blocks by the reference, in chunks (float64 math, cast at the end)."""
    out = torch.empty(edge_vec.shape[0], so2ops.wigner_size(lmax), dtype=dtype, device=device)
    for s in range(0, edge_vec.shape[0], _CHUNK):
        v = edge_vec[s : s + _CHUNK].to(device=device, dtype=torch.float64)
        out[s : s + _CHUNK] = so2ops.reference.edge_wigner(v, lmax).to(dtype)
    return out


def randn(shape, g: torch.Generator, dtype: torch.dtype, device: torch.device, scale: float = 1.0) -> torch.Tensor:
    """Seeded normal tensor made on the CPU in float32/64, then moved (same values on every device)."""
    base = torch.float64 if dtype == torch.float64 else torch.float32
    return (torch.randn(*shape, generator=g, dtype=base) * scale).to(device=device, dtype=dtype)
