"""Scans onto the paired model's MNI152 grid and back, and the edit regions that keep scans intact.

A scan is registered to the template (or taken as already in template space), resampled onto the
model grid, brain-masked and windowed to [0, 1] (0.5 / 99.5 percentiles inside the template brain).
Model results are mapped back through the same transform and the inverse window, and blended into
the scan only inside the edit region: out = in + w · (model − in), with w = 0 exactly outside the
region, so every other voxel is the input's, bit for bit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from synthbrain.errors import InputError
from synthbrain.io.geometry import GridTransform, Volume, from_grid, resample, to_grid
from synthbrain.io.registration import (
    Registration,
    register_to_template,
    registration_failed,
    template_transform,
)

MIN_MASK_OVERLAP = 0.5  # a mask with less of its volume in the brain is refused
# A registered T1 whose brain correlates less than this with the template T1 is no T1 brain scan
# (or did not really register): overlap alone lets e.g. a noise ball of brain size through.
MIN_T1_CORRELATION = 0.3
PERCENTILES = (0.5, 99.5)


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
    """The 0.5 / 99.5 percentiles of the values inside the brain."""
    inside = values[brain > 0]
    if inside.size == 0 or not np.any(inside):
        return 0.0, 1.0
    lo, hi = np.percentile(inside, PERCENTILES)
    return float(lo), float(max(hi, lo + 1e-6))


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
        channels.append(np.clip((grid - lo) / (hi - lo), 0.0, 1.0) * brain)
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


# ---------------------------------------------------------------------- edit regions


def dilate(mask: np.ndarray, voxels: int) -> np.ndarray:
    """Binary dilation by a ball of `voxels` radius."""
    if voxels <= 0:
        return mask.astype(bool)
    ball = ndimage.generate_binary_structure(3, 1)
    return ndimage.binary_dilation(mask, ball, iterations=voxels)


def blend_weight(core: np.ndarray, seam: int) -> np.ndarray:
    """w in [0, 1]: 1 on the core, falling to 0 across a seam band of `seam` voxels, 0 beyond."""
    core = core.astype(bool)
    if not core.any():
        return np.zeros(core.shape, np.float32)
    band = dilate(core, seam)
    distance = ndimage.distance_transform_edt(~core)
    w = np.clip(1.0 - distance / (seam + 1.0), 0.0, 1.0)
    w[~band] = 0.0
    return w.astype(np.float32)


def anomaly_core(
    edited: np.ndarray, reference: np.ndarray, brain: np.ndarray, *, sign: float = -1.0,
    z: float = 6.0, local_sigma: float = 8.0, min_voxels: int = 8,
) -> np.ndarray:  # fmt: skip
    """Where a heal undid a lesion: one compact, strongly outlying blob of the change, or nothing.

    The change d = (edited − reference) · (−sign) is positive where the heal removed lesion
    contrast (a darker-than-tissue lesion, sign −1, is brightened). Its smooth, brain-wide part
    (σ = `local_sigma` voxels) is a global intensity drift of the diffusion, not a lesion, so it
    is subtracted; the rest is scored as a robust z (median / MAD over the brain). Only voxels with
    z > `z` count, and of their blobs (≥ `min_voxels`) only the one of largest summed z is kept:
    a heal edits near one detected lesion or, when nothing stands out, not at all. The old rule
    (|d| > 0.1 anywhere) marked ~20 % of the brain and made healed scans worse than the input
    (docs/paired.md).
    """
    diff = (edited - reference).max(axis=0) if edited.ndim == 4 else edited - reference
    d = ndimage.gaussian_filter(diff.astype(np.float32) * -float(np.sign(sign) or -1.0), 1.0)
    if local_sigma > 0:
        d = d - ndimage.gaussian_filter(d, local_sigma)
    inside = brain > 0
    if inside.sum() < 2:
        return np.zeros(d.shape, bool)
    values = d[inside]
    med = float(np.median(values))
    mad = 1.4826 * float(np.median(np.abs(values - med)))
    score = (d - med) / max(mad, 1e-6)
    labels, n = ndimage.label((score > z) & inside)
    if not n:
        return np.zeros(d.shape, bool)
    sizes = np.bincount(labels.ravel())[1:]
    mass = np.asarray(ndimage.sum(score, labels, index=np.arange(1, n + 1)))
    mass[sizes < min_voxels] = -np.inf
    if not np.isfinite(mass).any():
        return np.zeros(d.shape, bool)
    return labels == int(np.argmax(mass)) + 1


def back_to_scan(
    grid_values: np.ndarray, weight: np.ndarray, sg: ScanOnGrid, source: Volume, channel: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Blend model values [0, 1] on the grid into the source scan; returns (data, weight).

    The data equal the source's voxel for voxel wherever the mapped weight is 0.
    """
    lo, hi = sg.window[channel]
    values = from_grid((grid_values * (hi - lo) + lo).astype(np.float32), sg.tf, order=1).data
    w = from_grid(weight.astype(np.float32), sg.tf, order=1, fill=0.0).data
    w = np.clip(w, 0.0, 1.0)
    w[w < 1e-3] = 0.0
    data = source.data.astype(np.float32, copy=True)
    edit = w > 0
    data[edit] = data[edit] + w[edit] * (values[edit] - data[edit])
    return data, w
