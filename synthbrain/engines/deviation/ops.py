"""Fixed (untrained) operators of the deviation engine: Inp, the blend map S, ring weights, crops.

Everything here is deterministic and works on tensors [B, C, *spatial] with 2 or 3 spatial axes,
so the same code serves the 2-D slice model and the 3-D patch option (METHODS.md §1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _pool(x: Tensor) -> Tensor:
    """2x average pooling over the spatial axes (ceil mode, so odd sizes keep their edge)."""
    pool = F.avg_pool2d if x.ndim == 4 else F.avg_pool3d
    return pool(x, 2, ceil_mode=True, count_include_pad=False)


def _neighbour_mean(x: Tensor) -> Tensor:
    """Mean of the 2·dims face neighbours of every voxel (edges replicated)."""
    dims = x.ndim - 2
    padded = F.pad(x, (1, 1) * dims, mode="replicate")
    total = torch.zeros_like(x)
    for axis in range(2, x.ndim):
        for offset in (0, 2):
            index = [slice(None), slice(None)]
            for other in range(2, x.ndim):
                n = x.shape[other]
                index.append(slice(offset, offset + n) if other == axis else slice(1, n + 1))
            total = total + padded[tuple(index)]
    return total / (2 * dims)


@torch.no_grad()
def harmonic_fill(x: Tensor, m: Tensor, *, iterations: int = 40) -> Tensor:
    """Inp(x, m) (Eq. 3): replace x inside m by the harmonic fill from the voxels around it.

    The fill solves Laplace's equation inside m with x outside m as boundary values, by Jacobi
    iterations on a coarse-to-fine pyramid: each level starts from the coarser level's solution
    (masked 2x averages of the known voxels), so large holes converge in few sweeps. The result
    is deterministic and equals x exactly outside m.

    Args:
        x: images [B, C, *spatial] (2 or 3 spatial axes).
        m: lesion mask [B, 1, *spatial] in {0, 1} (or [B, C, ...]).
        iterations: Jacobi sweeps per pyramid level.

    Returns:
        x_ph, shaped like x.
    """
    hole = (m > 0.5).to(x.dtype).expand_as(x)
    if not bool(hole.any()):
        return x.clone()
    known = 1.0 - hole
    if min(x.shape[2:]) > 2:
        coarse_known = _pool(known)
        coarse_x = _pool(x * known) / coarse_known.clamp_min(1e-6)
        coarse = harmonic_fill(coarse_x, (coarse_known <= 0).to(x.dtype), iterations=iterations)
        start = F.interpolate(coarse, size=x.shape[2:], mode="nearest")
    else:
        start = torch.full_like(x, float((x * known).sum() / known.sum().clamp_min(1)))
    out = x * known + start * hole
    for _ in range(iterations):
        out = x * known + _neighbour_mean(out) * hole
    return out


def gaussian_kernel(sigma: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalised 1-D Gaussian of standard deviation `sigma` voxels, radius ceil(3 sigma)."""
    radius = max(1, math.ceil(3.0 * sigma))
    grid = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (grid / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype)


def gaussian_smooth(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of [B, C, *spatial] over the spatial axes (zero padding)."""
    if sigma <= 0:
        return x.clone()
    kernel = gaussian_kernel(sigma, x.dtype).to(x.device)
    radius = kernel.numel() // 2
    dims, channels = x.ndim - 2, x.shape[1]
    conv = F.conv2d if dims == 2 else F.conv3d
    out = x
    for axis in range(dims):
        shape = [1] * dims
        shape[axis] = kernel.numel()
        weight = kernel.reshape(1, 1, *shape).expand(channels, 1, *shape).contiguous()
        padding = [0] * dims
        padding[axis] = radius
        out = conv(out, weight, padding=tuple(padding), groups=channels)
    return out


def blend_map(m: Tensor, sigma: float) -> Tensor:
    """S = GaussianSmooth(m) in [0, 1] (Eq. 11, 14): the soft blend map of the lesion mask."""
    return gaussian_smooth(m, sigma).clamp(0.0, 1.0)


def ring_weight(s: Tensor) -> Tensor:
    """w_ring = 4 S (1 − S) (Eq. 11): 1 on the lesion boundary, 0 deep inside and far outside."""
    return 4.0 * s * (1.0 - s)


def masked_mean(value: Tensor, weight: Tensor) -> Tensor:
    """Σ value·weight / Σ weight over everything (weight broadcast to value's shape)."""
    weight = weight.expand_as(value)
    return (value * weight).sum() / weight.sum().clamp_min(1.0)


# ---------------------------------------------------------------- crops around a lesion


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is ≥ n."""
    return -(-int(n) // multiple) * multiple


def lesion_window(
    mask: Tensor, size: Sequence[int], generator: torch.Generator | None = None
) -> tuple[int, ...]:
    """Start corner of a `size` window over `mask` [*spatial] that holds the lesion.

    Along each axis the start is drawn uniformly among the positions that keep the whole lesion
    inside the window and the window inside the array (centred without a generator); a lesion
    larger than the window gets a window around its centre. An empty mask gives any window.
    """
    nz = torch.nonzero(mask > 0.5)
    starts = []
    for axis, (n, w) in enumerate(zip(mask.shape, size, strict=True)):
        room = max(int(n) - w, 0)
        if len(nz):
            lo, hi = int(nz[:, axis].min()), int(nz[:, axis].max())
            first, last = max(hi + 1 - w, 0), min(lo, room)
            if first > last:  # lesion wider than the window: centre it
                first = last = min(max((lo + hi + 1 - w) // 2, 0), room)
        else:
            first, last = 0, room
        if generator is None:
            starts.append((first + last) // 2)
        else:
            u = float(torch.rand((), generator=generator, device=generator.device))
            starts.append(first + min(int(u * (last - first + 1)), last - first))
    return tuple(starts)


def crop(x: Tensor, start: Sequence[int], size: Sequence[int]) -> Tensor:
    """x[..., start:start+size] over the trailing len(size) axes, zero-padded where too small."""
    spatial = x.shape[-len(size) :]
    pads: list[int] = []
    index: list[slice] = [slice(None)] * (x.ndim - len(size))
    for s, w, n in zip(start, size, spatial, strict=True):
        index.append(slice(s, min(s + w, n)))
    out = x[tuple(index)]
    for w, got in zip(reversed(list(size)), reversed(out.shape[-len(size) :]), strict=True):
        pads += [0, w - got]
    return F.pad(out, pads) if any(pads) else out
