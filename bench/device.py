"""What machine this is: a name for the results folder and the metadata of a run."""
from __future__ import annotations

import os
import platform
import re
import subprocess
from typing import Dict

import torch


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def results_dirname(device: torch.device) -> str:
    """``bench/results/<this>``: e.g. ``nvidia-h100-80gb-hbm3`` or ``cpu-amd-epyc-2t``."""
    if device.type == "cuda":
        return slug(device_name(device))
    return slug(f"cpu {_cpu_model()} {torch.get_num_threads()}t")


def _git_commit() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def info(device: torch.device) -> Dict[str, object]:
    """Metadata written at the top of every result file."""
    d: Dict[str, object] = {
        "type": device.type,
        "name": device_name(device),
        "dirname": results_dirname(device),
        "cpu": _cpu_model(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        d.update({"capability": f"{p.major}.{p.minor}", "memory_bytes": int(p.total_memory),
                  "sm_count": int(p.multi_processor_count), "cuda": torch.version.cuda})
    return d


def versions() -> Dict[str, str]:
    import so2ops

    out = {"python": platform.python_version(), "torch": torch.__version__, "so2ops": so2ops.__version__,
           "git": _git_commit()}
    for mod in ("triton", "e3nn", "cuequivariance_torch"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent or broken optional package
            out[mod] = "absent"
    return out
