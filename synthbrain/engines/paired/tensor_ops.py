"""Tensor helpers of the paired model: weighted MSE, seeded noise, space-to-depth folding."""

from __future__ import annotations

import torch
from torch import Tensor


def weighted_mse(
    out: Tensor, target: Tensor, per_sample: Tensor | None, region: Tensor | None
) -> Tensor:
    """Mean squared error, optionally weighted per sample and per voxel (normalised by the
    voxel weights, so the loss keeps its scale)."""
    err = (out.float() - target.float()) ** 2
    if region is not None:
        err = err * region
    err = err.flatten(1).mean(1)
    if region is not None:
        err = err / region.flatten(1).mean(1)
    if per_sample is not None:
        err = err * per_sample
    return err.mean()


def seeded_randn(like: Tensor, generator: torch.Generator) -> Tensor:
    """Standard normal noise shaped like `like`, drawn from `generator` (on its device)."""
    noise = torch.randn(like.shape, generator=generator, device=generator.device)
    return noise.to(like.device, like.dtype)


def space_to_depth(x: Tensor, factor: int) -> Tensor:
    """[B, C, X, Y, Z] → [B, C·f³, X/f, Y/f, Z/f]: each f³ block folded into channels."""
    if factor == 1:
        return x
    b, c, *size = x.shape
    n = [s // factor for s in size]
    x = x.reshape(b, c, n[0], factor, n[1], factor, n[2], factor)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, c * factor**3, *n)


def depth_to_space(x: Tensor, factor: int) -> Tensor:
    """Inverse of `space_to_depth`."""
    if factor == 1:
        return x
    b, cf, *n = x.shape
    c = cf // factor**3
    x = x.reshape(b, c, factor, factor, factor, *n)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c, *(s * factor for s in n))
