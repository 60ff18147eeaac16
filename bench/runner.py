"""The benchmark loop: for each case, correctness first, then timing, memory and speedups.

For every case (entry x shape x dtype):

1. build the inputs once, and every implementation's workload on them;
2. compute the oracle (the ``reference`` backend; float32 for low-precision
   cases) and assert every same-math implementation's output *and gradients*
   match it; implementations of a different function must be finite.  A
   failing implementation is not timed and makes the run fail;
3. time each implementation in each mode (``fwd``, ``bwd``, ``fwdbwd``);
4. measure the peak memory of ``fwdbwd`` (in-process on GPU, in a fresh
   worker process on CPU, see ``bench.memory``).

Then speedups against every baseline of the same case and mode, the
percentage of peak, and the issue's targets are filled in.

After every case the document so far is handed to a ``Checkpoint`` (written
atomically to ``<stem>.partial.json``); a ``ResumeState`` read back from it
makes a later run reuse the finished cases (``bench.checkpoint``).
"""
from __future__ import annotations

import datetime as _dt
import gc
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

import so2ops

from . import SCHEMA_VERSION, device as devinfo, memory, peaks as peaktab
from .checkpoint import Checkpoint, ResumeState, case_key, fingerprint
from .registry import Case, Entry, Impl, Workload
from .timer import Budget, time_cpu_interleaved, timer_for, timer_name
from .workloads import dtype_name, seeded_like, step

#: Relative Frobenius-norm tolerance of outputs and gradients against the oracle.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}
TOLERANCE_TF32 = 5e-3


@dataclass
class Options:
    device: torch.device
    quick: bool = False
    budget: Budget = field(default_factory=Budget)
    mem_budget_bytes: int = 4 << 30
    memory: bool = True
    allow_tf32: bool = False
    seed: int = 0
    dtypes: Optional[Sequence[str]] = None
    modes: Optional[Sequence[str]] = None
    log: bool = True
    #: an impl whose checked fwd+bwd took longer than this is timed with one repetition per mode
    slow_call_s: float = 5.0


def _log(opts: Options, msg: str) -> None:
    if opts.log:
        print(msg, file=sys.stderr, flush=True)


def _shape_text(shape: Dict) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items())


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
    if a64.shape != b64.shape:
        return math.inf
    den = float(b64.norm())
    return float((a64 - b64).norm()) / (den if den > 0 else 1.0)


def _oracle_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _cast_inputs(inputs: Dict[str, torch.Tensor], dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if v is not None and v.is_floating_point() else v) for k, v in inputs.items()}


_LAST_CHECK_S = [0.0]


def _run_check(w: Workload, seed: int) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Output and gradients of a workload, in the reference's layout (its duration lands in ``_LAST_CHECK_S``)."""
    t0 = time.perf_counter()
    with w.context():
        out = w.forward()
        grads = list(torch.autograd.grad(out, w.grad_inputs, seeded_like(out, seed))) if w.grad_inputs else []
    out = out.detach()
    if out.is_cuda:
        torch.cuda.synchronize()
    _LAST_CHECK_S[0] = time.perf_counter() - t0
    if w.to_reference is not None:
        out, grads = w.to_reference(out, grads)
    return out, grads


def _base_row(entry: Entry, case: Case, impl: Impl, mode: str) -> Dict:
    return {
        "entry": entry.name, "kind": entry.kind, "impl": impl.name, "impl_kind": impl.kind,
        "is_baseline": impl.is_baseline, "shape": dict(case.shape), "dtype": dtype_name(case.dtype),
        "mode": mode, "tags": list(case.tags), "status": "ok", "note": impl.note,
        "check": {"status": "n/a", "max_rel_err": None, "tol": None},
        "time_s": None, "flops": None, "bytes": None, "flops_per_s": None, "bytes_per_s": None,
        "pct_peak_flops": None, "pct_peak_bw": None, "peak_key": None, "peak_mem_bytes": None,
        "speedup": {}, "mem_ratio": {},
    }


def run_case(entry: Entry, case: Case, impls: List[Impl], opts: Options, mem_jobs: List) -> List[Dict]:
    """All rows of one case (one per impl and mode)."""
    dev, dtype, shape = opts.device, case.dtype, case.shape
    isz = torch.empty(0, dtype=dtype).element_size()
    modes = [m for m in case.modes if not opts.modes or m in opts.modes]
    rows: List[Dict] = []

    def rows_with(impl, status, note, check=None):
        out = []
        for mode in modes:
            r = _base_row(entry, case, impl, mode)
            r["status"], r["note"] = status, note
            if check:
                r["check"] = check
            out.append(r)
        return out

    est = entry.mem_estimate(shape, isz)
    if est > opts.mem_budget_bytes:
        note = f"estimated {est / 2**30:.1f} GiB > memory budget {opts.mem_budget_bytes / 2**30:.1f} GiB"
        for impl in impls:
            rows += rows_with(impl, "skipped", note)
        _log(opts, f"[{entry.name} {_shape_text(shape)} {dtype_name(dtype)}] skipped: {note}")
        return rows

    t0 = time.perf_counter()
    inputs = entry.make_inputs(shape, dtype, dev, opts.seed)
    built: List[Tuple[Impl, Workload]] = []
    for impl in impls:
        reason = case.skip_impls.get(impl.name) or impl.skip(shape, dtype)
        if reason is None and impl.mem_estimate is not None:
            need = impl.mem_estimate(shape, isz)
            if need > opts.mem_budget_bytes:
                reason = f"estimated {need / 2**30:.1f} GiB > memory budget {opts.mem_budget_bytes / 2**30:.1f} GiB"
        if reason:
            rows += rows_with(impl, "skipped", reason)
            continue
        try:
            built.append((impl, impl.build(inputs, shape)))
        except Exception as exc:  # noqa: BLE001 - reported as the row's error
            rows += rows_with(impl, "error", f"build failed: {type(exc).__name__}: {exc}")

    # ---- correctness, before anything is timed
    checks: Dict[str, Dict] = {}
    check_s: Dict[str, float] = {}
    ref_impl = next((i for i in impls if i.name == "reference"), None)
    need_oracle = any(i.same_math for i, _ in built)
    oracle = None
    if need_oracle and ref_impl is not None:
        odt = _oracle_dtype(dtype)
        same = next((w for i, w in built if i.name == "reference"), None) if odt == dtype else None
        try:
            if same is not None:
                oracle = _run_check(same, opts.seed + 1)
                checks["reference"] = {"status": "oracle", "max_rel_err": 0.0, "tol": None}
                check_s["reference"] = _LAST_CHECK_S[0]
            else:
                oracle = _run_check(ref_impl.build(_cast_inputs(inputs, odt), shape), opts.seed + 1)
        except Exception as exc:  # noqa: BLE001 - without an oracle every same-math row fails
            err = {"status": "error", "max_rel_err": None, "tol": None, "error": f"reference failed: {type(exc).__name__}: {exc}"}
            for i, _ in built:
                if i.same_math:
                    checks[i.name] = dict(err)
    tol = TOLERANCE.get(dtype, 1e-4)
    if dtype == torch.float32 and opts.allow_tf32 and dev.type == "cuda":
        tol = TOLERANCE_TF32
    for impl, w in built:
        if impl.name in checks:
            continue
        try:
            if impl.same_math and oracle is not None:
                out, grads = _run_check(w, opts.seed + 1)
                errs = [_rel_err(out, oracle[0])] + [_rel_err(g, o) for g, o in zip(grads, oracle[1])]
                if len(grads) != len(oracle[1]):
                    errs.append(math.inf)
                err = max(errs)
                checks[impl.name] = {"status": "pass" if err <= tol else "fail", "max_rel_err": err, "tol": tol}
                check_s[impl.name] = _LAST_CHECK_S[0]
            elif not impl.same_math and entry.kind != "sanity":
                out, grads = _run_check(w, opts.seed + 1)
                finite = bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(g).all()) for g in grads)
                checks[impl.name] = {"status": "pass" if finite else "fail", "max_rel_err": None, "tol": "finite"}
                check_s[impl.name] = _LAST_CHECK_S[0]
            else:
                checks[impl.name] = {"status": "n/a", "max_rel_err": None, "tol": None}
        except Exception as exc:  # noqa: BLE001
            checks[impl.name] = {"status": "error", "max_rel_err": None, "tol": tol, "error": f"{type(exc).__name__}: {exc}"}
    del oracle

    # ---- timing and memory
    timer = timer_for(dev)
    timed: List[Tuple] = []  # (impl, w, mode, row, budget), in row order
    for impl, w in built:
        chk = checks[impl.name]
        if chk["status"] in ("fail", "error"):
            note = chk.get("error") or f"correctness FAILED: rel err {chk['max_rel_err']:.3g} > tol {chk['tol']:.3g}"
            rows += rows_with(impl, "failed", note, chk)
            _log(opts, f"[{entry.name} {_shape_text(shape)} {dtype_name(dtype)}] {impl.name}: {note}")
            continue
        budget, slow = opts.budget, check_s.get(impl.name, 0.0) > opts.slow_call_s
        if slow:
            # seconds per call: one repetition per mode, no warm-up beyond the check itself
            budget = Budget(warmup=0, target_s=0.0, min_reps=1, max_reps=1)
        for mode in modes:
            r = _base_row(entry, case, impl, mode)
            r["check"] = chk
            if slow:
                r["note"] = (r["note"] + "; " if r["note"] else "") + f"slow ({check_s[impl.name]:.0f} s per fwd+bwd): 1 repetition"
            timed.append((impl, w, mode, r, budget))
    # CPU: the fwd and fwdbwd rows of the case side by side (their repetitions spread over common rounds,
    # so a drift of the machine's speed hits every row alike); bwd rows (each holds a retained graph)
    # and every GPU row one at a time
    together, one_at_a_time = [], []
    for i, t in enumerate(timed):
        (together if dev.type == "cpu" and t[2] != "bwd" else one_at_a_time).append(i)
    results: List = [None] * len(timed)
    fns = []
    for i in together:
        impl, w, mode, r, budget = timed[i]
        try:
            with w.context():
                fns.append((step(w, mode, opts.seed + 1), w.context, budget))
        except Exception as exc:  # noqa: BLE001
            results[i] = exc
            fns.append(None)
    live = [(i, f) for i, f in zip(together, fns) if f is not None]
    for (i, _), res in zip(live, time_cpu_interleaved([f for _, f in live])):
        results[i] = res
    del fns, live
    for i in one_at_a_time:
        impl, w, mode, r, budget = timed[i]
        try:
            with w.context():
                fn = step(w, mode, opts.seed + 1)
                results[i] = timer(fn, budget)
                if mode == "fwdbwd" and opts.memory and case.memory and impl.memory and dev.type == "cuda":
                    r["peak_mem_bytes"] = memory.measure_cuda(fn)
            del fn
        except Exception as exc:  # noqa: BLE001
            results[i] = exc
    for (impl, w, mode, r, budget), res in zip(timed, results):
        if isinstance(res, Exception):
            r["status"], r["note"] = "error", f"{type(res).__name__}: {res}"
            rows.append(r)
            continue
        r["time_s"] = res
        c = (impl.count or entry.count)(shape, mode, isz)
        if c is not None:
            med = r["time_s"]["median"]
            r["flops"], r["bytes"] = int(c.flops), int(c.bytes)
            r["flops_per_s"], r["bytes_per_s"] = c.flops / med, c.bytes / med
        if (mode == "fwdbwd" and opts.memory and case.memory and impl.memory and dev.type == "cpu"
                and w.grad_inputs):
            mem_jobs.append((r, {"entry": entry.name, "shape": shape, "dtype": dtype_name(dtype),
                                 "impl": impl.name, "seed": opts.seed}))
        rows.append(r)
        _log(opts, f"[{entry.name} {_shape_text(shape)} {dtype_name(dtype)}] {impl.name:10s} {mode:6s} "
                   f"{r['time_s']['median'] * 1e3:9.3f} ms  (check {r['check']['status']})")
    del timed, results
    del built, inputs
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    _log(opts, f"[{entry.name} {_shape_text(shape)} {dtype_name(dtype)}] case done in {time.perf_counter() - t0:.1f} s")
    return rows


def _group_key(r: Dict) -> Tuple:
    return (r["entry"], json.dumps(r["shape"], sort_keys=True), r["dtype"], r["mode"])


def fill_speedups(rows: List[Dict]) -> None:
    """``speedup[b] = t_b / t_row`` and ``mem_ratio[b] = mem_row / mem_b`` for every baseline b of the same case+mode."""
    groups: Dict[Tuple, List[Dict]] = {}
    for r in rows:
        if r["status"] == "ok":
            groups.setdefault(_group_key(r), []).append(r)
    for grp in groups.values():
        bases = [b for b in grp if b["is_baseline"]]
        for r in grp:
            for b in bases:
                if b is r:
                    continue
                r["speedup"][b["impl"]] = b["time_s"]["median"] / r["time_s"]["median"]
                if r["peak_mem_bytes"] and b["peak_mem_bytes"]:
                    r["mem_ratio"][b["impl"]] = r["peak_mem_bytes"] / b["peak_mem_bytes"]


def measured_peaks(rows: List[Dict], device: torch.device) -> Dict[str, float]:
    """Peaks measured by the sanity rows (best repetition), in TFLOP/s and TB/s."""
    out: Dict[str, float] = {}
    for r in rows:
        if r["status"] != "ok" or r["kind"] != "sanity":
            continue
        if r["entry"] == "matmul":
            dt = getattr(torch, r["dtype"])
            key = peaktab.flops_key(dt, device)
            if dt == torch.float32 and device.type == "cuda" and not r["shape"].get("tf32"):
                key = "fp32"
            # the best repetition: a ceiling is what the device *can* do (the median carries noise)
            out[key] = max(out.get(key, 0.0), r["flops"] / r["time_s"]["min"] / 1e12)
        elif r["entry"] == "copy":
            out["bw"] = max(out.get("bw", 0.0), r["bytes"] / r["time_s"]["min"] / 1e12)
    return out


def fill_peaks(rows: List[Dict], device: torch.device, datasheet: Optional[Dict[str, float]], measured: Dict[str, float]) -> None:
    """``pct_peak_*`` of every row against the datasheet peak (GPU) or the measured one (CPU, unknown GPU)."""
    table = datasheet or measured
    for r in rows:
        if r["status"] != "ok":
            continue
        key = peaktab.flops_key(getattr(torch, r["dtype"]), device)
        if r["kind"] == "sanity" and r["entry"] == "matmul" and device.type == "cuda" and r["dtype"] == "float32" and not r["shape"].get("tf32"):
            key = "fp32"
        r["peak_key"] = key
        if r["flops_per_s"] is not None and table.get(key):
            r["pct_peak_flops"] = 100.0 * r["flops_per_s"] / (table[key] * 1e12)
        if r["bytes_per_s"] is not None and table.get("bw"):
            r["pct_peak_bw"] = 100.0 * r["bytes_per_s"] / (table["bw"] * 1e12)


def evaluate_targets(rows: List[Dict], device: torch.device) -> List[Dict]:
    """Where each op's fast backends stand against the issue's numbers, at the headline case, float32 fwd+bwd.

    The numbers are stated for ``so2_message`` (``binding``); the other ops
    are shown against the same numbers for information.
    """
    gpu = device.type == "cuda"
    goals = ([("speedup vs reference", "reference", 10.0, ">="), ("speedup vs e3nn_tp", "e3nn_tp", 50.0, ">="),
              ("peak memory / reference", "reference", 0.25, "<="), ("% of TF32 peak", None, 40.0, ">=")]
             if gpu else
             [("speedup vs reference", "reference", 2.0, ">="), ("peak memory / reference", "reference", 1 / 3, "<=")])
    fast = ("cuda", "triton") if gpu else ("cpu",)
    out = []
    heads = [r for r in rows if "headline" in r["tags"] and r["dtype"] == "float32" and r["mode"] == "fwdbwd" and r["kind"] == "op"]
    for entry in dict.fromkeys(r["entry"] for r in heads):
        for b in fast:
            row = next((r for r in heads if r["entry"] == entry and r["impl"] == b), None)
            for name, base, goal, cmp in goals:
                value, why = None, None
                if row is None or row["status"] != "ok":
                    why = "not measured: " + (row["note"] if row else f"backend {b} absent")
                elif name.startswith("speedup"):
                    value = row["speedup"].get(base)
                elif name.startswith("peak memory"):
                    value = row["mem_ratio"].get(base)
                else:
                    value = row["pct_peak_flops"]
                if value is None and why is None:
                    why = f"not measured: no {base or 'peak'} figure in this run"
                met = None if value is None else (value >= goal if cmp == ">=" else value <= goal)
                out.append({"entry": entry, "impl": b, "metric": name, "goal": goal, "cmp": cmp, "value": value,
                            "met": met, "binding": entry == "so2_message", "shape": row["shape"] if row else None,
                            "note": why or ""})
    # entries with their own goals (the model entries: whole-model time and speedup)
    from .registry import entries as _entries

    reg = _entries()
    for name in dict.fromkeys(r["entry"] for r in rows):
        entry_obj = reg.get(name)
        if entry_obj is not None and hasattr(entry_obj, "targets"):
            out += entry_obj.targets(rows, device)
    return out


def _static_meta(opts: Options) -> Dict:
    """The parts of ``meta`` that do not change during a run (gathered once: ``versions`` runs git)."""
    return {"device": devinfo.info(opts.device), "versions": devinfo.versions(), "backends": so2ops.backends()}


def _meta(opts: Options, argv: Sequence[str], rows: List[Dict], mem_method: str, elapsed_s: float,
          load_start, fp: Dict, resume: Optional[ResumeState], static: Dict) -> Tuple[Dict, Optional[Dict], Dict[str, float]]:
    """The ``meta`` block of a document (and the datasheet and measured peaks it names)."""
    name = devinfo.device_name(opts.device)
    datasheet = peaktab.gpu_peaks(name) if opts.device.type == "cuda" else None
    measured = measured_peaks(rows, opts.device)
    meta = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(argv),
        "quick": opts.quick,
        "device": static["device"],
        "versions": static["versions"],
        "backends": static["backends"],
        "timer": timer_name(opts.device),
        "budget": {"warmup": opts.budget.warmup, "target_s": opts.budget.target_s,
                   "min_reps": opts.budget.min_reps, "max_reps": opts.budget.max_reps},
        "memory_method": mem_method if opts.memory else "disabled",
        "mem_budget_bytes": opts.mem_budget_bytes,
        "allow_tf32": opts.allow_tf32,
        "peaks": {"datasheet": datasheet, "measured": measured,
                  "used": "datasheet" if datasheet else "measured"},
        # wall time of the whole run, every resumed session included
        "elapsed_s": elapsed_s,
        "loadavg_start": load_start,
        "fingerprint": fp,
        "resume": None if resume is None else {
            "from": os.path.basename(resume.path), "cases_reused": len(resume.cases_done),
            "elapsed_before_s": resume.elapsed_s},
    }
    return meta, datasheet, measured


def run(entries: Sequence[Entry], opts: Options, argv: Sequence[str] = (),
        checkpoint: Optional[Checkpoint] = None, resume: Optional[ResumeState] = None) -> Dict:
    """Run the benchmark; returns the result document (see ``bench.schema``).

    ``checkpoint``: receives the document so far after every finished case
    (``bench.checkpoint``).  ``resume``: the finished cases of an interrupted
    run with the same options; their rows are reused, not timed again, and
    their CPU memory jobs still pending are measured with this run's.
    """
    torch.backends.cuda.matmul.allow_tf32 = opts.allow_tf32
    torch.backends.cudnn.allow_tf32 = opts.allow_tf32
    t_start = time.perf_counter()
    before_s = resume.elapsed_s if resume else 0.0
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    fp = fingerprint(opts, entries)
    static = _static_meta(opts)
    rows: List[Dict] = []
    mem_jobs: List[Tuple[Dict, Dict]] = []
    done: List[str] = []
    reused = set(resume.cases_done) if resume else set()
    if resume:
        mem_jobs += resume.pending_memory
        _log(opts, f"resuming {resume.path}: {len(reused)} finished cases are reused, not timed again")
    mem_method = memory.METHOD_CUDA if opts.device.type == "cuda" else memory.METHOD_CPU

    def snapshot() -> Dict:
        # reused cases the loop has not reached yet stay in the checkpoint (never lose finished work)
        ahead = [k for k in resume.cases_done if k not in set(done)] if resume else []
        snap_rows = rows + [r for k in ahead for r in resume.rows_by_case.get(k, [])]
        index = {id(r): i for i, r in enumerate(snap_rows)}
        meta, _, _ = _meta(opts, argv, snap_rows, mem_method, before_s + time.perf_counter() - t_start, load_start,
                           fp, resume, static)
        return {"schema": SCHEMA_VERSION, "meta": meta, "rows": snap_rows, "targets": [],
                "progress": {"complete": False, "cases_done": done + ahead,
                             "pending_memory": [{"row": index[id(r)], "job": j} for r, j in mem_jobs if id(r) in index]}}

    for entry in entries:
        impls = None
        for case in entry.cases(opts.quick, opts.device):
            if opts.dtypes and dtype_name(case.dtype) not in opts.dtypes and entry.kind != "sanity":
                continue
            key = case_key(entry.name, case.shape, dtype_name(case.dtype))
            if key in reused:
                # rows come back in run order, so a resumed document equals an uninterrupted one
                rows += resume.rows_by_case.get(key, [])
                done.append(key)
                continue
            if impls is None:
                impls = entry.impls(opts.device)
            rows += run_case(entry, case, impls, opts, mem_jobs)
            done.append(key)
            if checkpoint is not None:
                checkpoint.save(snapshot())
    if resume:
        gone = [k for k in resume.cases_done if k not in set(done)]
        if gone:  # the sweep definitions changed between the sessions
            _log(opts, f"resume: {len(gone)} finished cases are no longer in the sweep; their rows are dropped")
    mem_ids = {id(r) for r in rows}
    mem_jobs = [(r, j) for r, j in mem_jobs if id(r) in mem_ids]
    if mem_jobs:
        _log(opts, f"measuring peak memory of {len(mem_jobs)} fwd+bwd rows in a worker process ...")
        results = memory.measure_cpu_jobs([j for _, j in mem_jobs], timeout_s=120 + 60 * len(mem_jobs))
        for (row, _), res in zip(mem_jobs, results):
            if "error" in res:
                row["note"] = (row["note"] + "; " if row["note"] else "") + "memory: " + res["error"]
            else:
                row["peak_mem_bytes"] = int(res["peak_bytes"])
                mem_method = res["method"]
    fill_speedups(rows)
    meta, datasheet, measured = _meta(opts, argv, rows, mem_method, before_s + time.perf_counter() - t_start,
                                      load_start, fp, resume, static)
    fill_peaks(rows, opts.device, datasheet, measured)
    return {
        "schema": SCHEMA_VERSION,
        "meta": meta,
        "rows": rows,
        "targets": evaluate_targets(rows, opts.device),
        "progress": {"complete": True, "cases_done": done, "pending_memory": []},
    }
