"""A/B of the eigenbasis loss: python ab.py NAME STEPS EIGEN W_REST N_VIRTUAL [EIGEN_MSE] [DATA]"""
import json, os, sys, time
import numpy as np, scipy.linalg, torch

torch.set_num_threads(1)
from qhnetv2.training import load_config, train
from qhnetv2.inference import load_model, predict_hamiltonians
from qhnetv2.data.store import HamiltonianReader

name, steps, eig, w_rest, n_virt = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
eig_mse = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
root = sys.argv[7] if len(sys.argv) > 7 else "/tmp/wal_data"
out = f"/tmp/wal/runs/{name}"
loss = {"mae": 1.0, "mse": 1.0, "eigen": eig, "eigen_mse": eig_mse, "n_virtual": n_virt, "w_rest": w_rest}
cfg = load_config("tiny", max_steps=steps, val_every=max(10, steps // 6), log_every=10, device="cpu", loss=loss)
t = time.time()
if not os.path.exists(os.path.join(out, "summary.json")):
    train(cfg, f"{root}/data", f"{root}/split.json", out, resume=True, progress=False)
train_s = time.time() - t
split = json.load(open(f"{root}/split.json"))
reader = HamiltonianReader(f"{root}/data")
model, extra = load_model(os.path.join(out, "checkpoints", "best.pt"), device="cpu")
recs = [reader[i] for i in split["test"]]
hp = predict_hamiltonians(model, extra, [r["atomic_numbers"] for r in recs], [r["positions"] for r in recs])
HA2EV = 27.211386
rows = []
for r, h in zip(recs, hp):
    S = np.asarray(r["overlap"]); H = np.asarray(r["hamiltonian"])
    no = int(np.sum(r["atomic_numbers"])) // 2
    et = scipy.linalg.eigh(H, S, eigvals_only=True); ep = scipy.linalg.eigh(0.5 * (h + h.T), S, eigvals_only=True)
    rows.append({"id": r["id"], "mae_uEh": float(np.abs(h - H).mean() * 1e6),
                 "gap_err_eV": float(((ep[no] - ep[no - 1]) - (et[no] - et[no - 1])) * HA2EV),
                 "lumo_err_mEh": float((ep[no] - et[no]) * 1e3), "homo_err_mEh": float((ep[no - 1] - et[no - 1]) * 1e3),
                 "occ_mae_mEh": float(np.abs(ep[:no] - et[:no]).mean() * 1e3),
                 "virt_mae_mEh": float(np.abs(ep[no:] - et[no:]).mean() * 1e3)})
summ = {"name": name, "loss": loss, "steps": steps, "train_s": train_s}
for mol in ("water", "ethanol", ""):
    sel = [x for x in rows if x["id"].startswith(mol)]
    tag = mol or "all"
    summ[tag] = {"mae_uEh": np.mean([x["mae_uEh"] for x in sel]),
                 "gap_abs_mean_eV": np.mean([abs(x["gap_err_eV"]) for x in sel]),
                 "gap_abs_max_eV": np.max([abs(x["gap_err_eV"]) for x in sel]),
                 "lumo_err_min_mEh": np.min([x["lumo_err_mEh"] for x in sel]),
                 "occ_mae_mEh": np.mean([x["occ_mae_mEh"] for x in sel]),
                 "virt_mae_mEh": np.mean([x["virt_mae_mEh"] for x in sel])}
json.dump({"summary": summ, "rows": rows}, open(os.path.join(out, "ab.json"), "w"), indent=1, default=float)
print(json.dumps(summ, default=lambda v: round(float(v), 3)))
