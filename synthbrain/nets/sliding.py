"""Slab-wise application of a network along the last spatial axis, with overlap and blending.

Lets the 3-D autoencoder encode or decode volumes whose activations do not fit in memory at once.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import torch
from torch import Tensor


def _ramp(length: int, margin: int, ramp: int, *, left: bool, right: bool, like: Tensor) -> Tensor:
    """Blending weights [length]: 0 within ``margin`` of an inner edge, then linear up to 1."""
    d = torch.arange(length, dtype=like.dtype, device=like.device) + 0.5
    w = torch.ones(length, dtype=like.dtype, device=like.device)
    if ramp <= 0:
        return w
    if left:
        w = torch.minimum(w, ((d - margin) / ramp).clamp(0, 1))
    if right:
        w = torch.minimum(w, ((length - d - margin) / ramp).clamp(0, 1))
    return w


def slab_starts(length: int, slab: int, overlap: int) -> list[int]:
    """Start indices of slabs of ``slab`` voxels covering ``length`` with at least ``overlap``."""
    if slab >= length:
        return [0]
    starts = list(range(0, length - slab, slab - overlap))
    return starts + [length - slab]


def sliding_apply(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    slab: int,
    overlap: int,
    *,
    scale: Fraction | int = 1,
    align: int = 1,
    margin: int | None = None,
) -> Tensor:
    """Apply ``fn`` to slabs of ``x`` along its last axis and blend the results.

    Args:
        fn: maps a slab [..., s] to [..., s * scale] (other axes may change consistently).
        x: input tensor; slabs are cut along the last axis.
        slab: slab length in input voxels (a multiple of ``align``).
        overlap: overlap between neighbouring slabs in input voxels (multiple of ``align``).
        scale: output length / input length along the last axis (1/4 to encode, 4 to decode).
        align: slab starts and sizes must be multiples of it (the encoder's downsampling).
        margin: output voxels next to an inner slab edge whose values are discarded (weight 0);
            default a quarter of the overlap. The weight then ramps linearly to 1 over the rest
            of the overlap, so neighbouring slabs cross-fade. margin = overlap / 2 (output
            voxels) gives a hard seam in the middle of the overlap.

    Returns:
        the blended output. For a net without spatial statistics (no GroupNorm) whose receptive
        radius, in output voxels, is at most ``margin``, it equals ``fn(x)`` up to rounding;
        otherwise it approximates it, worst next to the seams.
    """
    length, scale = x.shape[-1], Fraction(scale)
    if slab < 1 or not 0 <= overlap < slab:
        raise ValueError(
            f"need slab ≥ 1 and 0 ≤ overlap < slab, got slab={slab}, overlap={overlap}"
        )
    if slab % align or overlap % align or length % align:
        raise ValueError(
            f"slab ({slab}), overlap ({overlap}) and the last axis ({length}) must be multiples "
            f"of {align}"
        )
    starts = slab_starts(length, slab, overlap)
    if len(starts) == 1:
        return fn(x)
    ov_out = int(overlap * scale)
    margin = ov_out // 4 if margin is None else margin
    if not 0 <= 2 * margin <= ov_out:
        raise ValueError(f"margin {margin} must be between 0 and half the overlap ({ov_out} out)")
    out = wsum = None
    for s in starts:
        y = fn(x[..., s : s + slab])
        if out is None:
            out = y.new_zeros(*y.shape[:-1], int(length * scale))
            wsum = y.new_zeros(int(length * scale))
        w = _ramp(
            y.shape[-1], margin, ov_out - 2 * margin, left=s > 0, right=s + slab < length, like=y
        )
        o = int(s * scale)
        out[..., o : o + y.shape[-1]] += y * w
        wsum[o : o + y.shape[-1]] += w
    return out / wsum
