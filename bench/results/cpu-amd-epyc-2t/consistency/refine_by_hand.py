import json, numpy as np, sys
from pyscf import gto, scf
import scipy.linalg as sl
from qhnetv2.data.store import HamiltonianReader
from qhnetv2.inference import model_and_extra, predict_hamiltonians
ck = sys.argv[1]
split = json.load(open("/work/runs/big/split_all3000.json"))
ids = [i for i in split["test"]]
model, extra, _ = model_and_extra(ck, "cpu", None)
r = HamiltonianReader("/work/runs/big/data", ids=ids)
recs = [r[i] for i in range(len(r))]
preds = predict_hamiltonians(model, extra, [x["atomic_numbers"] for x in recs], [x["positions"] for x in recs])
H2EV = 27.211386
rows = []
for rec, hp in zip(recs, preds):
    mol = gto.M(atom=[(int(z), p) for z, p in zip(rec["atomic_numbers"], rec["positions"])], basis="def2-svp", unit="Angstrom", verbose=0)
    mf = scf.RHF(mol)
    S = rec["overlap"]; H = rec["hamiltonian"]; nocc = mol.nelectron // 2
    et = sl.eigh(H, S, eigvals_only=True); ep, cp = sl.eigh(hp, S)
    D = 2 * cp[:, :nocc] @ cp[:, :nocc].T
    F1 = mf.get_fock(dm=D)
    e1 = sl.eigh(F1, S, eigvals_only=True)
    g = lambda e: (e[nocc] - e[nocc - 1]) * H2EV
    rows.append((rec["id"], abs(g(ep) - g(et)), abs(g(e1) - g(et)), np.abs(hp - H).mean() * 1e6, np.abs(F1 - H).mean() * 1e6,
                 np.abs(ep[:nocc+10]-et[:nocc+10]).mean()*H2EV, np.abs(e1[:nocc+10]-et[:nocc+10]).mean()*H2EV))
    print("%s gap err raw %.3f refined %.3f eV | H MAE raw %.1f refined %.1f uEh | occ+10 MAE raw %.3f refined %.3f eV" % rows[-1], flush=True)
a = np.array([x[1:] for x in rows])
print("mean", np.round(a.mean(0), 3), "max", np.round(a.max(0), 3))
