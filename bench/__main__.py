"""Command line: ``python -m bench [ops|models|all|ENTRY ...] [--quick] [--device cpu|cuda] [--out DIR]``.

Also ``python -m bench compare A.json B.json [--out FILE]`` and ``python -m bench accuracy ...``
(the model accuracy yardstick, ``bench/accuracy.py``).

Results go to ``DIR/<device-name>/<quick|full>.{json,md}`` plus PNG plots
(``DIR`` defaults to ``bench/results``).  While the run goes, the document so
far is rewritten atomically to ``<quick|full>.partial.json`` after every
finished case; ``--resume`` continues an interrupted run from it.  The exit status is 1 when any
so2ops backend failed its correctness check or crashed, so CI catches it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def _compare(argv) -> int:
    from .compare import compare, load

    ap = argparse.ArgumentParser(prog="python -m bench compare", description="Put two benchmark runs side by side.")
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--out", help="also write the Markdown here")
    args = ap.parse_args(argv)
    text = compare(load(args.a), load(args.b), args.a, args.b)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        return _compare(argv[1:])
    if argv[:1] == ["accuracy"]:
        from .accuracy import main as accuracy_main

        return accuracy_main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="*", default=["ops"], help="ops (default), models, all, or entry names (so2_message, rotate, ...)")
    ap.add_argument("--quick", action="store_true", help="small shapes and short timings (CI: < 3 min on 2 cores)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="results root; files go to OUT/<device-name>/")
    ap.add_argument("--name", default=None, help="file stem (default: quick or full)")
    ap.add_argument("--dtype", action="append", choices=("float32", "float64", "bfloat16"), help="only these dtypes (repeatable)")
    ap.add_argument("--mode", action="append", choices=("fwd", "bwd", "fwdbwd"), help="only these modes (repeatable)")
    ap.add_argument("--mem-budget-gb", type=float, default=None, help="skip cases estimated above this (default: 70%% of GPU memory, 30%% of free RAM on CPU)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run of the same name: reuse the finished cases of OUT/<device>/<name>.partial.json "
                         "(or <name>.json) when it was produced with the same options")
    ap.add_argument("--allow-tf32", action="store_true", help="let float32 matmuls (reference, baselines) use TF32 tensor cores")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-reps", type=int, default=None, help="timed repetitions at least (default 5, quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls before timing (default 2, quick 1)")
    ap.add_argument("--target-s", type=float, default=None, help="seconds of timing per row (default 0.5, quick 0.04)")
    ap.add_argument("--slow-call-s", type=float, default=5.0, help="impls slower than this per fwd+bwd get one repetition")
    args = ap.parse_args(argv)

    import torch

    from .checkpoint import Checkpoint, ResumeError, fingerprint, load_resume, paths as run_paths
    from .registry import select_entries
    from .report import write_all
    from .runner import Options, run
    from .timer import Budget
    from . import device as devinfo

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.mem_budget_gb is not None:
        mem_budget = int(args.mem_budget_gb * 2**30)
    elif device.type == "cuda":
        mem_budget = int(0.7 * torch.cuda.get_device_properties(device).total_memory)
    else:
        mem_budget = int(min(0.3 * _available_ram(), 8 * 2**30))
    budget = Budget.quick() if args.quick else Budget()
    budget = Budget(warmup=budget.warmup if args.warmup is None else args.warmup,
                    target_s=budget.target_s if args.target_s is None else args.target_s,
                    min_reps=budget.min_reps if args.min_reps is None else max(1, args.min_reps),
                    max_reps=max(budget.max_reps, args.min_reps or 1))
    opts = Options(device=device, quick=args.quick, budget=budget, slow_call_s=args.slow_call_s,
                   mem_budget_bytes=mem_budget, memory=not args.no_memory, allow_tf32=args.allow_tf32,
                   seed=args.seed, dtypes=args.dtype, modes=args.mode)
    t0 = time.perf_counter()
    entries = select_entries(args.targets)
    out_dir = os.path.join(args.out, devinfo.results_dirname(device))
    stem = args.name or ("quick" if args.quick else "full")
    partial_path, _ = run_paths(out_dir, stem)
    resume = None
    if args.resume:
        try:
            resume = load_resume(out_dir, stem, fingerprint(opts, entries))
        except ResumeError as exc:
            print(f"bench: cannot resume: {exc}", file=sys.stderr)
            return 2
        if resume is None:
            print(f"bench: --resume: no earlier run {stem} in {out_dir}; starting from scratch", file=sys.stderr)
    elif os.path.exists(partial_path):
        print(f"bench: the unfinished run {partial_path} will be overwritten (pass --resume to continue it instead)",
              file=sys.stderr)
    checkpoint = Checkpoint(partial_path)
    doc = run(entries, opts, argv, checkpoint=checkpoint, resume=resume)
    paths = write_all(doc, out_dir, stem, plots=not args.no_plots)
    # only once the final files are in place: a crash while writing them keeps the finished work
    checkpoint.remove()
    rows = doc["rows"]
    bad = [r for r in rows if r["status"] == "failed" or (r["status"] == "error" and r["impl_kind"] == "backend")]
    warn = [r for r in rows if r["status"] == "error" and r["impl_kind"] == "baseline"]
    n_ok = sum(r["status"] == "ok" for r in rows)
    print(f"bench: {n_ok} rows timed, {sum(r['status'] == 'skipped' for r in rows)} skipped, "
          f"{len(bad)} failed, {len(warn)} baseline errors in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    for p in paths:
        print(p)
    for r in bad + warn:
        print(f"bench: {r['status']}: {r['entry']} {r['impl']} {r['dtype']} {r['mode']} {r['shape']}: {r['note']}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
