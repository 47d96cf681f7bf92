"""A training-free, exactly invertible 3-D Haar wavelet representation (as WDM, pfriedri/wdm-3d).

One level maps [B, C, X, Y, Z] to the 8 orthonormal Haar sub-bands of each 2 × 2 × 2 block,
[B, 8C, X/2, Y/2, Z/2]; `levels` = 2 applies it again to every sub-band (a full packet), so the
2 mm grid 96 × 112 × 96 becomes 64 × 24 × 28 × 24: the paired model's latent grid, with no
representation floor (the inverse is exact up to float rounding). Measured against the
autoencoder in docs/paired.md; not used by the embedded weights yet.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_S = 1.0 / math.sqrt(2.0)


def _pair(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Orthonormal Haar low / high pass along `dim` (length halves)."""
    even, odd = x.unflatten(dim, (-1, 2)).unbind(dim + 1)
    return (even + odd) * _S, (even - odd) * _S


def _unpair(low: Tensor, high: Tensor, dim: int) -> Tensor:
    """Inverse of `_pair`: interleave (low ± high) / √2 back along `dim`."""
    even, odd = (low + high) * _S, (low - high) * _S
    return torch.stack([even, odd], dim + 1).flatten(dim, dim + 1)


def haar_forward(x: Tensor, levels: int = 2) -> Tensor:
    """[B, C, X, Y, Z] → [B, C·8^levels, X/2^l, Y/2^l, Z/2^l] (sub-band-major channels)."""
    for _ in range(levels):
        bands = [x]
        for dim in (2, 3, 4):
            bands = [part for b in bands for part in _pair(b, dim)]
        x = torch.cat(bands, dim=1)  # 8 sub-bands, each with all C channels
    return x


def haar_inverse(w: Tensor, levels: int = 2) -> Tensor:
    """Inverse of `haar_forward` (exact up to float rounding)."""
    for _ in range(levels):
        bands = list(w.chunk(8, dim=1))
        for dim in (4, 3, 2):
            bands = [_unpair(bands[i], bands[i + 1], dim) for i in range(0, len(bands), 2)]
        w = bands[0]
    return w
