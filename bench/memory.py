"""Peak memory of a forward+backward.

* CUDA: ``torch.cuda.max_memory_allocated`` above what was allocated before
  the call (the inputs), in this process.
* CPU: torch has no CPU allocator statistics, and ``tracemalloc`` does not see
  torch's allocations.  The resident-set high-water mark does, provided that
  freed tensors are really returned to the OS: the rows are re-run in one
  fresh worker process (``python -m bench.memworker``) started with glibc's
  mmap threshold pinned (``MALLOC_MMAP_THRESHOLD_``), so every tensor above
  64 KiB is its own mapping, unmapped on free.  Before each row the worker
  resets the high-water mark (``/proc/self/clear_refs``, value 5), reads
  ``VmRSS``, runs the step and reads ``VmHWM``; the difference is the peak
  extra memory of the step (activations, workspace, gradients).  Timing is
  *not* done in that process, since forced mmaps cost page faults.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict, List

import torch

METHOD_CUDA = "torch.cuda.max_memory_allocated - allocated before the step"
METHOD_CPU = "VmHWM - VmRSS around the step in a fresh worker process (clear_refs reset, mmap threshold pinned)"
METHOD_CPU_FALLBACK = "ru_maxrss - VmRSS in one fresh process per row (clear_refs unavailable)"

#: glibc tunables of the worker: fixed (non-adaptive) mmap threshold, eager trimming.
WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536", "MALLOC_TOP_PAD_": "0"}


def measure_cuda(fn) -> int:
    """Peak bytes allocated by ``fn()`` above the allocation before it."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    res = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del res
    return int(peak)


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def reset_hwm() -> bool:
    """Reset this process's RSS high-water mark; False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_rss(fn) -> Dict[str, object]:
    """Peak extra resident bytes of ``fn()`` (call in a worker with ``WORKER_MALLOC_ENV``)."""
    import gc

    gc.collect()
    if reset_hwm():
        base = _status_kib("VmRSS")
        res = fn()
        peak = _status_kib("VmHWM") - base
        method = METHOD_CPU
    else:
        import resource

        base = _status_kib("VmRSS")
        res = fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
        method = METHOD_CPU_FALLBACK
    del res
    return {"peak_bytes": max(0, peak) * 1024, "method": method}


def measure_cpu_jobs(jobs: List[Dict], timeout_s: float) -> List[Dict]:
    """Run memory jobs (row descriptions) in fresh worker processes; one result dict per job.

    One worker serves every job when the high-water mark can be reset, else one worker per job.
    """
    if not jobs:
        return []
    env = dict(os.environ, **WORKER_MALLOC_ENV)
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    groups = [jobs] if reset_hwm() else [[j] for j in jobs]
    results: List[Dict] = []
    for group in groups:
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "bench.memworker"], input=json.dumps(group), env=env, cwd=root,
                capture_output=True, text=True, timeout=timeout_s,
            )
            lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
            if len(lines) != len(group):
                err = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
                lines += [{"error": f"memory worker exited {proc.returncode}: {err[0]}"}] * (len(group) - len(lines))
        except subprocess.TimeoutExpired:
            lines = [{"error": f"memory worker timed out after {timeout_s:.0f} s"}] * len(group)
        results += lines
    return results
