"""Node-frame jump: how much the predicted H changes when two neighbours swap order.

``python -m bench.frame_jump [--checkpoint CKPT] [--steps 201] [--out DIR]``

A water-like path: the O-H1 distance sweeps 0.92 -> 1.02 Angstrom while O-H2
stays 0.97, so H1 and H2 swap as O's nearest neighbour at the middle of the
path.  For the nearest-neighbour node frame (the paper's) and the soft frame
(``node_frame="soft"``) and frame averaging (``node_frame="average"``), with the same weights, it reports the largest change
of H between consecutive path points next to the typical change elsewhere:
a frame jump shows as a step at the swap.  float64 throughout.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from qhnetv2.model import QHNetV2


def path(steps: int) -> np.ndarray:
    ang = np.deg2rad(104.5)
    out = []
    for r1 in np.linspace(0.92, 1.02, steps):
        out.append([[0.0, 0.0, 0.0], [r1, 0.0, 0.0], [0.97 * np.cos(ang), 0.97 * np.sin(ang), 0.0]])
    return np.asarray(out)


def jumps(model: QHNetV2, geoms: np.ndarray) -> np.ndarray:
    z = torch.tensor([8, 1, 1])
    hs = [model(z, torch.tensor(g)).detach().numpy() for g in geoms]
    return np.array([np.abs(b - a).max() for a, b in zip(hs[:-1], hs[1:])])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="a trained checkpoint (default: an untrained tiny model, seed 0)")
    ap.add_argument("--steps", type=int, default=201)
    ap.add_argument("--out", default=None, help="write frame_jump.json here")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if args.checkpoint:
        base = QHNetV2.load(args.checkpoint)
    else:
        base = QHNetV2.from_preset("tiny", elements=[1, 8])
    base = base.double().eval()
    geoms = path(args.steps)
    swap = args.steps // 2
    result = {}
    for frame in ("nearest", "soft", "average"):
        cfg = base.config.to_dict()
        cfg.update(node_frame=frame)
        basis, elements = cfg.pop("basis"), cfg.pop("elements")
        model = QHNetV2(basis=basis, elements=elements, layout=base.layout, **cfg).double().eval()
        model.load_state_dict(base.state_dict())
        d = jumps(model, geoms)
        window = slice(max(swap - 2, 0), swap + 2)
        away = np.concatenate([d[: max(swap - 10, 1)], d[swap + 10 :]])
        result[frame] = {"max_step_at_swap_Eh": float(d[window].max()), "median_step_elsewhere_Eh": float(np.median(away)),
                         "ratio": float(d[window].max() / max(np.median(away), 1e-300))}
        print(f"{frame:8s} largest |dH| at the swap {d[window].max():.3e} Eh; typical step elsewhere "
              f"{np.median(away):.3e} Eh; ratio {result[frame]['ratio']:.1f}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "frame_jump.json"), "w") as f:
            json.dump({"checkpoint": args.checkpoint, "steps": args.steps, **result}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
