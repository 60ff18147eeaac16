"""Resumable runs: atomic file writes, the options fingerprint, and the partial document.

A long sweep must never lose finished work.  After every finished case
(entry x shape x dtype) the runner hands the document so far to
``Checkpoint.save``, which writes ``<out>/<device>/<stem>.partial.json``
atomically (temp file in the same folder, fsync, ``os.replace``): a reader,
or a run killed at any instant, sees either the previous complete document
or the new one, never a torn file.  The normal end of a run writes the final
files (also atomically) and removes the partial one.

``--resume`` reads the partial document (or, when there is none, the final
JSON of the same name), checks that it was produced with the same options
(``fingerprint``: device, selection, dtypes, modes, quick flag, seed, TF32,
memory, timing budget) and hands its finished cases to the runner, which
reuses their rows instead of timing them again.

Extra document fields (the schema requires none of them, so older files stay valid)::

    meta.fingerprint = {option: value}             # what --resume compares
    meta.resume      = null | {"from", "cases_reused", "elapsed_before_s"}
    progress         = {"complete": bool,
                        "cases_done": [CASE_KEY, ...],      # in run order
                        "pending_memory": [{"row": i, "job": {...}}]}  # CPU memory not yet measured

``CASE_KEY`` is ``case_key(entry, shape, dtype)``, a canonical JSON string.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import IO, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import device as devinfo

PARTIAL_SUFFIX = ".partial.json"

# the permission bits a plain open() would give (mkstemp creates 0600 files)
_UMASK = os.umask(0)
os.umask(_UMASK)


class ResumeError(RuntimeError):
    """The previous run cannot be continued (different options, unreadable file)."""


# ---------------------------------------------------------------- atomic writes
def _fsync_dir(path: str) -> None:
    """Make the rename itself durable (best effort: some file systems refuse to fsync a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = False) -> None:
    """Write ``path`` via ``write(f)`` so that it is replaced all at once or not at all.

    The data go to a temp file in the same folder (``os.replace`` is atomic
    only within one file system), are fsynced, and the temp file is renamed
    over ``path``.  On any error the temp file is removed and ``path`` is untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: str, doc: Dict) -> None:
    def dump(f):
        json.dump(doc, f, indent=1, sort_keys=False)
        f.write("\n")

    atomic_write(path, dump)


# ---------------------------------------------------------------- identity of a run
def case_key(entry: str, shape: Dict, dtype: str) -> str:
    """Canonical identity of one case; equal for a live ``Case`` and its rows read back from JSON."""
    return json.dumps([entry, shape, dtype], sort_keys=True)


def row_case_key(row: Dict) -> str:
    return case_key(row["entry"], row["shape"], row["dtype"])


def fingerprint(opts, entries: Sequence) -> Dict:
    """The options that decide which rows a run produces and how they are timed.

    Rows of two runs are only mixed when every one of these agrees.  The
    memory budget is left out on purpose: on CPU it follows the free RAM of
    the moment, and it only decides which cases are skipped.
    """
    b = opts.budget
    return {
        "device": devinfo.device_name(opts.device),
        "device_type": opts.device.type,
        # CPU timings depend on the thread count (GPU ones do not)
        "threads": torch.get_num_threads() if opts.device.type == "cpu" else None,
        "quick": bool(opts.quick),
        "entries": [e.name for e in entries],
        "dtypes": sorted(opts.dtypes) if opts.dtypes else None,
        "modes": sorted(opts.modes) if opts.modes else None,
        "seed": opts.seed,
        "allow_tf32": bool(opts.allow_tf32),
        "memory": bool(opts.memory),
        "budget": {"warmup": b.warmup, "target_s": b.target_s, "min_reps": b.min_reps, "max_reps": b.max_reps},
        "slow_call_s": opts.slow_call_s,
    }


def _mismatches(prev: Dict, cur: Dict) -> List[str]:
    out = []
    for k in list(cur) + [k for k in prev if k not in cur]:
        if prev.get(k, "<absent>") != cur.get(k, "<absent>"):
            out.append(f"{k}: previous run {prev.get(k, '<absent>')!r}, this run {cur.get(k, '<absent>')!r}")
    return out


# ---------------------------------------------------------------- resuming
@dataclass
class ResumeState:
    """What a previous run finished: rows per case, and CPU memory jobs still to measure."""

    path: str
    cases_done: List[str]
    rows_by_case: Dict[str, List[Dict]]
    #: (row object inside ``rows_by_case``, memory job) for rows whose CPU memory was not measured yet
    pending_memory: List[Tuple[Dict, Dict]] = field(default_factory=list)
    elapsed_s: float = 0.0


def paths(out_dir: str, stem: str) -> Tuple[str, str]:
    """(partial, final) JSON paths of a run."""
    return os.path.join(out_dir, stem + PARTIAL_SUFFIX), os.path.join(out_dir, stem + ".json")


def load_resume(out_dir: str, stem: str, fp: Dict) -> Optional[ResumeState]:
    """The finished work of a previous run of the same name, or None when there is none.

    Prefers the partial file (the newest work) over a final JSON.  Raises
    ``ResumeError`` naming every option that differs, or when the file is not a
    resumable document.
    """
    partial, final = paths(out_dir, stem)
    path = partial if os.path.exists(partial) else final if os.path.exists(final) else None
    if path is None:
        return None
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise ResumeError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    meta = doc.get("meta") if isinstance(doc, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("fingerprint"), dict) or not isinstance(doc.get("rows"), list):
        raise ResumeError(f"{path} carries no options fingerprint (written by an older bench?); "
                          f"rerun without --resume to start over")
    bad = _mismatches(meta["fingerprint"], fp)
    if bad:
        raise ResumeError(f"{path} was produced with other options ({'; '.join(bad)}); "
                          f"rerun with the previous options, or without --resume to start over")
    rows = doc["rows"]
    progress = doc.get("progress") or {}
    done = progress.get("cases_done")
    if done is None:  # a final document: every case that left rows is done
        done = list(dict.fromkeys(row_case_key(r) for r in rows))
    by_case: Dict[str, List[Dict]] = {}
    for r in rows:
        by_case.setdefault(row_case_key(r), []).append(r)
    pending = []
    for p in progress.get("pending_memory", []):
        i = p.get("row")
        if not isinstance(i, int) or not 0 <= i < len(rows):
            raise ResumeError(f"{path}: pending memory job points at row {i!r} of {len(rows)}")
        pending.append((rows[i], p["job"]))
    done_set = set(done)
    stray = [k for k in by_case if k not in done_set]
    if stray:
        raise ResumeError(f"{path}: rows of unfinished cases {stray[:3]} (file edited by hand?)")
    return ResumeState(path=path, cases_done=list(done), rows_by_case=by_case, pending_memory=pending,
                       elapsed_s=float(meta.get("elapsed_s") or 0.0))


class Checkpoint:
    """Writes the document so far to ``path`` (validated, atomically) after every finished case."""

    def __init__(self, path: str):
        self.path = path
        self.saves = 0

    def save(self, doc: Dict) -> None:
        from .schema import validate

        validate(doc)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        atomic_write_json(self.path, doc)
        self.saves += 1

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
