"""The per-subject preprocessing pipeline: load and check, N4, brain mask, model grid, intensities.

Pure functions of one subject's files, run in worker processes by
`synthbrain.preprocessing.run`; this module imports no torch so workers start fast (template
space loads the template, and with it torch, once per worker). Resampling goes from each scan
straight onto the RAS-aligned model grid (`grid_for` + `to_grid`): reorientation, resampling to
the spacing and the crop/pad happen in one interpolation.

Two spaces: "native" centres the grid on each subject's brain; "template" registers the subject
affinely to the MNI152 T1 template exactly as heal / implant do (`scan_to_grid`) and resamples it
onto the paired engine's template grid (`template_arrays`), through the same single interpolation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from synthbrain.errors import InputError
from synthbrain.io.nifti import GridTransform, Volume, grid_for, load_volume, to_grid
from synthbrain.preprocessing.cohorts import SubjectFiles
from synthbrain.spatial.extent import brain_geometry
from synthbrain.spatial.window import intensity_range, scale_intensity

GRID_ATOL_MM = 1e-3  # affines closer than this describe the same grid (float noise in headers)
SPACES = ("native", "template")
REGISTRATION_SEED = 0  # the metric's sampling seed: registrations independent of the split seed


@dataclass
class LoadedSubject:
    """A subject on its source grid: every contrast, labels and brain mask share one grid."""

    files: SubjectFiles
    images: dict[str, Volume]
    labels: np.ndarray | None
    brain_mask: np.ndarray
    mask_from_nonzero: bool

    @property
    def reference(self) -> Volume:
        """The first contrast: its grid is the subject's grid."""
        return next(iter(self.images.values()))


def _same_grid(a: Volume, b: Volume) -> bool:
    """True when two volumes have the same shape and (to float noise) the same affine."""
    return a.shape == b.shape and np.allclose(a.affine, b.affine, rtol=0, atol=GRID_ATOL_MM)


def _check_grid(ref: Volume, other: Volume, role: str) -> None:
    """InputError naming `other`'s file when it does not share `ref`'s grid."""
    if not _same_grid(ref, other):
        raise InputError(
            f"{role} is not on the same grid as {ref.path.name if ref.path else 'the images'} "
            f"(shape {other.shape} vs {ref.shape}, or a different affine)",
            other.path,
        )


def load_subject(files: SubjectFiles, contrasts: Sequence[str]) -> LoadedSubject:
    """Load and check a subject's files; InputError names the file and the problem."""
    if files.problem:
        raise InputError(files.problem, files.problem_path)
    missing = [c for c in contrasts if c not in files.images]
    if missing:
        where = files.problem_path or next(iter(files.images.values()), None)
        raise InputError(f"subject {files.id} has no {', '.join(missing)} image", where)
    images = {c: load_volume(files.images[c], kind="image") for c in contrasts}
    ref = next(iter(images.values()))
    for c, vol in images.items():
        _check_grid(ref, vol, c)
    labels = None
    if files.labels is not None:
        vol = load_volume(files.labels, kind="mask" if files.label_kind == "mask" else "label")
        _check_grid(ref, vol, "the lesion labels")
        labels = vol.data.astype(np.uint8) if vol.data.max() <= 255 else None
        if labels is None:
            raise InputError("label values above 255 are not supported", files.labels)
    if files.brain_mask is not None:
        vol = load_volume(files.brain_mask, kind="mask")
        _check_grid(ref, vol, "the brain mask")
        mask, from_nonzero = vol.data > 0, False
    else:
        # Skull-stripped inputs have an exact-zero background; fill holes left by dark voxels.
        mask = ndimage.binary_fill_holes(np.any([v.data != 0 for v in images.values()], axis=0))
        from_nonzero = True
    if labels is not None:
        mask |= labels > 0
    if not mask.any():
        raise InputError("the brain mask is empty", files.brain_mask or ref.path)
    return LoadedSubject(files, images, labels, mask.astype(np.uint8), from_nonzero)


def n4_correct(
    data: np.ndarray,
    mask: np.ndarray,
    spacing: Sequence[float],
    *,
    shrink: int = 4,
    iterations: Sequence[int] = (50, 50, 30),
) -> np.ndarray:
    """N4 bias-field correction inside `mask` (SimpleITK), fitted on a `shrink`x smaller copy."""
    import SimpleITK as sitk

    # SimpleITK arrays are (z, y, x); ours are (x, y, z).
    positive = np.where(mask > 0, np.maximum(data, 1e-3 * float(data[mask > 0].max())), 0.0)
    image = sitk.GetImageFromArray(np.transpose(positive, (2, 1, 0)).astype(np.float32))
    image.SetSpacing([float(s) for s in spacing])
    itk_mask = sitk.GetImageFromArray(np.transpose(mask > 0, (2, 1, 0)).astype(np.uint8))
    itk_mask.CopyInformation(image)
    factor = int(max(1, min(shrink, min(data.shape) // 16)))
    small, small_mask = sitk.Shrink(image, [factor] * 3), sitk.Shrink(itk_mask, [factor] * 3)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in iterations])  # one per level
    try:
        corrector.Execute(small, small_mask)
    except RuntimeError as err:
        raise InputError(f"N4 bias correction failed ({str(err).splitlines()[0]})") from None
    log_field = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(image))
    corrected = data / np.exp(np.transpose(log_field, (2, 1, 0)))
    return np.where(mask > 0, corrected, data).astype(np.float32)


def subject_facts(files: SubjectFiles, contrasts: Sequence[str]) -> dict[str, Any]:
    """Fingerprint facts of one subject on its source grid (JSON-able); InputError if bad."""
    sub = load_subject(files, contrasts)
    ref = sub.reference
    com, half = brain_geometry(sub.brain_mask, ref.affine)
    voxel_ml = float(np.prod(ref.spacing)) / 1000.0
    intensity = {}
    for c, vol in sub.images.items():
        p_lo, p50, p_hi = np.percentile(vol.data[sub.brain_mask > 0], [0.5, 50.0, 99.5])
        if p_hi <= p_lo:
            raise InputError("image is constant inside the brain mask", vol.path)
        intensity[c] = {"p0.5": float(p_lo), "p50": float(p50), "p99.5": float(p_hi)}
    labels = sub.labels
    return {
        "id": files.id,
        "source": files.source,
        "healthy": files.healthy,
        "source_shape": list(ref.shape),
        "source_spacing": [round(s, 6) for s in ref.spacing],
        "brain_center_mm": com.round(3).tolist(),
        "brain_half_extent_mm": half.round(3).tolist(),
        "brain_fraction": float(sub.brain_mask.mean()),
        "mask_from_nonzero": sub.mask_from_nonzero,
        "label_values": [] if labels is None else sorted(int(v) for v in np.unique(labels)),
        "lesion_ml": None if labels is None else float((labels > 0).sum()) * voxel_ml,
        "intensity": intensity,
    }


def process_subject(
    files: SubjectFiles,
    contrasts: Sequence[str],
    spacing: float,
    grid: Sequence[int],
    *,
    space: str = "native",
    n4: bool = False,
    n4_shrink: int = 4,
    n4_iterations: Sequence[int] = (50, 50, 30),
) -> dict[str, Any]:
    """One subject on the model grid: the arguments of `H5Writer.add_subject` (as a dict).

    `space` "native" centres the grid on the subject's brain; "template" registers the subject to
    MNI152 (`register_subject`) and puts it on the template grid of (`spacing`, `grid`).
    """
    sub = load_subject(files, contrasts)
    ref = sub.reference
    world, registration = np.eye(4), None
    if space == "template":
        tf, registration = register_subject(sub, spacing, grid)
        world = np.asarray(registration["world"])
    else:
        center, _ = brain_geometry(sub.brain_mask, ref.affine)
        tf = grid_for(ref, spacing, tuple(grid), center=center)
    # Every file shares the reference's grid; `world` moves it into template space (or not at all).
    placed = world @ ref.affine
    # Linear + threshold rather than nearest: no ties where grid points fall between voxels,
    # so a scan gives the same mask whatever its storage orientation.
    mask_grid = to_grid(Volume(sub.brain_mask.astype(np.float32), placed), tf, order=1) >= 0.5
    labels = None
    if sub.labels is not None:
        labels = to_grid(Volume(sub.labels, placed), tf, order=0)
        mask_grid |= labels > 0
    channels, intensity = [], {}
    for c, vol in sub.images.items():
        data = vol.data
        if n4:
            data = n4_correct(
                data, sub.brain_mask, vol.spacing, shrink=n4_shrink, iterations=n4_iterations
            )
        lo, hi = intensity_range(data, sub.brain_mask)
        if hi <= lo:
            raise InputError("image is constant inside the brain mask", vol.path)
        on_grid = to_grid(Volume(data, world @ vol.affine), tf, order=1)
        channels.append(scale_intensity(on_grid, lo, hi) * mask_grid)
        intensity[c] = {"lo": lo, "hi": hi}
    attrs = {
        "affine": tf.grid_affine,
        "source_affine": ref.affine,
        "source_shape": np.asarray(ref.shape, dtype=np.int64),
        "source_paths": {role: str(path) for role, path in files.files().items()},
        "intensity": intensity,
        "healthy": files.healthy,
        "lesion_type": files.lesion_type,
        "source": files.source,
        "n4": n4,
        "space": space,
    }
    if registration is not None:
        attrs["registration"] = registration
    return {
        "subject_id": files.id,
        "images": np.stack(channels).astype(np.float32),
        "brain_mask": mask_grid.astype(np.uint8),
        "labels": labels,
        "attrs": attrs,
    }


def register_subject(
    sub: LoadedSubject, spacing: float, grid: Sequence[int]
) -> tuple[GridTransform, dict[str, Any]]:
    """Register a subject's brain to the MNI152 T1 as heal does; (transform, JSON-able facts).

    The registered image is the T1 (else the first contrast) inside the subject's brain mask, so
    skull and neck do not pull it off the skull-stripped template. InputError when the
    registration fails its sanity checks, or a registered T1 does not resemble the template.
    """
    from synthbrain.spatial.template import scan_to_grid

    contrast = "t1" if "t1" in sub.images else next(iter(sub.images))
    vol = sub.images[contrast]
    brain_only = Volume(vol.data * sub.brain_mask, vol.affine, vol.header, vol.path)
    try:
        sg = scan_to_grid(
            [brain_only],
            spacing,
            tuple(grid),
            in_template_space=False,
            seed=REGISTRATION_SEED,
            t1_weighted=contrast in ("t1", "t1gd"),
        )
    except InputError as err:
        # heal's hint (--in-template-space) is no option of preprocess: keep the diagnosis only.
        why = err.problem.split("; if the scan is already")[0]
        raise InputError(
            f"{why}; is it a brain scan with the right brain mask?", err.path
        ) from None
    reg = sg.registration
    assert reg is not None
    r = sg.t1_correlation
    facts = {
        "contrast": contrast,
        "world": reg.world.tolist(),
        "metric": round(reg.metric, 4),
        "overlap": round(reg.overlap, 4),
        "iterations": int(reg.iterations),
        "t1_correlation": round(r, 4),
    }
    return sg.tf, facts


def template_grid(spacing: float, multiple: int = 16) -> list[int]:
    """The default template-space grid: the 2 mm MNI152 grid's field of view at `spacing`.

    (96, 112, 96) at 2 mm and (192, 224, 192) at 1 mm, each size rounded up to `multiple`.
    """
    fov = 2.0 * np.array([96, 112, 96])  # synthbrain.phantom.template.GRIDS[2.0], in mm
    voxels = np.ceil(fov / float(spacing) - 1e-6)
    return (np.ceil(voxels / multiple) * multiple).astype(int).clip(min=multiple).tolist()


def init_worker() -> None:
    """One thread per worker process: the pool already uses the cores."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def run_job(job: tuple[Callable[..., Any], tuple, dict]) -> tuple[str, Any]:
    """Run one subject's job: ("ok", result), or ("bad", (problem, path)) for an InputError."""
    fn, args, kwargs = job
    try:
        return "ok", fn(*args, **kwargs)
    except InputError as err:
        return "bad", (err.problem, None if err.path is None else str(err.path))


def default_grid(facts: Sequence[dict], spacing: float, multiple: int = 16) -> list[int]:
    """A grid covering every subject's brain at `spacing`, sizes rounded up to `multiple`."""
    half = np.max([f["brain_half_extent_mm"] for f in facts], axis=0)
    voxels = np.ceil(2.0 * half / spacing)
    return (np.ceil(voxels / multiple) * multiple).astype(int).clip(min=multiple).tolist()
