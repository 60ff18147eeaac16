#!/bin/bash
# the issue-18 ablation on the accuracy yardstick (run from a snapshot worktree of main)
cd "$(git rev-parse --show-toplevel)"  # the run used a worktree of main at 370f961
exec python -m bench accuracy --preset md17 --budget-s 600 \
  --molecules water=200,ethanol=200,malondialdehyde=120,uracil=80 \
  --jobs 2 --threads 1 --scf 1 --calibration-steps 20 --speed-molecule uracil --speed-threads 2 \
  --qhnet-src /tmp/airs_qhnet --name ablation_md17 --out bench/results \
  --variant main \
  --variant 'main_98e6694={"model": {"node_frame": "nearest", "norm": "separate"}}' \
  --variant 'pair_product={"model": {"pair_product": 2}}' \
  --variant 'pair_mmax4={"model": {"pair_mmax": 4}}' \
  --variant 'gated_readout={"model": {"readout_hidden": 48}}' \
  --variant 'element_pair={"model": {"element_pair_readout": true}}' \
  --variant 'combined={"model": {"pair_product": 2, "pair_norm": true, "readout_hidden": 48, "element_pair_readout": true, "pair_mmax": 4}}'
