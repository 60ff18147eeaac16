"""The JSON result schema, checked before a file is written and by the tests.

A hand-written validator (no jsonschema dependency): ``validate(doc)``
raises ``SchemaError`` naming the first offending path.

Document::

    {"schema": "so2ops-bench/1",
     "meta": {"created", "argv", "quick", "device": {"type", "name", "dirname", ...},
              "versions": {...}, "backends": {...}, "timer", "budget", "memory_method",
              "mem_budget_bytes", "allow_tf32", "peaks": {"datasheet", "measured", "used"},
              "elapsed_s",
              optional: "fingerprint": {option: value}, "resume": null | {...}},
     "rows": [ROW, ...],
     "targets": [{"entry", "impl", "metric", "goal", "cmp", "value", "met", "binding", "shape", "note"}],
     optional "progress": {"complete": bool, "cases_done": [str], "pending_memory": [{"row": int, "job": {...}}]}}

A partial document (``<stem>.partial.json``, rewritten after every finished
case, see ``bench.checkpoint``) is a valid document with ``progress.complete``
false and no targets yet.

    ROW = {"entry", "kind": op|model|sanity, "impl", "impl_kind": backend|baseline,
           "is_baseline", "shape": {...}, "dtype", "mode": fwd|bwd|fwdbwd, "tags": [...],
           "status": ok|skipped|failed|error, "note",
           "check": {"status": pass|fail|oracle|n/a|error, "max_rel_err", "tol"},
           "time_s": {"median", "q20", "q80", "min", "n"} | null,
           "flops", "bytes", "flops_per_s", "bytes_per_s" (number | null),
           "pct_peak_flops", "pct_peak_bw", "peak_key", "peak_mem_bytes" (| null),
           "speedup": {baseline: x}, "mem_ratio": {baseline: x},
           optional (model rows): "efficiency": {"achieved_gflops", "gemm_gflops", "frac_gemm" (number | null),
                                                 "flops_source", "threads", "gemm": [{"m", "k", "n", "gflops", ...}],
                                                 "note"}}

Optional keys are checked when present; documents written before they existed stay valid.
"""
from __future__ import annotations

from numbers import Real
from typing import Any

from . import SCHEMA_VERSION


class SchemaError(ValueError):
    pass


def _req(cond: bool, path: str, msg: str) -> None:
    if not cond:
        raise SchemaError(f"{path}: {msg}")


def _num_or_none(v: Any) -> bool:
    return v is None or (isinstance(v, Real) and not isinstance(v, bool))


def _keys(d: Any, keys, path: str) -> None:
    _req(isinstance(d, dict), path, f"expected an object, got {type(d).__name__}")
    missing = [k for k in keys if k not in d]
    _req(not missing, path, f"missing keys {missing}")


META = ("created", "argv", "quick", "device", "versions", "backends", "timer", "budget", "memory_method",
        "mem_budget_bytes", "allow_tf32", "peaks", "elapsed_s")
ROW = ("entry", "kind", "impl", "impl_kind", "is_baseline", "shape", "dtype", "mode", "tags", "status", "note",
       "check", "time_s", "flops", "bytes", "flops_per_s", "bytes_per_s", "pct_peak_flops", "pct_peak_bw",
       "peak_key", "peak_mem_bytes", "speedup", "mem_ratio")
#: required keys of a row's optional ``efficiency`` (the model rows: counted FLOPs against the measured GEMM rate)
EFFICIENCY = ("achieved_gflops", "gemm_gflops", "frac_gemm")
TARGET = ("entry", "impl", "metric", "goal", "cmp", "value", "met", "binding", "shape", "note")


def validate_row(r: Any, path: str) -> None:
    _keys(r, ROW, path)
    _req(r["kind"] in ("op", "model", "sanity"), path + ".kind", f"bad value {r['kind']!r}")
    _req(r["impl_kind"] in ("backend", "baseline"), path + ".impl_kind", f"bad value {r['impl_kind']!r}")
    _req(r["mode"] in ("fwd", "bwd", "fwdbwd"), path + ".mode", f"bad value {r['mode']!r}")
    _req(r["status"] in ("ok", "skipped", "failed", "error"), path + ".status", f"bad value {r['status']!r}")
    _req(isinstance(r["shape"], dict), path + ".shape", "expected an object")
    _req(isinstance(r["tags"], list), path + ".tags", "expected a list")
    _keys(r["check"], ("status", "max_rel_err", "tol"), path + ".check")
    _req(r["check"]["status"] in ("pass", "fail", "oracle", "n/a", "error"), path + ".check.status", "bad value")
    if r["status"] == "ok":
        _keys(r["time_s"], ("median", "q20", "q80", "min", "n"), path + ".time_s")
        t = r["time_s"]
        _req(all(isinstance(t[k], Real) and t[k] > 0 for k in ("median", "q20", "q80", "min")), path + ".time_s", "times must be > 0")
        _req(t["min"] <= t["q20"] <= t["median"] <= t["q80"], path + ".time_s", "quantiles out of order")
        _req(r["check"]["status"] in ("pass", "oracle", "n/a"), path + ".check.status", "an ok row must have passed its check")
    else:
        _req(r["time_s"] is None, path + ".time_s", "only ok rows carry times")
        _req(isinstance(r["note"], str) and r["note"], path + ".note", "a row that did not run must say why")
    for k in ("flops", "bytes", "flops_per_s", "bytes_per_s", "pct_peak_flops", "pct_peak_bw", "peak_mem_bytes"):
        _req(_num_or_none(r[k]), f"{path}.{k}", "expected a number or null")
    for k in ("speedup", "mem_ratio"):
        _req(isinstance(r[k], dict) and all(_num_or_none(v) and v is not None for v in r[k].values()),
             f"{path}.{k}", "expected {baseline: number}")
    if "efficiency" in r:
        e = r["efficiency"]
        _keys(e, EFFICIENCY, path + ".efficiency")
        for k in EFFICIENCY:
            _req(_num_or_none(e[k]) and (e[k] is None or e[k] >= 0), f"{path}.efficiency.{k}",
                 "expected a number >= 0 or null")
        _req(isinstance(e.get("gemm", []), list), path + ".efficiency.gemm", "expected a list")


def validate(doc: Any) -> None:
    """Raise ``SchemaError`` unless ``doc`` is a valid result document."""
    _keys(doc, ("schema", "meta", "rows", "targets"), "$")
    _req(doc["schema"] == SCHEMA_VERSION, "$.schema", f"expected {SCHEMA_VERSION!r}, got {doc['schema']!r}")
    _keys(doc["meta"], META, "$.meta")
    _keys(doc["meta"]["device"], ("type", "name", "dirname"), "$.meta.device")
    _keys(doc["meta"]["peaks"], ("datasheet", "measured", "used"), "$.meta.peaks")
    _req(isinstance(doc["rows"], list), "$.rows", "expected a list")
    for i, r in enumerate(doc["rows"]):
        validate_row(r, f"$.rows[{i}]")
    _req(isinstance(doc["targets"], list), "$.targets", "expected a list")
    for i, t in enumerate(doc["targets"]):
        _keys(t, TARGET, f"$.targets[{i}]")
        _req(_num_or_none(t["value"]), f"$.targets[{i}].value", "expected a number or null")
    if "progress" in doc:
        p = doc["progress"]
        _keys(p, ("complete", "cases_done", "pending_memory"), "$.progress")
        _req(isinstance(p["complete"], bool), "$.progress.complete", "expected true or false")
        _req(isinstance(p["cases_done"], list) and all(isinstance(k, str) for k in p["cases_done"]),
             "$.progress.cases_done", "expected a list of case keys")
        _req(len(set(p["cases_done"])) == len(p["cases_done"]), "$.progress.cases_done", "a case is listed twice")
        _req(isinstance(p["pending_memory"], list), "$.progress.pending_memory", "expected a list")
        for i, j in enumerate(p["pending_memory"]):
            _keys(j, ("row", "job"), f"$.progress.pending_memory[{i}]")
            _req(isinstance(j["row"], int) and 0 <= j["row"] < len(doc["rows"]),
                 f"$.progress.pending_memory[{i}].row", "expected the index of a row")
