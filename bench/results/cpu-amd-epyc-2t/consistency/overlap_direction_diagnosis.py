import json, numpy as np, sys
from qhnetv2.data.store import HamiltonianReader
from qhnetv2.inference import model_and_extra, predict_hamiltonians
ck = sys.argv[1]; ids = sys.argv[2:]
model, extra, _ = model_and_extra(ck, "cpu", None)
r = HamiltonianReader("/work/runs/big/data", ids=ids)
recs = [r[i] for i in range(len(r))]
preds = predict_hamiltonians(model, extra, [x["atomic_numbers"] for x in recs], [x["positions"] for x in recs])
from qhnetv2.domain import *  # noqa
for rec, hp in zip(recs, preds):
    S, H = rec["overlap"], rec["hamiltonian"]
    s, U = np.linalg.eigh(S)
    X = U @ np.diag(s ** -0.5) @ U.T
    dH = hp - H
    M = X @ dH @ X
    import scipy.linalg as sl
    et, Ct = sl.eigh(H, S); ep, Cp = sl.eigh(hp, S)
    nocc = int(sum(rec["atomic_numbers"])) // 2
    print(rec["id"], "S min eig %.4g" % s[0], "gap true %.2f pred %.2f eV" % ((et[nocc]-et[nocc-1])*27.2114, (ep[nocc]-ep[nocc-1])*27.2114))
    print("   |dH| max %.4g mean %.4g ; Lowdin M max eig %.4g" % (np.abs(dH).max(), np.abs(dH).mean(), np.abs(np.linalg.eigvalsh(M)).max()))
    # the spurious LUMO: its weight on small-S directions, and atoms
    c = Cp[:, nocc]
    w = (U.T @ S @ c) ** 2 / s  # coefficients in S eigenbasis (normalised): c = sum a_k u_k, a_k = u_k^T c ; c^T S c = sum s_k a_k^2
    a = U.T @ c; contrib = s * a**2
    print("   pred LUMO %.3f true LUMO %.3f Eh; S-eig contributions of pred LUMO: smallest-5 S dirs %.3f" % (ep[nocc], et[nocc], contrib[:5].sum()))
    print("   the 5 smallest S eigenvalues", np.round(s[:5], 4), " v^T dH v / s for them", np.round([U[:, k] @ dH @ U[:, k] / s[k] for k in range(5)], 4))
