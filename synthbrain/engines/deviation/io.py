"""File-side helpers of the deviation engine: contrasts of a subject, intensities, lesion grids.

The model never sees a scan's own grid: each edit resamples only a RAS-aligned box around the
lesion (its bounding box plus a margin, padded to the U-Net's multiple) at the model spacing, so
the cost follows the lesion's size rather than the image's. Results come back as a change
(Δ = edited − input, on the box) that is resampled onto the scan's grid and added inside the
edit mask; every other voxel is copied from the input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthbrain.errors import InputError
from synthbrain.io.nifti import GridTransform, Volume, grid_for, to_grid
from synthbrain.spatial.window import percentile_window, to_unit


@dataclass
class Subject:
    """One anatomy on its source grid: contrast -> Volume (one grid), and the edit mask.

    Attributes:
        volumes: contrast name -> Volume, all on the grid of `reference`.
        mask: bool array on that grid: the voxels the edit may change (lesion ∧ brain).
        primary: the contrast of the scan the user named first (its output goes to --out).
    """

    volumes: dict[str, Volume]
    mask: np.ndarray
    primary: str

    @property
    def reference(self) -> Volume:
        """The volume whose grid every other one shares."""
        return self.volumes[self.primary]


def brain_of(volumes: Mapping[str, Volume]) -> np.ndarray:
    """Brain voxels: non-zero in any contrast (inputs are skull-stripped, background 0)."""
    return np.any([v.data != 0 for v in volumes.values()], axis=0)


def intensity_window(data: np.ndarray, region: np.ndarray) -> tuple[float, float]:
    """(lo, hi): the 0.5th / 99.5th percentiles of `data` over `region` (the healthy brain)."""
    found = percentile_window(data, region, collapse="unit")
    if found is None:
        raise InputError("no brain voxels outside the lesion to set the intensity range from")
    return found


def normalise(data: np.ndarray, brain: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clip to [lo, hi], scale to [0, 1], 0 outside the brain (the model's intensities)."""
    return (to_unit(data, lo, hi) * brain).astype(np.float32)


def subject_from_inputs(
    images: Mapping[str, Volume], scan: Volume, mask: Volume, contrasts: Sequence[str]
) -> Subject:
    """A Subject from the contrasts edit_inputs already loaded and checked (files read once).

    Args:
        images: contrast -> Volume on the scan's grid (EditInputs.images: the scan under its
            --contrast name, then the --image contrasts).
        scan: the positional scan (one of `images`); its contrast is the Subject's primary.
        mask: the lesion mask on the scan's grid.
        contrasts: the model's contrasts; any other name is refused.

    Raises:
        InputError: a contrast the weights do not take, or a mask that touches no brain voxel.
    """
    unknown = sorted(set(images) - set(contrasts))
    if unknown:
        raise InputError(
            f"contrast(s) {', '.join(unknown)} not known to these weights "
            f"(they take {', '.join(contrasts)}; --contrast names the scan's own)"
        )
    primary = next((name for name, vol in images.items() if vol is scan), next(iter(images)))
    return subject_from_volumes(dict(images), mask.data, primary, mask_path=mask.path)


def subject_from_volumes(
    volumes: dict[str, Volume], mask: np.ndarray, primary: str, *, mask_path: Path | None = None
) -> Subject:
    """A Subject from volumes on one grid and a mask array on that grid (mask ∧ brain)."""
    edit = (np.asarray(mask) > 0) & brain_of(volumes)
    if not edit.any():
        problem = "the lesion mask touches no brain voxel (the scan is 0 under all of it)"
        raise InputError(problem, mask_path)
    return Subject(volumes=volumes, mask=edit, primary=primary)


# ---------------------------------------------------------------- the lesion box


def world_bbox(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World RAS mm (min, max) corners of the voxels of `mask` (their full extent)."""
    idx = np.argwhere(mask)
    lo, hi = idx.min(0) - 0.5, idx.max(0) + 0.5
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                        for c in (lo[2], hi[2])])  # fmt: skip
    world = corners @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    return world.min(0), world.max(0)


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is ≥ n."""
    return -(-int(n) // multiple) * multiple


def lesion_grid(
    subject: Subject,
    *,
    spacing: float,
    margin_mm: float,
    min_size: int,
    multiple: int,
    dims: int,
) -> GridTransform:
    """A RAS grid at `spacing` over the lesion's bounding box plus `margin_mm` on every side.

    In-plane sizes (all three in 3-D) are at least `min_size` and a multiple of `multiple`; in
    2-D the axial extent is just the slices the box spans.
    """
    lo, hi = world_bbox(subject.mask, subject.reference.affine)
    extent = (hi - lo) + 2.0 * margin_mm
    shape = [int(np.ceil(e / spacing)) + 1 for e in extent]
    padded = 3 if dims == 3 else 2
    for axis in range(padded):
        shape[axis] = round_up(max(shape[axis], min_size), multiple)
    return grid_for(subject.reference, spacing, tuple(shape), center=(lo + hi) / 2.0)


@dataclass
class Box:
    """A subject resampled onto its lesion grid, with the intensity windows to go back."""

    grid: GridTransform
    x: np.ndarray  # [C, X, Y, Z] model intensities, zeros for contrasts not given
    m: np.ndarray  # [X, Y, Z] float32 {0, 1}
    available: np.ndarray  # [C] float32 {0, 1}
    windows: dict[str, tuple[float, float]]


def source_window(subject: Subject, grid: GridTransform) -> tuple[tuple[slice, ...], np.ndarray]:
    """The source voxels the lesion box covers (plus a 2-voxel rim) and that crop's affine."""
    from synthbrain.io.nifti import shift_affine

    ref = subject.reference
    corners = np.array([[a, b, c] for a in (0, grid.grid_shape[0] - 1)
                        for b in (0, grid.grid_shape[1] - 1)
                        for c in (0, grid.grid_shape[2] - 1)], dtype=np.float64)  # fmt: skip
    to_source = np.linalg.inv(ref.affine) @ grid.grid_affine
    idx = corners @ to_source[:3, :3].T + to_source[:3, 3]
    start = np.clip(np.floor(idx.min(0)).astype(int) - 2, 0, ref.shape)
    stop = np.clip(np.ceil(idx.max(0)).astype(int) + 3, 0, ref.shape)
    region = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
    return region, ref.affine @ shift_affine(start)


def healthy_sample(
    subject: Subject, limit: int = 2_000_000
) -> tuple[tuple[slice, ...], np.ndarray]:
    """A regular subsample of the scan (≤ `limit` voxels) and its healthy-brain voxels, for
    the intensity windows (percentiles need the whole brain, not all of its voxels)."""
    size = int(np.prod(subject.reference.shape))
    step = max(1, int(np.ceil((size / limit) ** (1.0 / 3.0))))
    sample = (slice(None, None, step),) * 3
    brain = np.any([v.data[sample] != 0 for v in subject.volumes.values()], axis=0)
    return sample, brain & ~subject.mask[sample]


def to_box(
    subject: Subject,
    contrasts: Sequence[str],
    grid: GridTransform,
    *,
    windows=None,  # noqa: ANN001
) -> Box:
    """Normalise each contrast (window from the brain outside the lesion) and resample.

    Only the source voxels under the box are normalised and resampled (and a subsample of the
    scan sets the windows), so the cost follows the lesion box rather than the scan.
    """
    region, affine = source_window(subject, grid)
    sample, healthy = healthy_sample(subject)
    crops = {name: np.asarray(vol.data[region]) for name, vol in subject.volumes.items()}
    brain = np.any([c != 0 for c in crops.values()], axis=0)
    x = np.zeros((len(contrasts), *grid.grid_shape), np.float32)
    available = np.zeros(len(contrasts), np.float32)
    found = dict(windows or {})
    for i, name in enumerate(contrasts):
        if name not in crops:
            continue
        data = subject.volumes[name].data[sample]
        lo, hi = found.setdefault(name, intensity_window(data, healthy))
        x[i] = to_grid(Volume(normalise(crops[name], brain, lo, hi), affine), grid, order=1)
        available[i] = 1.0
    cover = to_grid(Volume(subject.mask[region].astype(np.float32), affine), grid)
    m = cover >= 0.5
    if not m.any():  # a lesion smaller than half a model voxel: keep every voxel it touches
        m = cover > 0
    return Box(grid, x, m.astype(np.float32), available, found)


def from_box(subject: Subject, box: Box, edited: np.ndarray, contrasts: Sequence[str]):  # noqa: ANN201
    """Edited box [C, X, Y, Z] back on the source grid: input + Δ inside the mask, input elsewhere.

    Δ is resampled only onto the source voxels of the mask's bounding box, so this step too
    costs in proportion to the lesion, not to the scan.

    Returns:
        contrast -> float32 array with the source's shape (only the given contrasts).
    """
    from synthbrain.io.nifti import resample_array, shift_affine

    idx = np.argwhere(subject.mask)
    start, stop = idx.min(0), idx.max(0) + 1
    region = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    sub_affine = subject.reference.affine @ shift_affine(start)
    inside = subject.mask[region]
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(contrasts):
        vol = subject.volumes.get(name)
        if vol is None:
            continue
        lo, hi = box.windows[name]
        change = (edited[i] - box.x[i]).astype(np.float32)
        delta = resample_array(change, box.grid.grid_affine, stop - start, sub_affine, order=1)
        result = np.array(vol.data, dtype=np.float32, copy=True)
        view = result[region]
        view[inside] = view[inside] + delta[inside] * np.float32(hi - lo)
        out[name] = result
    return out
