"""Size-bucketed, seeded, DDP-aware batch sampler with a reproducible order.

Global batches depend only on ``(seed, epoch)``, the molecule sizes and the
global ``batch_size``, never on the number of processes: an epoch drops a
random ``n % batch_size`` molecules (so every global batch is full), sorts the
rest by size (ties in random order) when ``bucket`` is on, cuts them into
batches of similar-sized molecules and shuffles the batch order.  Rank ``r``
of ``world`` takes ``batch[r::world]`` of each global batch (balanced sizes).

Step ``s`` (0-based, counted over epochs) is batch ``s % n_batches`` of epoch
``s // n_batches``, so a run resumed at step ``s`` sees exactly the batches the
uninterrupted run would have seen; there is no other sampler state.
"""
from __future__ import annotations

from typing import Iterator, List, Sequence

import numpy as np


class BucketBatchSampler:
    """Yields lists of dataset indices (this rank's share of each global batch).

    Args:
        sizes: int ``[n]`` a cost measure per molecule (AO count).
        batch_size: molecules per global batch (all ranks together); must be >= world.
        seed: base seed; epoch ``e`` uses ``numpy.random.default_rng([seed, e])``.
        rank, world: this process and the number of processes.
        bucket: group molecules of similar size in a batch.
    """

    def __init__(self, sizes: Sequence[int], batch_size: int, seed: int = 0, rank: int = 0,
                 world: int = 1, bucket: bool = True):
        self.sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
        n = self.sizes.size
        if n == 0:
            raise ValueError("the training set is empty")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} out of range for world size {world}")
        self.batch_size = min(int(batch_size), n)
        if self.batch_size < world:
            raise ValueError(f"global batch of {self.batch_size} molecules cannot be split over {world} processes")
        self.seed, self.rank, self.world, self.bucket = int(seed), int(rank), int(world), bool(bucket)
        self.start_step = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.sizes.size // self.batch_size

    def global_batches(self, epoch: int) -> List[np.ndarray]:
        """The global batches of ``epoch`` (each an int64 array of indices)."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        perm = rng.permutation(self.sizes.size)
        keep = perm[: self.batches_per_epoch * self.batch_size]
        if self.bucket:
            keep = keep[np.argsort(self.sizes[keep], kind="stable")]
        batches = keep.reshape(self.batches_per_epoch, self.batch_size)
        return [batches[i] for i in rng.permutation(len(batches))]

    def local(self, global_batch: np.ndarray) -> List[int]:
        return [int(i) for i in global_batch[self.rank :: self.world]]

    def batches_from(self, step: int, max_steps: int) -> Iterator[List[int]]:
        """This rank's batches for global steps ``step, step + 1, ..., max_steps - 1``."""
        nb = self.batches_per_epoch
        while step < max_steps:
            epoch, pos = divmod(step, nb)
            for b in self.global_batches(epoch)[pos:]:
                if step >= max_steps:
                    return
                yield self.local(b)
                step += 1

    # torch DataLoader's batch_sampler protocol
    def set_start(self, step: int, max_steps: int) -> None:
        self.start_step, self.max_steps = int(step), int(max_steps)

    def __iter__(self) -> Iterator[List[int]]:
        return self.batches_from(self.start_step, getattr(self, "max_steps", self.start_step + self.batches_per_epoch))

    def __len__(self) -> int:
        return max(0, getattr(self, "max_steps", self.start_step + self.batches_per_epoch) - self.start_step)
