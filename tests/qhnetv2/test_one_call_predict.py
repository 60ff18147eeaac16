"""``QHNetV2.load(path).predict(Z, R)`` is the full Kohn-Sham H whatever the training target.

Tiny STO-3G models saved with ``extra`` like training writes it (target + SCF
settings): the loaded model adds the base itself, equal to
``qhnetv2.inference.predict_hamiltonians`` (which must not add it twice), while
``model(Z, R)`` stays the differentiable network output.
"""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pyscf")

from qh_helpers import WATER_POS, WATER_Z, water_frames, write_xyz  # noqa: E402

from qhnetv2.model import QHNetV2  # noqa: E402

# these checkpoints record no training domain (tested in test_domain.py): its one-time note is noise here
pytestmark = pytest.mark.filterwarnings("ignore::qhnetv2.domain.DomainWarning")
TINY = dict(channels=8, layers=1, mmax=2, num_rbf=8, body_order=2)
SETTINGS = {"basis": "sto-3g", "xc": "hf", "conv_tol": 1e-10}
METHANOL_Z = np.array([6, 8, 1, 1, 1, 1])
METHANOL_POS = np.array([[-0.047, 0.664, 0.0], [-0.047, -0.758, 0.0], [-1.092, 0.969, 0.0],
                         [0.464, 1.039, 0.887], [0.464, 1.039, -0.887], [0.860, -1.081, 0.0]])


def pyscf_mol(z, pos):
    from pyscf import gto
    return gto.M(atom=[(int(a), tuple(p)) for a, p in zip(z, pos)], basis="sto-3g", unit="Angstrom", verbose=0)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onecall")
    torch.manual_seed(0)
    model = QHNetV2(basis="sto-3g", elements=[1, 6, 8], **TINY)
    with torch.no_grad():
        model.atom_reference.normal_()
    paths = {}
    for target in ("full", "core", "minao"):
        paths[target] = str(tmp / f"{target}.pt")
        model.save(paths[target], extra={"target": target, "settings": dict(SETTINGS)})
    return {"tmp": tmp, "paths": paths, "direct": model}


def test_direct_model_is_full_target(ckpts):
    model = ckpts["direct"]
    assert model.target == "full" and model.settings is None and model.domain is None
    np.testing.assert_array_equal(model.predict(WATER_Z, WATER_POS), model.predict(WATER_Z, WATER_POS, full=False))


@pytest.mark.parametrize("target", ["core", "minao"])
def test_residual_checkpoint_predict_is_the_full_hamiltonian(ckpts, target):
    from qhnetv2.baseline import base_hamiltonian
    from qhnetv2.inference import load_model, predict_hamiltonians
    model = QHNetV2.load(ckpts["paths"][target])
    assert model.target == target and model.settings == SETTINGS
    zs, ps = [WATER_Z, METHANOL_Z], [WATER_POS, METHANOL_POS]
    full = model.predict_many(zs, ps)
    network = model.predict_many(zs, ps, full=False)
    for z, p, h, n in zip(zs, ps, full, network):
        base = base_hamiltonian(z, p, target, SETTINGS)
        np.testing.assert_allclose(h, n + base, atol=1e-12)
        assert np.abs(base).max() > 0.1  # the base is a real part of H, not a rounding error
    np.testing.assert_allclose(model.predict(WATER_Z, WATER_POS), full[0], atol=1e-5)  # batch of 1 vs 2, float32
    # the inference module: same numbers with the checkpoint's extra, with none, and for the model
    # built directly + its extra (what evaluate passes); the base is added exactly once
    direct = ckpts["direct"]
    _, extra = load_model(ckpts["paths"][target], device="cpu")
    for m, e in ((model, extra), (model, None), (model, {}), (direct, extra)):
        for got, want in zip(predict_hamiltonians(m, e, zs, ps), full):
            np.testing.assert_allclose(got, want, atol=1e-5)  # float32 network: batching moves the last bits


def test_full_target_checkpoint_predict_is_the_network_output(ckpts):
    from qhnetv2.inference import predict_hamiltonians
    model = QHNetV2.load(ckpts["paths"]["full"])
    assert model.target == "full"
    h = model.predict(WATER_Z, WATER_POS)
    np.testing.assert_array_equal(h, model.predict(WATER_Z, WATER_POS, full=False))
    np.testing.assert_allclose(predict_hamiltonians(model, None, [WATER_Z], [WATER_POS])[0], h, atol=1e-12)
    np.testing.assert_allclose(h, ckpts["direct"].predict(WATER_Z, WATER_POS), atol=1e-12)


def test_forward_stays_the_differentiable_network_output(ckpts):
    model = QHNetV2.load(ckpts["paths"]["minao"])
    pos = torch.tensor(WATER_POS, dtype=torch.float32, requires_grad=True)
    out = model(torch.as_tensor(WATER_Z), pos)
    np.testing.assert_allclose(out.detach().double().numpy(), model.predict(WATER_Z, WATER_POS, full=False),
                               atol=1e-6)
    out.square().sum().backward()
    assert pos.grad is not None and torch.isfinite(pos.grad).all() and pos.grad.abs().sum() > 0
    assert "differentiable" in QHNetV2.forward.__doc__.lower() and "H - H_base" in QHNetV2.forward.__doc__


def test_charge_reaches_the_minao_base(ckpts):
    from qhnetv2.baseline import base_hamiltonian
    model = QHNetV2.load(ckpts["paths"]["minao"])
    oh = (np.array([8, 1]), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.97]]))
    h = model.predict(*oh, charge=-1)
    base = base_hamiltonian(*oh, "minao", SETTINGS, charge=-1)
    np.testing.assert_allclose(h - model.predict(*oh, full=False), base, atol=1e-12)
    with pytest.raises(ValueError, match="charges: 1 values for 2 molecules"):
        model.predict_many([WATER_Z, WATER_Z], [WATER_POS, WATER_POS], charges=[0])


def test_resaving_a_loaded_model_keeps_its_target(ckpts):
    model = QHNetV2.load(ckpts["paths"]["core"])
    again = str(ckpts["tmp"] / "again.pt")
    model.save(again)
    reloaded = QHNetV2.load(again)
    assert reloaded.target == "core" and reloaded.settings == SETTINGS
    np.testing.assert_allclose(reloaded.predict(WATER_Z, WATER_POS), model.predict(WATER_Z, WATER_POS), atol=1e-12)
    model.save(again, extra={"target": "full"})  # an explicit extra wins
    assert QHNetV2.load(again).target == "full"


def test_model_object_without_extra_brings_its_own_target(ckpts):
    from qhnetv2.inference import model_and_extra
    model = QHNetV2.load(ckpts["paths"]["minao"])
    _, extra, path = model_and_extra(model)
    assert extra["target"] == "minao" and extra["settings"] == SETTINGS and path is None
    _, extra, _ = model_and_extra(model, extra={"target": "core", "settings": SETTINGS})
    assert extra["target"] == "core"


def test_unknown_target_in_a_checkpoint_is_a_clear_error(ckpts):
    bad = str(ckpts["tmp"] / "bad.pt")
    ckpts["direct"].save(bad, extra={"target": "homo"})
    with pytest.raises(ValueError, match="target must be one of"):
        QHNetV2.load(bad)


def test_predict_cli_residual_checkpoint_units(ckpts, capsys):
    from qhnetv2.cli import main
    from qhnetv2.predict import HARTREE_TO_EV
    tmp = ckpts["tmp"] / "cli"
    tmp.mkdir()
    xyz = write_xyz(tmp / "w.xyz", water_frames(2, seed=4))
    out = tmp / "pred.npz"
    assert main(["predict", "--checkpoint", ckpts["paths"]["minao"], "--geometry", xyz, "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    d = np.load(out, allow_pickle=False)
    model = QHNetV2.load(ckpts["paths"]["minao"])
    for mol_id in d["ids"]:
        z, pos = d[f"{mol_id}/atomic_numbers"], d[f"{mol_id}/positions"]
        np.testing.assert_allclose(d[mol_id], model.predict(z, pos), atol=1e-5)
        gap = float(d[f"{mol_id}/homo_lumo_gap"])
        assert float(d[f"{mol_id}/homo_lumo_gap_eV"]) == pytest.approx(gap * HARTREE_TO_EV, rel=1e-12)
        assert f"{mol_id}  HOMO-LUMO gap {gap * HARTREE_TO_EV:.4f} eV ({gap:.6f} Hartree)" in printed
    meta = json.loads(str(d["meta"]))
    assert meta["target"] == "minao"
    assert meta["units"]["homo_lumo_gap"] == "Hartree" and meta["units"]["homo_lumo_gap_eV"] == "eV"
    assert "in Hartree" in printed
