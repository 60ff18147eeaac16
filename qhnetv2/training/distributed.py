"""torchrun / DistributedDataParallel plumbing (NCCL on GPUs, Gloo on CPUs).

``setup(device)`` initialises the process group when launched by torchrun
(``WORLD_SIZE > 1``) and returns ``(rank, world, device)``; without torchrun it
is a no-op (rank 0 of 1).  Only rank 0 writes files.

Every collective goes through the helpers below, and every tensor they hand to
``torch.distributed`` lives on :func:`collective_device`: the model's CUDA device
under NCCL (which rejects CPU tensors), the CPU under Gloo.  Objects (validation
metrics) are pickled into uint8 tensors on that device and exchanged with plain
tensor collectives, so no collective picks its device implicitly.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, List, Optional, Tuple

import torch
import torch.distributed as dist

#: the device of the model on this rank (set by ``setup``)
_MODEL_DEVICE: Optional[torch.device] = None


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world() -> int:
    return dist.get_world_size() if is_distributed() else 1


def backend_for(device: torch.device) -> str:
    """The process-group backend for a model on ``device``: ``nccl`` for CUDA, else ``gloo``."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def collective_device() -> torch.device:
    """Where collective tensors must live: the model's device under NCCL, the CPU otherwise.

    NCCL works on CUDA tensors only; Gloo on CPU tensors (its CUDA support is partial),
    so a Gloo run with a CUDA model still exchanges CPU tensors.
    """
    backend = str(dist.get_backend()) if is_distributed() else None
    if backend == "nccl":
        if _MODEL_DEVICE is not None and _MODEL_DEVICE.type == "cuda":
            return _MODEL_DEVICE
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def setup(device: str = "auto") -> Tuple[int, int, torch.device]:
    """Initialise DDP if launched by torchrun; returns (rank, world size, this rank's device).

    The backend follows the device (:func:`backend_for`): NCCL when this rank trains on
    a GPU, Gloo for CPU-only runs.
    """
    global _MODEL_DEVICE
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if want_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)  # before the process group: NCCL binds to the current device
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    _MODEL_DEVICE = dev
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not is_distributed():
        dist.init_process_group(backend=backend_for(dev))
    return rank(), world(), dev


def barrier() -> None:
    if is_distributed():
        dev = collective_device()
        if dev.type == "cuda":
            dist.barrier(device_ids=[dev.index])
        else:
            dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over ranks, returned on ``t``'s device (in place when ``t`` already
    lives on :func:`collective_device`).  Callers use the return value."""
    if not is_distributed():
        return t
    dev = collective_device()
    buf = t if t.device == dev else t.to(dev)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    if buf is t:
        return t
    return buf.to(t.device)


def _to_bytes_tensor(obj: Any, dev: torch.device) -> torch.Tensor:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(dev)


def _from_bytes_tensor(t: torch.Tensor) -> Any:
    # the payload comes from this job's own ranks (as with torch's *_object collectives)
    return pickle.loads(t.cpu().numpy().tobytes())


def all_gather_objects(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects), on every rank."""
    if not is_distributed():
        return [obj]
    dev, n = collective_device(), world()
    payload = _to_bytes_tensor(obj, dev)
    size = torch.tensor([payload.numel()], dtype=torch.long, device=dev)
    sizes = [torch.zeros_like(size) for _ in range(n)]
    dist.all_gather(sizes, size)
    lengths = [int(s.item()) for s in sizes]
    padded = torch.zeros(max(lengths), dtype=torch.uint8, device=dev)
    padded[: payload.numel()] = payload
    gathered = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(gathered, padded)
    return [_from_bytes_tensor(g[:k]) for g, k in zip(gathered, lengths)]


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not is_distributed():
        return obj
    dev = collective_device()
    payload = _to_bytes_tensor(obj, dev) if rank() == 0 else None
    size = torch.tensor([payload.numel() if payload is not None else 0], dtype=torch.long, device=dev)
    dist.broadcast(size, src=0)
    buf = payload if payload is not None else torch.empty(int(size.item()), dtype=torch.uint8, device=dev)
    dist.broadcast(buf, src=0)
    return obj if rank() == 0 else _from_bytes_tensor(buf)
