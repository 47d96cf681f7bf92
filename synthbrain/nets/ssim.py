"""Structural similarity (Wang et al. 2004) for 2-D and 3-D tensors, differentiable, in torch.

Used by the autoencoder loss and reused by ``synthbrain.metrics``. Gaussian window (σ = 1.5,
11 taps) applied separably, constants K1 = 0.01 and K2 = 0.03, population (not sample) covariance:
with ``padding="valid"`` the mean equals scikit-image's ``structural_similarity(...,
gaussian_weights=True, use_sample_covariance=False, data_range=...)`` on each image.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian_window(size: int, sigma: float, *, dtype=torch.float32, device=None) -> Tensor:
    """A normalised 1-D Gaussian of ``size`` taps."""
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return (w / w.sum()).to(dtype)


def _filter(x: Tensor, window: Tensor, dims: int, padding: str) -> Tensor:
    """Separable Gaussian filter of [N, 1, *spatial] along each spatial axis."""
    conv = F.conv2d if dims == 2 else F.conv3d
    k = window.numel()
    for axis in range(dims):
        shape = [1, 1] + [1] * dims
        shape[2 + axis] = k
        if padding == "same":
            pad = [0] * (2 * dims)
            # F.pad lists the last axis first
            pad[2 * (dims - 1 - axis)] = pad[2 * (dims - 1 - axis) + 1] = k // 2
            x = F.pad(x, pad, mode="replicate")
        x = conv(x, window.reshape(shape))
    return x


def ssim(
    a: Tensor,
    b: Tensor,
    data_range: float = 1.0,
    dims: int | None = None,
    *,
    window_size: int = 11,
    sigma: float = 1.5,
    padding: Literal["valid", "same"] = "valid",
    reduction: Literal["mean", "none", "map"] = "mean",
) -> Tensor:
    """Structural similarity between ``a`` and ``b``.

    Args:
        a, b: tensors [B, C, *spatial] of equal shape (2 or 3 spatial axes).
        data_range: max − min of the intensity scale (1.0 for images in [0, 1]).
        dims: spatial dimensionality; inferred as ``a.ndim - 2`` when None.
        window_size: taps of the Gaussian window; shrunk (kept odd) to fit small inputs.
        sigma: standard deviation of the Gaussian window in voxels.
        padding: "valid" crops the borders the window cannot cover (the map is smaller than the
            input by window_size - 1 per axis); "same" pads by replication so the map aligns
            with the input voxel for voxel (handy for masked SSIM, e.g. inside a tumour).
        reduction: "mean" → scalar, "none" → [B] (mean over channels and space), "map" → the
            per-voxel SSIM map [B, C, *spatial'].
    """
    if a.shape != b.shape:
        raise ValueError(f"ssim needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    dims = a.ndim - 2 if dims is None else dims
    if dims not in (2, 3) or a.ndim != dims + 2:
        raise ValueError(
            f"ssim needs [B, C, *spatial] with 2 or 3 spatial axes, got {tuple(a.shape)}"
        )
    size = min(window_size, *a.shape[2:])
    size -= 1 - size % 2  # odd, so the window has a centre
    window = gaussian_window(size, sigma, dtype=a.dtype, device=a.device)
    bsz, ch = a.shape[:2]
    flat = torch.cat([a, b, a * a, b * b, a * b]).reshape(5 * bsz * ch, 1, *a.shape[2:])
    mu_a, mu_b, aa, bb, ab = _filter(flat, window, dims, padding).split(bsz * ch)
    var_a, var_b, cov = aa - mu_a**2, bb - mu_b**2, ab - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    smap = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    smap = smap.reshape(bsz, ch, *smap.shape[2:])
    if reduction == "map":
        return smap
    per_item = smap.flatten(1).mean(1)
    return per_item if reduction == "none" else per_item.mean()
