import json, sys
from bench.accuracy import batch1_speed
v = {"linear_readout (main before this stop)": {"model": {"readout_hidden": 0}},
     "gated_readout (new default)": {"model": {"readout_hidden": 48}},
     "main_98e6694 (emulated)": {"model": {"readout_hidden": 0, "node_frame": "nearest", "norm": "separate"}},
     "combined": {"model": {"pair_product": 2, "pair_norm": True, "readout_hidden": 48, "element_pair_readout": True, "pair_mmax": 4}}}
r = batch1_speed("md17", v, 2, "uracil", 4.0)
base = r["linear_readout (main before this stop)"]["fwdbwd_s"]
print("| variant | batch-1 uracil fwd (ms) | fwd+bwd (ms) | fwd+bwd vs linear readout |\n|---|---|---|---|")
for k, x in r.items():
    print(f"| {k} | {1e3*x['fwd_s']:.0f} | {1e3*x['fwdbwd_s']:.0f} | {x['fwdbwd_s']/base:.2f}x |")
