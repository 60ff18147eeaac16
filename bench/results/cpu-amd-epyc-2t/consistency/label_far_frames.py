import os, time
from qhnetv2.data.recipe import make_md17_like
from qhnetv2.data.build import build_dataset
if __name__ == "__main__":
    t=time.time()
    run="/work/runs/big"
    paths = make_md17_like(os.path.join(run, "geometries"), {"water": 134, "ethanol": 313}, seed=0)
    s = build_dataset(paths, os.path.join(run, "data"), {"xc": "hf", "basis": "def2-svp"}, workers=1, threads=1, progress=False)
    print(s, time.time()-t)
