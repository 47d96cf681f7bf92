"""Whole-volume D3M inference on the model grid: 2.5-D slice stacks, chunks, per-slice seeds.

Every axial slice that meets the brain is denoised; the slices of a volume go through the
network together on a GPU and in chunks on the CPU. Slice z draws its noise from
``derive_seed(seed, z)`` (or, with shared noise, every slice from ``derive_seed(seed, 0)``), so
a result does not depend on the chunk size or the device's batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from synthbrain.diffusion import randn
from synthbrain.engines.deformation.model import DeformationModel
from synthbrain.nets import pad_to_multiple, unpad
from synthbrain.rng import derive_seed, generator_for

MARGIN = 4  # voxels of background kept around the brain's in-plane bounding box


@dataclass
class VolumeResult:
    """The synthetic T1Gd and enhancing-tumour mask of one volume, on the model grid.

    Attributes:
        image: float32 [X, Y, Z] in [0, 1] inside the brain, 0 outside.
        mask: bool [X, Y, Z] (None for a model without a mask stream).
        slices: how many axial slices were denoised.
        seconds: wall time of the sampling.
    """

    image: np.ndarray
    mask: np.ndarray | None
    slices: int
    seconds: float


def slice_stack(volume: np.ndarray, zs: Sequence[int], context: int) -> np.ndarray:
    """The 2.5-D inputs of slices `zs` from a [C, X, Y, Z] volume: [N, (2k+1)·C, X, Y].

    Channels are offset-major (z − k … z + k, each with all C contrasts), neighbours clamped
    at the volume's ends, exactly as `SliceDataset(context=k)` gives them in training.
    """
    depth = volume.shape[-1]
    out = []
    for z in zs:
        near = np.clip(np.arange(z - context, z + context + 1), 0, depth - 1)
        block = volume[..., near]  # [C, X, Y, 2k+1]
        out.append(np.moveaxis(block, -1, 0).reshape(-1, *volume.shape[1:3]))
    return np.stack(out).astype(np.float32)


def brain_box(brain: np.ndarray, margin: int = MARGIN) -> tuple[slice, slice, list[int]]:
    """In-plane bounding box of the brain (± margin, within the grid) and the slices it meets."""
    zs = np.flatnonzero(brain.any(axis=(0, 1))).tolist()
    if not zs:
        raise ValueError("the brain mask is empty on the model grid")
    box = []
    for axis in (0, 1):
        hit = np.flatnonzero(brain.any(axis=tuple(a for a in (0, 1, 2) if a != axis)))
        lo, hi = max(int(hit[0]) - margin, 0), min(int(hit[-1]) + margin + 1, brain.shape[axis])
        box.append(slice(lo, hi))
    return box[0], box[1], zs


def slice_seeds(seed: int, zs: Sequence[int], noise: str) -> list[int]:
    """Per-slice seeds: derive_seed(seed, z), or one shared seed for every slice."""
    return [derive_seed(seed, 0 if noise == "shared" else int(z)) for z in zs]


@torch.no_grad()
def enhance_volume(
    model: DeformationModel,
    cond: np.ndarray,
    brain: np.ndarray,
    *,
    seed: int = 0,
    steps: int | None = None,
    sampler: str | None = None,
    eta: float | None = None,
    warp_mode: str | None = None,
    noise: str | None = None,
    chunk: int | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> VolumeResult:
    """Synthesise T1Gd (and the enhancing-tumour mask) for one volume on the model grid.

    Args:
        model: a trained `DeformationModel` (moved to `device` here, put in eval mode).
        cond: float32 [C, X, Y, Z], the input contrasts in model order, in [0, 1] in the brain.
        brain: bool [X, Y, Z] brain mask on the same grid.
        seed: run seed; slice z uses derive_seed(seed, z) (see `slice_seeds`).
        steps, sampler, eta, warp_mode, noise, chunk: override ``model.config.sampling``.
        device: where the networks run; a CUDA device takes every slice in one batch.
        progress: called with 1 after every sampler step of every chunk.

    Returns:
        A `VolumeResult` on the model grid.
    """
    started = time.perf_counter()
    cfg = model.config
    device = torch.device(device)
    model.to(device).eval()
    memory = torch.channels_last  # ~2x faster convolutions on CPU, no harm on CUDA
    model.to(memory_format=memory)
    bx, by, zs = brain_box(brain)
    seeds = slice_seeds(seed, zs, noise or cfg.sampling.noise)
    size = len(zs) if device.type == "cuda" else (chunk or cfg.sampling.chunk)
    image = np.zeros(brain.shape, np.float32)
    mask = np.zeros(brain.shape, bool) if cfg.mask_stream else None
    for start in range(0, len(zs), size):
        part = zs[start : start + size]
        stack = torch.from_numpy(slice_stack(cond[:, bx, by], part, cfg.context))
        padded, pad = pad_to_multiple(stack, cfg.multiple)
        c = (padded * 2.0 - 1.0).to(device).contiguous(memory_format=memory)
        gens = [generator_for(s) for s in seeds[start : start + size]]
        shape = (len(part), cfg.state_channels, *c.shape[2:])
        x_T = randn(shape, gens, device).contiguous(memory_format=memory)
        out = model.sample(
            c, x_T, steps=steps, sampler=sampler, eta=eta, warp_mode=warp_mode,
            generator=gens, callback=(lambda _s: progress(1)) if progress else None,
        )  # fmt: skip
        out = unpad(out.float(), pad).cpu().numpy()
        _place(image, mask, out, bx, by, part)
    image *= brain
    if mask is not None:
        mask &= brain.astype(bool)
    return VolumeResult(image, mask, len(zs), time.perf_counter() - started)


def _place(
    image: np.ndarray,
    mask: np.ndarray | None,
    out: np.ndarray,
    bx: slice,
    by: slice,
    zs: Sequence[int],
) -> None:
    """Write a chunk's states [N, S, x, y] (in [−1, 1]) into the grid volumes."""
    for i, z in enumerate(zs):
        image[bx, by, z] = np.clip((out[i, 0] + 1.0) / 2.0, 0.0, 1.0)
        if mask is not None:
            mask[bx, by, z] = out[i, 1] > 0.0
