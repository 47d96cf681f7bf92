"""Affine registration of a scan to the MNI152 template (SimpleITK), forward and back.

`register_to_template(scan, template_image, template_affine)` finds the 12-parameter affine map
that aligns the scan with the template: Mattes mutual information, a three-level pyramid
(shrink 4/2/1, smoothing 2/1/0 mm), regular-step gradient descent, started from the centres of
mass. The result is one 4x4 world → world matrix (RAS mm, nibabel convention) that moves scan
points onto template points, so the scan "seen in template space" is the same array with affine
`M @ scan.affine`; `synthbrain.io.geometry` then resamples it onto the model grid and back (the
inverse transform is the same matrix: `from_grid` maps through the adjusted affine).

A scan that does not register (brain overlap with the template below a threshold, a degenerate
or extreme transform, a metric that did not converge) is an InputError that suggests
`--in-template-space` for scans already in MNI152 space.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthbrain.errors import InputError
from synthbrain.io.geometry import GridTransform, Volume

# LPS (ITK) <-> RAS (nibabel): flip the first two world axes.
_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])
MIN_OVERLAP = 0.6  # Dice of the scan's foreground and the template brain after registration
MAX_LOG_SCALE = np.log(2.0)  # each axis may shrink or stretch by at most 2x


@dataclass
class Registration:
    """The result of registering a scan to the template.

    Attributes:
        world: 4x4 RAS mm map from scan world points to template world points.
        metric: the final Mattes mutual information (negative; lower is better).
        overlap: Dice of the scan's foreground and the template brain after registration.
        iterations: optimiser iterations at the finest level.
    """

    world: np.ndarray
    metric: float
    overlap: float
    iterations: int

    def in_template(self, vol: Volume) -> Volume:
        """The scan's array with the affine that places it in template space."""
        return Volume(vol.data, self.world @ vol.affine, vol.header, vol.path)


def to_sitk(data: np.ndarray, affine: np.ndarray):  # noqa: ANN201 - SimpleITK image
    """A SimpleITK image of an (x, y, z) array with a RAS voxel → world affine."""
    import SimpleITK as sitk

    lps = _FLIP @ np.asarray(affine, np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0))))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    image.SetDirection((lps[:3, :3] / spacing).flatten().tolist())
    return image


def _world_matrix(transform) -> np.ndarray:  # noqa: ANN001
    """The 4x4 RAS map scan world → template world of an ITK fixed → moving affine."""
    matrix = np.asarray(transform.GetMatrix(), np.float64).reshape(3, 3)
    center = np.asarray(transform.GetCenter(), np.float64)
    translation = np.asarray(transform.GetTranslation(), np.float64)
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = translation + center - matrix @ center  # template LPS → scan LPS
    ras = _FLIP @ lps @ _FLIP
    return np.linalg.inv(ras)


def _normalised(data: np.ndarray) -> np.ndarray:
    """Intensities clipped at the 0.5/99.5 percentiles of the non-zero voxels, scaled to [0, 1]."""
    values = data[data > 0] if np.any(data > 0) else data.ravel()
    lo, hi = np.percentile(values, [0.5, 99.5])
    return np.clip((data - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def sampling_seed(seed: int) -> int:
    """A metric-sampling seed SimpleITK honours: it reads 0 as sitkWallClock (a fresh seed each
    call), so run seed 0, the default, sampled differently every run; seeds map to 1 … 2**31 − 1."""
    return int(seed) % (2**31 - 1) + 1


def _method(seed: int, iterations: int):  # noqa: ANN202 - SimpleITK method
    """Mattes MI, multi-resolution, regular-step gradient descent with physical shift scales."""
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.25, sampling_seed(seed))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=iterations, relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )  # fmt: skip
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg


def register_to_template(
    scan: Volume,
    template_image: np.ndarray,
    template_affine: np.ndarray,
    template_mask: np.ndarray,
    *,
    seed: int = 0,
    iterations: int = 100,
    min_overlap: float = MIN_OVERLAP,
) -> Registration:
    """Affinely register `scan` to the template; InputError when it cannot be registered.

    Args:
        scan: the scan in any orientation (its own grid).
        template_image: the template T1 on its grid (x, y, z), in [0, 1].
        template_affine: the template grid's RAS affine.
        template_mask: the template's brain mask (for the overlap check).
        seed: the metric's sampling seed (the result is deterministic for a seed).
        iterations: optimiser iterations per level.
        min_overlap: the smallest accepted Dice of the registered scan's foreground and the
            template brain.

    Raises:
        InputError: the registration failed its sanity checks (names the scan and the numbers;
            suggests --in-template-space).
    """
    import SimpleITK as sitk

    fixed = to_sitk(template_image.astype(np.float32), template_affine)
    moving = to_sitk(_normalised(scan.data), scan.affine)
    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    reg = _method(seed, iterations)
    reg.SetInitialTransform(initial, inPlace=True)
    try:
        reg.Execute(fixed, moving)
    except RuntimeError as exc:
        raise registration_failed(
            scan.path, f"SimpleITK stopped: {str(exc).splitlines()[0]}"
        ) from None
    world = _world_matrix(initial)
    overlap = registered_overlap(scan, world, template_affine, template_mask)
    result = Registration(world, float(reg.GetMetricValue()), overlap, reg.GetOptimizerIteration())
    check_registration(result, scan.path, min_overlap)
    return result


def registered_overlap(
    scan: Volume, world: np.ndarray, template_affine: np.ndarray, template_mask: np.ndarray
) -> float:
    """Dice of the scan's foreground, mapped onto the template grid, and the template brain."""
    from synthbrain.io.geometry import resample_array

    foreground = (_normalised(scan.data) > 0.15).astype(np.uint8)
    grid = (template_mask.shape, template_affine)
    moved = resample_array(foreground, world @ scan.affine, *grid, order=0) > 0
    brain = template_mask > 0
    total = moved.sum() + brain.sum()
    return float(2.0 * np.logical_and(moved, brain).sum() / total) if total else 0.0


def check_registration(result: Registration, path: Path | None, min_overlap: float) -> None:
    """InputError when the transform is degenerate, extreme or the brain does not overlap."""
    linear = result.world[:3, :3]
    det = float(np.linalg.det(linear))
    singular = np.linalg.svd(linear, compute_uv=False)
    if not np.all(np.isfinite(result.world)) or det <= 0:
        raise registration_failed(path, "the transform is degenerate (flips or collapses the scan)")
    if np.any(np.abs(np.log(singular)) > MAX_LOG_SCALE):
        scales = ", ".join(f"{s:.2f}" for s in singular)
        raise registration_failed(path, f"the transform scales the scan by {scales} (more than 2x)")
    if not np.isfinite(result.metric) or result.overlap < min_overlap:
        raise registration_failed(
            path,
            f"the registered scan overlaps the template brain with Dice {result.overlap:.2f} "
            f"(need {min_overlap:.2f})",
        )


def registration_failed(path: Path | None, why: str) -> InputError:
    """The error for a scan that cannot be registered to MNI152."""
    return InputError(
        f"cannot register the scan to the MNI152 template: {why}; if the scan is already in "
        "MNI152 space (skull-stripped, 2 mm or finer), pass --in-template-space",
        path,
    )


def template_transform(scan: Volume, grid_shape, grid_affine, registration=None) -> GridTransform:  # noqa: ANN001
    """The GridTransform from the scan (through a registration, or as is) to the model grid."""
    affine = scan.affine if registration is None else registration.world @ scan.affine
    return GridTransform(
        tuple(scan.shape), affine.copy(), scan.header, tuple(grid_shape), np.asarray(grid_affine),
        scan.path,
    )  # fmt: skip
