"""qhnetv2.training: config errors, loss decrease, exact resume after SIGKILL, DDP == one process, CLI."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pyscf")
pytest.importorskip("yaml")

from qh_helpers import REPO, water_frames, write_xyz  # noqa: E402

PY = sys.executable


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"  # tiny ops: one thread is faster and deterministic
    return env


@pytest.fixture(scope="session")
def water_set(tmp_path_factory):
    """6 distorted waters labelled once per session (HF/STO-3G: ~1 s each) + a 4/2/0 split."""
    from qhnetv2.data.build import build_dataset
    from qhnetv2.data.split import write_json_atomic

    root = tmp_path_factory.mktemp("train_data")
    xyz = write_xyz(root / "water.xyz", water_frames(6, seed=3, scale=0.05))
    data = str(root / "water")
    s = build_dataset([xyz], data, {"xc": "hf", "basis": "sto-3g", "conv_tol": 1e-10}, workers=0, progress=False)
    assert s["n_ok"] == 6
    from qhnetv2.data.store import HamiltonianReader
    ids = HamiltonianReader(data).ids
    split = str(root / "split.json")
    write_json_atomic(split, {"train": ids[:4], "valid": ids[4:], "test": []})
    split3 = str(root / "split3.json")
    write_json_atomic(split3, {"train": ids[:3], "valid": [], "test": []})
    return {"data": data, "split": split, "split3": split3, "root": root}


def _write_config(path, **kw):
    import yaml

    cfg = {"model": {"preset": "tiny"}, "target": "full", "dtype": "float64", "batch_size": 2, "lr": 3e-3,
           "warmup_steps": 2, "max_steps": 8, "val_every": 4, "log_every": 1, "ema_decay": 0.9, "seed": 0}
    cfg.update(kw)
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return str(path)


def _final_state(run):
    ck = torch.load(os.path.join(run, "checkpoints", "last.pt"), weights_only=True)
    return ck


def _log_rows(run):
    with open(os.path.join(run, "log.csv")) as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- config
def test_unknown_config_key_is_a_clear_error(tmp_path):
    from qhnetv2.training import load_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {preset: tiny}\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(str(bad))
    bad.write_text("model: {preset: tiny, chanels: 8}\n")
    with pytest.raises(ValueError, match="chanels"):
        load_config(str(bad))
    bad.write_text("loss: {mae: 1, huber: 2}\n")
    with pytest.raises(ValueError, match="huber"):
        load_config(str(bad))
    with pytest.raises(FileNotFoundError):
        load_config(str(tmp_path / "missing.yaml"))
    # the CLI turns it into one line and exit code 2
    bad.write_text("model: {preset: tiny}\nlearning_rate: 0.1\n")
    r = subprocess.run([PY, "-m", "qhnetv2", "train", "--config", str(bad), "--data", "x", "--split", "y",
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, env=_env(), cwd=REPO)
    assert r.returncode == 2 and "learning_rate" in r.stderr and "Traceback" not in r.stderr


def test_presets_load_and_ship_as_package_data():
    from qhnetv2.training import load_config
    from qhnetv2.training.config import preset_path

    for name in ("tiny", "md17", "qh9"):
        assert os.path.exists(preset_path(name))
        cfg = load_config(name)
        assert cfg.model["preset"] == name
    assert 'configs/*.yaml' in open(os.path.join(REPO, "pyproject.toml")).read()


# ---------------------------------------------------------------- pieces
def test_sampler_is_reproducible_bucketed_and_rank_independent():
    from qhnetv2.training import BucketBatchSampler

    sizes = np.array([5, 30, 7, 30, 5, 12, 7, 12, 30, 5, 40])
    one = BucketBatchSampler(sizes, 4, seed=3)
    batches = list(one.batches_from(0, 7))
    assert batches == list(BucketBatchSampler(sizes, 4, seed=3).batches_from(0, 7))
    assert list(one.batches_from(4, 7)) == batches[4:]                      # resume mid-run
    for b in batches:                                                        # bucketed: sorted sizes
        assert list(sizes[b]) == sorted(sizes[b])
    two = [BucketBatchSampler(sizes, 4, seed=3, rank=r, world=2) for r in range(2)]
    merged = [sorted(a + b) for a, b in zip(two[0].batches_from(0, 7), two[1].batches_from(0, 7))]
    assert merged == [sorted(b) for b in batches]                            # same global batches
    assert list(BucketBatchSampler(sizes, 4, seed=4).batches_from(0, 2)) != batches[:2]


def test_collate_flat_layout_and_residual(water_set):
    from qhnetv2.data import HamiltonianDataset
    from qhnetv2.training import collate

    ds = HamiltonianDataset(water_set["data"])
    recs = [ds[0], ds[1]]
    recs[1]["base_hamiltonian"] = recs[1]["hamiltonian"] * 0.5
    with pytest.raises(ValueError, match="base_hamiltonian"):
        collate(recs)
    recs[0]["base_hamiltonian"] = torch.zeros_like(recs[0]["hamiltonian"])
    b = collate(recs, dtype=torch.float32)
    assert b.batch.tolist() == [0, 0, 0, 1, 1, 1]
    assert b.target.dtype == torch.float32 and b.hamiltonian.dtype == torch.float64
    h0, h1 = b.unpack(b.hamiltonian)
    assert torch.equal(h0, recs[0]["hamiltonian"]) and torch.equal(h1, recs[1]["hamiltonian"])
    assert torch.allclose(b.unpack(b.target)[1].double(), recs[1]["hamiltonian"] * 0.5, atol=1e-6)
    assert b.n_occ.tolist() == [5, 5]


# ---------------------------------------------------------------- training
def test_loss_falls_100x_on_a_tiny_fixed_set(water_set, tmp_path):
    from qhnetv2.model import QHNetV2
    from qhnetv2.training import load_config, train

    cfg = load_config(_write_config(tmp_path / "c.yaml", batch_size=3, max_steps=150, lr=5e-3, warmup_steps=5,
                                    val_every=1000, log_every=1, ema_decay=0.0, lr_floor=0.1,
                                    loss={"mae": 1.0, "mse": 1.0}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        s = train(cfg, water_set["data"], water_set["split3"], str(tmp_path / "run"), progress=False)
    finally:
        torch.set_num_threads(threads)
    rows = _log_rows(tmp_path / "run")
    first, last = float(rows[0]["loss"]), min(float(r["loss"]) for r in rows[-5:])
    assert last < first / 100, (first, last)
    assert s["steps"] == 150 and os.path.exists(s["learning_curve"])
    model = QHNetV2.load(s["best_checkpoint"])  # EMA/best weights load as a plain model
    assert model.config.basis == "sto-3g"
    extra = torch.load(s["best_checkpoint"], weights_only=True)["extra"]
    assert extra["target"] == "full" and extra["settings"]["xc"] == "hf"


def _train_cmd(cfg, data, split, out, *extra):
    return [PY, "-m", "qhnetv2", "train", "--config", cfg, "--data", data, "--split", split, "--out", out,
            "--no-progress", "--device", "cpu", *extra]


def test_sigkill_then_resume_matches_an_uninterrupted_run(water_set, tmp_path):
    cfg = _write_config(tmp_path / "c.yaml", target="minao", max_steps=14, val_every=3, checkpoint_every=3,
                        log_every=1)
    data, split = water_set["data"], water_set["split"]
    ref = str(tmp_path / "ref")
    subprocess.run(_train_cmd(cfg, data, split, ref), check=True, env=_env(), cwd=REPO, capture_output=True)

    run = str(tmp_path / "killed")
    p = subprocess.Popen(_train_cmd(cfg, data, split, run), env=_env(), cwd=REPO,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while time.time() - t0 < 300:  # kill between checkpoints, after at least one
        if os.path.exists(os.path.join(run, "log.csv")) and any(
                r["step"] == "7" for r in _log_rows(run)):
            break
        if p.poll() is not None:
            pytest.fail("training ended before it could be killed")
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = int(torch.load(os.path.join(run, "checkpoints", "last.pt"), weights_only=True)["extra"]["step"])
    assert 3 <= killed_at < 14
    r = subprocess.run(_train_cmd(cfg, data, split, run, "--resume"), env=_env(), cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a, b = _final_state(ref), _final_state(run)
    assert a["extra"]["step"] == b["extra"]["step"] == 14
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    ea, eb = a["extra"]["train_state"]["ema"]["shadow"], b["extra"]["train_state"]["ema"]["shadow"]
    for k in ea:
        assert torch.equal(ea[k], eb[k]), k
    assert a["extra"]["best_val_mae"] == b["extra"]["best_val_mae"]
    # the log reads as one run
    assert [row["step"] for row in _log_rows(run)] == [row["step"] for row in _log_rows(ref)]
    # a second run into the same folder without --resume is refused
    r = subprocess.run(_train_cmd(cfg, data, split, run), env=_env(), cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "--resume" in r.stderr


def test_torchrun_two_processes_equal_one(water_set, tmp_path):
    cfg = _write_config(tmp_path / "c.yaml", target="minao", batch_size=4, max_steps=5, val_every=5,
                        ema_decay=0.5)
    data, split = water_set["data"], water_set["split"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    subprocess.run(_train_cmd(cfg, data, split, one), check=True, env=_env(), cwd=REPO, capture_output=True)
    r = subprocess.run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "qhnetv2", "train", "--config", cfg, "--data", data, "--split", split, "--out", two,
                        "--no-progress", "--device", "cpu"],
                       env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    a, b = _final_state(one), _final_state(two)
    assert b["extra"]["step"] == 5
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=1e-9, atol=1e-11, msg=k)
    va = float(a["extra"]["best_val_mae"])
    assert va == pytest.approx(float(b["extra"]["best_val_mae"]), rel=1e-8)
    assert json.load(open(os.path.join(two, "summary.json")))["world_size"] == 2


def test_cli_train_writes_the_run_folder(water_set, tmp_path):
    from qhnetv2.cli import main
    from qhnetv2.model import QHNetV2

    cfg = _write_config(tmp_path / "c.yaml", max_steps=50)
    out = str(tmp_path / "run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(["train", "--config", cfg, "--data", water_set["data"], "--split", water_set["split"],
                   "--out", out, "--max-steps", "3", "--no-progress", "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    for f in ("checkpoints/best.pt", "checkpoints/last.pt", "log.csv", "learning_curve.png", "config.yaml",
              "summary.json"):
        assert os.path.exists(os.path.join(out, f)), f
    assert json.load(open(os.path.join(out, "summary.json")))["steps"] == 3
    QHNetV2.load(os.path.join(out, "checkpoints", "best.pt"))


def test_exported_functions_are_not_shadowed_by_their_modules():
    """``collate`` and ``validate`` are both a submodule and the exported function: importing the
    submodule (as the training loop does) must not turn the package attribute into the module."""
    import qhnetv2.training.collate  # noqa: F401
    import qhnetv2.training.loop  # noqa: F401
    import qhnetv2.training.validate  # noqa: F401
    from qhnetv2.training import collate, validate
    from qhnetv2.training.collate import collate as collate_fn
    from qhnetv2.training.validate import validate as validate_fn

    assert collate is collate_fn and validate is validate_fn
