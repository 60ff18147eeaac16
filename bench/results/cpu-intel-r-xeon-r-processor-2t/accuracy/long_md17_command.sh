#!/bin/bash
# issue 18, stop 23: the new default against 98e6694's model (emulated with today's options) side by
# side in one run at a 1200 s budget per variant (run from a worktree of main at f708944)
cd "$(git rev-parse --show-toplevel)"
exec python -m bench accuracy --preset md17 --budget-s 1200 \
  --molecules water=200,ethanol=200,malondialdehyde=120,uracil=80 \
  --jobs 2 --threads 1 --scf 1 --calibration-steps 20 --speed-molecule '' \
  --name long_md17 --out bench/results \
  --variant 'main_98e6694={"model": {"node_frame": "nearest", "norm": "separate", "readout_hidden": 0, "pair_scheme": "ordered"}}' \
  --variant main
