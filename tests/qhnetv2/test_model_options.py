"""The pair-path options of QHNetV2 (docs/model.md "Pair path options"): each one
exactly rotation-equivariant (PySCF's own AO rotations, float64), independent of the
atom order, really active (changes H), and stored in / read back from checkpoints.

Hard cases included: a bond exactly along +y (the frame convention's singular axis),
and a symmetric molecule (water) permuted so that its two equivalent hydrogens swap.
"""
import numpy as np
import pytest
import torch

import so2ops
from qhnetv2.model import QHNetV2

from qh_helpers import WATER_POS, WATER_Z, random_rotation
from test_model import CHO_POS, CHO_Z, QUARTER, Y_BOND, ao_permutation, ao_rotation, pyscf_mol, rel_err

BASE = dict(elements=[1, 6, 8], channels=8, pair_channels=6, layers=2, mmax=2, num_rbf=8, body_order=2)
OPTIONS = {
    "pair_product": dict(pair_product=2),
    "pair_norm": dict(pair_norm=True),
    "gated_readout": dict(readout_hidden=10),
    "element_pair_readout": dict(element_pair_readout=True),
    "pair_mmax_lmax": dict(pair_mmax=4, tp_mmax=4),
    "all": dict(pair_product=2, pair_norm=True, readout_hidden=10, element_pair_readout=True, pair_mmax=4),
    # one pair evaluation per unordered pair (docs/model.md "One evaluation per unordered pair")
    "pair_tied": dict(pair_scheme="tied"),
    "tied_all": dict(pair_scheme="tied", pair_norm=True, readout_hidden=10, element_pair_readout=True, pair_mmax=4),
}


def build(options, seed=0):
    torch.manual_seed(seed)
    model = QHNetV2(basis="def2-svp", **BASE, **options).double()
    with torch.no_grad():
        model.atom_reference.normal_()
        # move the learned scalings off their initial 1 so that they act (and can break symmetry)
        for scale in (model.diag_readout_scale, model.pair_readout_scale):
            if scale is not None:
                scale.uniform_(0.5, 1.5)
        # the product weights of body order 2 start near 0: make them count
        for block in model.pairs:
            if getattr(block, "tp", None) is not None:
                block.tp.coeffs.bias.normal_()
    return model


@pytest.fixture(scope="module", params=sorted(OPTIONS))
def option_model(request):
    return request.param, build(OPTIONS[request.param])


def test_option_changes_the_prediction(option_model):
    """The option is wired in: H differs from the same-seed model without it (so the
    symmetry tests below exercise it)."""
    name, model = option_model
    plain = build({})
    a = model.predict(CHO_Z, CHO_POS)
    b = plain.predict(CHO_Z, CHO_POS)
    assert a.shape == b.shape
    assert rel_err(a, b) > 1e-3, name


def test_option_rotation_equivariant(option_model):
    """H(Q R) = D(Q) H(R) D(Q)^T with D from pyscf.symm.Dmatrix, float64, to 1e-10."""
    name, model = option_model
    for z, pos in ((CHO_Z, CHO_POS), Y_BOND, (WATER_Z, WATER_POS)):
        h0 = model.predict(z, pos)
        for Q in (random_rotation(11), QUARTER):
            h1 = model.predict(z, pos @ Q.T)
            D = ao_rotation(pyscf_mol(z, pos, "def2-svp"), Q)
            assert rel_err(D @ h0 @ D.T, h1) < 1e-10, (name, z.tolist())
            assert rel_err(h0, h1) > 1e-3 or len(z) < 3  # the rotation moved H: the test can fail
        assert np.abs(h0 - h0.T).max() <= 1e-12 * np.abs(h0).max()


@pytest.mark.parametrize("z,pos,perm", [(CHO_Z, CHO_POS, [2, 0, 3, 1]), (WATER_Z, WATER_POS, [0, 2, 1]),
                                        (WATER_Z, WATER_POS, [2, 1, 0])])
def test_option_permutation_equivariant(option_model, z, pos, perm):
    """Atoms in another order give the same H with rows and columns permuted (water's
    equivalent hydrogens swapped included)."""
    name, model = option_model
    perm = np.asarray(perm)
    h = model.predict(z, pos)
    idx = ao_permutation(model, z, perm)
    assert rel_err(model.predict(z[perm], pos[perm]), h[np.ix_(idx, idx)]) < 1e-10, name


@pytest.mark.parametrize("options", ["all", "tied_all"])
def test_options_backends_agree(options):
    """The fused cpu backend gives the reference backend's H and gradients with every option on."""
    if not so2ops.dispatch.runnable("cpu", torch.device("cpu")):
        pytest.skip("the compiled cpu backend is not available")
    model = build(OPTIONS[options])
    weight = torch.randn(38, 38, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = {}
    for backend in ("reference", "cpu"):
        model.zero_grad()
        with so2ops.use_backend(backend):
            (model(torch.tensor(CHO_Z), torch.tensor(CHO_POS)) * weight).sum().backward()
        out[backend] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert out["cpu"].keys() == out["reference"].keys()
    for n in out["reference"]:
        torch.testing.assert_close(out["cpu"][n], out["reference"][n], rtol=1e-9, atol=1e-11, msg=lambda m: f"{n}: {m}")
    # every option's parameters receive a gradient
    names = ("pairs.0.pair_norm", "diag_readout.lin1.weight", "pair_readout_scale", "diag_readout_scale")
    names += (("pairs.0.weight_x", "pairs.0.lin_p.weight", "pairs.1.lin2.weight") if options == "tied_all"
              else ("pairs.0.tp.w_in",))
    for n in names:
        assert any(k.startswith(n) for k in out["reference"]), n


def test_option_checkpoint_roundtrip_and_old_config(tmp_path):
    model = build(OPTIONS["all"])
    path = str(tmp_path / "m.pt")
    model.save(path)
    loaded = QHNetV2.load(path).double()
    assert loaded.config == model.config
    assert rel_err(loaded.predict(CHO_Z, CHO_POS), model.predict(CHO_Z, CHO_POS)) < 1e-6
    # a checkpoint written before the options existed loads as the original model
    plain = build({})
    ckpt = plain.checkpoint()
    for key in ("pair_product", "pair_norm", "readout_hidden", "element_pair_readout", "pair_scheme"):
        ckpt["config"].pop(key)
    old = QHNetV2.from_checkpoint(ckpt).double()
    assert old.config.pair_product == 0 and not old.config.pair_norm and old.config.readout_hidden == 0
    assert old.config.pair_scheme == "ordered" and not old.tied_pairs
    assert rel_err(old.predict(CHO_Z, CHO_POS), plain.predict(CHO_Z, CHO_POS)) < 1e-6


def test_option_bad_values():
    with pytest.raises(ValueError, match="pair_product"):
        QHNetV2(basis="def2-svp", **BASE, pair_product=-1)
    with pytest.raises(ValueError, match="readout_hidden"):
        QHNetV2(basis="def2-svp", **BASE, readout_hidden=-2)
    with pytest.raises(ValueError, match="pair_scheme"):
        QHNetV2(basis="def2-svp", **BASE, pair_scheme="both")
    with pytest.raises(ValueError, match="pair_product needs pair_scheme"):
        QHNetV2(basis="def2-svp", **BASE, pair_scheme="tied", pair_product=2)
