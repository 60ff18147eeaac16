"""Demo-scale data-size / step A/B: tiny preset, frame averaging, same loss; 1 thread."""
import json, os, sys, time
import torch
from qhnetv2.demo import demo_split
from qhnetv2.data.store import HamiltonianReader
from qhnetv2.data.split import write_json_atomic
from qhnetv2.training import load_config, train
arm, steps = sys.argv[1], int(sys.argv[2])
n_eth = int(sys.argv[3]) if len(sys.argv) > 3 else 10**9   # cap on ethanol train frames (earliest)
n_wat = int(sys.argv[4]) if len(sys.argv) > 4 else 10**9
extra = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
data = "/work/runs/big/data"
sizes = {"test_water": 10, "test_ethanol": 10, "valid_water": 3, "valid_ethanol": 3}
split = demo_split(HamiltonianReader(data), sizes)
tr = [i for i in split["train"] if (i.startswith("ethanol") and int(i.split(":")[1]) < n_eth)
      or (i.startswith("water") and int(i.split(":")[1]) < n_wat)]
split["train"] = tr
sp = f"/work/runs/big/split_{arm}.json"
write_json_atomic(sp, split)
torch.set_num_threads(1)
cfg = load_config("tiny", max_steps=steps, val_every=max(10, steps // 8), log_every=5, device="cpu", **extra)
t = time.time()
s = train(cfg, data, sp, f"/work/runs/big/run_{arm}", resume=True, progress=False)
print(arm, len(tr), "train wall", time.time() - t, s["best_val_mae_uEh"], flush=True)
