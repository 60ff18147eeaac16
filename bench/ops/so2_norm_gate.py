"""``so2_layer_norm`` and ``so2_gate``: the fused ops against the torch compositions they replace.

Two ways to run it:

* as registry entries ``so2_layer_norm`` / ``so2_gate`` (``python -m bench so2_layer_norm so2_gate``):
  every so2ops backend on the device plus the ``composition`` baseline (the
  pre-fusion module math, plain PyTorch ops and autograd: ``so2ops.reference``
  called directly, not through the custom op);
* standalone, the model-size comparison (issue 19, item 3)::

      python -m bench.ops.so2_norm_gate [--threads 2] [--target-s 0.3] [--out DIR] [--name STEM]

  ``before`` (the composition) and ``after`` (``so2ops.so2_layer_norm`` /
  ``so2ops.so2_gate`` on the ``cpu`` backend, else ``reference``) side by side
  (``time_cpu_interleaved``: a drift of a shared machine hits both alike), forward
  (``no_grad``) and forward+backward, at QHNetV2 batch-1 uracil sizes: lmax 4,
  ``[N, 25, C]`` for N = 12 (atoms), 78 (atom pairs), 132 (ordered pairs), C = 128
  and 48; the norm in ``joint`` mode (the model's).  ``Gate`` rows time the whole
  module (its ``nn.Linear`` included, in both arms).  Value checks off.  Results:
  ``DIR/<name>.{json,md}`` with the command and the machine's load average.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys

import torch

import so2ops
from so2ops.layout import num_coeffs
from so2ops.reference.so2_gate import gate_composition

from .. import inputs as inp
from ..registry import Entry, Impl, Shape, Workload, register, standard_cases
from ..so2_backends import backend_impls, leaves, timed_backend

EPS = 1e-6


# ------------------------------------------------------------------ registry entries
def _shapes(quick: bool, gpu: bool) -> Shape:
    sh = Shape()
    sh.add("headline", lmax=4, C=128, N=132)
    if quick:
        return sh
    n = 20_000 if gpu else 2_000
    sh.add("headline", lmax=4, C=128, N=n)
    for lmax in (2, 4, 6, 8):
        sh.add("lmax", lmax=lmax, C=128, N=n // 4)
    return sh


def _with_composition(impls, build, note):
    """The so2ops backends plus the plain composition, which the speedups are taken against."""
    for impl in impls:
        impl.is_baseline = False
    impls.append(Impl("composition", "baseline", build, is_baseline=True, note=note))
    return impls


class LayerNormEntry(Entry):
    name = "so2_layer_norm"
    kind = "op"
    bound = "bytes"
    description = "SO2LayerNorm over all degrees (joint RMS), fused"

    def cases(self, quick, device):
        return standard_cases(_shapes(quick, device.type == "cuda"), quick, () if quick else (torch.float64,))

    def make_inputs(self, shape, dtype, device, seed):
        g = inp.generator(seed)
        return {"x": inp.randn((shape["N"], num_coeffs(shape["lmax"]), shape["C"]), g, dtype, device),
                "weight": 1 + 0.1 * inp.randn((shape["lmax"] + 1, shape["C"]), g, dtype, device),
                "bias": inp.randn((shape["C"],), g, dtype, device)}

    def impls(self, device):
        grads = ("x", "weight", "bias")

        def bind(inputs, shape):
            t = leaves(inputs, grads)
            return (lambda: so2ops.so2_layer_norm(t["x"], t["weight"], t["bias"], shape["lmax"], EPS, True)), \
                [t[k] for k in grads]

        def composition(inputs, shape):
            t = leaves(inputs, grads)
            fwd = lambda: so2ops.reference.so2_layer_norm(t["x"], t["weight"], t["bias"], shape["lmax"], EPS, True)  # noqa: E731
            return Workload(fwd, [t[k] for k in grads])

        return _with_composition(backend_impls("so2_layer_norm", device, bind), composition,
                                 "the pre-fusion SO2LayerNorm math (plain torch ops, autograd)")

    def mem_estimate(self, shape, itemsize):
        return itemsize * 12 * shape["N"] * num_coeffs(shape["lmax"]) * shape["C"]


class GateEntry(Entry):
    name = "so2_gate"
    kind = "op"
    bound = "bytes"
    description = "Gate after its linear layer: SiLU on l = 0, sigmoid gates on l > 0, fused"

    def cases(self, quick, device):
        return standard_cases(_shapes(quick, device.type == "cuda"), quick, () if quick else (torch.float64,))

    def make_inputs(self, shape, dtype, device, seed):
        g = inp.generator(seed)
        return {"x": inp.randn((shape["N"], num_coeffs(shape["lmax"]), shape["C"]), g, dtype, device),
                "logits": inp.randn((shape["N"], shape["lmax"], shape["C"]), g, dtype, device)}

    def impls(self, device):
        grads = ("x", "logits")

        def bind(inputs, shape):
            t = leaves(inputs, grads)
            return (lambda: so2ops.so2_gate(t["x"], t["logits"])), [t[k] for k in grads]

        def composition(inputs, shape):
            t = leaves(inputs, grads)
            return Workload(lambda: so2ops.reference.so2_gate(t["x"], t["logits"]), [t[k] for k in grads])

        return _with_composition(backend_impls("so2_gate", device, bind), composition,
                                 "the pre-fusion Gate math after its linear (sigmoid, per-degree loop, cat)")

    def mem_estimate(self, shape, itemsize):
        return itemsize * 10 * shape["N"] * num_coeffs(shape["lmax"]) * shape["C"]


LAYER_NORM = register(LayerNormEntry())
GATE = register(GateEntry())


# ------------------------------------------------------------------ standalone model-size comparison
LMAX = 4
SIZES = ((12, 128), (78, 128), (132, 128), (132, 48))  # (rows N, channels C)


def _arms(n, c, seed=0):
    """``{(what, arm): (forward, leaves)}``: the norm op and the Gate module, before and after."""
    g = torch.Generator().manual_seed(seed)
    k = num_coeffs(LMAX)
    x = torch.randn(n, k, c, generator=g)
    ln = so2ops.nn.SO2LayerNorm(LMAX, c, degrees="joint")
    gate = so2ops.nn.Gate(LMAX, c)
    with torch.no_grad():
        ln.weight.add_(0.1 * torch.randn(ln.weight.shape, generator=g))
        ln.bias.add_(0.1 * torch.randn(ln.bias.shape, generator=g))
    xl = x.clone().requires_grad_(True)
    lin = gate.gates
    return {
        ("SO2LayerNorm", "before"): (lambda: so2ops.reference.so2_layer_norm(xl, ln.weight, ln.bias, LMAX, EPS, True),
                                     [xl, ln.weight, ln.bias]),
        ("SO2LayerNorm", "after"): (lambda: ln(xl), [xl, ln.weight, ln.bias]),
        ("Gate", "before"): (lambda: gate_composition(xl, lin.weight, lin.bias, LMAX), [xl, lin.weight, lin.bias]),
        ("Gate", "after"): (lambda: gate(xl), [xl, lin.weight, lin.bias]),
    }


def _fwd(fn):
    def run():
        with torch.no_grad():
            fn()
    return run


def _fwdbwd(fn, params, grad):
    def run():
        for p in params:
            p.grad = None
        fn().backward(grad)
    return run


def main(argv=None) -> int:
    from ..timer import Budget, time_cpu_interleaved

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--target-s", type=float, default=0.3, help="seconds of timing per row")
    ap.add_argument("--out", default=None)
    ap.add_argument("--name", default="so2_norm_gate", help="file stem of the results")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    backend = "cpu" if "cpu" in so2ops.dispatch.implementations("so2_gate") and \
        so2ops.dispatch.runnable("cpu", torch.device("cpu")) else "reference"
    budget = Budget(warmup=3, target_s=args.target_s, min_reps=10, max_reps=2000)
    rows = []
    load_before = os.getloadavg()
    for n, c in SIZES:
        arms = _arms(n, c)
        grad = torch.randn(n, num_coeffs(LMAX), c, generator=torch.Generator().manual_seed(1))
        for what in ("SO2LayerNorm", "Gate"):
            (f_before, params), (f_after, _) = arms[(what, "before")], arms[(what, "after")]
            # same numbers from both arms, so the timing compares equal work
            with timed_backend(backend):
                torch.testing.assert_close(f_after(), f_before(), rtol=1e-4, atol=1e-4)
            for mode in ("fwd", "fwd+bwd"):
                runs = [_fwd(f) if mode == "fwd" else _fwdbwd(f, params, grad) for f in (f_before, f_after)]
                res = time_cpu_interleaved([(run, lambda: timed_backend(backend), budget) for run in runs])
                base = res[0]["median"]
                for arm, r in zip(("before", "after"), res):
                    rows.append({"module": what, "N": n, "C": c, "mode": mode, "arm": arm, "median_s": r["median"],
                                 "q20_s": r["q20"], "q80_s": r["q80"], "n": r["n"],
                                 "speedup_vs_before": base / r["median"]})
                print(f"{what:12s} N={n:4d} C={c:4d} {mode:8s} before {base * 1e6:8.1f} us  after "
                      f"{res[1]['median'] * 1e6:8.1f} us  x{base / res[1]['median']:.2f}", flush=True)
    if args.out:
        from bench.device import _git_commit

        git = _git_commit()
        cmd = "python -m bench.ops.so2_norm_gate " + " ".join(argv if argv is not None else sys.argv[1:])
        meta = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(), "git": git,
                "threads": torch.get_num_threads(), "dtype": "float32", "torch": torch.__version__,
                "command": cmd.strip(), "lmax": LMAX, "norm": "joint", "backend": backend, "value_checks": False,
                "loadavg_1_5_15": {"start": list(load_before), "end": list(os.getloadavg())}}
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, args.name + ".json"), "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
        with open(os.path.join(args.out, args.name + ".md"), "w") as f:
            f.write("# SO2LayerNorm and Gate: fused ops vs the torch compositions (issue 19, item 3)\n\n"
                    f"- {meta['created']}, git {git}, torch {torch.__version__}, {meta['threads']} threads, float32\n"
                    f"- command: `{meta['command']}`\n"
                    f"- machine load average (1/5/15 min) at start {load_before[0]:.1f}/{load_before[1]:.1f}/"
                    f"{load_before[2]:.1f}, at end {meta['loadavg_1_5_15']['end'][0]:.1f}: a shared machine; the two "
                    "arms are interleaved, so their ratio is fairer than the absolute times\n"
                    f"- lmax {LMAX}, x `[N, 25, C]`; SO2LayerNorm `joint` (gradients x, weight, bias); Gate = the "
                    "whole module incl. its nn.Linear (gradients x, linear weight, bias); backend "
                    f"`{backend}`; value checks off\n"
                    "- `before` = the pre-fusion composition (`so2ops.reference.so2_layer_norm`, "
                    "`so2ops.reference.so2_gate.gate_composition`), `after` = the modules on the fused ops; "
                    "median of interleaved repetitions\n\n"
                    "| module | N | C | mode | before (us) | after (us) | speedup |\n|---|---|---|---|---|---|---|\n")
            for b, a in zip(rows[0::2], rows[1::2]):
                f.write(f"| {b['module']} | {b['N']} | {b['C']} | {b['mode']} | {b['median_s'] * 1e6:.1f} | "
                        f"{a['median_s'] * 1e6:.1f} | {a['speedup_vs_before']:.2f} |\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
