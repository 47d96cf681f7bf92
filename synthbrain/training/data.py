"""DataLoaders of a training stage: a resumable stream for training, a fixed head for validation."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from synthbrain.errors import InputError
from synthbrain.training.config import TrainConfig
from synthbrain.training.ddp import DistContext
from synthbrain.training.sampler import ResumableSampler, derive_seed, make_generator


def check_dataset(dataset: Dataset, what: str) -> None:
    """A non-empty map-style dataset, or an error saying what is wrong."""
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(f"the {what} must be a map-style Dataset (with __len__ and __getitem__)")
    if len(dataset) == 0:
        raise InputError(f"the {what} is empty")


def train_loader(
    dataset: Dataset, cfg: TrainConfig, ctx: DistContext, device: torch.device, step: int
) -> DataLoader:
    """An endless training DataLoader whose sampler starts where update `step` stands."""
    sampler = ResumableSampler(
        len(dataset),
        cfg.seed,
        start=step * cfg.batch_size,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    # The loader's generator only seeds the worker processes (the sampler orders the data).
    workers = make_generator(derive_seed("workers", cfg.seed, ctx.rank, step))
    if cfg.cache_gb > 0:  # each worker process holds its own cache: split the budget
        dataset = ItemCache(dataset, cfg.cache_gb * 2**30 / max(cfg.num_workers, 1))
    return _loader(dataset, cfg, device, sampler=sampler, generator=workers)


class ItemCache(Dataset):
    """Keeps the items a dataset returns in memory, up to `max_bytes`, so every later epoch
    reads them from memory instead of the HDF5 file.

    Only for datasets whose item depends on its index alone (the engines' slice and lesion
    datasets, which leave random crops and flips to the model): a dataset drawing a fresh
    random crop per epoch would be frozen to its first draw. Once full, further items are read
    as before (first come, first kept: with shuffled epochs any item is as likely as another).
    """

    def __init__(self, dataset: Dataset, max_bytes: float) -> None:
        self.dataset, self.max_bytes = dataset, max_bytes
        self.items: dict[int, Any] = {}
        self.nbytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        found = self.items.get(index)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        item = self.dataset[index]
        size = sum(v.nbytes for v in item.values() if isinstance(v, torch.Tensor))
        if self.nbytes + size <= self.max_bytes:
            # A private copy: the collated batch must not alias what the cache keeps.
            self.items[index] = {k: v.clone() if isinstance(v, torch.Tensor) else v
                                 for k, v in item.items()}  # fmt: skip
            self.nbytes += size
        return item


def val_loader(
    dataset: Dataset | None, cfg: TrainConfig, device: torch.device
) -> DataLoader | None:
    """A fixed subset of val_batches × batch_size validation examples (None: no validation).

    The subset is drawn with `val_seed` rather than taken from the head, since a set's first
    items are often the slices of one subject; sorted, so files are read in order.
    """
    if dataset is None or cfg.val_batches == 0 or len(dataset) == 0:
        return None
    n = min(len(dataset), cfg.val_batches * cfg.batch_size)
    order = torch.randperm(len(dataset), generator=make_generator(derive_seed("val", cfg.val_seed)))
    subset = Subset(dataset, sorted(order[:n].tolist()))
    return _loader(subset, cfg, device, shuffle=False)


def _loader(dataset: Dataset, cfg: TrainConfig, device: torch.device, **kwargs: Any) -> DataLoader:
    """A DataLoader with the config's workers (kept alive between passes) and pinned memory."""
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
        pin_memory=device.type == "cuda",
        **kwargs,
    )


def to_device(batch: Any, device: torch.device) -> dict[str, Any]:
    """Move a batch's tensors to the device (other entries pass through)."""
    if not isinstance(batch, dict):
        raise TypeError(f"dataset items must be dicts of tensors, got {type(batch).__name__}")
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }
