"""The accuracy yardstick (``python -m bench accuracy``): its split, its distance bins, one end-to-end run."""
import json
import math
import os

import numpy as np
import pytest

pytest.importorskip("pyscf")
pytest.importorskip("ase")

from bench import accuracy  # noqa: E402


def test_time_split_puts_test_geometries_last_in_each_trajectory():
    ids = [f"water:{i:08d}" for i in range(20)] + [f"ethanol:{i:08d}" for i in range(10)]
    s = accuracy.time_split(ids, test_fraction=0.2, valid_fraction=0.1)
    assert sorted(s["train"] + s["valid"] + s["test"]) == sorted(ids)
    assert not set(s["train"]) & set(s["test"]) and not set(s["valid"]) & set(s["test"])
    for mol in ("water", "ethanol"):
        frame = {k: [int(i.split(":")[1]) for i in v if i.startswith(mol)] for k, v in s.items()}
        assert max(frame["train"]) < min(frame["valid"]) <= max(frame["valid"]) < min(frame["test"])
    assert len([i for i in s["test"] if i.startswith("water")]) == 4
    with pytest.raises(ValueError, match="fractions"):
        accuracy.time_split(ids, 0.6, 0.5)


def test_parse_variant():
    assert accuracy.parse_variant("main") == ("main", {})
    name, over = accuracy.parse_variant('wide={"model": {"channels": 64}, "lr": 0.001}')
    assert name == "wide" and over == {"model": {"channels": 64}, "lr": 0.001}
    with pytest.raises(ValueError, match="JSON"):
        accuracy.parse_variant("bad={model")
    with pytest.raises(ValueError, match="name"):
        accuracy.parse_variant("=1")


def test_offdiagonal_by_distance_bins_every_off_diagonal_entry_once():
    rng = np.random.default_rng(0)
    pos = np.array([[0.0, 0, 0], [1.0, 0, 0], [0, 3.0, 0]])   # pair distances 1.0, 3.0, 3.16
    slices = np.array([[0, 2], [2, 5], [5, 6]])   # (start, stop) per atom, as qhnetv2.evaluate gives them
    hp, ht = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    bins = accuracy.offdiagonal_by_distance([hp], [ht], [pos], [slices])
    err = np.abs(hp - ht)
    near = np.concatenate([err[0:2, 2:5].ravel(), err[2:5, 0:2].ravel()])
    assert set(bins) == {"0.0-1.2 A", "2.5-3.5 A"}
    assert bins["0.0-1.2 A"][0] == pytest.approx(near.mean()) and bins["0.0-1.2 A"][1] == near.size
    n_off = 36 - 4 - 9 - 1
    assert bins["0.0-1.2 A"][1] + bins["2.5-3.5 A"][1] == n_off


@pytest.mark.slow
def test_yardstick_end_to_end(tmp_path):
    """Tiny data (water, HF/STO-3G), two variants, a few seconds of training each."""
    out = tmp_path / "out"
    rc = accuracy.main(["--molecules", "water=10", "--xc", "hf", "--basis", "sto-3g", "--preset", "tiny",
                        "--variant", "main", "--variant", 'narrow={"model": {"channels": 16}}',
                        "--budget-s", "4", "--calibration-steps", "6", "--jobs", "1", "--scf", "1",
                        "--test-fraction", "0.2", "--valid-fraction", "0.1", "--label-workers", "1",
                        "--cache", str(tmp_path / "cache"), "--out", str(out), "--name", "t",
                        "--speed-molecule", "water", "--speed-threads", "1", "--speed-seconds", "0.05"])
    assert rc == 0
    (md,) = list(out.glob("*/accuracy/t.md"))
    doc = json.loads(md.with_suffix(".json").read_text())
    assert set(doc["variants"]) == {"main", "narrow"}
    assert doc["variants"]["narrow"]["parameters"] < doc["variants"]["main"]["parameters"]
    for v in doc["variants"].values():
        row = v["test"]["molecules"]["water"]
        assert math.isfinite(row["hamiltonian_mae_uEh"]) and row["hamiltonian_mae_uEh"] > 0
        assert row["offdiag_by_distance_uEh"] and "scf_ratio" in row
        assert 6 <= v["steps"] < 2000  # a rate-based budget, not a runaway step count
    text = md.read_text()
    assert "| H MAE (uEh) |" in text and "narrow" in text
    # the speed rows: both variants timed (no ordering of the times asserted: on a loaded
    # machine a 0.05 s timing of the forward can exceed the forward+backward one)
    assert set(doc["speed"]) == {"main", "narrow"} and doc["speed_molecule"] == "water"
    for sp in doc["speed"].values():
        assert all(math.isfinite(sp[k]) and 0 < sp[k] < 60 for k in ("fwd_s", "fwdbwd_s"))
    assert "fwd+bwd vs main" in text and "1.00x" in text
