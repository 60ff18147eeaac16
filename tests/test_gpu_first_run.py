"""The GPU first-run script (scripts/gpu_first_run.sh + scripts/gpu_smoke.py) on the CPU: its dry run.

The script gets one try on a lent GPU (15 minutes of device time, 10 per command), so a typo after
the build would waste it: the dry run executes every phase's CPU-side logic (the Python drivers at
tiny sizes, the pytest selection of the Triton phase) and prints the GPU commands.  Here it runs once
with a temporary $OUT and its reports are checked.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_first_run.sh")
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import gpu_smoke  # noqa: E402

#: the device tool's limit on one command is 600 s; the script must stay within 9 minutes
LIMIT_S = 540


def _list() -> dict:
    out = subprocess.run(["bash", SCRIPT, "--list"], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in (line.split("\t") for line in out.strip().splitlines())}


def _phases() -> list:
    return [k for k in _list() if k not in ("grace_s", "summary_s", "total_s", "sum_s")]


def _tsv(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    """One dry run of the whole script: ``(output folder, exit status, console)``."""
    out = tmp_path_factory.mktemp("gpu-first-run")
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    env.pop("PYTEST_ARGS", None)
    res = subprocess.run(["bash", SCRIPT, "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    return str(out), res.returncode, res.stdout + res.stderr


def test_phase_limits_fit_nine_minutes_by_construction():
    lst = _list()
    phases = _phases()
    assert phases[:2] == ["env", "build"] and phases[-1] == "timing"
    assert all(lst[p] > 0 for p in phases)
    total = sum(lst[p] + lst["grace_s"] for p in phases) + lst["summary_s"]
    assert total == lst["sum_s"]
    assert lst["total_s"] == LIMIT_S and total <= LIMIT_S


def test_bad_arguments_are_refused():
    for args in (["--bogus"], ["--phases", "build,nosuchphase"]):
        res = subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True)
        assert res.returncode == 2, args
        assert "unknown" in res.stderr
    # LIMITS may move time between phases but not past the total
    for limits, msg in (("build=300", "sum to"), ("build=x", "bad limit")):
        res = subprocess.run(["bash", SCRIPT, "--list"], capture_output=True, text=True,
                             env=dict(os.environ, LIMITS=limits))
        assert res.returncode == 2 and msg in res.stderr, limits


def test_a_timed_out_phase_is_recorded_and_the_run_goes_on(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, LIMITS="check=1")
    # the sanitizer phases only print on a dry run: cheap neighbours of the phase that times out
    res = subprocess.run(["bash", SCRIPT, "--dry-run", "--phases", "sanitize_racecheck,check,sanitize_synccheck"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    rows = {r["phase"]: r for r in _tsv(os.path.join(tmp_path, "phases.tsv"))}
    assert list(rows) == _phases()
    assert rows["check"]["status"] == "timeout" and rows["check"]["timeout_s"] == "1"
    assert rows["sanitize_synccheck"]["status"] == "ok"  # the phase after it still ran
    assert rows["build"]["status"] == "skipped"
    assert res.returncode == 1


def test_dry_run_records_every_phase(dry):
    out, rc, console = dry
    assert rc == 0, console[-4000:]
    rows = _tsv(os.path.join(out, "phases.tsv"))
    assert [r["phase"] for r in rows] == _phases()
    for r in rows:
        assert r["status"] == "ok" and r["note"] == "dry run", r
        assert 0 < int(r["timeout_s"]) <= _list()[r["phase"]]
        assert float(r["seconds"]) <= float(r["timeout_s"])
    log = open(os.path.join(out, "first.log")).read()
    # the GPU commands are printed with the arguments that matter on the device
    assert "TORCH_CUDA_ARCH_LIST=9.0" in log and "--no-build-isolation --no-deps" in log
    for tool in ("memcheck", "racecheck", "synccheck"):
        assert f"would run: compute-sanitizer --tool {tool}" in log
    assert "-m gpu -k not triton" in log and "-m gpu -k triton" in log
    assert json.load(open(os.path.join(out, "env.json")))["torch"]


def test_dry_run_sanitize_target_covers_every_op(dry):
    out, rc, _ = dry
    rows = _tsv(os.path.join(out, "sanitize_memcheck.tsv"))
    assert {r["status"] for r in rows} == {"ok"}
    names = {r["case"].split("[")[0] for r in rows}
    assert names >= set(gpu_smoke.OP_NAMES)
    assert any(",det]" in r["case"] for r in rows)  # deterministic (segmented) variants
    triton = _tsv(os.path.join(out, "sanitize_memcheck_triton.tsv"))
    assert triton and all(r["backend"] == "triton" and r["status"] == "ok" for r in triton)


def test_dry_run_check_report(dry):
    out, rc, _ = dry
    rows = _tsv(os.path.join(out, "check.tsv"))
    bad = [r for r in rows if r["status"] not in ("pass", "skip")]
    assert not bad, bad
    by_dtype = {(r["name"], r["dtype"]) for r in rows}
    for op in gpu_smoke.OP_NAMES:
        assert (op, "float64") in by_dtype and (op, "float32") in by_dtype, op
        assert (f"{op}[autocast]", "bfloat16") in by_dtype, op
    f64 = [r for r in rows if r["dtype"] == "float64" and r["status"] == "pass"]
    assert f64 and all(float(r["max_rel_err"]) <= 1e-10 for r in f64)
    big = [r for r in rows if r["name"].startswith("rotate_gather[>2^31")]
    assert len(big) == 1 and big[0]["status"] == "pass"
    assert "2148532416 elements" in big[0]["note"]  # the GPU run's plan: past 2**31 output elements
    assert any(r["name"].startswith("determinism[no_cublas_env]:") and r["status"] == "pass" for r in rows)
    assert any(r["name"].startswith("so2_message[tile7]") for r in rows)
    assert os.path.exists(os.path.join(out, "check.md"))


def test_dry_run_triton_selection_stops_at_lmax4(dry):
    out, rc, _ = dry
    with open(os.path.join(out, "pytest_triton.selection.tsv")) as f:
        sel = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    assert sel and all("triton" in nodeid for nodeid, _ in sel)
    lmax = [int(l) for _, l in sel]
    assert max(lmax) <= 4 and lmax == sorted(lmax)  # deselected above 4, cheapest first
    assert max(lmax) == 4 and min(lmax) == 0


def test_dry_run_timing_table(dry):
    out, rc, _ = dry
    doc = json.load(open(os.path.join(out, "timing.json")))
    rows = doc["rows"]
    assert doc["dry_run"] is True
    keys = {(r["op"], r["mmax"], r["E"], r["mode"], r["tf32"]) for r in rows}
    for op in ("so2_message", "edgewise_block"):
        for mmax in (2, 4):
            for e in (200_000, 1_000_000):
                for mode in ("fwd", "fwdbwd"):
                    for tf32 in ("off", "on"):
                        assert (op, mmax, e, mode, tf32) in keys
    impls = {r["impl"] for r in rows}
    assert {"reference", "gemm_floor", "escn_dense", "fairchem_general"} <= impls
    assert not [r for r in rows if r.get("status") == "error"]
    timed = [r for r in rows if r.get("status") == "ok"]
    assert timed and all(r["median_ms"] > 0 for r in timed)
    md = open(os.path.join(out, "timing.md")).read()
    assert "| op | lmax | mmax | C | E | impl | mode | tf32 | median_ms" in md


def test_pytest_plugin_lmax_filter_and_order():
    """The plugin's hooks on stand-in items (no pytest run)."""

    class Item:
        def __init__(self, nodeid, lmax=None):
            self.nodeid = nodeid
            self.callspec = type("C", (), {"params": {} if lmax is None else {"lmax": lmax}})()

    class Hook:
        deselected = []

        def pytest_deselected(self, items):
            self.deselected += items

    config = type("Cfg", (), {"hook": Hook()})()
    items = [Item("a[6]", 6), Item("b[4]", 4), Item("c"), Item("tests/test_lmax8.py::t"), Item("d[1]", 1)]
    old = {k: os.environ.get(k) for k in ("GPU_SMOKE_MAX_LMAX", "GPU_SMOKE_SORT_LMAX")}
    os.environ.update(GPU_SMOKE_MAX_LMAX="4", GPU_SMOKE_SORT_LMAX="1")
    try:
        gpu_smoke.pytest_collection_modifyitems(config, items)
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    assert [i.nodeid for i in items] == ["c", "d[1]", "b[4]"]
    assert sorted(i.nodeid for i in config.hook.deselected) == ["a[6]", "tests/test_lmax8.py::t"]
