"""Worker pools for per-molecule jobs (labelling, SCF benchmarks).

Workers are *spawned* (fresh interpreters): PySCF/OpenMP state and LMDB
handles must not be inherited through ``fork``.  Each worker limits its
OpenMP threads so that ``workers x threads`` does not oversubscribe the CPU.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from typing import Callable, Iterable, Iterator, Optional


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _init_worker(threads: int) -> None:
    # Must happen before PySCF / numpy's BLAS start their thread pools.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    try:
        from pyscf import lib
        lib.num_threads(threads)
    except ImportError:  # pragma: no cover - workers that never touch PySCF
        pass


def run_tasks(func: Callable, tasks: Iterable, workers: int,
              threads: Optional[int] = None) -> Iterator:
    """Yield ``func(task)`` for every task, in completion order.

    ``workers == 0`` runs in this process (debugging, tiny jobs).  ``func``
    must be a module-level function and must not raise (return failures).
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    threads = threads or default_threads(workers)
    if workers == 0:
        from pyscf import lib
        lib.num_threads(threads)
        for task in tasks:
            yield func(task)
        return
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(workers, initializer=_init_worker, initargs=(threads,))
    try:
        for result in pool.imap_unordered(func, tasks, chunksize=1):
            yield result
        pool.close()
    finally:
        # On error or KeyboardInterrupt stop the workers; everything already
        # yielded was written by the caller, so nothing finished is lost.
        pool.terminate()
        pool.join()
