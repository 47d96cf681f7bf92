"""The MNI152 2009 template shipped with nilearn, on the model grids (no downloads).

`template(spacing)` loads the T1 template and its GM / WM / brain-mask maps from the nilearn
package, crops or pads them (centred) onto the model grid — (96, 112, 96) at 2 mm,
(192, 224, 192) at 1 mm — and caches the result per spacing. CSF is the brain mask minus GM
and WM, clipped at 0. A few derived maps used by the phantom (ventricle distance, smoothed CSF,
T1 tissue means) are computed once and cached alongside.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from synthbrain.errors import InputError

GRIDS: dict[float, tuple[int, int, int]] = {2.0: (96, 112, 96), 1.0: (192, 224, 192)}
# Lateral ventricles of MNI152 lie inside this box (world mm, x / y / z ranges).
_VENTRICLE_BOX = ((-32.0, 32.0), (-50.0, 35.0), (-12.0, 38.0))
_CSF_SMOOTH_MM = 2.0


@dataclass(frozen=True)
class TemplateAnatomy:
    """The template on one model grid; arrays are float32 (x, y, z) in RAS voxel order.

    Attributes:
        t1: T1-weighted template intensities in [0, 1], 0 outside the brain mask.
        gm, wm, csf: tissue probability maps (csf = brain_mask - gm - wm, clipped at 0).
        brain_mask: 0/1 float32 brain mask.
        affine: 4x4 voxel -> world RAS mm of the model grid.
        spacing: isotropic voxel size in mm.
        ventricle_distance: distance in mm to the lateral / third ventricles (0 inside).
        csf_smooth: CSF probability smoothed with a 2 mm Gaussian (where atrophy acts).
        t1_means: mean T1 over voxels with p > 0.9 for each of "csf", "gm", "wm".
        ventricle_center: world mm of the ventricles' centre of mass.
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray
    spacing: float
    ventricle_distance: np.ndarray
    csf_smooth: np.ndarray
    t1_means: dict[str, float]
    ventricle_center: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        """The grid shape."""
        return self.t1.shape  # type: ignore[return-value]

    @property
    def origin(self) -> np.ndarray:
        """World mm of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()


def check_spacing(spacing: float) -> float:
    """The spacing as a float, or an InputError when no phantom grid exists for it."""
    value = float(spacing)
    if value not in GRIDS:
        raise InputError(f"phantom spacing must be one of {sorted(GRIDS)} mm, got {spacing}")
    return value


def grid_shape(spacing: float) -> tuple[int, int, int]:
    """The model grid shape at `spacing` mm: (96, 112, 96) at 2 mm, (192, 224, 192) at 1 mm."""
    return GRIDS[check_spacing(spacing)]


def grid_affine(spacing: float) -> np.ndarray:
    """The RAS affine of the model grid at `spacing` (same origin at every spacing)."""
    return _loaded(check_spacing(spacing))[1]


def template(spacing: float) -> TemplateAnatomy:
    """The MNI152 2009 template on the model grid at `spacing` mm (cached per spacing).

    Args:
        spacing: 1.0 or 2.0 (mm, isotropic).

    Returns:
        A frozen TemplateAnatomy; its arrays are shared between callers and must not be
        modified in place.

    Raises:
        InputError: no phantom grid exists for `spacing`.
    """
    return _template(check_spacing(spacing))


def _crop_pad(data: np.ndarray, start: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Grid voxel i takes source voxel i + start; zeros where the source has none."""
    out = np.zeros(shape, dtype=np.float32)
    src, dst = [], []
    for axis in range(3):
        lo = max(0, -int(start[axis]))
        hi = min(shape[axis], data.shape[axis] - int(start[axis]))
        dst.append(slice(lo, hi))
        src.append(slice(lo + int(start[axis]), hi + int(start[axis])))
    out[tuple(dst)] = data[tuple(src)]
    return out


@functools.lru_cache(maxsize=2)
def _loaded(spacing: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The raw template maps on the model grid and the grid affine."""
    from nilearn import datasets

    resolution = int(spacing)
    loaders = {
        "t1": datasets.load_mni152_template,
        "gm": datasets.load_mni152_gm_template,
        "wm": datasets.load_mni152_wm_template,
        "brain_mask": datasets.load_mni152_brain_mask,
    }
    shape = GRIDS[spacing]
    maps, affine = {}, None
    for name, loader in loaders.items():
        img = loader(resolution=resolution)
        data = np.asarray(img.dataobj, dtype=np.float32)
        # Centre the grid on the template: crop (or pad) the difference evenly on both sides.
        start = (np.array(data.shape) - np.array(shape)) // 2
        maps[name] = _crop_pad(data, start, shape)
        if affine is None:
            affine = np.asarray(img.affine, dtype=np.float64).copy()
            affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    assert affine is not None
    return maps, affine


@functools.lru_cache(maxsize=2)
def _template(spacing: float) -> TemplateAnatomy:
    """Build (once per spacing) the cached TemplateAnatomy."""
    maps, affine = _loaded(spacing)
    mask = (maps["brain_mask"] > 0.5).astype(np.float32)
    gm = np.clip(maps["gm"], 0.0, 1.0) * mask
    wm = np.clip(maps["wm"], 0.0, 1.0) * mask
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    t1 = np.clip(maps["t1"], 0.0, 1.0) * mask
    vent = _ventricles(csf, affine)
    dist = ndimage.distance_transform_edt(~vent, sampling=spacing).astype(np.float32)
    csf_smooth = ndimage.gaussian_filter(csf, _CSF_SMOOTH_MM / spacing).astype(np.float32)
    means = {
        name: float(t1[(p > 0.9) & (mask > 0)].mean())
        for name, p in (("csf", csf), ("gm", gm), ("wm", wm))
    }
    centre = affine[:3, :3] @ np.array(ndimage.center_of_mass(vent)) + affine[:3, 3]
    arrays = (t1, gm, wm, csf, mask, dist, csf_smooth)
    for array in arrays:
        array.setflags(write=False)
    return TemplateAnatomy(
        t1=t1,
        gm=gm,
        wm=wm,
        csf=csf,
        brain_mask=mask,
        affine=affine,
        spacing=spacing,
        ventricle_distance=dist,
        csf_smooth=csf_smooth,
        t1_means=means,
        ventricle_center=tuple(float(c) for c in centre),  # type: ignore[arg-type]
    )


def world_axes(affine: np.ndarray, shape: tuple[int, ...]) -> list[np.ndarray]:
    """World mm of the voxel centres along each axis of an axis-aligned grid."""
    return [affine[a, 3] + affine[a, a] * np.arange(shape[a]) for a in range(3)]


def _ventricles(csf: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Lateral and third ventricles: CSF > 0.5 components inside the central box, > 1 ml."""
    axes = world_axes(affine, csf.shape)
    inside = [(ax >= lo) & (ax <= hi) for ax, (lo, hi) in zip(axes, _VENTRICLE_BOX, strict=True)]
    box = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    labels, n = ndimage.label((csf > 0.5) & box)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    sizes = np.bincount(labels.ravel(), minlength=n + 1) * voxel_ml
    keep = np.flatnonzero(sizes >= 1.0)
    keep = keep[keep > 0]
    return np.isin(labels, keep)
