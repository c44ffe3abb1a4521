"""Which samples each rank sees at each step: global batches that do not depend on world size.

``torch.utils.data.DistributedSampler`` deals indices round-robin and pads the data set, so the
samples a 2-process run averages at step ``t`` are not the samples a 1-process run averages. Here
the order is a permutation drawn from a generator seeded by ``(seed, epoch)`` only; global batch
``t`` is positions ``[t*B, (t+1)*B)`` of it, and rank ``r`` takes the ``r``-th contiguous slice.
The union over ranks of step ``t`` is thus the same set for any world size, which is what makes a
DDP run reproduce a single-process run, and resuming at an epoch boundary reproduce the order.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def mixed_seed(*parts: int) -> int:
    """One 63-bit seed from several integers, well mixed so ``(s, e)`` and ``(s+1, e-1)`` differ."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def split_bounds(size: int, world_size: int, rank: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s share of ``size`` items: contiguous, near-equal."""
    return rank * size // world_size, (rank + 1) * size // world_size


class GlobalBatchSampler(Sampler[list[int]]):
    """A batch sampler yielding this rank's share of each global batch (``drop_last=False``).

    A rank whose share of the (short) last batch is empty still yields one index, so that every
    rank runs the same number of forward/backward passes (DDP needs that); :meth:`step_counts`
    tells the loop that this sample has weight 0.
    """

    def __init__(
        self,
        num_samples: int,
        global_batch_size: int,
        *,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if global_batch_size % world_size:
            raise ValueError(
                f"global batch size {global_batch_size} is not divisible by world size {world_size}"
            )
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of epoch ``epoch`` (0-based)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.num_samples // self.global_batch_size)

    def order(self) -> list[int]:
        """This epoch's order of all sample indices, identical on every rank."""
        if not self.shuffle:
            return list(range(self.num_samples))
        g = torch.Generator().manual_seed(mixed_seed(self.seed, self.epoch))
        return torch.randperm(self.num_samples, generator=g).tolist()

    def step_counts(self, step: int) -> tuple[int, int]:
        """``(real samples on this rank, samples in the global batch)`` at ``step`` of an epoch."""
        size = min(self.global_batch_size, self.num_samples - step * self.global_batch_size)
        start, stop = split_bounds(size, self.world_size, self.rank)
        return stop - start, size

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order()
        b = self.global_batch_size
        for first in range(0, self.num_samples, b):
            batch = order[first : first + b]
            start, stop = split_bounds(len(batch), self.world_size, self.rank)
            yield batch[start:stop] if stop > start else batch[:1]
