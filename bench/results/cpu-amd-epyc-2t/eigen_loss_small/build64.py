import os, time
from qhnetv2.data.recipe import make_md17_like
from qhnetv2.data.build import build_dataset
from qhnetv2.data.store import HamiltonianReader
from qhnetv2.data.split import write_json_atomic
from qhnetv2.demo import demo_split
if __name__ == "__main__":
    t=time.time()
    paths = make_md17_like("/tmp/wal_data64/geometries", {"water": 64, "ethanol": 64}, seed=0)
    s = build_dataset(paths, "/tmp/wal_data64/data", {"xc": "hf", "basis": "def2-svp"}, workers=1, threads=1, progress=False)
    print(s["n_ok"], s["n_failed"], time.time()-t)
    r = HamiltonianReader("/tmp/wal_data64/data")
    sp = demo_split(r, {"test_water": 8, "test_ethanol": 8, "valid_water": 3, "valid_ethanol": 3})
    write_json_atomic("/tmp/wal_data64/split.json", sp)
    print({k: len(v) for k, v in sp.items()})
    