"""``python -m bench compare A.json B.json``: two runs side by side.

Rows are matched on (entry, shape, dtype, mode, impl); the table gives both
medians and ``A / B`` (> 1: B is faster), plus the rows only one run has.
"""
from __future__ import annotations

import json
from typing import Dict, List, Tuple

from .report import _table, fmt_shape
from .schema import validate


def load(path: str) -> Dict:
    with open(path) as f:
        doc = json.load(f)
    validate(doc)
    return doc


def _key(r: Dict) -> Tuple:
    return (r["entry"], json.dumps(r["shape"], sort_keys=True), r["dtype"], r["mode"], r["impl"])


def compare(a: Dict, b: Dict, name_a: str = "A", name_b: str = "B") -> str:
    ra = {_key(r): r for r in a["rows"] if r["status"] == "ok"}
    rb = {_key(r): r for r in b["rows"] if r["status"] == "ok"}
    both = [k for k in ra if k in rb]
    lines = [f"# bench compare: {name_a} vs {name_b}", "",
             f"- A: {name_a}: {a['meta']['device']['name']}, {a['meta']['created']}, git {a['meta']['versions'].get('git')}",
             f"- B: {name_b}: {b['meta']['device']['name']}, {b['meta']['created']}, git {b['meta']['versions'].get('git')}",
             f"- {len(both)} rows in both, {len(ra) - len(both)} only in A, {len(rb) - len(both)} only in B", ""]
    trs: List[List[str]] = []
    for k in both:
        x, y = ra[k], rb[k]
        ta, tb = x["time_s"]["median"], y["time_s"]["median"]
        ma, mb = x["peak_mem_bytes"], y["peak_mem_bytes"]
        trs.append([k[0], fmt_shape(json.loads(k[1])), k[2], k[3], k[4], f"{ta * 1e3:.3f}", f"{tb * 1e3:.3f}", f"{ta / tb:.2f}",
                    "-" if not ma else f"{ma / 2**20:.1f}", "-" if not mb else f"{mb / 2**20:.1f}"])
    lines += _table(["entry", "shape", "dtype", "mode", "impl", "A ms", "B ms", "A/B (>1: B faster)", "A MiB", "B MiB"], trs)
    only = [("A", k) for k in ra if k not in rb] + [("B", k) for k in rb if k not in ra]
    if only:
        lines += ["", "## Rows in one run only", ""]
        lines += _table(["run", "entry", "shape", "dtype", "mode", "impl"],
                        [[w, k[0], fmt_shape(json.loads(k[1])), k[2], k[3], k[4]] for w, k in only])
    return "\n".join(lines) + "\n"
