"""Invalid molecules are recorded as failures with their reason; the run goes on.
Bad arguments give clear errors naming the argument."""
import numpy as np
import pytest

from qhnetv2.cli import main
from qhnetv2.data import HamiltonianReader, build_dataset

from qh_helpers import WATER_POS, WATER_Z, write_xyz

FAST = {"xc": "pbe", "basis": "def2-svp", "grid_level": 0, "conv_tol": 1e-8}


def test_each_bad_input_is_recorded(tmp_path):
    nan_pos = WATER_POS.copy()
    nan_pos[1, 2] = np.nan
    frames = [
        (WATER_Z, WATER_POS),                                     # 0 good
        (np.array([], dtype=int), np.zeros((0, 3))),              # 1 empty frame
        (WATER_Z, nan_pos),                                       # 2 NaN coordinates
        (np.array([1, 1]), np.array([[0, 0, 0], [0, 0, 0.2]])),   # 3 too close
        (np.array([8, 1]), np.array([[0, 0, 0], [0, 0, 0.97]])),  # 4 odd electron count
        (np.array([92, 8, 8]), np.array([[0, 0, 0], [0, 0, 1.8], [0, 0, -1.8]])),  # 5 U
        (WATER_Z, WATER_POS + 0.01),                              # 6 good
    ]
    geo = write_xyz(tmp_path / "bad.xyz", frames)
    summary = build_dataset([geo], str(tmp_path / "ds"), FAST, workers=0, progress=False)
    assert summary["n_ok"] == 2 and summary["n_failed"] == 5
    reader = HamiltonianReader(str(tmp_path / "ds"))
    assert reader.ids == ["bad:00000000", "bad:00000006"]
    reasons = {k: v["reason"] for k, v in reader.failures().items()}
    assert "empty frame" in reasons["bad:00000001"]
    assert "NaN" in reasons["bad:00000002"]
    assert "0.200 Angstrom apart" in reasons["bad:00000003"]
    assert "odd electron count 9" in reasons["bad:00000004"]
    assert "unknown element for the basis" in reasons["bad:00000005"]
    assert "U" in reasons["bad:00000005"]


def test_scf_not_converged_and_invalid_smiles(tmp_path):
    geo = write_xyz(tmp_path / "w.xyz", [(WATER_Z, WATER_POS)])
    summary = build_dataset([geo], str(tmp_path / "nc"), dict(FAST, max_cycle=2),
                            workers=0, progress=False)
    assert summary["n_failed"] == 1 and summary["n_ok"] == 0
    reason = HamiltonianReader(str(tmp_path / "nc")).failures()["w:00000000"]["reason"]
    assert "did not converge in 2 cycles" in reason

    smi = tmp_path / "mols.smi"
    smi.write_text("O water\nC1CC(\n[CH3] methyl radical\n")
    summary = build_dataset([str(smi)], str(tmp_path / "smi"), FAST, workers=0, progress=False)
    reader = HamiltonianReader(str(tmp_path / "smi"))
    assert reader.ids == ["mols:00000000"]
    assert reader["mols:00000000"]["atomic_numbers"].tolist() == [8, 1, 1]
    fails = reader.failures()
    assert "invalid SMILES" in fails["mols:00000001"]["reason"]
    assert "odd electron count" in fails["mols:00000002"]["reason"]


def test_bad_arguments_are_clear(tmp_path, capsys):
    geo = write_xyz(tmp_path / "w.xyz", [(WATER_Z, WATER_POS)])
    with pytest.raises(ValueError, match="--shard"):
        build_dataset([geo], str(tmp_path / "x"), FAST, shard="3/2")
    with pytest.raises(ValueError, match="--shard"):
        build_dataset([geo], str(tmp_path / "x"), FAST, shard="one/two")
    with pytest.raises(FileNotFoundError, match="nope.xyz"):
        build_dataset([str(tmp_path / "nope.xyz")], str(tmp_path / "x"), FAST)
    with pytest.raises(ValueError, match="grid_level"):
        build_dataset([geo], str(tmp_path / "x"), dict(FAST, grid_level=12))
    with pytest.raises(ValueError, match="unknown setting"):
        build_dataset([geo], str(tmp_path / "x"), dict(FAST, functional="pbe"))
    build_dataset([geo], str(tmp_path / "ok"), FAST, workers=0, progress=False)
    # resuming with other settings would mix labels: refused
    with pytest.raises(ValueError, match="different settings"):
        build_dataset([geo], str(tmp_path / "ok"), dict(FAST, xc="b3lyp"), workers=0)
    # the CLI turns these into a one-line message and exit code 2
    code = main(["data", "build", "--geometries", geo, "--out", str(tmp_path / "y"),
                 "--shard", "5/4"])
    assert code == 2
    assert "--shard" in capsys.readouterr().err
