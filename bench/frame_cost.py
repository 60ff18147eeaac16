"""Cost of the node-frame choice: batch-1 forward+backward, frame averaging vs the nearest frame.

    python -m bench.frame_cost [--preset qh9] [--molecules uracil ethanol nonane] [--threads 2] [--out DIR]

Same weights (seeded), same input, side by side in one run (``time_cpu_interleaved``,
so the ratios are fair on a shared machine).  Rows per molecule:

* ``nearest/separate``: the paper's nearest-neighbour node frame with the per-degree
  layer norm (main before frame averaging);
* ``average/joint``: frame averaging (``node_frame="average"``) with the joint-degree
  layer norm (the default now);
* ``nearest/joint``: isolates the norm's share of the difference.

Also reports each molecule's candidate-frame count ``F`` against its atom count ``N``
(the extra work of averaging is in the ``F - N`` extra node-block evaluations).
Results: ``DIR/<device>/frame_cost.{json,md}``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os

import torch

from bench.models.molecules import molecule
from bench.timer import Budget, time_cpu_interleaved

ARMS = {"nearest/separate": dict(node_frame="nearest", norm="separate"),
        "average/joint": dict(node_frame="average", norm="joint"),
        "nearest/joint": dict(node_frame="nearest", norm="joint")}


def _step(model, z, pos):
    def run():
        model.zero_grad(set_to_none=True)
        h, _ = model.forward_batch(z, pos)
        h.square().sum().backward()
    return run


def main(argv=None) -> int:
    from qhnetv2.model import QHNetV2
    from qhnetv2.model.graph import build_graph

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="qh9")
    ap.add_argument("--molecules", nargs="+", default=["uracil", "ethanol", "nonane"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--target-s", type=float, default=3.0, help="seconds of timing per row")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = {}
    for name, arm in ARMS.items():
        torch.manual_seed(0)
        models[name] = QHNetV2.from_preset(args.preset, **arm)
    ref = models["nearest/separate"].state_dict()
    for m in models.values():
        m.load_state_dict(ref)
    budget = Budget(warmup=2, target_s=args.target_s, min_reps=5, max_reps=200)
    rows = []
    for mol in args.molecules:
        z, pos = molecule(mol)
        pos = pos.to(torch.float32)
        cfg = models["average/joint"].config
        g = build_graph(pos, torch.zeros_like(z), cfg.cutoff, cfg.pair_cutoff, "average", frame_window=cfg.frame_window)
        res = time_cpu_interleaved([(_step(m, z, pos), _nullcontext, budget) for m in models.values()])
        base = res[0]["median"]
        for (name, _), r in zip(models.items(), res):
            rows.append({"molecule": mol, "atoms": int(z.numel()), "frames": int(g.frame_atom.numel()), "arm": name,
                         "median_s": r["median"], "q20_s": r["q20"], "q80_s": r["q80"], "n": r["n"],
                         "ratio_vs_nearest_separate": r["median"] / base})
            print(f"{mol:8s} N={z.numel():3d} F={g.frame_atom.numel():3d} {name:18s} fwd+bwd {r['median']:.4f} s "
                  f"(x{r['median'] / base:.3f})", flush=True)
    if args.out:
        from bench.device import _git_commit

        git = _git_commit()
        meta = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(), "git": git, "preset": args.preset,
                "threads": torch.get_num_threads(), "dtype": "float32",
                "command": "python -m bench.frame_cost " + " ".join(argv if argv is not None else [])}
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "frame_cost.json"), "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
        with open(os.path.join(args.out, "frame_cost.md"), "w") as f:
            f.write(f"# Node-frame cost, batch-1 forward+backward ({args.preset} preset, float32, "
                    f"{meta['threads']} threads)\n\n- {meta['created']}, git {git}; command: `{meta['command']}`\n"
                    "- median of interleaved repetitions (same weights, same input); F = candidate node frames\n\n"
                    "| molecule | N | F | arm | fwd+bwd (s) | q20-q80 (s) | ratio vs nearest/separate |\n"
                    "|---|---|---|---|---|---|---|\n")
            for r in rows:
                f.write(f"| {r['molecule']} | {r['atoms']} | {r['frames']} | {r['arm']} | {r['median_s']:.4f} | "
                        f"{r['q20_s']:.4f}-{r['q80_s']:.4f} | {r['ratio_vs_nearest_separate']:.3f} |\n")
    return 0


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    raise SystemExit(main())
