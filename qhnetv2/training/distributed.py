"""torchrun / DistributedDataParallel plumbing (NCCL on GPUs, Gloo on CPUs).

``setup(device)`` initialises the process group when launched by torchrun
(``WORLD_SIZE > 1``) and returns ``(rank, world, device)``; without torchrun it
is a no-op (rank 0 of 1).  Only rank 0 writes files.
"""
from __future__ import annotations

import os
from typing import Any, List, Tuple

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world() -> int:
    return dist.get_world_size() if is_distributed() else 1


def setup(device: str = "auto") -> Tuple[int, int, torch.device]:
    """Initialise DDP if launched by torchrun; returns (rank, world size, this rank's device)."""
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not is_distributed():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    if want_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    return rank(), world(), dev


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any) -> List[Any]:
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
