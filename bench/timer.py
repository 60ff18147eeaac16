"""Timers: ``triton.testing.do_bench`` (or CUDA events) on GPU, a repeated wall-clock timer on CPU.

Both return the same summary: median, 20% / 80% quantiles, min, and the
number of timed repetitions, in seconds.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Dict, List, Sequence, Tuple, Union

import torch


@dataclass(frozen=True)
class Budget:
    """How long to time each row: warm-up calls, target seconds, repetition bounds."""

    warmup: int = 2
    target_s: float = 0.5
    min_reps: int = 5
    max_reps: int = 100

    def reps(self, first_s: float) -> int:
        """Repetitions for a function whose first timed call took ``first_s``: enough to fill ``target_s``."""
        return int(min(self.max_reps, max(self.min_reps, self.target_s / max(first_s, 1e-9))))

    @classmethod
    def quick(cls) -> "Budget":
        return cls(warmup=1, target_s=0.04, min_reps=3, max_reps=15)


def summarize(times: List[float]) -> Dict[str, float]:
    ts = sorted(times)

    def q(p):
        # linear interpolation between order statistics
        pos = p * (len(ts) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(ts) - 1)
        return ts[lo] + (ts[hi] - ts[lo]) * (pos - lo)

    return {"median": statistics.median(ts), "q20": q(0.2), "q80": q(0.8), "min": ts[0], "n": len(ts)}


def time_cpu(fn: Callable[[], object], budget: Budget) -> Dict[str, float]:
    """Repeated wall-clock timer: ``budget.warmup`` untimed calls, then enough to fill ``target_s``."""
    for _ in range(budget.warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    reps = budget.reps(first)
    times = [first]
    for _ in range(reps - 1):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return summarize(times)


def time_cpu_interleaved(
        calls: Sequence[Tuple[Callable[[], object], Callable[[], ContextManager], Budget]],
) -> List[Union[Dict[str, float], Exception]]:
    """Times several functions side by side on the CPU: a summary per ``(fn, context, budget)``,
    or the exception the function raised.

    Each function gets its warm-up, then its repetitions as ``time_cpu`` would
    choose them (from its first call and its budget), but spread evenly over
    common rounds: every round runs each function its share of times, so a
    drift of the machine's speed during the run (a shared 2-core box) hits
    every row alike and the ratios between rows stay fair.
    """
    results: List[Union[Dict[str, float], Exception, None]] = [None] * len(calls)
    times: List[List[float]] = [[] for _ in calls]

    def timed(i: int) -> None:
        fn, ctx, _ = calls[i]
        with ctx():
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)

    reps = [0] * len(calls)
    for i, (fn, ctx, b) in enumerate(calls):
        try:
            with ctx():
                for _ in range(b.warmup):
                    fn()
            timed(i)
            reps[i] = b.reps(times[i][0])
        except Exception as exc:  # noqa: BLE001 - reported as the row's error
            results[i] = exc
    rounds = max([reps[i] for i in range(len(calls)) if results[i] is None], default=0)
    for r in range(1, rounds):
        for i in range(len(calls)):
            if results[i] is not None:
                continue
            try:
                while len(times[i]) < -(-(r + 1) * reps[i] // rounds):  # ceil: spread evenly
                    timed(i)
            except Exception as exc:  # noqa: BLE001
                results[i] = exc
    return [res if res is not None else summarize(times[i]) for i, res in enumerate(results)]


def time_cuda(fn: Callable[[], object], budget: Budget) -> Dict[str, float]:
    """GPU timer: ``triton.testing.do_bench`` (L2 flushed between calls) when Triton imports, else CUDA events."""
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        warm_ms, rep_ms = max(25, 100 * budget.target_s), max(100, 1000 * budget.target_s)
        med, q20, q80, mn = do_bench(fn, warmup=warm_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8, 0.0])
        # do_bench does not report its repetition count; estimate it from the budget
        return {"median": med / 1e3, "q20": q20 / 1e3, "q80": q80 / 1e3, "min": mn / 1e3,
                "n": int(max(1, rep_ms / max(med, 1e-6)))}
    for _ in range(max(budget.warmup, 3)):
        fn()
    torch.cuda.synchronize()
    times = []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    deadline = time.perf_counter() + budget.target_s
    while len(times) < budget.min_reps or (time.perf_counter() < deadline and len(times) < budget.max_reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return summarize(times)


def timer_for(device: torch.device) -> Callable[[Callable[[], object], Budget], Dict[str, float]]:
    return time_cuda if device.type == "cuda" else time_cpu


def timer_name(device: torch.device) -> str:
    if device.type != "cuda":
        return "perf_counter (repeated; the rows of a case timed side by side in common rounds, CPU)"
    try:
        import triton.testing  # noqa: F401
        return "triton.testing.do_bench"
    except ImportError:
        return "cuda events"
