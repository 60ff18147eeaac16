"""Datasheet peaks per GPU model (dense, no sparsity), used for "% of peak".

Units: TFLOP/s and TB/s.  Float32 rows are compared with the tensor-core
TF32 peak (what a kernel using tensor cores on float32 data can reach, and
the peak the issue's target is stated against); float64 with the FP64
tensor-core peak; bf16/fp16 with the dense BF16 peak.  On a CPU there is no
table: the run's own large-matmul and copy rows are the peaks (marked
"measured").
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

# name substring (lower case) -> peaks; first match wins, so specific names come first
GPU_PEAKS = [
    ("h200", {"tf32": 494.7, "fp32": 66.9, "bf16": 989.4, "fp64": 66.9, "bw": 4.8}),
    ("h100 pcie", {"tf32": 378.0, "fp32": 51.2, "bf16": 756.0, "fp64": 51.2, "bw": 2.0}),
    ("h100 nvl", {"tf32": 417.5, "fp32": 59.8, "bf16": 835.0, "fp64": 59.8, "bw": 3.9}),
    ("h100", {"tf32": 494.7, "fp32": 66.9, "bf16": 989.4, "fp64": 66.9, "bw": 3.35}),
    ("gh200", {"tf32": 494.7, "fp32": 66.9, "bf16": 989.4, "fp64": 66.9, "bw": 4.0}),
    ("a100-sxm4-80gb", {"tf32": 156.0, "fp32": 19.5, "bf16": 312.0, "fp64": 19.5, "bw": 2.039}),
    ("a100 80gb pcie", {"tf32": 156.0, "fp32": 19.5, "bf16": 312.0, "fp64": 19.5, "bw": 1.935}),
    ("a100", {"tf32": 156.0, "fp32": 19.5, "bf16": 312.0, "fp64": 19.5, "bw": 1.555}),
    ("l40s", {"tf32": 183.0, "fp32": 91.6, "bf16": 362.0, "fp64": 1.4, "bw": 0.864}),
    ("l4", {"tf32": 60.0, "fp32": 30.3, "bf16": 121.0, "fp64": 0.49, "bw": 0.3}),
    ("a10", {"tf32": 62.5, "fp32": 31.2, "bf16": 125.0, "fp64": 0.98, "bw": 0.6}),
    ("rtx 4090", {"tf32": 82.6, "fp32": 82.6, "bf16": 165.2, "fp64": 1.3, "bw": 1.008}),
    ("v100", {"tf32": 15.7, "fp32": 15.7, "bf16": 15.7, "fp64": 7.8, "bw": 0.9}),
]


def gpu_peaks(name: str) -> Optional[Dict[str, float]]:
    """Datasheet peaks of the GPU called ``name`` (None if the model is not in the table)."""
    low = name.lower()
    for key, peaks in GPU_PEAKS:
        if key in low:
            return dict(peaks)
    return None


def flops_key(dtype: torch.dtype, device: torch.device) -> str:
    """Which peak a row of ``dtype`` is compared with."""
    if dtype == torch.float64:
        return "fp64"
    if dtype in (torch.bfloat16, torch.float16):
        return "bf16"
    return "tf32" if device.type == "cuda" else "fp32"
