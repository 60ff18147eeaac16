"""Test utilities: backend lists, tolerance table, random inputs."""
from __future__ import annotations

import pytest
import torch
from e3nn import o3

import so2ops
from so2ops.dispatch import runnable

#: Backends compared against ``reference``, with the device they run on here.
FAST_BACKENDS = ("cpu", "triton", "cuda")

#: (rtol, atol relative to the reference's max magnitude) per dtype.
TOLERANCES = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (2e-4, 2e-5),
    torch.float16: (2e-2, 1e-2),
    torch.bfloat16: (5e-2, 2e-2),
}


#: gradcheck's fast mode (one random projection instead of the full Jacobian) for the
#: Triton interpreter, where every kernel launch costs seconds.
FAST = {"reference": False, "cpu": False, "cuda": False, "triton": True}


def backend_params():
    """pytest params ``(backend, device)`` for every fast backend; not runnable ones are skipped with the reason."""
    params = []
    for name in FAST_BACKENDS:
        device = "cpu" if name == "cpu" else ("cuda" if torch.cuda.is_available() else "cpu")
        marks = [pytest.mark.gpu] if device == "cuda" else []
        params.append(pytest.param(name, device, id=name, marks=marks))
    return params


def require(backend: str, device: str) -> None:
    """Fail (not skip) when a backend that should exist here is missing."""
    if backend == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if not runnable(backend, torch.device(device)):
        pytest.fail(f"backend {backend!r} is not runnable on {device}: {so2ops.backends()}")


def assert_close(actual, expected, dtype, what=""):
    rtol, atol = TOLERANCES[dtype]
    scale = max(float(expected.abs().max()) if expected.numel() else 0.0, 1.0)
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=rtol, atol=atol * scale, msg=lambda m: f"{what}: {m}")


def random_edges(num_edges: int, dtype, device, generator=None, singular=True):
    """``[E, 3]`` edge vectors with awkward directions mixed in: exactly +-y,
    1e-9 off the axis, on the chart boundary y = 0, and tiny/huge lengths."""
    v = torch.randn(num_edges, 3, dtype=dtype, generator=generator).to(device)
    if singular and num_edges >= 6:
        special = torch.tensor(
            [[0.0, 1.0, 0.0], [0.0, -2.0, 0.0], [1e-9, 1.0, 0.0], [0.0, -1.0, 1e-9], [1.0, 0.0, 0.5], [0.0, 0.0, -1e-3]],
            dtype=dtype,
        )
        v[:6] = special.to(device)
    return v


def message_inputs(n, e, lmax, mmax, cin, cout, dtype, device, modulation=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, so2ops.num_coeffs(lmax), cin, dtype=dtype, generator=g).to(device)
    v = random_edges(e, dtype, device, g)
    wig = so2ops.reference.edge_wigner(v, lmax)
    ei = torch.randint(0, max(n, 1), (2, e), generator=g).to(device)
    w = (torch.randn(so2ops.weight_size(lmax, mmax, cin, cout), dtype=dtype, generator=g) / cin**0.5).to(device)
    mod = torch.randn(e, so2ops.num_mod(lmax, mmax), cin, dtype=dtype, generator=g).to(device) if modulation else None
    return x, v, wig, ei, w, mod


def rotation_and_D(lmax, dtype, seed):
    """A seeded rotation matrix ``[3, 3]`` and e3nn's Wigner-D ``[K, K]`` of it (the independent oracle)."""
    g = torch.Generator().manual_seed(seed)
    angles = [torch.rand((), dtype=torch.float64, generator=g) * s for s in (6.283, 3.1416, 6.283)]
    rot = o3.angles_to_matrix(*angles)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn builds its generators in the default dtype
    try:
        d = o3.Irreps.spherical_harmonics(lmax).D_from_angles(*angles)
    finally:
        torch.set_default_dtype(old)
    return rot.to(dtype), d.to(dtype)
