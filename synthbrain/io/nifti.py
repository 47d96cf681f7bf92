"""Reading and writing NIfTI volumes: the only place that opens .nii / .nii.gz files.

`load_volume` rejects bad files with an InputError that names the file and the problem, so the
commands can validate every input before they write anything. Geometry (Volume, RAS, model grids,
resampling) lives in `synthbrain.io.geometry` and is re-exported here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from synthbrain.errors import InputError
from synthbrain.io.atomic import atomic_target
from synthbrain.io.geometry import (
    GridTransform,
    Volume,
    crop_or_pad,
    derive_header,
    fov_center,
    from_grid,
    grid_for,
    header_codes,
    reorient_ras,
    resample,
    resample_array,
    resample_to,
    shift_affine,
    to_grid,
    undo_crop_or_pad,
    voxel_sizes,
)

__all__ = [
    "GridTransform",
    "Volume",
    "as_mask_array",
    "crop_or_pad",
    "derive_header",
    "fov_center",
    "from_grid",
    "grid_for",
    "header_codes",
    "load_volume",
    "reorient_ras",
    "resample",
    "resample_array",
    "resample_to",
    "save_volume",
    "shift_affine",
    "to_grid",
    "undo_crop_or_pad",
    "voxel_sizes",
]

Kind = Literal["image", "mask", "label"]
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Float masks written by other tools may carry rounding noise; values this close to 0/1 count.
MASK_ROUNDING = 1e-3


def is_nifti_name(path: str | os.PathLike[str]) -> bool:
    """True when the file name ends in .nii or .nii.gz (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def load_volume(
    path: str | os.PathLike[str], *, kind: Kind = "image", label: bool = False
) -> Volume:
    """Load and check a 3-D NIfTI volume.

    Args:
        path: a .nii or .nii.gz file, in any orientation, spacing or obliquity; a 4-D file is
            accepted when it holds a single volume.
        kind: "image" -> float32 data with scl_slope/scl_inter applied (nibabel's get_fdata
            semantics), must be finite and not all zero. "mask" -> uint8 {0, 1}; the file must
            hold {0, 1}, {0, 255} or booleans. "label" -> a label map (mask with label=True).
        label: for masks, accept any non-negative integer labels (returned as the smallest
            unsigned integer dtype that holds them) instead of requiring a binary mask.

    Returns:
        Volume with data in the file's own voxel order, the file's affine (sform if set, else
        qform, else the pixdim fallback) and a copy of its header.

    Raises:
        InputError: naming the file: missing, not a NIfTI, unreadable or truncated; more than
            one volume; NaN or infinite values; an all-zero image; a non-binary mask.
    """
    if kind not in ("image", "mask", "label"):
        raise ValueError(f"kind must be 'image', 'mask' or 'label', got {kind!r}")
    path = Path(path)
    img = _open_nifti(path)
    data = _squeeze_3d(_read_data(img, path), path)
    if kind == "image":
        data = _image_array(data, path)
    else:
        data = as_mask_array(data, path, label=label or kind == "label")
    return Volume(data, np.asarray(img.affine, dtype=np.float64), img.header.copy(), path)


def _open_nifti(path: Path) -> nib.Nifti1Image:
    """Open a NIfTI-1/2 file's header, or raise InputError saying why not."""
    if not path.exists():
        raise InputError("file not found", path)
    if path.is_dir():
        raise InputError("is a folder, expected a .nii or .nii.gz file", path)
    if not is_nifti_name(path):
        raise InputError("not a NIfTI file (expected a .nii or .nii.gz name)", path)
    try:
        # mmap=False reads the data into memory, detached from the file.
        img = nib.load(path, mmap=False)
    except Exception as exc:  # nibabel raises many types for damaged files
        raise InputError(f"not a readable NIfTI file ({_reason(exc)})", path) from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"not a NIfTI file (read as {type(img).__name__})", path)
    return img


def _read_data(img: nib.Nifti1Image, path: Path) -> np.ndarray:
    """Read every voxel now (catches truncated files), with scaling applied."""
    try:
        data = np.asarray(img.dataobj)
    except Exception as exc:  # EOFError, OSError, zlib.error, ValueError ...
        raise InputError(f"truncated or unreadable image data ({_reason(exc)})", path) from exc
    if data.dtype.kind not in "biuf":
        raise InputError(f"unsupported data type {data.dtype} (expected integers or floats)", path)
    return data


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line errors."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _squeeze_3d(data: np.ndarray, path: Path) -> np.ndarray:
    """3-D data as is; 4-D/5-D data with a single volume squeezed to 3-D; otherwise InputError."""
    if data.ndim < 3:
        problem = f"expected a 3-D volume, got {data.ndim}-D data of shape {data.shape}"
        raise InputError(problem, path)
    extra = data.shape[3:]
    if int(np.prod(extra)) != 1:
        raise InputError(
            f"holds {int(np.prod(extra))} volumes (shape {data.shape}); expected one 3-D volume",
            path,
        )
    return data.reshape(data.shape[:3])


def _image_array(data: np.ndarray, path: Path) -> np.ndarray:
    """Image data as float32, refusing NaN/Inf and all-zero images."""
    out = data.astype(np.float32)
    bad = int(np.count_nonzero(~np.isfinite(out)))
    if bad:
        raise InputError(f"image contains {bad} NaN or infinite voxel values", path)
    if not np.any(out):
        raise InputError("image is empty (every voxel is zero)", path)
    return out


def as_mask_array(
    data: np.ndarray, path: str | os.PathLike[str] | None = None, *, label: bool = False
) -> np.ndarray:
    """Check mask values and return them as an unsigned integer array.

    Binary masks ({0, 1}, {0, 255} or bool) come back as uint8 {0, 1}. With label=True any
    non-negative integer labels are accepted and kept, in the smallest unsigned dtype that holds
    them. Float masks count as integers when every value is within 1e-3 of one.

    Raises:
        InputError: NaN/Inf, non-integer values, negative labels or a non-binary mask.
    """
    if data.dtype == bool:
        return data.astype(np.uint8)
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)):
            raise InputError("mask contains NaN or infinite values", path)
        rounded = np.round(data)
        if np.max(np.abs(data - rounded), initial=0.0) > MASK_ROUNDING:
            raise InputError(_values_problem("mask has non-integer values", data), path)
        data = rounded
    lo, hi = (data.min(), data.max()) if data.size else (0, 0)
    if lo < 0:
        raise InputError(_values_problem("mask has negative values", data), path)
    if label:
        return data.astype(np.min_scalar_type(int(hi)))
    values = set(np.unique(data).tolist())
    if values <= {0, 1}:
        return data.astype(np.uint8)
    if values <= {0, 255}:
        return (data > 0).astype(np.uint8)
    raise InputError(
        _values_problem("mask is not binary (expected values 0/1 or 0/255)", data)
        + "; load it as a label map if it holds several labels",
        path,
    )


def _values_problem(problem: str, data: np.ndarray, show: int = 6) -> str:
    """`problem` plus a few of the values found, for the message."""
    values = np.unique(data)
    shown = ", ".join(f"{v:g}" for v in values[:show].tolist())
    more = f", … ({values.size} distinct)" if values.size > show else ""
    return f"{problem}: found {shown}{more}"


def save_volume(
    vol: Volume,
    path: str | os.PathLike[str],
    *,
    dtype: np.dtype | type | str | None = None,
) -> Path:
    """Write a volume to .nii / .nii.gz atomically (temporary name, fsync, rename).

    The header the volume was derived from is kept (descriptions, units, intent, qform/sform
    codes); its geometry fields are rewritten from `vol.affine`. When both codes are 0 and the
    affine is not the one a reader would rebuild from pixdim, sform_code becomes 2 (aligned) so
    the geometry is not lost. Without a header, both codes are 1 (scanner).

    Args:
        vol: the volume to write.
        path: the target file name, ending in .nii or .nii.gz (the folder is created).
        dtype: on-disk data type. Default: uint8 for bool and integer data that fits in 0..255
            (masks), the smallest of int16/int32 for other integer data, float32 for floats.

    Returns:
        The written path. A failure (or a kill) leaves no file under that name.
    """
    path = Path(path)
    if not is_nifti_name(path):
        raise InputError("output file name must end in .nii or .nii.gz", path)
    out_dtype = np.dtype(dtype) if dtype is not None else default_dtype(vol.data)
    img = _to_image(vol, out_dtype)
    with atomic_target(path) as tmp:
        nib.save(img, tmp)
    return path


def default_dtype(data: np.ndarray) -> np.dtype:
    """On-disk dtype policy: masks/labels as small unsigned ints, images as float32."""
    if data.dtype == bool:
        return np.dtype(np.uint8)
    if data.dtype.kind in "iu":
        lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
        for candidate in (np.uint8, np.int16, np.int32):
            info = np.iinfo(candidate)
            if info.min <= lo and hi <= info.max:
                return np.dtype(candidate)
        return np.dtype(np.int64)
    return np.dtype(np.float32)


def _cast_exact(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast to an integer `dtype` here when that is lossless, so nibabel writes no scaling."""
    # nibabel would otherwise stretch float data over the integer range (a 0/1 mask -> 0/255
    # with slope 1/255): readable, but not what a user expects to find in a mask file.
    if data.dtype == bool:
        data = data.astype(np.uint8)  # nibabel cannot write bool arrays
    if dtype.kind not in "iu" or data.dtype.kind not in "iuf":
        return data
    info = np.iinfo(dtype)
    lo, hi = (data.min(), data.max()) if data.size else (0, 0)
    integral = data.dtype.kind != "f" or bool(np.all(np.mod(data, 1) == 0))
    if integral and info.min <= lo and hi <= info.max:
        return data.astype(dtype)
    return data


def _to_image(vol: Volume, dtype: np.dtype) -> nib.Nifti1Image:
    """A nibabel image for `vol`, its header derived from the source header."""
    data = _cast_exact(vol.data, dtype)
    header = derive_header(vol.header, vol.affine, data.shape)
    qcode, scode = header_codes(vol.header)
    if qcode == 0 and scode == 0 and not np.allclose(header.get_base_affine(), vol.affine):
        header.set_sform(vol.affine, code=2)
    header.set_data_dtype(dtype)
    # Scaling and display range described the source data, not this array.
    header.set_slope_inter(None, None)
    header["cal_min"], header["cal_max"] = 0.0, 0.0
    if vol.header is None:
        header.set_xyzt_units("mm", "sec")
    cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    img = cls(data, vol.affine, header)
    # The constructor may rewrite codes when it thinks the affine changed; put ours back.
    img.header["qform_code"], img.header["sform_code"] = header["qform_code"], header["sform_code"]
    return img
