"""Where a brain mask lies in world millimetres (centre and extent), for grids and checks."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def brain_geometry(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centre of mass in world mm, half-extent in mm per world axis around it) of a mask."""
    com = affine[:3, :3] @ np.asarray(ndimage.center_of_mass(mask > 0)) + affine[:3, 3]
    idx = np.argwhere(mask > 0)
    lo, hi = idx.min(axis=0) - 0.5, idx.max(axis=0) + 0.5
    bounds = np.stack([lo, hi])  # [2, 3]: the 8 corners of the voxel bounding box
    corners = np.array([bounds[bits, [0, 1, 2]] for bits in np.ndindex(2, 2, 2)], np.float64)
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    return com, np.abs(world - com).max(axis=0)
