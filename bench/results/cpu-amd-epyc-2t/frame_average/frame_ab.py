"""Equal-budget A/B of the node frame: demo data and split, tiny preset, 3000 steps, same loss."""
import json, os, sys, time
import torch
from qhnetv2.demo import FULL, demo_split
from qhnetv2.data.store import HamiltonianReader
from qhnetv2.data.split import write_json_atomic
from qhnetv2.training import load_config, train
arm = sys.argv[1]
model = {"preset": "tiny", "basis": None, "elements": None}
if arm == "nearest":
    model.update(node_frame="nearest", norm="separate")
else:
    model.update(node_frame="average", norm="joint")
data = "/work/runs/demo_data/data"
split_path = "/work/runs/demo_split.json"
if not os.path.exists(split_path):
    write_json_atomic(split_path, demo_split(HamiltonianReader(data), FULL))
torch.set_num_threads(1)
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
cfg = load_config("tiny", max_steps=steps, val_every=max(10, steps // 8), log_every=5, device="cpu",
                  model=model, loss={"mae": 1.0, "mse": 1.0})
t = time.time()
s = train(cfg, data, split_path, f"/work/runs/ab_{arm}", resume=True, progress=False)
print(arm, "train wall", time.time() - t, s["best_val_mae_uEh"], flush=True)
