"""``qhnetv2 train``: train QHNetV2 from a YAML config or preset (thin handler, cheap import)."""
from __future__ import annotations

import argparse


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def cmd_train(args) -> int:
    import json

    from .config import load_config
    from .loop import train

    config = load_config(args.config, max_steps=args.max_steps,
                         device=args.device)
    summary = train(config, args.data, args.split, args.out, resume=args.resume, progress=not args.no_progress,
                    allow_schedule_change=args.allow_schedule_change)
    from . import distributed
    if distributed.rank() != 0:
        return 0
    print("train:")
    for key in ("steps", "best_val_mae_uEh", "best_step", "wall_s", "steps_per_s", "resumed_from",
                "world_size", "best_checkpoint", "last_checkpoint", "log_csv", "learning_curve", "tensorboard"):
        value = summary.get(key)
        print(f"  {key}: {value:.6g}" if isinstance(value, float) else f"  {key}: {json.dumps(value)}")
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` options to ``parser`` (the ``train`` group parser)."""
    parser.add_argument("--config", required=True, metavar="FILE.yaml|PRESET",
                        help="a YAML training config or a shipped preset: tiny, md17, qh9")
    parser.add_argument("--data", required=True, metavar="DIR", help="dataset directory (qhnetv2 data build)")
    parser.add_argument("--split", required=True, metavar="SPLIT.json", help="split file (qhnetv2 data split)")
    parser.add_argument("--out", required=True, metavar="RUN_DIR",
                        help="run folder: checkpoints/{best,last}.pt, log.csv, tb/, learning_curve.png")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in RUN_DIR exactly where it stopped")
    parser.add_argument("--allow-schedule-change", action="store_true",
                        help="with --resume: continue even though max_steps, warmup_steps, lr, lr_decay or "
                             "lr_floor differ from the run's (the new schedule applies from the current step); "
                             "without it such a resume is refused")
    parser.add_argument("--max-steps", type=_positive, default=None, help="override the config's max_steps")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="override the config's device (default: the config's, auto = cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.epilog = "Multi-GPU / multi-process: torchrun --nproc_per_node N -m qhnetv2 train ..."
    parser.set_defaults(func=cmd_train)
