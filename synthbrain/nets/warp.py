"""Spatial transformer for dense displacement fields in voxel units, 2-D or 3-D.

Convention: a displacement ``u`` is [B, dims, *spatial]; channel i is the displacement along spatial
axis i (the i-th axis after batch and channel), in voxels. ``warp(image, u)(p) = image(p + u(p))``
(backward / pull warping), which is D3M's φ_û (METHODS.md §3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(image: Tensor, displacement: Tensor) -> int:
    """Validate shapes and return the spatial dimensionality."""
    dims = displacement.shape[1] if displacement.ndim >= 2 else -1
    if dims not in (2, 3) or displacement.ndim != dims + 2:
        raise ValueError(
            "displacement must be [B, dims, *spatial] with dims 2 or 3, "
            f"got {tuple(displacement.shape)}"
        )
    if image.ndim != dims + 2 or image.shape[2:] != displacement.shape[2:]:
        raise ValueError(
            f"image {tuple(image.shape)} must be [B, C, *spatial] with the displacement's "
            f"spatial shape {tuple(displacement.shape[2:])}"
        )
    if displacement.shape[0] not in (1, image.shape[0]):
        raise ValueError(
            f"displacement batch {displacement.shape[0]} must be 1 "
            f"or the image batch {image.shape[0]}"
        )
    return dims


def sampling_grid(displacement: Tensor) -> Tensor:
    """grid_sample grid [B, *spatial, dims] for ``p + u(p)``, normalised for align_corners=True.

    grid_sample reads the last grid axis as (x, y[, z]) = (last, ..., first) spatial axis, so the
    per-axis coordinates are stacked in reverse order.
    """
    dims, spatial = displacement.shape[1], displacement.shape[2:]
    coords = []
    for axis, n in enumerate(spatial):
        shape = [1] * dims
        shape[axis] = n
        base = torch.arange(n, dtype=displacement.dtype, device=displacement.device).reshape(shape)
        pos = base + displacement[:, axis]
        # with align_corners=True voxel 0 ↦ −1 and voxel n−1 ↦ +1; a 1-voxel axis maps to −1
        coords.append(pos * (2.0 / max(n - 1, 1)) - 1.0)
    return torch.stack(coords[::-1], dim=-1)


def warp(
    image: Tensor,
    displacement: Tensor,
    mode: str = "bilinear",
    padding_mode: str = "border",
    *,
    exact: bool = True,
) -> Tensor:
    """Resample ``image`` at ``p + displacement(p)``.

    Args:
        image: [B, C, *spatial] (2 or 3 spatial axes).
        displacement: [B or 1, dims, *spatial] in voxels; channel i moves along spatial axis i.
        mode: "bilinear" (trilinear in 3-D) or "nearest" (for label maps).
        padding_mode: "border", "zeros" or "reflection" for samples outside the grid.
        exact: sample in float64 and cast back. grid_sample works in normalised coordinates, and
            in float32 their rounding blurs even a zero field by ~1e-5 at 100 voxels (it grows
            with the grid size); in float64 integer positions come back bit-exact. False samples
            in the image's dtype (faster on GPUs with slow float64).

    Returns:
        the warped image, same shape and dtype as ``image``. A zero field returns the image
        exactly (with exact=True); an integer shift equals ``torch.roll`` away from the borders.
    """
    _check(image, displacement)
    work = torch.float64 if exact and image.dtype != torch.float64 else image.dtype
    grid = sampling_grid(displacement.to(work))
    if grid.shape[0] != image.shape[0]:
        grid = grid.expand(image.shape[0], *grid.shape[1:])
    out = F.grid_sample(
        image.to(work), grid, mode=mode, padding_mode=padding_mode, align_corners=True
    )
    return out.to(image.dtype)


def smoothness(displacement: Tensor) -> Tensor:
    """Mean squared forward-difference gradient of ``displacement``, averaged over spatial axes.

    The ‖∇û‖² regulariser of D3M's training loss (METHODS.md §3); 0 for a constant field.
    """
    dims = displacement.ndim - 2
    terms = [displacement.diff(dim=2 + axis).pow(2).mean() for axis in range(dims)]
    return torch.stack(terms).mean()


def compose(first: Tensor, second: Tensor, padding_mode: str = "border") -> Tensor:
    """Displacement equal to warping by ``first`` and then by ``second``.

    warp(warp(I, first), second)(p) = I(p + second(p) + first(p + second(p))).
    """
    return second + warp(first, second, padding_mode=padding_mode)


def integrate_velocity(velocity: Tensor, steps: int = 7, padding_mode: str = "border") -> Tensor:
    """Exponentiate a stationary velocity field by scaling and squaring (Arsigny et al. 2006).

    Args:
        velocity: [B, dims, *spatial] in voxels.
        steps: squarings; the field is first scaled by 2**-steps so each step is small.
        padding_mode: how the field is extrapolated outside the grid while composing.

    Returns:
        a displacement field whose warp is (for smooth, moderate velocities) diffeomorphic:
        its Jacobian determinant stays positive and ``integrate_velocity(-v)`` is its inverse.
    """
    if steps < 0:
        raise ValueError(f"steps must be ≥ 0, got {steps}")
    u = velocity / (2**steps)
    for _ in range(steps):
        u = compose(u, u, padding_mode=padding_mode)
    return u


def jacobian_determinant(displacement: Tensor) -> Tensor:
    """det(I + ∇u) per voxel [B, *spatial] by central differences (one-sided at the borders)."""
    dims = displacement.shape[1]
    spatial_axes = list(range(2, 2 + dims))
    # grads[j][:, i] = ∂u_i/∂x_j
    grads = torch.gradient(displacement, dim=spatial_axes)
    jac = torch.stack(grads, dim=2)  # [B, i, j, *spatial]
    jac = jac + torch.eye(dims, dtype=jac.dtype, device=jac.device).reshape(
        1, dims, dims, *([1] * dims)
    )
    return torch.linalg.det(jac.movedim(1, -1).movedim(1, -1))
