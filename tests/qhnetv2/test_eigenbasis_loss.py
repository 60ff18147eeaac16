"""The eigenbasis ("WALoss"-like) training loss: gradients, zero set, gauge invariance, what it is for
(errors along poorly conditioned overlap directions), the per-molecule cache, and a training run."""
import csv
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pyscf")
pytest.importorskip("yaml")

from qh_helpers import WATER_POS, WATER_Z, labelled_water  # noqa: E402

from qhnetv2.training import eigenbasis_loss as el  # noqa: E402


def _water(basis):
    from pyscf import gto, scf

    mol = gto.M(atom=[(int(z), p) for z, p in zip(WATER_Z, WATER_POS)], basis=basis, verbose=0)
    mf = scf.RHF(mol)
    mf.conv_tol = 1e-10
    mf.kernel()
    return np.asarray(mf.get_fock()), mol.intor("int1e_ovlp"), mol.nelectron // 2


@pytest.fixture(scope="module")
def water_sto3g():
    return _water("sto-3g")


@pytest.fixture(scope="module")
def water_svp():
    return _water("def2-svp")


def _loss(pred, h, c, e, n_occ, **kw):
    return el.eigenbasis_loss([pred], [torch.as_tensor(h)], [torch.as_tensor(c)], [torch.as_tensor(e)], [n_occ], **kw)


def _random_sym(n, seed, scale=1e-2):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n)) * scale
    return a + a.T


def _degenerate_problem(n=6, seed=0):
    """A random SPD S and an H whose generalised spectrum has a doubly degenerate pair (orbitals 2, 3)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n))
    s = a @ a.T / n + 0.3 * np.eye(n)
    lam, u = np.linalg.eigh(s)
    x = u @ np.diag(lam ** -0.5) @ u.T                      # S^-1/2
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    c = x @ q                                               # C^T S C = I
    e = np.array([-1.0, -0.5, 0.2, 0.2, 0.7, 1.3])[:n]
    h = s @ c @ np.diag(e) @ c.T @ s                        # H C = S C e
    return 0.5 * (h + h.T), s


# ---------------------------------------------------------------- the loss itself
def test_label_eigenvectors_are_s_orthonormal_and_ascending(water_svp):
    h, s, n_occ = water_svp
    e, c = el.label_eigenvectors(h, s)
    assert c.dtype == np.float64 and np.all(np.diff(e) > 0)
    np.testing.assert_allclose(c.T @ s @ c, np.eye(len(e)), atol=1e-10)
    np.testing.assert_allclose(h @ c, s @ c * e, atol=1e-9)


@pytest.mark.parametrize("w_rest,n_virtual,columns", [(0.3, 1, "all"), (0.0, 1, "trunc")])
def test_gradcheck_fp64(water_sto3g, w_rest, n_virtual, columns):
    h, s, n_occ = water_sto3g
    e, c = el.label_eigenvectors(h, s)
    if columns == "trunc":
        k = el.n_columns(len(e), n_occ, n_virtual, e)
        assert k == n_occ + n_virtual < len(e)
        e, c = e[:k], c[:, :k]
    # the point is away from M_pq = 0 (|x| has a kink there): a generic random perturbation
    pred = torch.tensor(h + _random_sym(len(h), 1), requires_grad=True)
    assert (_loss(pred.detach(), h, c, e, n_occ).item() > 0)
    assert torch.autograd.gradcheck(
        lambda p: _loss(p, h, c, e, n_occ, n_virtual=n_virtual, w_rest=w_rest, w_abs=1.0, w_sq=3.0), (pred,))


def test_gradcheck_fp64_degenerate_group_form():
    h, s = _degenerate_problem()
    e, c = el.label_eigenvectors(h, s)
    assert el.degenerate_groups(e) is not None
    pred = torch.tensor(h + _random_sym(len(h), 2), requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: _loss(p, h, c, e, 2, n_virtual=1, w_rest=0.5, w_sq=1.0), (pred,))


def test_zero_iff_pred_equals_target(water_svp):
    h, s, n_occ = water_svp
    e, c = el.label_eigenvectors(h, s)
    n = len(e)
    kw = dict(n_virtual=4, w_rest=0.1, w_abs=1.0, w_sq=1.0)
    assert _loss(torch.tensor(h), h, c, e, n_occ, **kw).item() == 0.0
    for seed in range(3):
        assert _loss(torch.tensor(h + _random_sym(n, seed, 1e-6)), h, c, e, n_occ, **kw).item() > 0
    # an error that lives only on the highest orbitals (S c_p c_p^T S) is still seen with w_rest > 0 ...
    sc = s @ c[:, -1]
    only_high = torch.tensor(h + 1e-3 * np.outer(sc, sc))
    assert _loss(only_high, h, c, e, n_occ, **kw).item() > 0
    # ... and is invisible with w_rest = 0 (that block is not penalised: zero does not imply equal there)
    assert _loss(only_high, h, c, e, n_occ, n_virtual=4, w_rest=0.0).item() == pytest.approx(0.0, abs=1e-15)


def test_invariant_to_the_gauge_of_c(water_svp):
    h, s, n_occ = water_svp
    e, c = el.label_eigenvectors(h, s)
    pred = torch.tensor(h + _random_sym(len(h), 5, 1e-3))
    rng = np.random.default_rng(0)
    for kw in (dict(w_rest=0.1, w_abs=1.0, w_sq=0.0), dict(w_rest=0.0, w_abs=0.0, w_sq=1.0)):
        ref = _loss(pred, h, c, e, n_occ, **kw).item()
        flipped = c * rng.choice([-1.0, 1.0], size=c.shape[1])
        assert _loss(pred, h, flipped, e, n_occ, **kw).item() == pytest.approx(ref, rel=1e-12)
    # a rotation within a degenerate pair is a gauge freedom too; the group form does not see it
    h, s = _degenerate_problem()
    e, c = el.label_eigenvectors(h, s)
    pred = torch.tensor(h + _random_sym(len(h), 3))
    t = 0.7
    rot = np.eye(len(e))
    rot[2:4, 2:4] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    c_rot = c @ rot
    np.testing.assert_allclose(h @ c_rot, s @ c_rot * e, atol=1e-8)      # still eigenvectors
    for kw in (dict(n_virtual=1, w_rest=0.5, w_abs=1.0, w_sq=1.0), dict(n_virtual=0, w_rest=0.2)):
        a, b = _loss(pred, h, c, e, 2, **kw).item(), _loss(pred, h, c_rot, e, 2, **kw).item()
        assert a == pytest.approx(b, rel=1e-10)
    # while a plain element-wise |M| would depend on that arbitrary choice
    m, m_rot = (torch.as_tensor(x).T @ (pred - torch.as_tensor(h)) @ torch.as_tensor(x) for x in (c, c_rot))
    assert abs(m.abs().sum().item() - m_rot.abs().sum().item()) > 1e-4


def test_penalises_poorly_conditioned_overlap_directions(water_svp):
    """Two errors with the same element-wise MAE, along the least and the best conditioned
    overlap direction: the first creates a spurious orbital hundreds of mEh low, the second
    moves orbitals by a few mEh; the eigenbasis loss tells them apart, the MAE does not."""
    import scipy.linalg

    h, s, n_occ = water_svp
    e, c = el.label_eigenvectors(h, s)
    lam, u = np.linalg.eigh(s)
    assert lam[-1] / lam[0] > 50
    errs = []
    for j in (0, -1):
        d = -np.outer(u[:, j], u[:, j])
        errs.append(d * (1e-3 / np.abs(d).mean()))        # element-wise MAE 1 mEh each
    shift = [np.abs(scipy.linalg.eigh(h + d, s, eigvals_only=True) - e).max() for d in errs]
    assert shift[0] > 0.2 and shift[1] < 0.02            # Hartree: 1 mEh MAE, very different spectra
    mae = [np.abs(d).mean() for d in errs]
    eig = [_loss(torch.tensor(h + d), h, c, e, n_occ).item() for d in errs]  # default n_virtual, w_rest
    assert mae[0] == pytest.approx(mae[1])
    assert eig[0] > 10 * eig[1], eig
    # with every orbital at full weight the ratio approaches cond(S)
    full = [_loss(torch.tensor(h + d), h, c, e, n_occ, w_rest=1.0).item() for d in errs]
    assert full[0] > 100 * full[1], full


def test_rank_shares_add_up_to_the_whole_batch(water_svp, water_sto3g):
    """The loop's normalisation: each rank divides its sum by the global weight sum and multiplies by
    the world size; DDP averages the gradients -> the gradient of one process on the whole batch."""
    mols = [water_svp, water_sto3g, water_svp]
    eigs = [el.label_eigenvectors(h, s) for h, s, _ in mols]
    preds = [torch.tensor(h + _random_sym(len(h), i, 1e-3), requires_grad=True) for i, (h, _, _) in enumerate(mols)]

    def sums(idx):
        return el.eigenbasis_sums([preds[i] - torch.as_tensor(mols[i][0]) for i in idx],
                                  [torch.as_tensor(eigs[i][1]) for i in idx],
                                  [torch.as_tensor(eigs[i][0]) for i in idx], [mols[i][2] for i in idx], 4, 0.1)

    a, _, w = sums([0, 1, 2])
    whole = torch.autograd.grad(a / w, preds)
    shares = [[0, 2], [1]]
    w_global = sum(sums(idx)[2] for idx in shares)
    assert w_global == pytest.approx(w)
    grads = [torch.zeros_like(p) for p in preds]
    for idx in shares:
        a_r, _, _ = sums(idx)
        for g, gr in zip(grads, torch.autograd.grad(a_r * (len(shares) / w_global), preds, allow_unused=True)):
            if gr is not None:
                g += gr / len(shares)                      # DDP: mean over ranks
    for g, ref in zip(grads, whole):
        torch.testing.assert_close(g, ref, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------- the cache
@pytest.fixture(scope="module")
def water_data(tmp_path_factory):
    """4 distorted waters, HF/STO-3G, and a 3/1/0 split."""
    return labelled_water(tmp_path_factory.mktemp("eig_data"), 4, seed=7, scale=0.05, n_train=3)


def test_cache_computes_once_atomically_and_only_rank0_writes(water_data, tmp_path, monkeypatch):
    from qhnetv2.data import HamiltonianDataset
    from qhnetv2.training.collate import collate
    from qhnetv2.training.data import ResidualDataset, cache_key

    calls = []
    real = el.label_eigenvectors
    monkeypatch.setattr(el, "label_eigenvectors", lambda h, s: calls.append(1) or real(h, s))
    raw = HamiltonianDataset(water_data["data"])
    folder = str(tmp_path / "eig")

    # ranks > 0 (write=False): computed in memory, nothing written, not even the folder
    ro = ResidualDataset(raw, None, write=False, eigen=el.EigenCache(folder, 1, all_columns=False))
    item = ro[0]
    assert len(calls) == 1 and not os.path.exists(folder)
    assert item["label_eigenvectors"].shape == (7, 6)      # 5 occupied + 1 virtual of 7

    # rank 0: one computation per molecule, the second "epoch" reads the files
    calls.clear()
    ds = ResidualDataset(raw, None, write=True, eigen=el.EigenCache(folder, 1, all_columns=True))
    first = [ds[i] for i in range(len(ds))]
    assert len(calls) == len(ds)
    second = [ds[i] for i in range(len(ds))]
    assert len(calls) == len(ds)
    assert sorted(os.listdir(folder)) == sorted(f"eig-all-{cache_key(i)}.npy" for i in raw.ids)
    for a, b in zip(first, second):
        assert torch.equal(a["label_eigenvectors"], b["label_eigenvectors"])
        c, s = b["label_eigenvectors"].numpy(), b["overlap"].numpy()
        assert c.dtype == np.float64 and c.shape == (7, 7)
        np.testing.assert_allclose(c.T @ s @ c, np.eye(7), atol=1e-10)
    b = collate(second, dtype=torch.float32)
    assert len(b.eigvecs) == len(b.eigvals) == 4 and b.eigvecs[0].dtype == torch.float64
    assert b.to("cpu", torch.float32).eigvecs[0].dtype == torch.float64

    # atomic: a writer killed mid-write leaves neither a file nor a temporary
    folder2 = str(tmp_path / "eig2")
    cache = el.EigenCache(folder2, 1, all_columns=True)

    def boom(f, arr):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(el.np, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        cache.get("m0", first[0]["hamiltonian"].numpy(), first[0]["overlap"].numpy(), 5)
    assert os.listdir(folder2) == []


def test_train_with_the_eigen_term_logs_it_in_float32_and_float64(water_data, tmp_path):
    from qhnetv2.training import load_config, train
    from qhnetv2.training.config import TrainConfig

    base = {"model": {"preset": "tiny"}, "target": "minao", "batch_size": 2, "lr": 3e-3, "warmup_steps": 1,
            "max_steps": 4, "val_every": 4, "log_every": 1, "ema_decay": 0.5, "seed": 0}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for dtype in ("float32", "float64"):
            cfg = TrainConfig.from_dict(dict(base, dtype=dtype, loss={"mae": 1.0, "mse": 1.0, "eigen": 1.0,
                                                                       "orbital": 0.5, "n_virtual": 1, "w_rest": 0.3}))
            run = str(tmp_path / dtype)
            s = train(cfg, water_data["data"], water_data["split"], run, progress=False)
            assert s["steps"] == 4
            with open(os.path.join(run, "log.csv")) as f:
                rows = list(csv.DictReader(f))
            eig = [float(r["loss_eigen"]) for r in rows if r["loss_eigen"]]
            assert len(eig) == 4 and all(np.isfinite(eig)) and all(v > 0 for v in eig)
            orb = [float(r["loss_orbital"]) for r in rows if r["loss_orbital"]]
            assert len(orb) == 4 and all(np.isfinite(orb)) and all(v > 0 for v in orb)
            # loss = entry-wise + eigen + orbital
            assert all(float(r["loss"]) > v + o for r, v, o in zip(rows, eig, orb))
            assert len(os.listdir(os.path.join(run, "eigen_cache"))) == 3   # the 3 training molecules
        # a resumed run must keep the loss
        cfg = TrainConfig.from_dict(dict(base, dtype="float64", max_steps=6, loss={"mae": 1.0, "mse": 1.0}))
        with pytest.raises(ValueError, match="loss"):
            train(cfg, water_data["data"], water_data["split"], str(tmp_path / "float64"), resume=True,
                  progress=False)
    finally:
        torch.set_num_threads(threads)
    # the term is off unless a weight asks for it
    assert not TrainConfig.from_dict(dict(load_config("tiny").to_dict(), loss={"mae": 1.0})).eigen_loss


def test_torchrun_two_processes_equal_one_with_the_eigen_term(water_data, tmp_path):
    """DDP: 2 ranks with uneven shares (batch 3 = 2 + 1) end with the parameters of one process."""
    import subprocess
    import sys

    import yaml

    from qh_helpers import REPO

    cfg = str(tmp_path / "c.yaml")
    with open(cfg, "w") as f:
        yaml.safe_dump({"model": {"preset": "tiny"}, "target": "full", "dtype": "float64", "batch_size": 3,
                        "lr": 3e-3, "warmup_steps": 1, "max_steps": 3, "val_every": 3, "log_every": 1,
                        "ema_decay": 0.5, "seed": 0, "val_orbitals": False,
                        "loss": {"mae": 1.0, "mse": 1.0, "eigen": 1.0, "eigen_mse": 1.0, "n_virtual": 1,
                                 "w_rest": 0.3}}, f)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = ["-m", "qhnetv2", "train", "--config", cfg, "--data", water_data["data"], "--split", water_data["split"],
            "--no-progress", "--device", "cpu", "--out"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    subprocess.run([sys.executable, *args, one], check=True, env=env, cwd=REPO, capture_output=True)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        *args, two], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    a, b = (torch.load(os.path.join(d, "checkpoints", "last.pt"), weights_only=True) for d in (one, two))
    assert a["extra"]["step"] == b["extra"]["step"] == 3
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=1e-9, atol=1e-11, msg=k)
    rows = [list(csv.DictReader(open(os.path.join(d, "log.csv")))) for d in (one, two)]
    assert [float(r["loss_eigen"]) for r in rows[0]] == pytest.approx([float(r["loss_eigen"]) for r in rows[1]],
                                                                      rel=1e-9)


# ---------------------------------------------------------------- the orbital-energy term
def test_orbital_energy_term_is_the_generalised_spectrum(water_svp):
    """e_pred = eigvalsh(diag(e) + C^T dH C) equals scipy's eigh(H_pred, S), also when a large
    perturbation reorders orbitals; the term is the MAE of the lowest n_occ + n_virtual of them."""
    import scipy.linalg

    h, s, n_occ = water_svp
    e, c = el.label_eigenvectors(h, s)
    for scale in (1e-3, 0.3):
        dh = _random_sym(len(h), 3, scale)
        total, count = el.orbital_energy_sums([torch.as_tensor(dh)], [torch.as_tensor(c)], [torch.as_tensor(e)],
                                              [n_occ], n_virtual=3)
        ref = scipy.linalg.eigh(h + dh, s, eigvals_only=True)[: n_occ + 3]
        assert count == n_occ + 3
        np.testing.assert_allclose(float(total), np.abs(ref - e[: n_occ + 3]).sum(), rtol=1e-9)
        # w_rest > 0: every orbital, the higher virtuals at weight w_rest
        total, wsum = el.orbital_energy_sums([torch.as_tensor(dh)], [torch.as_tensor(c)], [torch.as_tensor(e)],
                                             [n_occ], n_virtual=3, w_rest=0.25)
        full = scipy.linalg.eigh(h + dh, s, eigvals_only=True)
        w = np.full(len(e), 0.25)
        w[: n_occ + 3] = 1.0
        assert wsum == pytest.approx(w.sum())
        np.testing.assert_allclose(float(total), (w * np.abs(full - e)).sum(), rtol=1e-9)
    zero, _ = el.orbital_energy_sums([torch.zeros_like(torch.as_tensor(h))], [torch.as_tensor(c)],
                                     [torch.as_tensor(e)], [n_occ], n_virtual=3)
    assert float(zero) < 1e-12
    with pytest.raises(ValueError, match="full eigenbasis"):
        el.orbital_energy_sums([torch.as_tensor(h)], [torch.as_tensor(c[:, :n_occ])], [torch.as_tensor(e)], [n_occ], 1)


def test_orbital_energy_term_sees_a_spurious_orbital(water_svp):
    """An error confined to the highest virtual's direction, pulling it below the LUMO, costs
    a large LUMO error in this term while the first-order diagonal of M misses it."""
    h, s, n_occ = water_svp
    e, c = el.label_eigenvectors(h, s)
    sc = s @ c[:, -1:]                                   # S C_top: dH = -d (S c)(S c)^T lowers orbital -1 by d
    drop = e[-1] - e[n_occ] + 0.2                        # 0.2 Eh below the true LUMO
    dh = torch.as_tensor(-drop * sc @ sc.T)
    total, count = el.orbital_energy_sums([dh], [torch.as_tensor(c)], [torch.as_tensor(e)], [n_occ], n_virtual=1)
    assert float(total) == pytest.approx(0.2, rel=1e-6)  # the new LUMO is 0.2 Eh low, nothing else moves
    m = c.T @ dh.numpy() @ c
    assert np.abs(np.diag(m)[: n_occ + 1]).max() < 1e-9


def test_orbital_energy_gradcheck_fp64(water_sto3g):
    h, s, n_occ = water_sto3g
    e, c = el.label_eigenvectors(h, s)
    dh = torch.tensor(_random_sym(len(h), 5, 1e-2), requires_grad=True)

    def f(x):
        return el.orbital_energy_sums([x], [torch.as_tensor(c)], [torch.as_tensor(e)], [n_occ], n_virtual=2)[0]

    assert torch.autograd.gradcheck(f, (dh,), eps=1e-7, atol=1e-6)
