"""Plots of a run (matplotlib, Agg backend): speedup and time vs lmax, time and memory vs edges, roofline."""
from __future__ import annotations

import os
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .checkpoint import atomic_write  # noqa: E402

MARKERS = "osD^v<>pP*X"


def _save(fig, path: str) -> None:
    """PNG written atomically (temp file + rename), so an interrupted run leaves no half image."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), binary=True)


def _finish(fig, axes, path: str, legend_loc: str = "best") -> bool:
    """Grid and legend on every axis, then lay out, save atomically and free the figure."""
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc=legend_loc)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def _rows(doc: Dict, entry: str, tag: str, dtype: str = "float32", mode: str = "fwdbwd") -> List[Dict]:
    return [r for r in doc["rows"] if r["status"] == "ok" and r["entry"] == entry and tag in r["tags"]
            and r["dtype"] == dtype and r["mode"] == mode]


def _impl_style(impls: List[str]) -> Dict[str, str]:
    return {name: MARKERS[i % len(MARKERS)] for i, name in enumerate(impls)}


def plot_lmax(doc: Dict, path: str) -> bool:
    rows = _rows(doc, "so2_message", "lmax")
    if not rows:
        return False
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    style = _impl_style(impls)
    colors = {name: f"C{i}" for i, name in enumerate(impls)}
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(12, 4.5))
    for impl in impls:
        for full in (True, False):
            pts = sorted((r["shape"]["lmax"], r) for r in rows if r["impl"] == impl and (r["shape"]["mmax"] == r["shape"]["lmax"]) == full)
            if not pts:
                continue
            ls = "-" if full else "--"
            lab = f"{impl} ({'mmax=lmax' if full else 'mmax=2'})"
            col = colors[impl]
            ax_t.plot([l for l, _ in pts], [r["time_s"]["median"] * 1e3 for _, r in pts], ls, marker=style[impl], color=col, label=lab)
            sp = [(l, r["speedup"].get("reference")) for l, r in pts if r["speedup"].get("reference")]
            if sp:
                ax_s.plot([l for l, _ in sp], [s for _, s in sp], ls, marker=style[impl], color=col, label=lab)
    # growth guides anchored at the smallest lmax of the reference and of the TP baseline
    for impl, power in (("reference", 3), ("e3nn_tp", 6)):
        pts = sorted((r["shape"]["lmax"], r["time_s"]["median"] * 1e3) for r in rows
                     if r["impl"] == impl and r["shape"]["mmax"] == r["shape"]["lmax"])
        if len(pts) >= 2:
            l0, t0 = pts[0]
            ls = [l for l, _ in pts]
            ax_t.plot(ls, [t0 * ((l + 1) / (l0 + 1)) ** power for l in ls], ":", color="gray", lw=1)
            ax_t.annotate(f"~(lmax+1)^{power}", (ls[-1], t0 * ((ls[-1] + 1) / (l0 + 1)) ** power), fontsize=8, color="gray")
    shape = rows[0]["shape"]
    ax_t.set(yscale="log", xlabel="lmax", ylabel="fwd+bwd time (ms)",
             title=f"so2_message fwd+bwd, C={shape['C']}, E={shape['E']}")
    ax_s.axhline(1.0, color="gray", lw=0.8)
    ax_s.set(yscale="log", xlabel="lmax", ylabel="speedup vs reference backend", title="speedup vs lmax")
    return _finish(fig, (ax_t, ax_s), path)


def plot_edges(doc: Dict, path: str) -> bool:
    rows = _rows(doc, "so2_message", "edges")
    if not rows:
        return False
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    style = _impl_style(impls)
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.5))
    for impl in impls:
        pts = sorted((r["shape"]["E"], r) for r in rows if r["impl"] == impl)
        ax_t.plot([e for e, _ in pts], [r["time_s"]["median"] * 1e3 for _, r in pts], "-", marker=style[impl], label=impl)
        mem = [(e, r["peak_mem_bytes"] / 2**20) for e, r in pts if r["peak_mem_bytes"]]
        if mem:
            ax_m.plot([e for e, _ in mem], [m for _, m in mem], "-", marker=style[impl], label=impl)
    s = rows[0]["shape"]
    ax_t.set(xscale="log", yscale="log", xlabel="edges", ylabel="fwd+bwd time (ms)",
             title=f"so2_message fwd+bwd vs edges, lmax={s['lmax']}, mmax={s['mmax']}, C={s['C']}")
    ax_m.set(xscale="log", yscale="log", xlabel="edges", ylabel="peak fwd+bwd memory (MiB)", title="peak memory vs edges")
    return _finish(fig, (ax_t, ax_m), path)


def plot_roofline(doc: Dict, path: str) -> bool:
    rows = [r for r in doc["rows"] if r["status"] == "ok" and r["kind"] == "op" and r["dtype"] == "float32"
            and r["mode"] == "fwdbwd" and r["flops"] and r["bytes"]]
    if not rows:
        return False
    peaks = doc["meta"]["peaks"]
    table = peaks["datasheet"] or peaks["measured"]
    key = rows[0]["peak_key"]
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    entries = list(dict.fromkeys(r["entry"] for r in rows))
    colors = {e: f"C{i}" for i, e in enumerate(entries)}
    style = _impl_style(impls)
    for r in rows:
        ax.scatter(r["flops"] / r["bytes"], r["flops_per_s"] / 1e9, marker=style[r["impl"]], color=colors[r["entry"]], s=28, alpha=0.8)
    ai = [r["flops"] / r["bytes"] for r in rows]
    lo, hi = min(ai) / 3, max(ai) * 3
    if table.get(key) and table.get("bw"):
        import numpy as np

        xs = np.logspace(np.log10(lo), np.log10(hi), 200)
        ax.plot(xs, np.minimum(table[key] * 1e3, xs * table["bw"] * 1e3), "k-", lw=1.2,
                label=f"roof: {table[key]:.3g} TFLOP/s ({key}), {table['bw']:.3g} TB/s ({peaks['used']})")
    for e in entries:
        ax.scatter([], [], color=colors[e], marker="s", label=e)
    for i in impls:
        ax.scatter([], [], color="gray", marker=style[i], label=i)
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / compulsory byte)", ylabel="achieved GFLOP/s",
           title=f"roofline, float32 fwd+bwd, {doc['meta']['device']['name']}")
    return _finish(fig, (ax,), path, legend_loc="lower right")


def make_plots(doc: Dict, out_dir: str, stem: str) -> List[str]:
    out = []
    for suffix, fn in (("lmax", plot_lmax), ("edges", plot_edges), ("roofline", plot_roofline)):
        path = os.path.join(out_dir, f"{stem}_{suffix}.png")
        if fn(doc, path):
            out.append(path)
    return out
