"""Where the time of a QHNetV2 forward / training step goes: a per-op profile.

    python -m bench.profile_model [--preset qh9] [--molecule uracil] [--backend auto|cpu|reference|...]
                                  [--mode fwd|fwdbwd ...] [--reps 3] [--threads T] [--out DIR]

Runs the model (seeded weights, def2-SVP hard-coded, see ``bench.models``)
under ``torch.profiler`` and splits the wall time of the calling thread into
disjoint parts:

* every so2ops custom op (``so2ops::so2_message``, ``so2_linear``, ``rotate``,
  ``edge_wigner``, ``so2_tensor_product``, ``assemble_blocks``) and its
  backward op (``*_backward``), inclusive of everything it calls;
* the model's other parts, labelled with ``record_function`` through module
  hooks (nothing in ``qhnetv2`` is edited): ``LayerNorm`` (SO2LayerNorm),
  ``Gate``, ``radial MLP`` (radial basis + the MLPs of the message and pair
  blocks), ``tensor-product weights`` (the SO2TensorProduct module outside its
  op: per-node product weights), ``SO2Linear glue``, ``embedding``, ``graph
  building`` (``build_graph``), ``input checks`` (element lookup, geometry
  check);
* the backward of those parts: autograd nodes are attributed to the part whose
  forward op created them (the profiler's sequence numbers);
* ``other``: the rest (concatenations, gathers, residual adds, masks, the
  autograd engine itself); ``python between ops``: time inside the step not
  covered by any traced op (the model's Python code, module hooks).

Each part's time is the sum of the self times of its events (so the parts add
up to the profiled time).  The profiler adds overhead; the plain (unprofiled)
time of the same step is reported next to it.  ``--backend auto`` (default)
is the automatic choice; a forced backend that lacks an op the model uses is
refused with the list of missing ops, unless ``--fallback`` (then the missing
ops take the automatic choice and the output says so).  Results go to
``DIR/<device-name>/profile_<molecule>_<backend>.{json,md}`` (``DIR``
defaults to ``bench/results``).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))

#: so2ops custom ops (forward names; each has a ``<name>_backward`` op too)
SO2OPS = ("so2_message", "so2_linear", "rotate", "edge_wigner", "so2_tensor_product", "assemble_blocks")
PHASES = ("## forward", "## backward")
#: model part labels (set by module hooks), in report order
PARTS = ("LayerNorm", "Gate", "radial MLP", "tensor-product weights", "SO2Linear glue", "embedding", "graph building",
         "input checks")


def _loadavg() -> Optional[List[float]]:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _uptime() -> str:
    try:
        import subprocess

        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:  # noqa: BLE001
        return ""


class _Labeler:
    """Forward hooks that open/close a ``record_function`` region around chosen modules."""

    def __init__(self):
        self.handles = []
        self.stack: List = []

    def label(self, module: torch.nn.Module, name: str) -> None:
        def pre(mod, args):
            rf = torch.autograd.profiler.record_function(name)
            rf.__enter__()
            self.stack.append(rf)

        def post(mod, args, out):
            self.stack.pop().__exit__(None, None, None)

        self.handles.append(module.register_forward_pre_hook(pre))
        self.handles.append(module.register_forward_hook(post))

    def remove(self):
        for h in self.handles:
            h.remove()


def label_model(model) -> _Labeler:
    from so2ops.nn import Gate, SO2LayerNorm, SO2Linear, SO2TensorProduct

    from qhnetv2.model.radial import RadialBasis

    lab = _Labeler()
    for name, mod in model.named_modules():
        if isinstance(mod, SO2LayerNorm):
            lab.label(mod, "LayerNorm")
        elif isinstance(mod, Gate):
            lab.label(mod, "Gate")
        elif isinstance(mod, RadialBasis) or name.endswith(".radial") or name == "radial":
            lab.label(mod, "radial MLP")
        elif isinstance(mod, SO2TensorProduct):
            lab.label(mod, "tensor-product weights")
        elif isinstance(mod, SO2Linear):
            lab.label(mod, "SO2Linear glue")
        elif isinstance(mod, torch.nn.Embedding):
            lab.label(mod, "embedding")
    return lab


@contextlib.contextmanager
def labelled_functions(model):
    """``record_function`` around graph building (``build_topology``, the host part, and
    ``graph_vectors``) and the input checks (patched for the duration only)."""
    import qhnetv2.model.qhnetv2 as qm

    originals = {name: getattr(qm, name) for name in ("build_topology", "graph_vectors")}

    def labelled(fn, label):
        def inner(*a, **k):
            with torch.autograd.profiler.record_function(label):
                return fn(*a, **k)
        return inner

    for name, fn in originals.items():
        setattr(qm, name, labelled(fn, "graph building"))
    model.check_geometry = labelled(model.check_geometry, "input checks")
    model.element_index = labelled(model.element_index, "input checks")
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(qm, name, fn)
        del model.check_geometry
        del model.element_index


def _op_name(name: str) -> Optional[str]:
    if name.startswith("so2ops::"):
        return name[len("so2ops::"):]
    return None


def attribute(events) -> Dict[str, Dict[str, float]]:
    """``{phase: {part: self microseconds}}`` over the profiled events of the calling thread."""
    events = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    seq_part: Dict[int, str] = {}
    memo: Dict[int, str] = {}

    def own(e) -> Optional[str]:
        op = _op_name(e.name)
        if op is not None:
            return "so2ops::" + op
        if e.name in PARTS:
            return e.name
        return None

    def part_of(e) -> str:
        key = id(e)
        if key in memo:
            return memo[key]
        p = own(e)
        if p is None and e.name.startswith("autograd::engine::evaluate_function"):
            fwd = seq_part.get(e.sequence_nr)
            p = ("backward of " + fwd) if fwd and not fwd.startswith("so2ops::") else None
        if p is None:
            par = e.cpu_parent
            p = part_of(par) if par is not None and par.name not in PHASES else "other"
        memo[key] = p
        return p

    def phase_of(e) -> str:
        while e is not None:
            if e.name in PHASES:
                return e.name[3:]
            e = e.cpu_parent
        return "outside"

    # forward ops that created autograd nodes: their part, by sequence number
    for e in events:
        if e.sequence_nr is not None and e.sequence_nr >= 0 and not e.name.startswith("autograd::") \
                and phase_of(e) == "forward":
            p = part_of(e)
            if p != "other":
                seq_part.setdefault(e.sequence_nr, p)
    out: Dict[str, Dict[str, float]] = {}
    for e in events:
        if e.name in PHASES:
            # self time of the phase region itself: Python between the traced ops (module code, hooks)
            ph = e.name[3:]
            out.setdefault(ph, {})
            out[ph]["python between ops"] = out[ph].get("python between ops", 0.0) + float(e.self_cpu_time_total)
            continue
        ph = phase_of(e)
        if ph == "outside":
            continue
        out.setdefault(ph, {})
        p = part_of(e)
        out[ph][p] = out[ph].get(p, 0.0) + float(e.self_cpu_time_total)
    return out


def _system(name: str):
    from .models import molecules as mols

    return mols.system(name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile_model", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="qh9")
    ap.add_argument("--molecule", default="uracil", help="water, ethanol, uracil, nonane, ... or qm9x<B> (a batch)")
    ap.add_argument("--backend", default="auto", help="auto (no backend forced) or an so2ops backend forced on every op")
    ap.add_argument("--fallback", action="store_true", help="with a forced backend lacking ops: those ops take the automatic choice")
    ap.add_argument("--mode", action="append", choices=("fwd", "fwdbwd"), help="default: both")
    ap.add_argument("--reps", type=int, default=3, help="profiled repetitions (after one warm-up)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--name", default=None, help="file stem (default profile_<molecule>_<backend>)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import so2ops
    from so2ops import HamiltonianIndex
    from so2ops.dispatch import BACKENDS

    from . import device as devinfo
    from .checkpoint import atomic_write_json, atomic_write_text
    from .models.qhnetv2_model import LAYOUT, _automatic, backends_used, build_model, missing_ops
    from .so2_backends import force_backend

    dev = torch.device("cpu")
    load_start, uptime_start = _loadavg(), _uptime()
    note = ""
    if args.backend in ("auto", "fused"):
        ctx = _automatic
        used = backends_used(dev)
    elif args.backend in BACKENDS:
        miss = missing_ops(args.backend, dev)
        if miss and not args.fallback:
            print(f"profile_model: backend {args.backend!r} does not implement {', '.join(miss)} here; "
                  f"use --backend auto, or --fallback to run those ops on the automatic choice", file=sys.stderr)
            return 2
        if miss:
            ctx = _automatic
            used = backends_used(dev)
            note = (f"--backend {args.backend} --fallback: {', '.join(miss)} have no {args.backend} implementation; "
                    f"the automatic choice ran every op (ops on {args.backend} where it has them)")
        else:
            ctx = lambda: force_backend(args.backend)  # noqa: E731
            used = {op: args.backend for op in backends_used(dev)}
    else:
        print(f"profile_model: unknown backend {args.backend!r}", file=sys.stderr)
        return 2

    model = build_model(args.preset, torch.float32, "cpu", args.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    z, pos, batch = _system(args.molecule)
    pos = pos.float()
    index = HamiltonianIndex.build(LAYOUT, z, batch)
    modes = args.mode or ["fwd", "fwdbwd"]
    probe = None

    def step(mode):
        nonlocal probe
        if mode == "fwd":
            with torch.no_grad(), torch.autograd.profiler.record_function("## forward"):
                return model.forward_batch(z, pos, batch, index=index)[0]
        with torch.autograd.profiler.record_function("## forward"):
            h = model.forward_batch(z, pos, batch, index=index)[0]
        if probe is None:
            probe = torch.randn(h.shape, generator=torch.Generator().manual_seed(1))
        with torch.autograd.profiler.record_function("## backward"):
            return torch.autograd.grad(h, params, probe)

    results = {}
    for mode in modes:
        with ctx():
            step(mode)  # warm-up (caches, tables)
            plain = []
            for _ in range(max(3, args.reps)):
                t0 = time.perf_counter()
                step(mode)
                plain.append(time.perf_counter() - t0)
            lab = label_model(model)
            try:
                with labelled_functions(model), torch.profiler.profile(
                        activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    t0 = time.perf_counter()
                    for _ in range(args.reps):
                        step(mode)
                    prof_wall = (time.perf_counter() - t0) / args.reps
            finally:
                lab.remove()
        parts = attribute(prof.events())
        total_us = sum(sum(v.values()) for v in parts.values())
        table = []
        names = sorted({p for v in parts.values() for p in v},
                       key=lambda p: -sum(v.get(p, 0.0) for v in parts.values()))
        for p in names:
            f = parts.get("forward", {}).get(p, 0.0) / args.reps / 1e3
            b = parts.get("backward", {}).get(p, 0.0) / args.reps / 1e3
            table.append({"part": p, "forward_ms": f, "backward_ms": b, "total_ms": f + b,
                          "pct": 100.0 * (f + b) * 1e3 * args.reps / total_us if total_us else 0.0})
        top = sorted(prof.key_averages(), key=lambda a: -a.self_cpu_time_total)[:25]
        results[mode] = {
            "plain_s": {"median": statistics.median(plain), "min": min(plain), "n": len(plain)},
            "profiled_wall_s": prof_wall,
            "profiled_self_ms_per_rep": total_us / args.reps / 1e3,
            "parts": table,
            "top_aten_self": [{"name": a.key, "calls_per_rep": a.count / args.reps,
                               "self_ms_per_rep": a.self_cpu_time_total / args.reps / 1e3} for a in top],
        }

    doc = {
        "kind": "so2ops-model-profile/1",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(sys.argv[1:] if argv is None else argv),
        "preset": args.preset, "molecule": args.molecule, "atoms": int(z.numel()),
        "molecules": int(batch.max()) + 1, "backend": args.backend, "note": note,
        "ops_ran_on": used,
        "device": devinfo.info(dev), "versions": devinfo.versions(),
        "threads": torch.get_num_threads(),
        "load": {"start": load_start, "end": _loadavg(), "uptime_start": uptime_start, "uptime_end": _uptime()},
        "reps": args.reps, "modes": results,
    }
    out_dir = os.path.join(args.out, devinfo.results_dirname(dev))
    os.makedirs(out_dir, exist_ok=True)
    stem = args.name or f"profile_{args.molecule}_{args.backend}"
    jpath, mpath = os.path.join(out_dir, stem + ".json"), os.path.join(out_dir, stem + ".md")
    atomic_write_json(jpath, doc)
    text = markdown(doc)
    atomic_write_text(mpath, text)
    print(text)
    print(jpath)
    print(mpath)
    return 0


def markdown(doc: Dict) -> str:
    ld = doc["load"]
    lines = [f"# QHNetV2 profile: {doc['preset']} / {doc['molecule']} ({doc['atoms']} atoms, {doc['molecules']} molecule(s)) "
             f"/ backend {doc['backend']}", "",
             f"- created {doc['created']}, git {doc['versions'].get('git')}, torch {doc['versions']['torch']}; "
             f"command: `python -m bench.profile_model {' '.join(doc['argv'])}`",
             f"- device: {doc['device']['name']}, {doc['threads']} threads; machine load: `{ld['uptime_start']}` at start, "
             f"`{ld['uptime_end']}` at end (other jobs share the 2 cores)",
             "- ops ran on: " + ", ".join(f"{k}={v}" for k, v in doc["ops_ran_on"].items())]
    if doc["note"]:
        lines.append(f"- note: {doc['note']}")
    lines += ["- parts: self times of the calling thread's profiler events, each event given to the innermost so2ops op or "
              "model part around it (autograd nodes of a part's ops count as its backward); `other` is the rest "
              "(cat, gathers, residual adds, masks, autograd engine); `python between ops`: untraced time inside the step.", ""]
    for mode, r in doc["modes"].items():
        lines += [f"## {mode}", "",
                  f"plain (unprofiled) time per step: median {r['plain_s']['median'] * 1e3:.1f} ms "
                  f"(min {r['plain_s']['min'] * 1e3:.1f}, n={r['plain_s']['n']}); under the profiler "
                  f"{r['profiled_wall_s'] * 1e3:.1f} ms wall, {r['profiled_self_ms_per_rep']:.1f} ms attributed.", "",
                  "| part | forward ms | backward ms | total ms | % |", "|---|---|---|---|---|"]
        for p in r["parts"]:
            lines.append(f"| {p['part']} | {p['forward_ms']:.2f} | {p['backward_ms']:.2f} | {p['total_ms']:.2f} | {p['pct']:.1f} |")
        lines += ["", "<details><summary>top events by self time</summary>", "",
                  "| event | calls/step | self ms/step |", "|---|---|---|"]
        for a in r["top_aten_self"]:
            lines.append(f"| `{a['name']}` | {a['calls_per_rep']:.0f} | {a['self_ms_per_rep']:.2f} |")
        lines += ["", "</details>", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
