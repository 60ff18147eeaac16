"""``pair_scheme: tied``: the pair stream once per unordered pair (docs/model.md "One
evaluation per unordered pair").

The proof has two steps, each tested here: a tied pair block evaluated in the reversed
orientation (inputs swapped, stream F P, frame F D) gives exactly F times its update,
and the model then predicts H independent of the atom order.  Hard cases: a planar
molecule in the xz plane with a bond exactly along z (every bond on the frame chart's
equator, where the convention's frame of -r is not F D(r)), water's equivalent
hydrogens swapped, a bond along +y.
"""
import numpy as np
import pytest
import torch

import so2ops
from qhnetv2.model import QHNetV2
from qhnetv2.model.layers import TiedPairBlock
from so2ops.nn.reversal import reversal_signs, reversal_wigner_signs

from qh_helpers import WATER_POS, WATER_Z, random_rotation
from test_model import CHO_POS, CHO_Z, QUARTER, Y_BOND, ao_permutation, ao_rotation, pyscf_mol, rel_err

SMALL = dict(elements=[1, 6, 8], channels=8, pair_channels=6, layers=2, mmax=2, num_rbf=8, body_order=2)
# formaldehyde in the xz plane, C=O exactly along +z
PLANAR_Z = np.array([6, 8, 1, 1])
PLANAR_POS = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.21], [0.94, 0.0, -0.54], [-0.94, 0.0, -0.54]])


def build(scheme, seed=0, **extra):
    torch.manual_seed(seed)
    model = QHNetV2(basis="def2-svp", **SMALL, pair_scheme=scheme, **extra).double()
    with torch.no_grad():
        model.atom_reference.normal_()
    return model


@pytest.mark.parametrize("lmax,mmax,norm_pairs", [(4, 2, False), (4, 4, True), (2, 1, False)])
def test_tied_block_is_reversal_covariant(lmax, mmax, norm_pairs):
    """block(x, F P, (j, i), F D) == F block(x, P, (i, j), D), with random weights and
    modulations, on generic and equator bonds (then also with the convention's own
    frame of -r, which differs from F D by a roll)."""
    torch.manual_seed(1)
    block = TiedPairBlock(lmax, mmax, 5, 4, 6, norm="joint", norm_pairs=norm_pairs).double()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
    n, K = 5, (lmax + 1) ** 2
    x = torch.randn(n, K, 5, dtype=torch.float64)
    pairs = torch.tensor([[0, 1], [2, 4], [3, 0], [1, 2]])
    vec = torch.tensor([[0.3, 0.8, -0.2], [0.0, 0.0, 1.3], [1.1, 0.0, 0.4], [0.0, -0.9, 0.0]], dtype=torch.float64)
    wig = so2ops.edge_wigner(vec, lmax)
    rbf = torch.randn(4, 6, dtype=torch.float64)
    env = torch.rand(4, dtype=torch.float64)
    P = torch.randn(4, K, 4, dtype=torch.float64)
    f = reversal_signs(lmax).double()[:, None]
    fwd = block(x, P, pairs, wig, rbf, env)
    rev = block(x, f * P, pairs.flip(1), wig * reversal_wigner_signs(lmax).double(), rbf, env)
    torch.testing.assert_close(rev, f * fwd, rtol=0, atol=1e-12)
    assert (rev - fwd).abs().max() > 1e-3  # F acts: the orientations differ
    # the convention's frame of -r: a roll R of F D on the equator (rows 1, 2), equal to it
    # elsewhere; fed the stream R F P in that frame, the block gives R F times the update
    w_rev = so2ops.edge_wigner(-vec, lmax)
    R = so2ops.wigner_to_dense(w_rev, lmax) @ so2ops.wigner_to_dense(wig * reversal_wigner_signs(lmax).double(),
                                                                     lmax).transpose(1, 2)
    assert (R[[1, 2]] - torch.eye(K, dtype=torch.float64)).abs().max() > 0.5  # a real roll on the equator
    rolled = block(x, R @ (f * P), pairs.flip(1), w_rev, rbf, env)
    torch.testing.assert_close(rolled, R @ (f * fwd), rtol=0, atol=1e-12)


@pytest.mark.parametrize("scheme", ["ordered", "tied"])
@pytest.mark.parametrize("perm", [[1, 0, 2, 3], [3, 2, 1, 0], [0, 1, 3, 2]])
def test_equator_molecule_permutation(scheme, perm):
    """Every bond of a planar molecule in the xz plane lies on the frame chart's equator;
    reordering the atoms (incl. the two equivalent hydrogens) permutes H exactly."""
    model = build(scheme)
    h = model.predict(PLANAR_Z, PLANAR_POS)
    perm = np.asarray(perm)
    idx = ao_permutation(model, PLANAR_Z, perm)
    assert rel_err(model.predict(PLANAR_Z[perm], PLANAR_POS[perm]), h[np.ix_(idx, idx)]) < 1e-10


@pytest.mark.parametrize("z,pos", [(PLANAR_Z, PLANAR_POS), Y_BOND, (WATER_Z, WATER_POS)])
def test_tied_rotation_equivariant(z, pos):
    """H(Q R) = D(Q) H(R) D(Q)^T (PySCF Dmatrix) to 1e-10, rotations that keep and that
    leave the equator."""
    model = build("tied")
    h0 = model.predict(z, pos)
    for Q in (random_rotation(5), QUARTER, np.diag([-1.0, 1.0, -1.0])):
        D = ao_rotation(pyscf_mol(z, pos, "def2-svp"), Q)
        assert rel_err(D @ h0 @ D.T, model.predict(z, pos @ Q.T)) < 1e-10


def test_tied_pair_blocks_run_once_per_unordered_pair():
    """The tied model's pair blocks see P rows (each unordered pair once); the ordered
    model's see 2P."""
    rows = {}
    for scheme in ("ordered", "tied"):
        model = build(scheme)
        seen = []
        hooks = [blk.register_forward_pre_hook(lambda mod, args: seen.append(args[2].shape[0]))
                 for blk in model.pairs]
        model.predict(CHO_Z, CHO_POS)
        for hk in hooks:
            hk.remove()
        rows[scheme] = seen
    n_pairs = len(CHO_Z) * (len(CHO_Z) - 1) // 2
    assert rows["tied"] == [n_pairs] * SMALL["layers"]
    assert rows["ordered"] == [2 * n_pairs] * SMALL["layers"]


def test_tied_fewer_parameters_and_gradients_flow():
    """Tied blocks hold one x-map for both atoms and F-commuting stream maps; every
    parameter of the last pair block gets a gradient (the first block's stream input is zero)."""
    tied, ordered = build("tied"), build("ordered")
    count = lambda m: sum(p.numel() for p in m.pairs.parameters())  # noqa: E731
    assert count(tied) < count(ordered)
    out = tied(torch.tensor(CHO_Z), torch.tensor(CHO_POS))
    (out * torch.randn_like(out)).sum().backward()
    for name, p in tied.pairs[-1].named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_tied_batch_equals_molecules_alone(dtype, tol):
    """A batch (a generic molecule, a single atom, the equator molecule) gives each
    molecule's own H, permuted atoms inside the batch included; float32 to rounding."""
    model = build("tied").to(dtype)
    mols = [(CHO_Z, CHO_POS), (np.array([8]), np.array([[0.3, -0.2, 0.4]])), (PLANAR_Z, PLANAR_POS)]
    alone = [model.predict(z, p) for z, p in mols]
    perm = np.array([3, 1, 0, 2])
    batch = model.predict_many([m[0] for m in mols] + [PLANAR_Z[perm]], [m[1] for m in mols] + [PLANAR_POS[perm]])
    for a, b in zip(alone, batch):
        assert rel_err(b, a) < tol
    idx = ao_permutation(model, PLANAR_Z, perm)
    assert rel_err(batch[3], alone[2][np.ix_(idx, idx)]) < tol


@pytest.mark.parametrize("options", [dict(), dict(readout_hidden=10, element_pair_readout=True)])
@pytest.mark.parametrize("scheme", ["ordered", "tied"])
def test_pair_readout_equals_the_module_on_the_concatenation(scheme, options):
    """The split first layer with fused gathers is the readout module applied to
    ``[LN(P), D x_i, D x_j]`` (so a change to the module cannot silently skip the pairs)."""
    model = build(scheme, **options)
    with torch.no_grad():
        if model.pair_readout_scale is not None:
            model.pair_readout_scale.uniform_(0.5, 1.5)
    g = torch.Generator().manual_seed(4)
    L, C, Cp = model.config.lmax, model.config.channels, model.config.pair_channels
    xn = torch.randn(4, (L + 1) ** 2, C, dtype=torch.float64, generator=g)
    pairs = torch.tensor([[0, 1], [0, 2], [3, 1], [1, 0], [2, 0], [1, 3]])
    w = so2ops.edge_wigner(torch.randn(6, 3, dtype=torch.float64, generator=g), L)
    pn = torch.randn(6, (L + 1) ** 2, Cp, dtype=torch.float64, generator=g)
    mod = None
    if model.pair_readout_scale is not None:
        mod = model.pair_readout_scale[torch.tensor([0, 1, 2, 0, 1, 2])]
    fused = model._pair_readout(pn, xn, pairs, w, mod)
    xi = so2ops.rotate(xn, w, L, index=pairs[:, 0])
    xj = so2ops.rotate(xn, w, L, index=pairs[:, 1])
    plain = model.pair_readout(torch.cat([pn, xi, xj], dim=2), mod)
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-12)
