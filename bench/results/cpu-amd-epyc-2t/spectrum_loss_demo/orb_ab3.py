"""Demo-scale A/B of the eigenbasis loss weight: demo data and split, tiny preset (frame averaging), 3000 steps."""
import sys, time
import torch
from qhnetv2.training import load_config, train
name, eigen, orbital, wr, seed, steps = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(1)
cfg = load_config("tiny", max_steps=steps, val_every=steps // 8, log_every=5, device="cpu",
                  loss={"mae": 1.0, "mse": 1.0, "eigen": eigen, "eigen_mse": 0.0, "n_virtual": 4, "w_rest": wr, "orbital": orbital}, seed=seed)
t = time.time()
s = train(cfg, "/work/runs/demo_data/data", "/work/runs/demo_split.json", f"/work/runs/ab_{name}", resume=True, progress=False)
print(name, "train wall", time.time() - t, s["best_val_mae_uEh"], flush=True)
