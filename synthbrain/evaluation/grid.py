"""Bring every case onto one grid: the synthetic run's (the template grid for template-space runs).

Cases already on that grid pass untouched. Others are resampled through their world
coordinates (trilinear images, nearest-neighbour masks), which is right when both live in one
world space (e.g. MNI152 at 1 mm and at 2 mm). A case whose brain mostly falls outside the
target grid cannot be compared voxel by voxel; that is an input error, not a silent crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synthbrain.errors import InputError
from synthbrain.evaluation.cases import Case

MIN_INSIDE = 0.5  # fraction of a case's brain that must land on the target grid


@dataclass(frozen=True)
class Grid:
    """A target grid: shape and 4x4 voxel -> world affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    def same(self, case: Case, tol: float = 1e-4) -> bool:
        """Whether `case` already lies on this grid."""
        return case.shape == self.shape and np.allclose(case.affine, self.affine, atol=tol)


def grid_of(case: Case) -> Grid:
    """The grid a case lies on."""
    return Grid(tuple(case.shape), np.asarray(case.affine, np.float64))


def _inside_fraction(case: Case, grid: Grid) -> float:
    """Fraction of the case's brain voxels (a subsample) whose world point lies on `grid`."""
    idx = np.argwhere(case.brain_mask())
    if idx.size == 0:
        return 0.0
    idx = idx[:: max(1, len(idx) // 5000)]
    world = case.affine @ np.c_[idx, np.ones(len(idx))].T
    vox = np.linalg.inv(grid.affine) @ world
    inside = np.all((vox[:3] >= -0.5) & (vox[:3] <= np.array(grid.shape)[:, None] - 0.5), axis=0)
    return float(inside.mean())


def align(case: Case, grid: Grid, source: str) -> Case:
    """`case` on `grid` (unchanged when it already is); InputError when it cannot be."""
    if grid.same(case):
        return case
    from synthbrain.io.geometry import resample_array

    fraction = _inside_fraction(case, grid)
    if fraction < MIN_INSIDE:
        raise InputError(
            f"grids cannot be brought together: only {fraction:.0%} of case {case.id}'s brain "
            f"lies on the synthetic grid {grid.shape} (different world space?)",
            source,
        )

    def move(data: np.ndarray, order: int) -> np.ndarray:
        out = resample_array(data.astype(np.float32), case.affine, grid.shape, grid.affine,
                             order=order)  # fmt: skip
        return out.astype(np.float32)

    images = {c: move(v, 1) for c, v in case.images.items()}
    healthy = {c: move(v, 1) for c, v in case.healthy.items()} if case.healthy else None
    brain = move(case.brain, 0) > 0.5 if case.brain is not None else None
    return Case(case.id, images, move(case.mask, 0) > 0.5, grid.affine, healthy,
                case.geometry, case.mask_values, brain)  # fmt: skip
