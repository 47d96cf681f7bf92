"""The MNI152 template on a model grid, a scan onto that grid, and a mask after it.

A scan is registered to the template (or taken as already in template space), resampled onto the
model grid, brain-masked and windowed to [0, 1] (0.5 / 99.5 percentiles inside the template
brain). `ScanOnGrid` keeps what maps results back (the transform and the windows). Used by the
paired engine's edits and by `preprocess --space template`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from synthbrain.errors import InputError
from synthbrain.io.geometry import GridTransform, Volume, resample, to_grid
from synthbrain.spatial.registration import (
    Registration,
    register_to_template,
    registration_failed,
    template_transform,
)
from synthbrain.spatial.window import percentile_window, to_unit

MIN_MASK_OVERLAP = 0.5  # a mask with less of its volume in the brain is refused
# A registered T1 whose brain correlates less than this with the template T1 is no T1 brain scan
# (or did not really register): overlap alone lets e.g. a noise ball of brain size through.
MIN_T1_CORRELATION = 0.3


@dataclass
class ScanOnGrid:
    """A scan as the model sees it, and what is needed to map results back.

    Attributes:
        tf: source → model grid (through the registration when there is one).
        image: [C, X, Y, Z] on the grid, in [0, 1] inside the brain, 0 outside.
        brain: the template brain mask on the grid (float32 {0, 1}).
        window: (lo, hi) per channel, in the scan's own units.
        registration: the affine registration, or None with --in-template-space.
        t1_correlation: Pearson r of the first channel and the template T1 inside the brain.
    """

    tf: GridTransform
    image: np.ndarray
    brain: np.ndarray
    window: list[tuple[float, float]]
    registration: Registration | None
    t1_correlation: float = float("nan")


@functools.lru_cache(maxsize=4)
def template_arrays(
    spacing: float, grid: tuple[int, int, int] = (96, 112, 96)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T1, brain mask, affine) of the MNI152 template on a model grid.

    The 2 mm grid (96, 112, 96) is the phantom's; any other (spacing, grid) is that template
    resampled onto a grid of the same centre (tiny test models use coarse ones).
    """
    from synthbrain.io.geometry import resample_array
    from synthbrain.phantom import template

    tpl = template(2.0)
    shape = tuple(int(g) for g in grid)
    if float(spacing) == 2.0 and shape == tpl.shape:
        return tpl.t1, tpl.brain_mask, tpl.affine
    centre = tpl.affine[:3, :3] @ ((np.array(tpl.shape) - 1) / 2) + tpl.affine[:3, 3]
    affine = np.diag([float(spacing)] * 3 + [1.0])
    affine[:3, 3] = centre - float(spacing) * (np.array(shape) - 1) / 2
    t1 = resample_array(tpl.t1, tpl.affine, shape, affine, order=1)
    brain = resample_array(tpl.brain_mask, tpl.affine, shape, affine, order=1) > 0.5
    return (t1 * brain).astype(np.float32), brain.astype(np.float32), affine


def window(values: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    """The 0.5 / 99.5 percentiles inside the brain; (0, 1) for an empty or all-zero brain."""
    found = percentile_window(values, brain, collapse="epsilon")
    if found is None or not np.any(values[brain > 0]):
        return 0.0, 1.0
    return found


def scan_to_grid(
    volumes: list[Volume],
    spacing: float,
    grid: tuple[int, int, int],
    *,
    in_template_space: bool,
    seed: int = 0,
    t1_weighted: bool = False,
) -> ScanOnGrid:
    """Register the first volume (unless in template space) and bring all onto the model grid.

    With `t1_weighted` (the first volume is a T1 or T1Gd) a registered scan whose brain does not
    correlate with the template T1 (r < MIN_T1_CORRELATION) is an InputError.
    """
    t1, brain, affine = template_arrays(spacing, tuple(grid))
    scan = volumes[0]
    registration = None
    if not in_template_space:
        moving = _coarse(scan, spacing)
        registration = register_to_template(moving, t1, affine, brain, seed=seed)
    tf = template_transform(scan, brain.shape, affine, registration)
    channels, windows = [], []
    for vol in volumes:
        moved = Volume(vol.data, tf.source_affine, vol.header, vol.path)
        grid = to_grid(moved, tf, order=1)
        lo, hi = window(grid, brain)
        channels.append(to_unit(grid, lo, hi) * brain)
        windows.append((lo, hi))
    if in_template_space and _brain_coverage(channels[0], brain) < MIN_MASK_OVERLAP:
        raise InputError(
            "with --in-template-space the scan must cover the MNI152 brain, but most of the "
            "template brain is empty in it (is it really in MNI152 space?)",
            scan.path,
        )
    image = np.stack(channels).astype(np.float32)
    r = template_correlation(image[0], t1, brain)
    if t1_weighted and registration is not None and r < MIN_T1_CORRELATION:
        raise registration_failed(
            scan.path,
            f"after registration its brain correlates with the template T1 at r = {r:.2f} "
            f"(need {MIN_T1_CORRELATION:.2f}), so it does not look like a T1-weighted brain scan",
        )
    return ScanOnGrid(tf, image, brain.astype(np.float32), windows, registration, r)


def template_correlation(image: np.ndarray, t1: np.ndarray, brain: np.ndarray) -> float:
    """Pearson r of an image on the model grid and the template T1 inside the brain (0 if flat)."""
    inside = brain > 0
    if inside.sum() < 2:
        return 0.0
    r = float(np.corrcoef(image[inside], t1[inside])[0, 1])
    return r if np.isfinite(r) else 0.0


def _coarse(scan: Volume, spacing: float) -> Volume:
    """The scan at no finer than the model spacing (registration needs no more detail)."""
    if min(scan.spacing) >= spacing * 0.95:
        return scan
    coarse = resample(scan, [max(s, spacing) for s in scan.spacing], order=1)
    return Volume(coarse.data, coarse.affine, None, scan.path)


def _brain_coverage(image: np.ndarray, brain: np.ndarray) -> float:
    """Fraction of the template brain where the scan has signal."""
    inside = brain > 0
    return float((image[inside] > 0.02).mean()) if inside.any() else 0.0


def mask_to_grid(mask: Volume, sg: ScanOnGrid) -> np.ndarray:
    """A mask on the scan's grid onto the model grid (nearest), refused when outside the brain."""
    from synthbrain.io.validate import mask_brain_overlap

    moved = Volume(mask.data.astype(np.uint8), sg.tf.source_affine, None, mask.path)
    grid = to_grid(moved, sg.tf, order=0) > 0
    overlap = mask_brain_overlap(grid, sg.brain)
    if not grid.any() or overlap < MIN_MASK_OVERLAP:
        where = "after registration to MNI152" if sg.registration is not None else "on the grid"
        raise InputError(
            f"only {100 * overlap:.0f}% of the mask lies inside the brain {where} (need "
            f"{100 * MIN_MASK_OVERLAP:.0f}%); is it the mask of this scan?",
            mask.path,
        )
    return grid & (sg.brain > 0)
