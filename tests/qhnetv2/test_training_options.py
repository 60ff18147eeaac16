"""Training options: seeded subsets, float64 targets, foreach EMA, resume refusing a changed schedule."""
import csv
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pyscf")
pytest.importorskip("yaml")

from qh_helpers import labelled_water, tiny_train_config  # noqa: E402


@pytest.fixture(scope="module")
def water(tmp_path_factory):
    return labelled_water(tmp_path_factory.mktemp("options_water"), 6, seed=9, scale=0.05, n_train=4)


def _config(**kw):
    return tiny_train_config(**{"warmup_steps": 2, "max_steps": 4, "checkpoint_every": 2, **kw})


def _rows(run):
    with open(os.path.join(run, "log.csv")) as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- seeded subsets
def test_seeded_subset_is_random_stable_and_order_independent():
    from qhnetv2.training.data import seeded_subset

    ids = [f"qm9:{k:06d}" for k in range(200)]
    pick = seeded_subset(ids, 20, seed=3, purpose="valid")
    assert len(pick) == 20 == len(set(pick)) and pick == sorted(pick)
    assert pick != list(range(20))                               # not the first (smallest) molecules
    assert max(pick) > 100                                       # spread over the whole list
    assert pick == seeded_subset(list(ids), 20, seed=3, purpose="valid")  # every rank / resume
    shuffled = list(np.random.default_rng(0).permutation(ids))
    assert sorted(shuffled[k] for k in seeded_subset(shuffled, 20, 3, "valid")) == [ids[k] for k in pick]
    assert seeded_subset(ids, 20, seed=4, purpose="valid") != pick
    assert seeded_subset(ids, 20, seed=3, purpose="atom_reference") != pick
    assert seeded_subset(ids, None, 3, "valid") == list(range(200)) == seeded_subset(ids, 500, 3, "valid")
    with pytest.raises(ValueError, match="subset"):
        seeded_subset(ids, -1, 0, "valid")


def test_validation_uses_the_seeded_subset(water, tmp_path):
    from qhnetv2.training.loop import train

    s = train(_config(val_max_molecules=1, max_steps=2), water["data"], water["split"], str(tmp_path / "run"),
              progress=False)
    assert s["final_val"]["n_molecules"] == 1


# ---------------------------------------------------------------- float64 targets
def test_target_dtype_config():
    from qhnetv2.training.config import TrainConfig

    assert _config().target_dtype == "float64"  # the default
    assert _config(dtype="float32").loss_dtype == "float64"
    assert _config(dtype="float32", target_dtype="float32").loss_dtype == "float32"
    assert _config(dtype="float64", target_dtype="float32").loss_dtype == "float64"
    with pytest.raises(ValueError, match="target_dtype"):
        TrainConfig.from_dict({"target_dtype": "float16"})


def test_float64_targets_keep_the_labels_digits():
    """Core-like entries near -20 Eh: a float32 target is off by up to ~1 uEh, a float64 one is exact."""
    from qhnetv2.training import collate
    from qhnetv2.training.loop import entry_errors

    rng = np.random.default_rng(0)
    n = 7
    h = rng.normal(scale=0.3, size=(n, n))
    h = h + h.T
    h[np.diag_indices(n)] = -20.0 - rng.random(n)  # core diagonal entries
    rec = {"id": "m", "atomic_numbers": torch.tensor([8, 1, 1]), "positions": torch.zeros(3, 3),
           "hamiltonian": torch.as_tensor(h)}
    b = collate([rec])
    assert b.target.dtype == torch.float64
    b64 = b.to("cpu", torch.float32, target_dtype=torch.float64)
    b32 = b.to("cpu", torch.float32)
    assert b64.positions.dtype == torch.float32 and torch.equal(b64.target, b.target)
    assert b32.target.dtype == torch.float32
    assert (b32.target.double() - b.target).abs().max() > 1e-7  # what float32 targets lose

    pred = (b.target + torch.as_tensor(rng.normal(scale=1e-5, size=n * n))).float().requires_grad_()
    err, abs_sum, sq_sum = entry_errors(pred, b64.target)
    exact = pred.detach().double() - b.target
    assert err.dtype == torch.float64 and torch.equal(err.detach(), exact)
    assert abs_sum.item() == pytest.approx(float(np.sum(np.abs(exact.numpy()))), rel=1e-14)
    assert sq_sum.item() == pytest.approx(float(np.sum(exact.numpy() ** 2)), rel=1e-14)
    err32, abs32, _ = entry_errors(pred, b32.target)
    assert err32.dtype == torch.float32
    assert abs(abs32.item() - abs_sum.item()) > 1e-3 * abs_sum.item()  # the float32 path is visibly off
    abs_sum.backward()
    assert pred.grad.dtype == torch.float32 and torch.equal(pred.grad, torch.sign(exact).float())


def test_float32_model_trains_on_float64_targets(water, tmp_path):
    import yaml

    from qhnetv2.training.loop import train

    run = str(tmp_path / "run")
    s = train(_config(dtype="float32", max_steps=2), water["data"], water["split"], run, progress=False)
    assert s["steps"] == 2 and np.isfinite(float(_rows(run)[-1]["train_mae_uEh"]))
    assert yaml.safe_load(open(os.path.join(run, "config.yaml")))["target_dtype"] == "float64"


# ---------------------------------------------------------------- EMA
def test_foreach_ema_equals_the_per_tensor_loop():
    from qhnetv2.training.ema import EMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3).double())
    ema = EMA(model, 0.97)
    ref = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    for n in range(1, 8):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(1.0)
            model[1].num_batches_tracked.add_(1)
        ema.update()
        d = min(0.97, (1.0 + n) / (10.0 + n))
        for k, v in model.state_dict().items():  # the per-tensor loop the foreach update replaces
            if k in params and v.is_floating_point():
                ref[k].mul_(d).add_(v, alpha=1.0 - d)
            else:
                ref[k].copy_(v)
        for k in ref:
            assert torch.equal(ema.shadow[k], ref[k]), (n, k)
    assert ema.shadow["2.weight"].dtype == torch.float64
    assert int(ema.shadow["1.num_batches_tracked"]) == 7


# ---------------------------------------------------------------- resume and the schedule
def test_resume_refuses_a_changed_schedule_unless_allowed(water, tmp_path, capsys):
    import yaml

    from qhnetv2.cli import main
    from qhnetv2.training.schedule import lr_factor

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_config().to_dict()))
    run = str(tmp_path / "run")
    base = ["train", "--config", str(cfg), "--data", water["data"], "--split", water["split"], "--out", run,
            "--no-progress", "--device", "cpu"]
    assert main(base) == 0
    # same schedule: resumes (nothing left to do)
    assert main(base + ["--resume"]) == 0
    for change, key in ((["--max-steps", "6"], "max_steps"), ([], "warmup_steps"), ([], "lr"), ([], "lr_decay")):
        other = _config(**({"warmup_steps": 3} if key == "warmup_steps" else {"lr": 1e-3} if key == "lr"
                           else {"lr_decay": "linear"} if key == "lr_decay" else {}))
        cfg2 = tmp_path / f"c_{key}.yaml"
        cfg2.write_text(yaml.safe_dump(other.to_dict()))
        capsys.readouterr()
        args = ["train", "--config", str(cfg2)] + base[3:] + ["--resume"] + change
        assert main(args) == 2
        err = capsys.readouterr().err
        assert key in err and "--allow-schedule-change" in err and "Traceback" not in err
    # allowed: continues from step 4 on the new schedule (longer, lower lr)
    cfg3 = tmp_path / "c_new.yaml"
    cfg3.write_text(yaml.safe_dump(_config(lr=1e-3).to_dict()))
    args = ["train", "--config", str(cfg3)] + base[3:] + ["--resume", "--max-steps", "6", "--allow-schedule-change"]
    assert main(args) == 0
    rows = _rows(run)
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    for r in rows[4:]:
        step = int(r["step"])
        # the log keeps 8 digits; the old schedule would give 3e-5 (its floor) here
        assert float(r["lr"]) == pytest.approx(1e-3 * lr_factor(step, 2, 6, "cosine", 0.01), rel=1e-6)
    saved = yaml.safe_load(open(os.path.join(run, "config.yaml")))
    assert saved["max_steps"] == 6 and saved["lr"] == 1e-3


def test_resume_of_a_run_from_before_target_dtype_keeps_float32_targets(water, tmp_path):
    import yaml

    from qhnetv2.model import save_atomic
    from qhnetv2.training.loop import train

    run = str(tmp_path / "run")
    train(_config(max_steps=2), water["data"], water["split"], run, progress=False)
    last = os.path.join(run, "checkpoints", "last.pt")
    ck = torch.load(last, weights_only=True)
    del ck["extra"]["train_config"]["target_dtype"]  # as written before the option existed
    save_atomic(ck, last)
    s = train(_config(max_steps=2), water["data"], water["split"], run, resume=True, progress=False)
    assert s["steps"] == 2
    assert yaml.safe_load(open(os.path.join(run, "config.yaml")))["target_dtype"] == "float32"


# ---------------------------------------------------------------- pair-path options in training
@pytest.mark.parametrize("scheme", ["ordered", "tied"])
def test_training_with_every_pair_path_option(water, tmp_path, scheme):
    """A model with the gated readout (two-layer) and the other pair options trains: the
    readout init scale reaches the layer that writes the blocks, and the loss is finite."""
    from qhnetv2.model import QHNetV2
    from qhnetv2.training.loop import _build_model, train

    options = {"pair_norm": True, "readout_hidden": 8, "element_pair_readout": True, "pair_scheme": scheme}
    if scheme == "ordered":  # the pair tensor product exists in the ordered scheme only
        options["pair_product"] = 2
    cfg = _config(max_steps=2, readout_init_scale=0.1)
    cfg.model.update(options)
    model = _build_model(cfg, "def2-svp", [1, 8], torch.float64, "cpu")
    torch.manual_seed(cfg.seed)  # the same initial weights, unscaled
    plain = QHNetV2.from_preset("tiny", basis="def2-svp", elements=[1, 8], **options).double()
    for name in ("diag_readout", "pair_readout"):
        torch.testing.assert_close(getattr(model, name).lin2.weight, 0.1 * getattr(plain, name).lin2.weight)
        torch.testing.assert_close(getattr(model, name).lin1.weight, getattr(plain, name).lin1.weight)
    run = str(tmp_path / "run")
    s = train(cfg, water["data"], water["split"], run, progress=False)
    assert s["steps"] == 2 and np.isfinite(float(_rows(run)[-1]["train_mae_uEh"]))
