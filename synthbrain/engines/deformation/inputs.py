"""Enhance's inputs and outputs around the model grid: rigid registration, intensities, compositing.

- `register_rigid`: T2 / FLAIR onto T1 with SimpleITK (rigid Euler3D, Mattes mutual information).
- `to_model_grid`: brain mask, 0.5/99.5-percentile windows and the RAS model grid, as preprocess
  builds the training sets (`synthbrain.preprocessing.prepare`).
- `compose_outputs`: the synthetic T1Gd and its mask back on T1's exact grid. The T1Gd is written
  in T1's intensity scale: model value 0 ↦ T1's 0.5th percentile inside the brain, 1 ↦ its
  99.5th percentile (linear); outside the brain (and outside the model grid's field of view)
  the output holds T1's own voxels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from synthbrain.errors import InputError
from synthbrain.io.nifti import GridTransform, Volume, from_grid, grid_for, to_grid
from synthbrain.spatial.extent import brain_geometry
from synthbrain.spatial.window import intensity_range, scale_intensity, unscale_intensity


def register_rigid(
    fixed: Volume, moving: Volume, *, seed: int = 0, iterations: int = 200
) -> tuple[Volume, dict[str, Any]]:
    """Rigidly register `moving` onto `fixed` and resample it onto `fixed`'s grid.

    Rigid Euler3D transform initialised at the intensity centres of mass, Mattes mutual
    information (32 bins, 20 % random samples drawn with `seed`), regular-step gradient descent
    over a 3-level pyramid, linear interpolation, 0 outside `moving`'s field of view.

    Returns:
        (the moved volume with `fixed`'s shape, affine and header, a JSON-able report with the
        rotation in degrees, the translation in mm and the final metric value).
    """
    import SimpleITK as sitk

    from synthbrain.spatial.registration import sampling_seed, to_sitk

    fixed_img = to_sitk(fixed.data.astype(np.float32), fixed.affine)
    moving_img = to_sitk(moving.data.astype(np.float32), moving.affine)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, sampling_seed(seed))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-4, numberOfIterations=iterations,
        gradientMagnitudeTolerance=1e-8,
    )  # fmt: skip
    reg.SetOptimizerScalesFromPhysicalShift()
    top = int(max(1, min(4, min(fixed.shape) // 16)))
    shrink = sorted({top, max(1, top // 2), 1}, reverse=True)
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel([float(s) - 1.0 for s in shrink])
    start = sitk.CenteredTransformInitializer(
        fixed_img, moving_img, sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS,
    )  # fmt: skip
    reg.SetInitialTransform(start, inPlace=False)
    try:
        transform = reg.Execute(fixed_img, moving_img)
    except RuntimeError as err:
        problem = f"rigid registration failed ({str(err).splitlines()[0]})"
        raise InputError(problem, moving.path) from None
    moved = sitk.Resample(moving_img, fixed_img, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    data = np.transpose(sitk.GetArrayFromImage(moved), (2, 1, 0)).astype(np.float32)
    header = None if fixed.header is None else fixed.header.copy()
    euler = sitk.Euler3DTransform(sitk.CompositeTransform(transform).GetNthTransform(0))
    report = {
        "method": "SimpleITK rigid Euler3D, Mattes MI",
        "rotation_deg": [round(float(np.degrees(a)), 4) for a in euler.GetParameters()[:3]],
        "translation_mm": [round(float(v), 4) for v in euler.GetParameters()[3:]],
        "metric": float(reg.GetMetricValue()),
        "iterations": int(reg.GetOptimizerIteration()),
    }
    return Volume(data, fixed.affine.copy(), header, moving.path), report


def brain_mask(volumes: list[Volume]) -> np.ndarray:
    """Voxels non-zero in any (skull-stripped) input, holes filled: as preprocess does."""
    nonzero = np.any([v.data != 0 for v in volumes], axis=0)
    return ndimage.binary_fill_holes(nonzero)


@dataclass
class GridInputs:
    """The inputs of one subject on the model grid, and what maps results back."""

    tf: GridTransform
    cond: np.ndarray  # float32 [C, X, Y, Z] in [0, 1] inside the brain, 0 outside
    brain_grid: np.ndarray  # bool [X, Y, Z]
    brain_source: np.ndarray  # bool, on the source (T1) grid
    ranges: dict[str, tuple[float, float]]  # per contrast: (lo, hi) intensity window

    def attrs(self) -> dict[str, Any]:
        """JSON-able facts for the sidecar."""
        return {
            "grid_shape": list(self.tf.grid_shape),
            "grid_affine": np.asarray(self.tf.grid_affine).round(6).tolist(),
            "intensity_windows": {k: [lo, hi] for k, (lo, hi) in self.ranges.items()},
        }


def to_model_grid(
    volumes: dict[str, Volume], spacing: float, grid: tuple[int, int, int]
) -> GridInputs:
    """Brain mask, intensity windows and the RAS model grid centred on the brain.

    Args:
        volumes: contrast → Volume, all on one grid (the first one's), in the model's order.
        spacing, grid: the model grid (from the weights' config).
    """
    ref = next(iter(volumes.values()))
    brain = brain_mask(list(volumes.values()))
    if not brain.any():
        raise InputError("the images are zero everywhere: no brain to enhance", ref.path)
    centre, _ = brain_geometry(brain, ref.affine)
    tf = grid_for(ref, spacing, grid, center=centre)
    # Linear + threshold: no nearest-neighbour ties, whatever the storage orientation.
    brain_grid = to_grid(Volume(brain.astype(np.float32), ref.affine), tf, order=1) >= 0.5
    channels, ranges = [], {}
    for name, vol in volumes.items():
        lo, hi = intensity_range(vol.data, brain)
        if hi <= lo:
            raise InputError("image is constant inside the brain", vol.path)
        on_grid = to_grid(Volume(vol.data, vol.affine), tf, order=1)
        channels.append(scale_intensity(on_grid, lo, hi) * brain_grid)
        ranges[name] = (lo, hi)
    return GridInputs(tf, np.stack(channels).astype(np.float32), brain_grid, brain, ranges)


def compose_outputs(
    image: np.ndarray,
    mask: np.ndarray | None,
    inputs: GridInputs,
    t1: Volume,
    *,
    label: int,
    scale_from: str = "t1",
) -> tuple[Volume, Volume | None]:
    """The grid results on T1's exact grid: (T1Gd in T1's intensity scale, uint8 label mask).

    Inside the brain (and the grid's field of view) the T1Gd is the model's value mapped with
    the window of `scale_from` (T1; `unscale_intensity`); elsewhere it is T1 itself. The mask
    holds `label` on enhancing tumour, 0 elsewhere.
    """
    tf = inputs.tf
    seen = from_grid(np.ones(tf.grid_shape, np.float32), tf, order=1).data >= 0.5
    region = inputs.brain_source & seen
    lo, hi = inputs.ranges[scale_from]
    synthetic = unscale_intensity(from_grid(image, tf, order=1).data, lo, hi)
    data = np.where(region, synthetic, t1.data.astype(np.float32)).astype(np.float32)
    header = None if t1.header is None else t1.header.copy()
    t1gd = Volume(data, t1.affine.copy(), header, None)
    if mask is None:
        return t1gd, None
    on_source = from_grid(mask.astype(np.float32), tf, order=1).data >= 0.5
    labels = np.where(on_source & region, label, 0).astype(np.uint8)
    header = None if t1.header is None else t1.header.copy()
    return t1gd, Volume(labels, t1.affine.copy(), header, None)
