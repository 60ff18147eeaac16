"""The command line end to end on a tiny dataset; torch Dataset; recipe."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from qhnetv2.cli import main

from qh_helpers import REPO, water_frames, write_xyz

FAST = ["--xc", "hf", "--basis", "sto-3g", "--conv-tol", "1e-10"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    geo = write_xyz(tmp / "water.xyz", water_frames(5, seed=4))
    code = main(["data", "build", "--geometries", geo, "--out", str(tmp / "ds"),
                 "--workers", "0", "--no-progress"] + FAST)
    assert code == 0
    return str(tmp / "ds"), tmp


def test_help_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "qhnetv2", "data", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    for cmd in ("build", "merge", "split", "import", "scf-bench", "recipe"):
        assert cmd in out


def test_split_and_torch_dataset(dataset):
    import torch
    from qhnetv2.data import HamiltonianDataset
    ds_path, tmp = dataset
    split = str(tmp / "split.json")
    assert main(["data", "split", ds_path, "--out", split, "--seed", "3",
                 "--fractions", "0.6", "0.2", "0.2"]) == 0
    train = HamiltonianDataset(ds_path, split_file=split, split="train")
    assert len(train) == 3
    item = train[0]
    assert item["hamiltonian"].dtype == torch.float64 and item["hamiltonian"].shape == (7, 7)
    assert item["atomic_numbers"].tolist() == [8, 1, 1]
    assert item["positions"].shape == (3, 3) and item["overlap"].shape == (7, 7)
    assert item["id"] in json.load(open(split))["train"]
    loader = torch.utils.data.DataLoader(train, batch_size=2, collate_fn=list, num_workers=1)
    batches = list(loader)
    assert sum(len(b) for b in batches) == 3
    assert torch.equal(batches[0][0]["hamiltonian"], item["hamiltonian"])
    f32 = HamiltonianDataset(ds_path, ids=[item["id"]], dtype=torch.float32)
    assert f32[0]["hamiltonian"].dtype == torch.float32
    with pytest.raises(ValueError, match="ids"):
        HamiltonianDataset(ds_path, ids=["nope:1"])


def test_scf_bench_resumes_and_reports(dataset):
    ds_path, tmp = dataset
    out = str(tmp / "bench.json")
    assert main(["data", "scf-bench", ds_path, "--out", out, "--limit", "2",
                 "--workers", "0", "--no-progress"]) == 0
    assert main(["data", "scf-bench", ds_path, "--out", out, "--workers", "0",
                 "--no-progress"]) == 0
    lines = [json.loads(l) for l in open(out + ".jsonl") if l.strip()]
    ids = [l["id"] for l in lines[1:]]
    assert len(ids) == len(set(ids)) == 5  # the first two were not redone
    result = json.load(open(out))
    s = result["summary"]
    assert s["n_molecules"] == 5 and s["n_errors"] == 0
    assert s["mean_cycles_pred"] <= 3 < s["mean_cycles_minao"]
    assert 0 < s["ratio_pred_over_minao"] < 1
    assert s["n_energy_diff_above_tol"] == 0
    # noisy "predictions" need more cycles but reach the same energy
    noisy = str(tmp / "noisy.json")
    assert main(["data", "scf-bench", ds_path, "--out", noisy, "--noise", "0.01",
                 "--workers", "0", "--no-progress"]) == 0
    sn = json.load(open(noisy))["summary"]
    assert sn["mean_cycles_pred"] > s["mean_cycles_pred"]
    assert sn["max_abs_energy_diff_pred_vs_minao"] < 1e-9
    # predictions from an .npz keyed by molecule id
    from qhnetv2.data import HamiltonianReader
    r = HamiltonianReader(ds_path)
    np.savez(tmp / "pred.npz", **{i: r[i]["hamiltonian"] for i in r.ids})
    r.close()
    assert main(["data", "scf-bench", ds_path, "--pred", str(tmp / "pred.npz"),
                 "--workers", "0", "--no-progress"]) == 0
    assert main(["data", "scf-bench", ds_path, "--pred", "nothing", "--workers", "0"]) == 2


def test_recipe_geometries(tmp_path):
    import ase.io
    out = str(tmp_path / "geo")
    assert main(["data", "recipe", "--out", out, "--counts", "water=4,ethanol=3"]) == 0
    water = ase.io.read(os.path.join(out, "water.extxyz"), index=":")
    ethanol = ase.io.read(os.path.join(out, "ethanol.extxyz"), index=":")
    assert len(water) == 4 and len(ethanol) == 3
    assert ethanol[0].get_chemical_formula() == "C2H6O"
    # thermal: frames differ, but bonds stay physical
    assert np.abs(water[0].positions - water[1].positions).max() > 1e-3
    for atoms in water:
        d = atoms.get_all_distances()
        assert 0.8 < d[0, 1] < 1.2 and 0.8 < d[0, 2] < 1.2
    # same seed -> same geometries
    again = str(tmp_path / "again")
    main(["data", "recipe", "--out", again, "--counts", "water=4"])
    np.testing.assert_allclose(ase.io.read(os.path.join(again, "water.extxyz"), index=":")[2]
                               .positions, water[2].positions)
    assert main(["data", "recipe", "--out", out, "--counts", "benzene=3"]) == 2
