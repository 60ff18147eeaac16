"""``qhnetv2 data merge``: join shard datasets into one, checking completeness.

Checks, before anything is written:

* every part is a dataset with the same labelling settings and inputs;
* no molecule id appears in two parts (as record or failure);
* if the parts are shards (built with ``--shard K/N``): all N shards are
  present exactly once, and every molecule of every shard is in its part
  (as record or failure) - otherwise the merge is refused (``allow_missing``
  overrides, e.g. to inspect an unfinished run).

The merged dataset is written to ``<out>.partial`` and renamed to ``<out>``
at the end, so an interrupted merge leaves no half-dataset at ``out``.  Its
``index.npz`` (atomic numbers, positions, AO counts; see :mod:`.store`) joins the
parts' indexes; records of a part without one are summarised from their small
fields (never the matrices).
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Dict, List, Sequence

from .build import _COMPARED
from .geometries import make_id
from .store import (FAILURE_PREFIX, META_KEY, DatasetWriter, _scan_ids, decode_json,
                    open_readonly, read_index_file, release)


def _expected_ids(sources: List[Dict[str, Any]], shard) -> List[str]:
    k, n = shard if shard else (0, 1)
    ids, start = [], 0
    for src in sources:
        for frame in range(src["n_frames"]):
            if (start + frame) % n == k:
                ids.append(make_id(src["stem"], frame))
        start += src["n_frames"]
    return ids


def merge_datasets(parts: Sequence[str], out: str, allow_missing: bool = False,
                   progress: bool = True) -> Dict[str, Any]:
    """Merge ``parts`` into a new dataset ``out``; returns a summary dict."""
    if len(parts) < 1:
        raise ValueError("parts: give at least one dataset to merge")
    if os.path.exists(out):
        raise FileExistsError(f"--out {out!r} already exists; merge writes a new dataset")
    envs, metas = [], []
    for p in parts:
        env = open_readonly(p)
        with env.begin() as txn:
            raw = txn.get(META_KEY)
        if raw is None:
            raise ValueError(f"part {p!r} has no __meta__ record")
        envs.append(env)
        metas.append(decode_json(raw))

    first = metas[0]
    for p, m in zip(parts[1:], metas[1:]):
        diff = [k for k in _COMPARED if m["settings"].get(k) != first["settings"].get(k)]
        if diff:
            raise ValueError(f"part {p!r} was labelled with different settings: {diff}")
        if (m.get("sources") or []) != (first.get("sources") or []) and m.get("shard"):
            raise ValueError(f"part {p!r} was built from different input files than "
                             f"{parts[0]!r}")

    # Ids of every part; duplicates across parts are an error.
    owner: Dict[str, str] = {}
    duplicates = []
    ids_per_part = []
    for p, env in zip(parts, envs):
        records, failures = _scan_ids(env)
        ids_per_part.append((records, failures))
        for mol_id in records + failures:
            if mol_id in owner:
                duplicates.append((mol_id, owner[mol_id], p))
            owner[mol_id] = p
    if duplicates:
        mol_id, a, b = duplicates[0]
        raise ValueError(f"{len(duplicates)} molecule ids appear in more than one part, "
                         f"e.g. {mol_id!r} in {a!r} and {b!r}")

    missing: List[str] = []
    shards = [tuple(m["shard"]) if m.get("shard") else None for m in metas]
    if all(s is not None for s in shards):
        ns = {s[1] for s in shards}
        if len(ns) != 1:
            raise ValueError(f"parts come from different shard counts N: {sorted(ns)}")
        n = ns.pop()
        ks = sorted(s[0] for s in shards)
        if ks != list(range(n)) and not allow_missing:
            absent = sorted(set(range(n)) - set(ks))
            raise ValueError(f"shards {absent} of {n} are missing (got K = {ks})")
        for (records, failures), m in zip(ids_per_part, metas):
            have = set(records) | set(failures)
            missing += [i for i in _expected_ids(m["sources"], m["shard"]) if i not in have]
        if missing and not allow_missing:
            raise ValueError(f"{len(missing)} molecules are neither labelled nor recorded as "
                             f"failed, e.g. {missing[:3]}; finish those shards (rerun the "
                             f"same build command) or pass --allow-missing")

    tmp = out.rstrip("/") + ".partial"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)  # leftover of an interrupted merge: never a finished dataset
    meta = {k: v for k, v in first.items() if k not in ("format", "format_version")}
    meta.update(shard=None, merged_from=[os.path.abspath(p) for p in parts],
                n_parts=len(parts))
    writer = DatasetWriter(tmp)
    writer.set_meta(meta)
    n_records = n_failures = 0
    iterator = zip(parts, envs, ids_per_part)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(list(iterator), unit="part", desc="merging")
    for p, env, (records, failures) in iterator:
        with env.begin() as src, writer.env.begin(write=True) as dst:
            for mol_id in records:
                dst.put(mol_id.encode("utf-8"), src.get(mol_id.encode("utf-8")))
            for mol_id in failures:
                key = (FAILURE_PREFIX + mol_id).encode("utf-8")
                dst.put(key, src.get(key))
        n_records += len(records)
        n_failures += len(failures)
        indexed = read_index_file(p)
        writer.add_summaries({i: indexed[i] for i in records if i in indexed})
    writer.close()  # writes the merged index
    for p in parts:
        release(p)
    os.replace(tmp, out)
    return {"n_parts": len(parts), "n_records": n_records, "n_failures": n_failures,
            "n_missing": len(missing), "out": out}
