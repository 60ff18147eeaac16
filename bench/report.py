"""Writers: the JSON document and a Markdown report of one run (every file written atomically)."""
from __future__ import annotations

import os
from typing import Dict, List, Optional

from .checkpoint import atomic_write_json, atomic_write_text
from .schema import validate

SHORT = {"lmax": "l", "mmax": "m"}


def fmt_shape(shape: Dict) -> str:
    return " ".join(f"{SHORT.get(k, k)}{'' if k in SHORT else '='}{v}" for k, v in shape.items())


def _f(v: Optional[float], spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def write_json(doc: Dict, path: str) -> None:
    """Validate, then write atomically (a killed run never leaves a torn file)."""
    validate(doc)
    atomic_write_json(path, doc)


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def markdown(doc: Dict) -> str:
    m = doc["meta"]
    dev, ver = m["device"], m["versions"]
    lines = [f"# so2ops benchmark: {dev['name']} ({'quick' if m['quick'] else 'full'} run)", ""]
    built = ", ".join(f"{k} ({'runs on ' + '/'.join(v['devices']) if v['devices'] else 'built, not runnable' if v['built'] else 'not built'})"
                      for k, v in m["backends"].items())
    lines += [
        f"- created {m['created']}, git {ver.get('git')}, {m['elapsed_s']:.0f} s; command: `python -m bench {' '.join(m['argv'])}`",
        f"- device: {dev['name']} ({dev['type']}, {dev['threads']} CPU threads); torch {ver['torch']}, triton {ver.get('triton')}, e3nn {ver.get('e3nn')}"
        + (f"; load average at start {m['loadavg_start'][0]:.1f}" if m.get("loadavg_start") else ""),
        f"- so2ops backends: {built}",
        f"- timer: {m['timer']} (median of >= {m['budget']['min_reps']} reps, {m['budget']['target_s']} s per row); "
        f"TF32 matmuls {'on' if m['allow_tf32'] else 'off'}",
        f"- peak memory: {m['memory_method']} (fwd+bwd rows only)",
        "- FLOP counts: 2 x multiply-adds of the op's contractions; bytes: compulsory traffic (bench/counts.py). "
        "Speedup columns: baseline time / row time (same run, same inputs).",
        "",
        "## Peaks",
        "",
    ]
    p = m["peaks"]
    keys = sorted(set((p["datasheet"] or {}).keys()) | set(p["measured"].keys()))
    unit = lambda k: "TB/s" if k == "bw" else "TFLOP/s"  # noqa: E731
    lines += _table(["peak", "datasheet", "measured (matmul / copy rows)"],
                    [[f"{k} ({unit(k)})", _f((p["datasheet"] or {}).get(k), ".3g"), _f(p["measured"].get(k), ".3g")] for k in keys])
    lines += ["", f"Percentages use the {p['used']} peaks" + (" (float32 rows against TF32)." if dev["type"] == "cuda" else "."), ""]

    if doc["targets"]:
        lines += ["## Targets (headline case, float32, forward+backward)", ""]
        trs = []
        for t in doc["targets"]:
            val = "-" if t["value"] is None else (f"{t['value']:.3g}")
            met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
            goal = f"{t['cmp']} {t['goal']:.3g}"
            trs.append([t["entry"] + ("" if t["binding"] else " (info)"), t["impl"], t["metric"], val, goal, met,
                        fmt_shape(t["shape"]) if t["shape"] else "", t["note"]])
        lines += _table(["op", "backend", "metric", "value", "goal", "met", "shape", "note"], trs)
        lines += ["", "Goals are stated for so2_message (ops) and for the qh9 model's uracil training step (models); "
                      "other rows are listed against the same numbers for information.", ""]

    ok = [r for r in doc["rows"] if r["status"] == "ok"]
    entries = list(dict.fromkeys(r["entry"] for r in doc["rows"]))
    for entry in entries:
        er = [r for r in ok if r["entry"] == entry]
        if not er:
            continue
        lines += [f"## {entry}", ""]
        notes = {r["impl"]: r["note"] for r in er if r["note"]}
        if notes:
            lines += [f"- `{k}`: {v}" for k, v in notes.items()] + [""]
        eff = next((r["efficiency"] for r in er if r.get("efficiency")), None)
        if eff:
            gemms = ", ".join(f"{g['m']}x{g['k']}x{g['n']} {g['gflops']:.1f}" for g in eff.get("gemm", []))
            lines += [f"- FLOPs: {eff.get('flops_source', '')}.",
                      f"- GEMM rate (float32 torch.mm, this run, {eff.get('threads') or 'default'} threads, median "
                      f"GFLOP/s): {gemms or 'not measured'}; `% GEMM` = counted FLOPs / median time / "
                      f"{_f(eff.get('gemm_gflops'), '.1f')} GFLOP/s (the better shape).", ""]
        groups = list(dict.fromkeys((r["dtype"], r["mode"]) for r in er))
        for dtype, mode in groups:
            gr = [r for r in er if r["dtype"] == dtype and r["mode"] == mode]
            bases = sorted(dict.fromkeys(b for r in gr for b in r["speedup"]), key=_base_order)
            header = ["shape", "impl", "median ms", "q20-q80 ms", "GFLOP/s", "GB/s", "% peak FLOP", "% peak BW"]
            with_eff = any(r.get("efficiency") for r in gr)
            if with_eff:
                header.append("% GEMM")
            if mode == "fwdbwd":
                header += ["peak mem MiB"] + [f"mem / {b}" for b in bases if any(b in r["mem_ratio"] for r in gr)]
            header += [f"x vs {b}" for b in bases] + ["check"]
            trs = []
            for r in gr:
                t = r["time_s"]
                row = [fmt_shape(r["shape"]), r["impl"], f"{t['median'] * 1e3:.3f}", f"{t['q20'] * 1e3:.3f}-{t['q80'] * 1e3:.3f}",
                       _f(r["flops_per_s"] and r["flops_per_s"] / 1e9, ".1f"), _f(r["bytes_per_s"] and r["bytes_per_s"] / 1e9, ".1f"),
                       _f(r["pct_peak_flops"], ".1f"), _f(r["pct_peak_bw"], ".1f")]
                if with_eff:
                    frac = (r.get("efficiency") or {}).get("frac_gemm")
                    row.append(_f(frac and 100.0 * frac, ".1f"))
                if mode == "fwdbwd":
                    row.append(_f(r["peak_mem_bytes"] and r["peak_mem_bytes"] / 2**20, ".1f"))
                    row += [_f(r["mem_ratio"].get(b), ".2f") for b in bases if any(b in x["mem_ratio"] for x in gr)]
                row += [_f(r["speedup"].get(b), ".2f") for b in bases]
                c = r["check"]
                row.append(c["status"] + (f" ({c['max_rel_err']:.1e})" if c.get("max_rel_err") else ""))
                trs.append(row)
            lines += [f"### {entry} / {dtype} / {mode}", ""] + _table(header, trs) + [""]

    # rows that did not run, grouped by reason (a backend absent on this device is one line, not one per case)
    not_run: Dict = {}
    for r in doc["rows"]:
        if r["status"] != "ok":
            key = (r["impl"], r["status"], r["note"])
            g = not_run.setdefault(key, {"entries": {}, "rows": 0})
            g["rows"] += 1
            g["entries"].setdefault(r["entry"], set()).add(f"{fmt_shape(r['shape'])} {r['dtype']}")
    if not_run:
        lines += ["## Not run", ""]
        trs = []
        for (impl, st, note), g in not_run.items():
            where = "; ".join(f"{e} ({len(c)} case{'s' if len(c) > 1 else ''}{': ' + next(iter(c)) if len(c) == 1 else ''})"
                              for e, c in g["entries"].items())
            trs.append([impl, st, note, str(g["rows"]), where])
        lines += _table(["impl", "status", "why", "rows", "where"], trs)
        lines.append("")
    return "\n".join(lines)


def _base_order(name: str):
    order = ["reference", "escn_dense", "e3nn_tp", "cueq_tp"]
    return (order.index(name) if name in order else len(order), name)


def write_all(doc: Dict, out_dir: str, stem: str, plots: bool = True) -> List[str]:
    """Write ``<stem>.json``, ``<stem>.md`` and the plots into ``out_dir``; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{stem}.json"), os.path.join(out_dir, f"{stem}.md")]
    write_json(doc, paths[0])
    atomic_write_text(paths[1], markdown(doc))
    if plots:
        from .plots import make_plots

        paths += make_plots(doc, out_dir, stem)
    return paths
