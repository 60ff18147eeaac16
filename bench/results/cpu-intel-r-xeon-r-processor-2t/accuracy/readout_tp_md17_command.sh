#!/bin/bash
# issue 18, stop 23: the remaining candidates of the ablation (gated readout wider, node TP with all
# orders, pair_norm alone) against the new default, side by side (run from a worktree of main at e17a3f9)
cd "$(git rev-parse --show-toplevel)"
exec python -m bench accuracy --preset md17 --budget-s 600 \
  --molecules water=200,ethanol=200,malondialdehyde=120,uracil=80 \
  --jobs 2 --threads 1 --scf 1 --calibration-steps 20 --speed-molecule '' \
  --name readout_tp_md17 --out bench/results \
  --variant main \
  --variant 'readout_hidden128={"model": {"readout_hidden": 128}}' \
  --variant 'tp_mmax4={"model": {"tp_mmax": 4}}' \
  --variant 'pair_norm={"model": {"pair_norm": true}}'
