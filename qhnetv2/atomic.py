"""Atomic file writes: a temporary file beside the target, fsync, rename.

A reader (or a resumed run) sees either the old file or the complete new one,
never a half-written file, whatever kills the writer.
"""
from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "wb"):
    """Open a temporary file for writing; on success it replaces ``path``, on failure it is removed.

    ``mode`` is ``"wb"`` or ``"w"`` (text, UTF-8).  The temporary file keeps the
    target's extension (some writers, e.g. ``np.savez``, look at it).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
