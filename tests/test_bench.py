"""Tests of the benchmark harness ``bench/``.

* ``python -m bench --quick --device cpu`` runs end to end (correctness
  assertions included) within the CI budget, and its JSON passes the schema;
* the analytic FLOP counts equal a brute-force count
  (``torch.utils.flop_counter.FlopCounterMode``) of the reference on tiny cases;
* the eSCN-style baseline computes exactly the reference's function;
* the CPU peak-memory method sees torch allocations;
* ``compare`` and the schema validator behave;
* an interrupted run keeps its finished cases in ``<name>.partial.json``
  (atomically written, schema-valid) and ``--resume`` completes it without
  timing them again, refusing a run with other options.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import so2ops
from bench import SCHEMA_VERSION, gemm_floor, memory
from bench.baselines import e3nn_tp, escn_dense
from bench.compare import compare
from bench.runner import run_case as _REAL_RUN_CASE
from bench.ops import edge_wigner as W
from bench.ops import rotate as R
from bench.ops import so2_linear as L
from bench.ops import so2_message as M
from bench.ops import so2_tensor_product as TP
from bench.ops import assemble_blocks as AB
from bench.schema import SchemaError, validate
from bench.timer import summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device("cpu")
QUICK_BUDGET_S = 180


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``python -m bench --quick --device cpu`` run shared by the tests below."""
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--device", "cpu", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, f"bench failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    paths = proc.stdout.split()
    js = [p for p in paths if p.endswith(".json")]
    assert len(js) == 1, proc.stdout
    with open(js[0]) as f:
        doc = json.load(f)
    return {"doc": doc, "paths": paths, "elapsed": elapsed, "stderr": proc.stderr, "load": load}


def test_quick_run_is_complete_and_correct(quick_run):
    doc, paths = quick_run["doc"], quick_run["paths"]
    validate(doc)
    assert doc["schema"] == SCHEMA_VERSION and doc["meta"]["quick"] is True
    assert any(p.endswith(".md") for p in paths) and any(p.endswith("_roofline.png") for p in paths)
    rows = doc["rows"]
    # every so2ops op ran on the reference backend, with every mode at the headline case
    for op in ("edge_wigner", "rotate", "so2_linear", "so2_message", "so2_tensor_product", "assemble_blocks",
               "assemble_blocks_head"):
        ref = [r for r in rows if r["entry"] == op and r["impl"] == "reference" and r["status"] == "ok"]
        assert {r["mode"] for r in ref} == {"fwd", "bwd", "fwdbwd"}, op
    # correctness ran before timing: same-math rows carry a passed check with a measured error
    checked = [r for r in rows if r["status"] == "ok" and r["impl"] in ("cpu", "escn_dense")]
    assert checked and all(r["check"]["status"] == "pass" and r["check"]["max_rel_err"] is not None for r in checked)
    assert all(r["status"] != "failed" for r in rows)
    # every backend that can run here got rows; the others say why not
    runnable = [b for b, v in so2ops.backends().items() if "cpu" in v["devices"] and b != "triton"]
    for b in runnable:
        assert any(r["impl"] == b and r["status"] == "ok" for r in rows), b
    # baselines of the message op, speedups and memory in the same run
    msg = [r for r in rows if r["entry"] == "so2_message" and r["status"] == "ok" and r["mode"] == "fwdbwd"
           and "headline" in r["tags"] and r["dtype"] == "float32"]
    assert {"reference", "escn_dense"} <= {r["impl"] for r in msg}
    assert all(r["peak_mem_bytes"] and r["peak_mem_bytes"] > 0 for r in msg)
    assert all("reference" in r["speedup"] for r in msg if r["impl"] != "reference")
    assert any(r["entry"] == "so2_message" and r["impl"] == "e3nn_tp" and r["status"] == "ok" for r in rows)
    assert any(r["entry"] == "assemble_blocks_head" and r["impl"] == "cg_blocks" and r["status"] == "ok" for r in rows)
    assert doc["meta"]["peaks"]["measured"].get("fp32", 0) > 0
    assert doc["targets"], "targets section missing"


def test_quick_run_fits_ci_budget(quick_run):
    # On a machine shared with other jobs (load above the core count) OpenMP's spinning
    # barriers make small torch ops orders of magnitude slower: the budget says nothing there.
    if quick_run["load"] > (os.cpu_count() or 1):
        pytest.skip(f"machine loaded (load average {quick_run['load']:.1f} > {os.cpu_count()} cores); "
                    f"--quick took {quick_run['elapsed']:.0f} s")
    assert quick_run["elapsed"] < QUICK_BUDGET_S, f"--quick took {quick_run['elapsed']:.0f} s"


def test_schema_rejects_broken_documents(quick_run):
    doc = quick_run["doc"]
    ok = next(i for i, r in enumerate(doc["rows"]) if r["status"] == "ok")
    mutations = [
        lambda d: d.pop("rows"),
        lambda d: d.__setitem__("schema", "other/0"),
        lambda d: d["rows"][ok].__setitem__("mode", "sideways"),
        lambda d: d["rows"][ok].__setitem__("time_s", None),
        lambda d: d["rows"][ok]["time_s"].__setitem__("q20", 1e9),
        lambda d: d["rows"][ok]["check"].__setitem__("status", "fail"),
        lambda d: d["rows"][ok].__setitem__("flops", "many"),
        lambda d: d["meta"].pop("device"),
    ]
    for mutate in mutations:
        bad = copy.deepcopy(doc)
        mutate(bad)
        with pytest.raises(SchemaError):
            validate(bad)


def test_compare_same_run_is_parity(quick_run):
    text = compare(quick_run["doc"], quick_run["doc"])
    ratios = [line.split("|")[8].strip() for line in text.splitlines() if line.startswith("| so2_message")]
    assert ratios and all(r == "1.00" for r in ratios)


# ---------------------------------------------------------------- FLOP counts
def _counted(fn):
    with FlopCounterMode(display=False) as fc:
        out = fn()
    return fc.get_total_flops(), out


def _fwd_bwd(fn, wrt):
    f, out = _counted(fn)
    b, _ = _counted(lambda: torch.autograd.grad(out, wrt, torch.randn_like(out)))
    return f, b


@pytest.mark.parametrize("lmax,mmax", [(1, 0), (1, 1), (2, 1), (3, 3), (4, 2)])
def test_flop_counts_match_brute_force(lmax, mmax):
    """Analytic counts == every multiply-add the reference's contractions execute (FlopCounterMode)."""
    c, e, n = 3, 7, 5
    sh = dict(lmax=lmax, mmax=mmax, C=c, E=e, N=n)
    t = M.ENTRY.make_inputs(sh, torch.float64, CPU, 0)
    x, w, mo = (t[k].requires_grad_(True) for k in ("x", "weight", "modulation"))
    got = _fwd_bwd(lambda: so2ops.reference.so2_message(x, t["wigner"], t["edge_index"], w, lmax, mmax, c, mo), [x, w, mo])
    assert got == (M.ENTRY.count(sh, "fwd", 8).flops, M.ENTRY.count(sh, "bwd", 8).flops)
    assert M.ENTRY.count(sh, "fwdbwd", 8).flops == sum(got)

    sh = dict(lmax=lmax, mmax=mmax, C=c, E=e)
    t = L.ENTRY.make_inputs(sh, torch.float64, CPU, 0)
    x, w, mo = (t[k].requires_grad_(True) for k in ("x", "weight", "modulation"))
    got = _fwd_bwd(lambda: so2ops.reference.so2_linear(x, w, lmax, mmax, c, mo), [x, w, mo])
    assert got == (L.ENTRY.count(sh, "fwd", 8).flops, L.ENTRY.count(sh, "bwd", 8).flops)

    sh = dict(lmax=lmax, C=c, E=e, N=n)
    t = R.ENTRY.make_inputs(sh, torch.float64, CPU, 0)
    x = t["x"].requires_grad_(True)
    got = _fwd_bwd(lambda: so2ops.reference.rotate(x, t["wigner"], lmax, t["index"]), [x])
    assert got == (R.ENTRY.count(sh, "fwd", 8).flops, R.ENTRY.count(sh, "bwd", 8).flops)

    sh = dict(lmax=lmax, E=e)
    v = W.ENTRY.make_inputs(sh, torch.float64, CPU, 0)["edge_vec"].requires_grad_(True)
    got = _fwd_bwd(lambda: so2ops.reference.edge_wigner(v, lmax), [v])
    assert got == (W.ENTRY.count(sh, "fwd", 8).flops, W.ENTRY.count(sh, "bwd", 8).flops)


@pytest.mark.parametrize("lmax,mmax,cin,cout", [(0, 0, 3, 5), (2, 1, 4, 3), (4, 2, 6, 2), (3, 3, 2, 7)])
def test_gemm_floor_counts_the_3m_products(lmax, mmax, cin, cout):
    """The GEMM floor multiplies exactly the packed SO(2) weights: the m = 0 block once, and each
    m > 0 pair (W1, W2) with three GEMMs of one block's size (1.5 x its two blocks, not 2 x);
    its workload runs a training step and its FLOP count is fwd + 2 fwd minus the skipped input grads."""
    gemms = gemm_floor.so2_gemms(lmax, mmax, cin, cout)
    blocks = so2ops.layout.weight_blocks(lmax, mmax, cin, cout)
    m0 = sum(rows * cols for m, _, _, rows, cols in blocks if m == 0)
    mpos = sum(rows * cols for m, _, _, rows, cols in blocks if m > 0)
    assert sum(k * n for k, n, _ in gemms) * 2 == 2 * m0 + 3 * mpos
    e = 5
    fwd = gemm_floor.count(gemms, e, "fwd", 4).flops
    assert gemm_floor.count(gemms, e, "fwdbwd", 4).flops == 3 * fwd
    no_input = gemm_floor.so2_gemms(lmax, mmax, cin, cout, input_grad=False)
    assert gemm_floor.count(no_input, e, "bwd", 4).flops == fwd
    w = gemm_floor.workload(gemms, e, torch.float32, CPU)
    out = w.forward()
    (g,) = torch.autograd.grad(out, w.grad_inputs, torch.ones_like(out))
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("lmax,mmax,nu", [(1, 0, 1), (1, 1, 2), (2, 1, 3), (4, 2, 3), (4, 4, 4)])
def test_tensor_product_flop_counts(lmax, mmax, nu):
    """so2_tensor_product: analytic counts == the reference's contractions (FlopCounterMode)."""
    sh = dict(lmax=lmax, mmax=mmax, nu=nu, C=3, H=5, N=7)
    t = TP.ENTRY.make_inputs(sh, torch.float64, CPU, 0)
    ls = [t[k].requires_grad_(True) for k in TP.GRAD]
    grid = so2ops.tp_grid_size(mmax, nu)
    got = _fwd_bwd(lambda: so2ops.reference.so2_tensor_product(*ls, lmax, mmax, 3, grid), ls)
    assert got == (TP.ENTRY.count(sh, "fwd", 8).flops, TP.ENTRY.count(sh, "bwd", 8).flops)


@pytest.mark.parametrize("molecules,atoms", [(1, 3), (2, 5)])
def test_assemble_blocks_flop_counts(molecules, atoms):
    """assemble_blocks, the so2ops head and the CG baseline: analytic counts == FlopCounterMode."""
    pytest.importorskip("e3nn")
    R = so2ops.reference
    sh = dict(B=molecules, A=atoms)
    t = AB.ENTRY.make_inputs(sh, torch.float64, CPU, 0)
    f = t["features"].requires_grad_(True)
    args = AB.reference_args(f, t["wigner"], t["atomic_numbers"], t["batch"], t["items"])
    assert _fwd_bwd(lambda: R.assemble_blocks(*args), [f]) == (AB.ENTRY.count(sh, "fwd", 8).flops,
                                                                AB.ENTRY.count(sh, "bwd", 8).flops)
    torch.testing.assert_close(R.assemble_blocks(*args), so2ops.assemble_blocks(
        f, t["wigner"], AB.LAYOUT, t["atomic_numbers"], t["items"], t["batch"]))
    sh = dict(B=molecules, A=atoms, C=4)
    t = AB.HEAD.make_inputs(sh, torch.float64, CPU, 0)
    h, w = t["hidden"].requires_grad_(True), t["weight"].requires_grad_(True)
    cb = so2ops.block_channels(AB.LAYOUT, AB.LMAX)

    def head():
        y = R.so2_linear(R.rotate(h, t["wigner"], AB.LMAX), w, AB.LMAX, AB.LMAX, cb)
        return R.assemble_blocks(*AB.reference_args(y, t["wigner"], t["atomic_numbers"], t["batch"], t["items"]))

    assert _fwd_bwd(head, [h, w]) == (AB.HEAD.count(sh, "fwd", 8).flops, AB.HEAD.count(sh, "bwd", 8).flops)
    wl = AB._cg_build(t, sh)
    assert _fwd_bwd(wl.forward, wl.grad_inputs) == (AB._cg_count(sh, "fwd", 8).flops, AB._cg_count(sh, "bwd", 8).flops)


def test_bench_def2_svp_matches_pyscf():
    """The hard-coded def2-SVP shells of the bench are PySCF's."""
    pytest.importorskip("pyscf")
    from qhnetv2.data.basis import element_shells

    for z, ls in AB.DEF2_SVP.items():
        assert tuple(l for l, _ in element_shells("def2-svp", z)) == ls


def test_cg_blocks_baseline_is_equivariant_and_symmetric():
    """The CG route maps rotated hidden features to the rotated Hamiltonian (PySCF basis), symmetric."""
    pytest.importorskip("e3nn")
    from so2ops.layout import wigner_offset
    from so2ops.reference.edge_wigner import wigner_from_matrices

    sh = dict(B=2, A=4, C=3)
    t = AB.HEAD.make_inputs(sh, torch.float64, CPU, 0)
    q = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))[0]
    q = q * torch.sign(torch.det(q))
    dq = wigner_from_matrices(q[None], AB.LMAX)[0]

    def d(l):
        n = 2 * l + 1
        return dq[wigner_offset(l): wigner_offset(l) + n * n].view(n, n)

    h = t["hidden"]
    h_rot = torch.cat([torch.einsum("ab,ibc->iac", d(l), h[:, l * l:(l + 1) ** 2]) for l in range(AB.LMAX + 1)], 1)
    index = so2ops.HamiltonianIndex.build(AB.LAYOUT, t["atomic_numbers"], t["batch"])
    h0 = index.unpack(AB._cg_build(t, sh).forward().detach())
    h1 = index.unpack(AB._cg_build(dict(t, hidden=h_rot), sh).forward().detach())
    for b in range(sh["B"]):
        zs = t["atomic_numbers"][t["batch"] == b].tolist()
        rot = torch.block_diag(*[so2ops.e3nn_to_pyscf(l) @ d(l) @ so2ops.e3nn_to_pyscf(l).T
                                 for z in zs for l in AB.LAYOUT.shell_ls(z)])
        torch.testing.assert_close(rot @ h0[b] @ rot.T, h1[b])
        torch.testing.assert_close(h0[b], h0[b].T)


@pytest.mark.parametrize("lmax", [1, 2, 3])
def test_e3nn_tp_paths_and_weights(lmax):
    """The TP baseline has exactly the counted paths: one weight per path and channel per edge."""
    pytest.importorskip("e3nn")
    tp, lin, _ = e3nn_tp.build_modules(lmax, 4, 4, torch.float64, CPU)
    assert len(tp.instructions) == len(e3nn_tp.paths(lmax))
    assert tp.weight_numel == 4 * len(e3nn_tp.paths(lmax))
    assert all(ins.connection_mode == "uvu" for ins in tp.instructions)


# ---------------------------------------------------------------- baselines
@pytest.mark.parametrize("lmax,mmax", [(2, 1), (3, 3)])
def test_escn_dense_equals_reference(lmax, mmax):
    c, e, n = 4, 9, 5
    sh = dict(lmax=lmax, mmax=mmax, C=c, E=e, N=n)
    t = M.ENTRY.make_inputs(sh, torch.float64, CPU, 1)
    ref = so2ops.reference.so2_message(t["x"], t["wigner"], t["edge_index"], t["weight"], lmax, mmax, c, t["modulation"])
    w = M._escn_build(t, sh)
    out = w.forward()
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, w.grad_inputs, g)
    _, mapped = w.to_reference(out.detach(), list(grads))
    torch.testing.assert_close(out, ref)
    leaves = {k: t[k].detach().requires_grad_(True) for k in ("x", "weight", "modulation")}
    ref2 = so2ops.reference.so2_message(leaves["x"], t["wigner"], t["edge_index"], leaves["weight"], lmax, mmax, c, leaves["modulation"])
    want = torch.autograd.grad(ref2, [leaves["x"], leaves["weight"], leaves["modulation"]], g)
    for a, b in zip(mapped, want):
        torch.testing.assert_close(a, b)
    # standalone pieces
    dense = escn_dense.dense_wigner(t["wigner"], lmax)
    torch.testing.assert_close(escn_dense.rotate(t["x"], dense, t["edge_index"][0], False),
                               so2ops.reference.rotate(t["x"], t["wigner"], lmax, t["edge_index"][0]))
    xl = torch.randn(e, (lmax + 1) ** 2, c, dtype=torch.float64)
    ws = escn_dense.per_m_weights(t["weight"], lmax, mmax, c, c)
    torch.testing.assert_close(escn_dense.so2_linear(xl, ws, t["modulation"], lmax, mmax),
                               so2ops.reference.so2_linear(xl, t["weight"], lmax, mmax, c, t["modulation"]))


# ---------------------------------------------------------------- measurement
def test_cpu_memory_method_sees_torch_allocations(tmp_path):
    """The worker's VmHWM method measures a known torch allocation (64 MiB) to within a few MiB."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import json, torch\n"
        "from bench.memory import measure_rss\n"
        "def step():\n"
        "    a = torch.ones(16 << 20)\n"  # 64 MiB of float32, touched
        "    b = a * 2\n"  # a second 64 MiB live at the same time
        "    del a\n"
        "    return b.sum()\n"
        "step()\n"
        "print(json.dumps(measure_rss(step)))\n"
    )
    env = dict(os.environ, **memory.WORKER_MALLOC_ENV)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    mib = res["peak_bytes"] / 2**20
    assert 120 <= mib <= 140, res


def test_cpu_timer_interleaves_rows():
    """The rows of a case are timed side by side: each function's repetitions (warm-up first) are spread
    over common rounds, not run back to back; a function that raises gives its exception, the others
    their summaries."""
    import contextlib

    from bench.timer import Budget, time_cpu_interleaved

    log = []

    def make(name, fail_at=None):
        def fn():
            log.append(name)
            if fail_at is not None and log.count(name) == fail_at:
                raise RuntimeError(f"{name} broke")
        return fn

    b = Budget(warmup=1, target_s=0.0, min_reps=6, max_reps=6)
    few = Budget(warmup=0, target_s=0.0, min_reps=2, max_reps=2)
    res = time_cpu_interleaved([(make("a"), contextlib.nullcontext, b), (make("b"), contextlib.nullcontext, few),
                                (make("c", fail_at=4), contextlib.nullcontext, b)])
    assert res[0]["n"] == 6 and res[1]["n"] == 2
    assert isinstance(res[2], RuntimeError)
    assert log[:5] == ["a", "a", "b", "c", "c"]  # warm-ups and first calls, in order
    timed = log[5:]
    # "b"'s second repetition lands mid-run, between repetitions of "a"
    i_b = timed.index("b")
    assert "a" in timed[:i_b] and "a" in timed[i_b + 1:]


def test_summarize_quantiles():
    s = summarize([3.0, 1.0, 2.0, 5.0, 4.0])
    assert s["min"] == 1.0 and s["median"] == 3.0 and s["n"] == 5
    assert s["min"] <= s["q20"] <= s["median"] <= s["q80"]


# ---------------------------------------------------------------- resumable runs
#: the smallest selection: the two sanity entries (always run) and one rotate case, forward only, tiny budget
RESUME_ARGS = ["rotate", "--quick", "--device", "cpu", "--no-memory", "--no-plots", "--dtype", "float32",
               "--mode", "fwd", "--target-s", "0.002", "--min-reps", "1", "--warmup", "0", "--name", "resume"]


class _Interrupt(Exception):
    """Stands for a killed job: raised by the patched runner in the middle of a run."""


def _bench_main(monkeypatch, out, extra=(), fail_at=None, base=RESUME_ARGS):
    """Run ``python -m bench`` in-process; returns (exit code, keys of the cases actually run).

    ``fail_at=k``: the k-th case (0-based) to reach ``run_case`` raises instead of running.
    """
    from bench import __main__ as cli, runner
    from bench.checkpoint import case_key
    from bench.workloads import dtype_name

    ran = []
    real = _REAL_RUN_CASE  # not runner.run_case: an earlier call of this test may have patched it

    def counting(entry, case, impls, opts, mem_jobs):
        if fail_at is not None and len(ran) == fail_at:
            raise _Interrupt(f"interrupted before {entry.name}")
        ran.append(case_key(entry.name, case.shape, dtype_name(case.dtype)))
        return real(entry, case, impls, opts, mem_jobs)

    monkeypatch.setattr(runner, "run_case", counting)
    rc = cli.main(list(base) + ["--out", str(out)] + list(extra))
    return rc, ran


def _row_id(r):
    return (r["entry"], r["impl"], json.dumps(r["shape"], sort_keys=True), r["dtype"], r["mode"])


def _run_dir(out):
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


def test_interrupted_run_resumes_without_retiming(tmp_path, monkeypatch, capsys):
    from bench.checkpoint import row_case_key

    with pytest.raises(_Interrupt):
        _bench_main(monkeypatch, tmp_path, fail_at=1)
    d = _run_dir(tmp_path)
    partial = d / "resume.partial.json"
    assert partial.exists() and not (d / "resume.json").exists()
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")], "temp files left behind"
    pdoc = json.loads(partial.read_text())
    validate(pdoc)  # the partial document is a valid document too
    assert pdoc["progress"]["complete"] is False and len(pdoc["progress"]["cases_done"]) == 1
    first = pdoc["progress"]["cases_done"][0]
    assert pdoc["rows"] and all(row_case_key(r) == first for r in pdoc["rows"])
    timed_before = {_row_id(r): r["time_s"] for r in pdoc["rows"]}

    rc, ran = _bench_main(monkeypatch, tmp_path, ["--resume"])
    assert rc == 0
    assert ran and first not in ran, "a finished case was timed again"
    assert "1 finished cases are reused" in capsys.readouterr().err
    assert not partial.exists(), "the partial file must go once the final files are written"
    doc = json.loads((d / "resume.json").read_text())
    validate(doc)
    ids = [_row_id(r) for r in doc["rows"]]
    assert len(ids) == len(set(ids)), "a row appears twice"
    # every case exactly once: the reused one plus the ones run now, in run order
    assert doc["progress"]["cases_done"] == [first] + ran and doc["progress"]["complete"] is True
    assert {row_case_key(r) for r in doc["rows"]} == set(doc["progress"]["cases_done"])
    for r in doc["rows"]:
        if _row_id(r) in timed_before:
            assert r["time_s"] == timed_before[_row_id(r)], "a reused row was re-timed"
    assert any(r["entry"] == "rotate" and r["status"] == "ok" for r in doc["rows"])
    assert doc["meta"]["resume"]["cases_reused"] == 1 and doc["meta"]["fingerprint"]["modes"] == ["fwd"]

    # resuming a finished run times nothing and keeps every row
    rc, ran = _bench_main(monkeypatch, tmp_path, ["--resume"])
    assert rc == 0 and ran == []
    again = json.loads((d / "resume.json").read_text())
    assert [_row_id(r) for r in again["rows"]] == ids


def test_resume_measures_pending_cpu_memory(tmp_path, monkeypatch):
    """Killed during the CPU memory pass: the resumed run times nothing and measures what was pending."""
    def killed(*args, **kwargs):
        raise _Interrupt("killed while measuring memory")

    memory_on = [a for a in RESUME_ARGS if a != "--no-memory"]
    memory_on[memory_on.index("fwd")] = "fwdbwd"
    monkeypatch.setattr(memory, "measure_cpu_jobs", killed)
    with pytest.raises(_Interrupt):
        _bench_main(monkeypatch, tmp_path, base=memory_on)
    d = _run_dir(tmp_path)
    pdoc = json.loads((d / "resume.partial.json").read_text())
    pending = pdoc["progress"]["pending_memory"]
    assert pending and all(pdoc["rows"][p["row"]]["entry"] == "rotate" for p in pending)
    monkeypatch.undo()  # the real memory worker back
    rc, ran = _bench_main(monkeypatch, tmp_path, ["--resume"], base=memory_on)
    assert rc == 0 and ran == []
    doc = json.loads((d / "resume.json").read_text())
    validate(doc)
    measured = [r for r in doc["rows"] if r["entry"] == "rotate" and r["status"] == "ok"]
    assert len(measured) == len(pending) and all(r["peak_mem_bytes"] and r["peak_mem_bytes"] > 0 for r in measured)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    from bench.checkpoint import atomic_write, atomic_write_text

    path = tmp_path / "doc.json"
    atomic_write_text(str(path), "old")

    def broken(f):
        f.write("half a docu")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(str(path), broken)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["doc.json"]


def test_resume_refuses_other_options(tmp_path, monkeypatch, capsys):
    with pytest.raises(_Interrupt):
        _bench_main(monkeypatch, tmp_path, fail_at=1)
    partial = _run_dir(tmp_path) / "resume.partial.json"
    before = partial.read_bytes()
    capsys.readouterr()
    rc, ran = _bench_main(monkeypatch, tmp_path, ["--resume", "--mode", "bwd"])
    err = capsys.readouterr().err
    assert rc == 2 and ran == [] and "modes" in err and "cannot resume" in err, err
    assert partial.read_bytes() == before
    # without --resume the unfinished run is announced as overwritten (here: killed again before a case ends)
    with pytest.raises(_Interrupt):
        _bench_main(monkeypatch, tmp_path, fail_at=0)
    assert "will be overwritten" in capsys.readouterr().err


# ------------------------------------------------------------------ model entries (python -m bench models)
@pytest.fixture(scope="module")
def quick_models_run(tmp_path_factory):
    """``python -m bench models --quick --device cpu``: the qh9 model on water (CI-sized)."""
    out = tmp_path_factory.mktemp("bench_models")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("SO2OPS_BACKEND", None)
    proc = subprocess.run([sys.executable, "-m", "bench", "models", "--quick", "--device", "cpu", "--out", str(out),
                           "--no-plots"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"bench models failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    js = [p for p in proc.stdout.split() if p.endswith(".json")]
    assert len(js) == 1, proc.stdout
    with open(js[0]) as f:
        return json.load(f)


def test_quick_models_run_is_complete_and_correct(quick_models_run):
    from bench.models.qhnetv2_model import MODEL_OPS

    doc = quick_models_run
    validate(doc)
    rows = [r for r in doc["rows"] if r["entry"] == "qhnetv2"]
    assert rows and all(r["kind"] == "model" for r in rows)
    assert {r["shape"]["system"] for r in rows} == {"water"}
    for impl in ("reference", "fused"):
        got = {r["mode"]: r for r in rows if r["impl"] == impl and r["status"] == "ok"}
        assert set(got) == {"fwd", "fwdbwd"}, impl
        assert got["fwdbwd"]["peak_mem_bytes"] and got["fwdbwd"]["peak_mem_bytes"] > 0, impl
    fused = [r for r in rows if r["impl"] == "fused" and r["status"] == "ok"]
    # H and every parameter gradient were checked against the reference before timing
    assert all(r["check"]["status"] == "pass" and r["check"]["max_rel_err"] is not None for r in fused)
    assert all("reference" in r["speedup"] for r in fused)
    # the fused row says which backend each op ran on
    assert all(f"{op}=" in fused[0]["note"] for op in MODEL_OPS), fused[0]["note"]
    # a forced backend lacking an op is listed as skipped with the missing ops, never silently run
    for r in rows:
        if r["impl"] not in ("reference", "fused"):
            assert r["status"] in ("ok", "skipped"), r
    assert any(t["entry"] == "qhnetv2" for t in doc["targets"])


def test_model_entry_is_registered_and_geometries_are_sane():
    from bench.models import molecules as mols
    from bench.models import qhnetv2_model as QM
    from bench.registry import select_entries

    assert "qhnetv2" in [e.name for e in select_entries(["models"])]
    assert "qhnetv2" not in [e.name for e in select_entries(["ops"])]
    counts = {"water": 3, "ethanol": 9, "uracil": 12, "nonane": 29}
    for name, n in counts.items():
        z, pos, batch = mols.system(name)
        assert z.numel() == n and pos.shape == (n, 3)
        assert 0.9 < mols.min_distance(pos, batch) < 1.6, name  # bond lengths in Angstrom
        assert z.sum() % 2 == 0  # closed shell
    z, pos, batch = mols.system("qm9x32")
    assert z.numel() == 32 * 29 and int(batch.max()) == 31 and mols.min_distance(pos, batch) > 0.9
    # the same elements' shells as the op benchmarks' hard-coded def2-SVP
    for zz, ls in AB.DEF2_SVP.items():
        assert QM.DEF2_SVP[zz] == ls
    used = QM.backends_used(CPU)
    assert set(used) == set(QM.MODEL_OPS) and all(b in so2ops.dispatch.BACKENDS for b in used.values()), used


def test_profile_model_parts_cover_the_step(tmp_path):
    from bench import profile_model

    rc = profile_model.main(["--preset", "tiny", "--molecule", "water", "--reps", "1", "--out", str(tmp_path),
                             "--name", "p"])
    assert rc == 0
    files = list(tmp_path.rglob("p.json"))
    assert len(files) == 1 and files[0].with_suffix(".md").exists()
    doc = json.loads(files[0].read_text())
    for mode in ("fwd", "fwdbwd"):
        r = doc["modes"][mode]
        parts = {p["part"]: p for p in r["parts"]}
        for op in ("so2_message", "so2_linear", "rotate", "so2_tensor_product", "assemble_blocks"):
            assert parts["so2ops::" + op]["forward_ms"] > 0, (mode, op)
        assert "LayerNorm" in parts and "Gate" in parts and "radial MLP" in parts
        assert abs(sum(p["pct"] for p in r["parts"]) - 100.0) < 1e-6
    bwd = {p["part"] for p in doc["modes"]["fwdbwd"]["parts"] if p["backward_ms"] > 0}
    assert {"so2ops::so2_message_backward", "so2ops::so2_linear_backward"} <= bwd
    assert doc["load"]["start"] is not None and set(doc["ops_ran_on"]) >= {"so2_message", "assemble_blocks"}


def test_model_bench_def2_svp_matches_pyscf():
    """The model bench's hard-coded def2-SVP (H, C, N, O, F) is PySCF's."""
    pytest.importorskip("pyscf")
    from bench.models import qhnetv2_model as QM
    from qhnetv2.data.basis import element_shells

    for z, ls in QM.DEF2_SVP.items():
        assert tuple(l for l, _ in element_shells("def2-svp", z)) == ls
