"""Learning-rate schedule: linear warm-up, then cosine decay to zero."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Multiplier of the peak lr for the update with 0-based index `step`.

    Warm-up: (step + 1) / warmup for the first `warmup` updates, so the very first update
    already moves (at lr / warmup). Then 0.5 (1 + cos(pi p)) with p = (step - warmup) /
    (total - warmup) running from 0 at the end of warm-up towards 1 at the last update.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> LambdaLR:
    """A LambdaLR over `lr_factor` (its state_dict holds the update count for resume)."""
    return LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total))
