"""SCF cycles from the predicted H of run checkpoints on the test split: python scf_eval.py RUN..."""
import json, sys
import numpy as np, torch
torch.set_num_threads(1)
from qhnetv2.inference import load_model, predict_hamiltonians
from qhnetv2.data.store import HamiltonianReader
from qhnetv2.scf import run_scf
root = "/tmp/wal_data64"
split = json.load(open(f"{root}/split.json")); reader = HamiltonianReader(f"{root}/data")
recs = [reader[i] for i in split["test"]]
settings = {"xc": "hf", "basis": "def2-svp"}
for run in sys.argv[1:]:
    model, extra = load_model(f"/tmp/wal/runs/{run}/checkpoints/best.pt", device="cpu")
    hp = predict_hamiltonians(model, extra, [r["atomic_numbers"] for r in recs], [r["positions"] for r in recs])
    out = {}
    for r, h in zip(recs, hp):
        res = run_scf(r["atomic_numbers"], r["positions"], h, settings)
        mol = r["id"].split(":")[0]
        out.setdefault(mol, []).append((res.cycles, res.converged, abs(res.energy - float(r["energy"]))))
    print(run, {m: (np.mean([c for c, _, _ in v]), sum(not ok for _, ok, _ in v), max(d for _, _, d in v)) for m, v in out.items()}, flush=True)
if not sys.argv[1:] or "--minao" in sys.argv:
    pass
