"""A resumable, infinite, epoch-seeded sampler with DistributedSampler-style rank striding."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from synthbrain.rng import hash_seed


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on `parts` (stable across processes and runs)."""
    return hash_seed(*parts, text="repr")


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh torch.Generator on `device` seeded with `seed`."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


class ResumableSampler(Sampler[int]):
    """Endless stream of dataset indices: epoch after epoch of seeded permutations.

    Epoch e is `torch.randperm(n)` drawn from a generator seeded with (seed, e), padded to a
    multiple of `world_size` by repeating its head (as DistributedSampler does), and rank r takes
    every world_size-th index starting at r. The stream therefore depends only on (seed, n,
    rank, world_size), and `start` skips to any position in it without drawing the skipped
    part, which is what makes a resumed run read exactly the batches an uninterrupted one would.

    Args:
        n: dataset length (> 0).
        seed: the data-order seed.
        start: position in this rank's stream to begin at (updates × batch size on resume).
        rank: this process's rank.
        world_size: number of processes.
        shuffle: False gives 0, 1, ..., n-1 every epoch (still strided and padded).
    """

    def __init__(
        self,
        n: int,
        seed: int,
        *,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if n <= 0:
            raise ValueError("ResumableSampler needs a non-empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n, self.seed, self.start = n, seed, start
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.per_rank = -(-n // world_size)  # ceil: every rank gets the same count per epoch

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's indices for one epoch."""
        if self.shuffle:
            generator = make_generator(derive_seed("data-order", self.seed, epoch))
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.arange(self.n)
        total = self.per_rank * self.world_size
        if total > self.n:
            order = order.repeat(-(-total // self.n))[:total]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            yield from self.epoch_indices(epoch)[offset:].tolist()
            epoch, offset = epoch + 1, 0

    def state_dict(self, position: int) -> dict:
        """What a checkpoint needs to restart this stream at `position`."""
        return {
            "seed": self.seed,
            "n": self.n,
            "position": position,
            "epoch": position // self.per_rank,
            "world_size": self.world_size,
            "shuffle": self.shuffle,
        }
