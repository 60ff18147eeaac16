"""CPU memory worker: ``python -m bench.memworker`` < jobs.json, one JSON result line per job.

Started by ``bench.memory.measure_cpu_jobs`` with glibc's mmap threshold
pinned; see that module for why the measurement is sound.
"""
from __future__ import annotations

import json
import sys

import torch


def main() -> None:
    from .memory import measure_rss
    from .workloads import build, step

    jobs = json.load(sys.stdin)
    device = torch.device("cpu")
    for job in jobs:
        try:
            w = build(job["entry"], job["shape"], job["dtype"], job["impl"], device, job["seed"])
            with w.context():
                fn = step(w, "fwdbwd", job["seed"] + 1)
                fn()  # warm-up: one-time caches (tables, codegen) are not the step's memory
                res = measure_rss(fn)
            del w, fn
        except Exception as exc:  # reported per row, the worker goes on
            res = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
