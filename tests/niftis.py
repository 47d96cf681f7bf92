"""Test helpers: write tiny NIfTI files with awkward geometry (flips, permutations, obliquity).

Import in tests as `from niftis import write_nifti, AFFINE_OBLIQUE, ...`: plain `pytest` puts
tests/ itself on sys.path (rootdir conftest, no tests/__init__.py); `tests.niftis` only imports
when the repo root is on sys.path too (`python -m pytest`).
Every affine here maps voxel centres to world RAS mm.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np


def rotation(angles_deg: Sequence[float]) -> np.ndarray:
    """3x3 rotation: about x, then y, then z, by the given angles in degrees."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_affine(
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    angles_deg: Sequence[float] = (0.0, 0.0, 0.0),
    flip_axes: Sequence[int] = (),
    *,
    permutation: Sequence[int] = (0, 1, 2),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """A voxel -> world affine: axes permuted, flipped, scaled by `spacing`, rotated, shifted.

    Column i of the result is the world direction of array axis i: world axis `permutation[i]`,
    negated for axes in `flip_axes`, times `spacing[i]`, then rotated by `angles_deg`.
    """
    columns = np.zeros((3, 3))
    for i, world_axis in enumerate(permutation):
        columns[world_axis, i] = -1.0 if i in flip_axes else 1.0
    affine = np.eye(4)
    affine[:3, :3] = rotation(angles_deg) @ columns @ np.diag(np.asarray(spacing, dtype=float))
    affine[:3, 3] = origin
    return affine


def centred(affine: np.ndarray, shape: Sequence[int], center=(0.0, 0.0, 0.0)) -> np.ndarray:
    """The affine moved so the centre of a `shape` volume sits at `center` (world mm)."""
    out = np.array(affine, dtype=np.float64)
    mid = (np.asarray(shape[:3], dtype=np.float64) - 1) / 2
    out[:3, 3] = np.asarray(center, dtype=np.float64) - out[:3, :3] @ mid
    return out


# Ready-made affines (translation 0: use `centred` to place a volume).
AFFINE_RAS = oblique_affine((1.0, 1.0, 1.0))
# Array axes point Left, Posterior, Superior (the DICOM/ITK convention).
AFFINE_LPS = oblique_affine((1.0, 1.0, 1.0), flip_axes=(0, 1))
# Array axes point Posterior, Inferior, Right (a sagittal acquisition).
AFFINE_PIR = oblique_affine((1.0, 1.0, 1.0), flip_axes=(0, 1), permutation=(1, 2, 0))
AFFINE_ANISO = oblique_affine((0.9, 1.3, 3.0))
# Rotated 20 deg about x and 25 deg about y, anisotropic, with one flipped axis.
AFFINE_OBLIQUE = oblique_affine((1.1, 0.9, 1.4), (20.0, 25.0, 0.0), flip_axes=(0,))


def world_coords(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """World mm coordinates of every voxel centre, shape (3, *shape)."""
    idx = np.indices(tuple(shape[:3]), dtype=np.float64).reshape(3, -1)
    world = affine[:3, :3] @ idx + affine[:3, 3:4]
    return world.reshape((3, *shape[:3]))


def smooth_pattern(
    shape: Sequence[int], affine: np.ndarray, *, wavelength: float = 40.0
) -> np.ndarray:
    """A smooth positive test image defined in world mm (so any grid samples the same function).

    A low-frequency sinusoid times a wide Gaussian: linear interpolation error stays small.
    """
    x, y, z = world_coords(shape, affine)
    k = 2 * np.pi / wavelength
    wave = 1.0 + 0.5 * np.sin(k * x + 0.3) * np.cos(k * y - 0.2) * np.cos(0.7 * k * z)
    blob = np.exp(-(x**2 + y**2 + z**2) / (2 * (2.0 * wavelength) ** 2))
    return (wave * blob).astype(np.float32)


def ball(shape: Sequence[int], affine: np.ndarray, radius: float, center=(0.0, 0.0, 0.0)):
    """A binary uint8 ball of `radius` mm around a world point."""
    x, y, z = world_coords(shape, affine)
    c = np.asarray(center, dtype=np.float64)
    return (((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) <= radius**2).astype(np.uint8)


def write_nifti(
    path: str | Path,
    data: np.ndarray,
    affine: np.ndarray | None = None,
    *,
    dtype: np.dtype | type | str | None = None,
    slope: float | None = None,
    inter: float | None = None,
    qform_code: int = 1,
    sform_code: int = 1,
    nifti2: bool = False,
) -> Path:
    """Write `data` with nibabel, exactly as given (no scaling unless slope/inter are set).

    With slope/inter, the raw array is stored as is and the header says
    value = raw * slope + inter, so readers must apply the scaling.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    raw = np.asarray(data) if dtype is None else np.asarray(data).astype(dtype)
    if raw.dtype == bool:
        raw = raw.astype(np.uint8)
    cls = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    img = cls(raw, affine)
    img.set_data_dtype(raw.dtype)
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=sform_code)
    if slope is not None or inter is not None:
        img.header.set_slope_inter(1.0 if slope is None else slope, 0.0 if inter is None else inter)
        _save_raw(img.header, path, raw)
    else:
        nib.save(img, path)
    return path


def _save_raw(header: nib.Nifti1Header, path: Path, raw: np.ndarray) -> None:
    """Write header and raw array bytes verbatim (nib.save would re-derive the scale factors)."""
    header = header.copy()
    header.set_data_shape(raw.shape)
    header.set_data_dtype(raw.dtype)
    # Single-file NIfTI: header, 4-byte extension flag (no extensions), then the voxels.
    header["vox_offset"] = header.single_vox_offset
    with nib.openers.ImageOpener(path, "wb") as fobj:
        header.write_to(fobj)
        fobj.write(b"\x00" * (int(header["vox_offset"]) - fobj.tell()))
        fobj.write(np.asarray(raw).tobytes(order="F"))
