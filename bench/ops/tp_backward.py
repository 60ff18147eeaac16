"""``so2_tensor_product`` forward+backward: hand-written GEMM backward vs the old autograd one.

    python -m bench.ops.tp_backward [--threads 2] [--target-s 1.0] [--out DIR] [--name STEM]

Both arms side by side in one run (``time_cpu_interleaved``: a drift of a shared
machine hits both alike), same inputs, same grid backend (``cpu`` = the C++ kernel
when built, else ``reference``), float32, gradients of all four inputs
(``x``, ``w_in``, ``coeffs``, ``w_out``, as in a QHNetV2 training step):

* ``before``: the op as it was (issue 19): the GEMM stages of the forward by
  ``so2ops.reference.to_spectral`` / ``from_spectral``; the backward recomputes them
  under autograd and calls ``torch.autograd.grad`` (zero-filled weight-slice
  gradients, ``zeros_like`` of every input, index-put into zero buffers).  Kept
  here, verbatim in its logic, as ``_LegacyTP`` (an ``autograd.Function``: it skips
  the custom-op dispatch the ``after`` arm pays, so the comparison is, if anything,
  unfair to ``after``);
* ``after``: ``so2ops.so2_tensor_product`` (the custom op with ``so2ops.ops._tp_gemm``).

Value checks are off for both (the old arm has none).  Sizes: the qh9 preset's
node tensor product (``lmax 4, tp_mmax 2, C = H = C_out = 128``, body order 3) on
``N = 12`` atoms (uracil, batch 1) and ``N = 29 * 32 = 928`` atoms (a batch of 32
QH9-size molecules).  Per row also the ``aten::fill_`` / ``aten::zero_`` call counts of
one forward+backward (torch.profiler, untimed).
Results: ``DIR/<name>.{json,md}`` (``--name``, default ``tp_backward``), with the command and the
machine's load average (a shared machine: absolute times vary with it, the interleaved ratio less).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys

import torch

import so2ops
from so2ops.dispatch import select
from so2ops.layout import num_coeffs, tp_grid_size, tp_in_size, tp_out_size
from so2ops.ops._common import autograd_enabled
from so2ops.reference.so2_tensor_product import from_spectral, to_spectral

from ..so2_backends import timed_backend
from ..timer import Budget, time_cpu_interleaved

LMAX, MMAX, C, H, NU = 4, 2, 128, 128, 3
NODES = (12, 29 * 32)


# ------------------------------------------------------------------ the old implementation (before issue 19)
def _legacy_backward(grad, x, w_in, coeffs, w_out, lmax, mmax, out_channels, grid, need_x, need_w_in, need_coeffs,
                     need_w_out):
    impl = select("so2_grid_product", x.device)
    hidden = coeffs.shape[2]
    needs = (need_x, need_w_in, need_coeffs, need_w_out)
    zeros = [torch.zeros_like(t) for t in (x, w_in, coeffs, w_out)]
    with autograd_enabled():
        xl = x.detach().requires_grad_(need_x)
        wil = w_in.detach().requires_grad_(need_w_in)
        s = to_spectral(xl, wil, lmax, mmax, hidden)
        if need_w_out:
            q = impl.forward(s.detach().contiguous(), coeffs.contiguous(), mmax, grid)
        else:
            q = s.new_zeros(s.shape[0], s.shape[2], hidden)
        q.requires_grad_(True)
        wol = w_out.detach().requires_grad_(need_w_out)
        out = from_spectral(q, wol, lmax, mmax, out_channels)
        wrt = [q] + ([wol] if need_w_out else [])
        g = torch.autograd.grad(out, wrt, grad, allow_unused=True)
        gq = g[0] if g[0] is not None else torch.zeros_like(q)
        g_w_out = (g[1] if g[1] is not None else zeros[3]) if need_w_out else None
        need_s = need_x or need_w_in
        gs, gc = impl.backward(gq.contiguous(), s.detach().contiguous(), coeffs.contiguous(), mmax, grid, need_s,
                               need_coeffs)
        g_x = g_w_in = None
        if need_s and s.requires_grad:
            lin = [t for t, n in ((xl, need_x), (wil, need_w_in)) if n]
            gl = list(torch.autograd.grad(s, lin, gs, allow_unused=True))
            if need_x:
                g_x = gl.pop(0)
            if need_w_in:
                g_w_in = gl.pop(0)
    outs = []
    for t, n, z in zip((g_x, g_w_in, gc if need_coeffs else None, g_w_out), needs, zeros):
        outs.append((z if t is None else t.contiguous()) if n else None)
    return tuple(outs)


class _LegacyTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_in, coeffs, w_out, lmax, mmax, out_channels, grid):
        hidden = coeffs.shape[2]
        s = to_spectral(x, w_in, lmax, mmax, hidden)
        q = select("so2_grid_product", x.device).forward(s.contiguous(), coeffs.contiguous(), mmax, grid)
        ctx.save_for_backward(x, w_in, coeffs, w_out)
        ctx.args = (lmax, mmax, out_channels, grid)
        return from_spectral(q, w_out, lmax, mmax, out_channels)

    @staticmethod
    def backward(ctx, grad):
        x, w_in, coeffs, w_out = ctx.saved_tensors
        n = ctx.needs_input_grad
        return _legacy_backward(grad.contiguous(), x, w_in, coeffs, w_out, *ctx.args, *n[:4]) + (None,) * 4


def legacy_tensor_product(x, w_in, coeffs, w_out, lmax, mmax, out_channels):
    """The op before issue 19 (forward and autograd backward), for this comparison only."""
    return _LegacyTP.apply(x, w_in, coeffs, w_out, lmax, mmax, out_channels, tp_grid_size(mmax, coeffs.shape[1]))


ARMS = {"before": legacy_tensor_product, "after": so2ops.so2_tensor_product}


# ------------------------------------------------------------------ timing
def _inputs(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, num_coeffs(LMAX), C, generator=g)
    w_in = torch.randn(NU, tp_in_size(LMAX, MMAX, C, H), generator=g) / math.sqrt((LMAX + 1) * C)
    coeffs = torch.randn(n, NU, H, generator=g)
    w_out = torch.randn(tp_out_size(LMAX, MMAX, H, C), generator=g) / math.sqrt(H)
    return [t.requires_grad_(True) for t in (x, w_in, coeffs, w_out)]


def _step(fn, leaves, grad):
    def run():
        for t in leaves:
            t.grad = None
        fn(*leaves, LMAX, MMAX, C).backward(grad)
    return run


def _fill_calls(run):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    counts = {e.key: e.count for e in prof.key_averages()}
    return {k: counts.get(k, 0) for k in ("aten::fill_", "aten::zero_", "aten::zeros_like", "aten::index_put_")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--target-s", type=float, default=1.0, help="seconds of timing per row")
    ap.add_argument("--out", default=None)
    ap.add_argument("--name", default="tp_backward", help="file stem of the results")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    backend = "cpu" if "cpu" in so2ops.backends() else "reference"
    budget = Budget(warmup=2, target_s=args.target_s, min_reps=5, max_reps=200)
    rows = []
    load_before = os.getloadavg()
    for n in NODES:
        leaves = _inputs(n)
        grad = torch.randn(n, num_coeffs(LMAX), C, generator=torch.Generator().manual_seed(1))
        steps = {name: _step(fn, leaves, grad) for name, fn in ARMS.items()}
        # same numbers from both arms (float32 tolerance), so the timing compares equal work
        got = {}
        for name, run in steps.items():
            with timed_backend(backend):
                run()
            got[name] = [t.grad.clone() for t in leaves]
        for a, b, what in zip(got["after"], got["before"], ("x", "w_in", "coeffs", "w_out")):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()), msg=f"grad {what}")
        res = time_cpu_interleaved([(run, lambda: timed_backend(backend), budget) for run in steps.values()])
        base = res[0]["median"]
        for name, r in zip(steps, res):
            with timed_backend(backend):
                fills = _fill_calls(steps[name])
            rows.append({"N": n, "arm": name, "backend": backend, "median_s": r["median"], "q20_s": r["q20"],
                         "q80_s": r["q80"], "n": r["n"], "speedup_vs_before": base / r["median"], "calls": fills})
            print(f"N={n:4d} {name:6s} fwd+bwd {r['median'] * 1e3:8.2f} ms  (x{base / r['median']:.2f} vs before)  "
                  f"fill_={fills['aten::fill_']} zero_={fills['aten::zero_']}", flush=True)
    if args.out:
        from bench.device import _git_commit

        git = _git_commit()
        cmd = "python -m bench.ops.tp_backward " + " ".join(argv if argv is not None else sys.argv[1:])
        meta = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(), "git": git,
                "threads": torch.get_num_threads(), "dtype": "float32", "torch": torch.__version__, "command": cmd.strip(),
                "shape": {"lmax": LMAX, "mmax": MMAX, "C": C, "H": H, "C_out": C, "body_order": NU},
                "grad": ["x", "w_in", "coeffs", "w_out"], "grid_backend": backend, "value_checks": False,
                "loadavg_1_5_15": {"start": list(load_before), "end": list(os.getloadavg())}}
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, args.name + ".json"), "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
        with open(os.path.join(args.out, args.name + ".md"), "w") as f:
            f.write(f"# so2_tensor_product forward+backward: hand-written GEMM backward vs autograd (issue 19)\n\n"
                    f"- {meta['created']}, git {git}, torch {torch.__version__}, {meta['threads']} threads, float32\n"
                    f"- command: `{meta['command']}`\n"
                    f"- machine load average (1/5/15 min) at start {load_before[0]:.1f}/{load_before[1]:.1f}/"
                    f"{load_before[2]:.1f}, at end {meta['loadavg_1_5_15']['end'][0]:.1f}: a shared machine; the two "
                    "arms are interleaved, so their ratio is fairer than the absolute times\n"
                    f"- qh9 node TP: lmax {LMAX}, mmax {MMAX}, C = H = C_out = {C}, body order {NU}; grid backend "
                    f"`{backend}`; gradients of x, w_in, coeffs, w_out; value checks off\n"
                    "- median of interleaved repetitions; `before` = old forward + autograd backward "
                    "(`_LegacyTP` in bench/ops/tp_backward.py), `after` = `so2ops.so2_tensor_product`\n"
                    "- fill_ / zero_ / zeros_like / index_put_: aten calls in one forward+backward (torch.profiler)\n\n"
                    "| N | arm | fwd+bwd (ms) | q20-q80 (ms) | reps | speedup vs before | fill_ | zero_ | zeros_like "
                    "| index_put_ |\n|---|---|---|---|---|---|---|---|---|---|\n")
            for r in rows:
                c = r["calls"]
                f.write(f"| {r['N']} | {r['arm']} | {r['median_s'] * 1e3:.2f} | {r['q20_s'] * 1e3:.2f}-"
                        f"{r['q80_s'] * 1e3:.2f} | {r['n']} | {r['speedup_vs_before']:.2f} | {c['aten::fill_']} | "
                        f"{c['aten::zero_']} | {c['aten::zeros_like']} | {c['aten::index_put_']} |\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
