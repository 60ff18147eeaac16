#!/bin/bash
# issue 18/19, stop 23: the pair stream once per unordered pair (pair_scheme tied) against main
# (the md17 preset before it), side by side (run from a worktree of main at 7ef4e58)
cd "$(git rev-parse --show-toplevel)"
exec python -m bench accuracy --preset md17 --budget-s 600 \
  --molecules water=200,ethanol=200,malondialdehyde=120,uracil=80 \
  --jobs 2 --threads 1 --scf 1 --calibration-steps 20 --speed-molecule '' \
  --name tied_md17 --out bench/results \
  --variant 'main={"model": {"pair_scheme": "ordered"}}' \
  --variant 'tied={"model": {"pair_scheme": "tied"}}' \
  --variant 'tied_pair_mmax4={"model": {"pair_scheme": "tied", "pair_mmax": 4}}' \
  --variant 'tied_tp_mmax4={"model": {"pair_scheme": "tied", "tp_mmax": 4}}'
# (the run itself named the first variant plain "main": at 7ef4e58 the preset was still ordered)
