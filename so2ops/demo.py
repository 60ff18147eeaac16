"""``python -m so2ops.demo``: equivariance check and so2_message timing per backend.

Prints one table: for each backend that can run here, the relative
equivariance error of ``so2_message`` under a random global rotation, the
agreement with the reference, and the median forward+backward time.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import so2ops
from so2ops.dispatch import BACKENDS, runnable, triton_interpret


def _random_rotation(dtype):
    q = torch.nn.functional.normalize(torch.randn(4, dtype=torch.float64), dim=0)
    a, b, c, d = q.tolist()
    return torch.tensor(
        [[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
         [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
         [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d]], dtype=dtype)


def _problem(n, e, lmax, mmax, c, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, so2ops.num_coeffs(lmax), c, dtype=dtype, generator=g)
    v = torch.randn(e, 3, dtype=dtype, generator=g)
    ei = torch.randint(0, n, (2, e), generator=g)
    w = torch.randn(so2ops.weight_size(lmax, mmax, c, c), dtype=dtype, generator=g) / math.sqrt(c * (lmax + 1))
    mod = torch.randn(e, so2ops.num_mod(lmax, mmax), c, dtype=dtype, generator=g)
    return [t.to(device) for t in (x, v, ei, w, mod)]


def equivariance_error(backend, lmax, mmax, dtype, device):
    """max |f(Dx, Qv) - D f(x, v)| / max |f| for a random global rotation Q."""
    x, v, ei, w, mod = _problem(16, 64, lmax, mmax, 8, dtype, device)
    rot = _random_rotation(dtype).to(device)
    d = so2ops.wigner_to_dense(so2ops.reference.wigner_from_matrices(rot[None], lmax), lmax)[0]
    with so2ops.use_backend(backend), torch.no_grad():
        out = so2ops.so2_message(x, so2ops.edge_wigner(v, lmax), ei, w, lmax, mmax, 8, mod)
        out_rot = so2ops.so2_message(d @ x, so2ops.edge_wigner(v @ rot.T, lmax), ei, w, lmax, mmax, 8, mod)
        ref = so2ops.reference.so2_message(x, so2ops.reference.edge_wigner(v, lmax), ei, w, lmax, mmax, 8, mod)
    scale = out.abs().max().clamp_min(1e-30)
    return float((out_rot - d @ out).abs().max() / scale), float((out - ref).abs().max() / scale)


def time_fwd_bwd(backend, n, e, lmax, mmax, c, dtype, device, repeats):
    x, v, ei, w, mod = _problem(n, e, lmax, mmax, c, dtype, device)
    wig = so2ops.reference.edge_wigner(v, lmax)
    leaves = [t.requires_grad_(True) for t in (x, wig, w, mod)]
    times = []
    with so2ops.use_backend(backend):
        for i in range(repeats + 1):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = so2ops.so2_message(leaves[0], leaves[1], ei, leaves[2], lmax, mmax, c, leaves[3])
            out.sum().backward()
            if device == "cuda":
                torch.cuda.synchronize()
            if i:  # the first call warms caches / compiles
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lmax", type=int, default=4)
    p.add_argument("--mmax", type=int, default=2)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--edges", type=int, default=4000)
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"so2ops {so2ops.__version__} on {device}; backends: {so2ops.backends()}")
    print(f"so2_message forward+backward: lmax={args.lmax} mmax={args.mmax} C={args.channels} "
          f"E={args.edges} N={args.nodes} float32\n")
    header = f"| {'backend':<10} | {'equiv. err f32':>14} | {'equiv. err f64':>14} | {'vs reference':>12} | {'fwd+bwd ms':>10} | {'speedup':>7} |"
    print(header)
    print("|" + "|".join("-" * (len(s)) for s in header.split("|")[1:-1]) + "|")
    base = None
    for backend in BACKENDS:
        if not runnable(backend, torch.device(device)):
            print(f"| {backend:<10} | {'not available here':>14} |")
            continue
        e32, d32 = equivariance_error(backend, args.lmax, args.mmax, torch.float32, device)
        e64, _ = equivariance_error(backend, args.lmax, args.mmax, torch.float64, device)
        if backend == "triton" and triton_interpret():
            ms, speed = "interp.", "-"
        else:
            t = time_fwd_bwd(backend, args.nodes, args.edges, args.lmax, args.mmax, args.channels,
                             torch.float32, device, args.repeats)
            base = t if backend == "reference" else base
            ms, speed = f"{t * 1e3:.1f}", (f"{base / t:.2f}x" if base else "-")
        print(f"| {backend:<10} | {e32:>14.2e} | {e64:>14.2e} | {d32:>12.2e} | {ms:>10} | {speed:>7} |")
        if not (e32 < 1e-5 and e64 < 1e-11 and d32 < 1e-4):
            raise SystemExit(f"so2ops demo: backend {backend} failed the equivariance/reference check")
    print("\nAll backends equivariant (fp32 < 1e-5, fp64 < 1e-11) and in agreement with the reference.")


if __name__ == "__main__":
    main()
