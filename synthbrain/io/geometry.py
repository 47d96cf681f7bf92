"""Volumes and their geometry: RAS reorientation, model grids, resampling there and back.

Conventions (nibabel's): an affine maps voxel *centres* (integer indices) to world RAS millimetres,
and a voxel covers its centre ± half a voxel. All resampling goes through world coordinates,
`source_voxel = inv(source_affine) @ target_affine @ target_voxel`, so flipped, permuted,
anisotropic and oblique scans are handled by the same code. A target voxel whose centre falls
inside the source's field of view (the union of its voxels, edges included) gets an interpolated
value, with edge voxels extended over their outer half; a target voxel outside gets `fill`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

Triple = tuple[float, float, float]
Shape3 = tuple[int, int, int]


@dataclass
class Volume:
    """A 3-D scan: voxel data plus the affine (and header) that place it in world RAS mm.

    Attributes:
        data: 3-D array (x, y, z) in the source's voxel order.
        affine: 4x4 float64, voxel index -> world RAS mm (nibabel convention: voxel centres).
        header: the NIfTI header it came from; kept to restore qform/sform codes on save.
        path: the file it was loaded from, for messages.
    """

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | None = None
    path: Path | None = None

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")
        if np.ndim(self.data) != 3:
            raise ValueError(f"Volume data must be 3-D, got shape {np.shape(self.data)}")

    @property
    def spacing(self) -> Triple:
        """Voxel size in mm along each array axis (column norms of the affine)."""
        return tuple(float(s) for s in voxel_sizes(self.affine))  # type: ignore[return-value]

    @property
    def shape(self) -> Shape3:
        """The array shape (x, y, z)."""
        return tuple(int(n) for n in self.data.shape)  # type: ignore[return-value]


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Column norms of the affine's 3x3 part: the voxel size along each array axis."""
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def header_codes(header: nib.Nifti1Header | None) -> tuple[int, int]:
    """The (qform_code, sform_code) of a header; (1, 1) for no header (scanner anatomical)."""
    if header is None:
        return 1, 1
    return int(header["qform_code"]), int(header["sform_code"])


def derive_header(
    header: nib.Nifti1Header | None, affine: np.ndarray, shape: Sequence[int]
) -> nib.Nifti1Header:
    """A copy of `header` describing `affine` and `shape`, with the same qform/sform codes."""
    hdr = nib.Nifti1Header() if header is None else header.copy()
    qcode, scode = header_codes(header)
    hdr.set_data_shape(tuple(int(n) for n in shape))
    # set_qform also rewrites pixdim (the zooms) from the affine, whatever the code.
    hdr.set_qform(affine, code=qcode, strip_shears=True)
    hdr.set_sform(affine, code=scode)
    return hdr


def fov_center(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """World mm position of the centre of a scan's field of view."""
    mid = (np.asarray(shape[:3], dtype=np.float64) - 1.0) / 2.0
    return np.asarray(affine)[:3, :3] @ mid + np.asarray(affine)[:3, 3]


def reorient_ras(vol: Volume) -> Volume:
    """The same scan with its array axes permuted/flipped to be closest to RAS (no resampling).

    Oblique scans keep their obliquity; only the voxel order changes, and the new affine describes
    exactly the same voxel positions. The header's qform/sform codes are kept and its dim_info is
    permuted with the axes.
    """
    ornt = nib.orientations.io_orientation(vol.affine)
    transform = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt("RAS"))
    data = nib.orientations.apply_orientation(vol.data, transform)
    affine = vol.affine @ nib.orientations.inv_ornt_aff(transform, vol.shape)
    header = derive_header(vol.header, affine, data.shape)
    if vol.header is not None:
        dims = vol.header.get_dim_info()
        header.set_dim_info(*(None if d is None else int(transform[d, 0]) for d in dims))
    return Volume(np.ascontiguousarray(data), affine, header, vol.path)


@dataclass
class GridTransform:
    """How a source scan maps onto a RAS-aligned model grid, and back.

    Attributes:
        source_shape: the scan's array shape.
        source_affine: the scan's voxel -> world affine.
        source_header: the scan's header (outputs mapped back carry its qform/sform codes).
        grid_shape: the model grid's shape.
        grid_affine: the model grid's affine (diagonal, positive: RAS-aligned).
    """

    source_shape: Shape3
    source_affine: np.ndarray
    source_header: nib.Nifti1Header | None
    grid_shape: Shape3
    grid_affine: np.ndarray
    source_path: Path | None = field(default=None, compare=False)

    @property
    def grid_spacing(self) -> Triple:
        """Grid voxel size in mm."""
        return tuple(float(s) for s in voxel_sizes(self.grid_affine))  # type: ignore[return-value]

    @property
    def grid_to_source(self) -> np.ndarray:
        """4x4 map from grid voxel indices to source voxel indices."""
        return np.linalg.inv(self.source_affine) @ self.grid_affine

    def attrs(self) -> dict:
        """The transform as JSON-able lists (the header is not included)."""
        return {
            "source_shape": list(self.source_shape),
            "source_affine": np.asarray(self.source_affine).tolist(),
            "grid_shape": list(self.grid_shape),
            "grid_affine": np.asarray(self.grid_affine).tolist(),
        }

    @classmethod
    def from_attrs(cls, attrs: dict, header: nib.Nifti1Header | None = None) -> GridTransform:
        """Rebuild a transform saved with `attrs()`."""
        return cls(
            source_shape=_triple(attrs["source_shape"], int),
            source_affine=np.asarray(attrs["source_affine"], dtype=np.float64),
            source_header=header,
            grid_shape=_triple(attrs["grid_shape"], int),
            grid_affine=np.asarray(attrs["grid_affine"], dtype=np.float64),
        )


def _triple(value: float | Sequence[float], kind: type) -> tuple:
    """A scalar or a length-3 sequence as a 3-tuple of `kind`."""
    values = [value] * 3 if np.isscalar(value) else list(value)  # type: ignore[list-item]
    if len(values) != 3:
        raise ValueError(f"expected a scalar or 3 values, got {value!r}")
    return tuple(kind(v) for v in values)


def _snap_origin(origin: np.ndarray, spacing: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Shift the grid origin (< half a voxel per axis) onto the source lattice where they align."""
    # A scan already at the model spacing and axis-aligned (in any flip/permutation) then maps
    # voxel for voxel onto the grid, so resampling copies values instead of blurring them.
    snapped = origin.copy()
    for j in range(3):
        row = affine[j, :3]
        big = np.abs(row) > 1e-6 * spacing[j]
        if big.sum() == 1 and abs(np.abs(row[big][0]) - spacing[j]) < 1e-6 * spacing[j]:
            steps = np.round((origin[j] - affine[j, 3]) / spacing[j])
            snapped[j] = affine[j, 3] + steps * spacing[j]
    return snapped


def grid_for(
    vol: Volume,
    spacing: float | Sequence[float],
    shape: int | Sequence[int],
    *,
    center: Sequence[float] | np.ndarray | None = None,
    snap: bool = True,
) -> GridTransform:
    """A RAS-aligned grid of `shape` voxels at `spacing` mm centred on the scan.

    Args:
        vol: the source scan (its shape, affine and header are recorded).
        spacing: grid voxel size in mm (scalar or per axis).
        shape: grid size in voxels (scalar or per axis).
        center: world RAS mm point for the grid centre; default the centre of the scan's FOV.
        snap: when the scan is axis-aligned at the grid spacing along a world axis, move the grid
            by less than half a voxel so both lattices coincide (values are then copied exactly).

    Returns:
        The GridTransform; `to_grid` / `from_grid` resample along it.
    """
    spacing_a = np.asarray(_triple(spacing, float))
    shape_t = _triple(shape, int)
    if np.any(spacing_a <= 0) or min(shape_t) < 1:
        raise ValueError(f"grid spacing and shape must be positive, got {spacing!r}, {shape!r}")
    mid = fov_center(vol.shape, vol.affine) if center is None else np.asarray(center, float)
    origin = mid - spacing_a * (np.asarray(shape_t) - 1) / 2.0
    if snap:
        origin = _snap_origin(origin, spacing_a, vol.affine)
    affine = np.diag([*spacing_a, 1.0])
    affine[:3, 3] = origin
    return GridTransform(vol.shape, vol.affine.copy(), vol.header, shape_t, affine, vol.path)


def resample_array(
    data: np.ndarray,
    source_affine: np.ndarray,
    shape: Sequence[int],
    affine: np.ndarray,
    *,
    order: int = 1,
    fill: float = 0.0,
) -> np.ndarray:
    """Resample `data` (on `source_affine`) onto a grid of `shape` voxels placed by `affine`.

    order 0 (nearest, for masks and labels) keeps the dtype; higher orders return float32
    (float64 input stays float64). Target voxels outside the source's FOV get `fill`.
    """
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D array, got shape {data.shape}")
    shape = tuple(int(n) for n in shape)
    voxel_map = np.linalg.inv(np.asarray(source_affine, float)) @ np.asarray(affine, float)
    matrix, offset = voxel_map[:3, :3], voxel_map[:3, 3]
    if shape == data.shape and np.allclose(voxel_map, np.eye(4), rtol=0, atol=1e-9):
        return data.copy() if order == 0 else data.astype(_float_dtype(data), copy=True)
    values = data if order == 0 else data.astype(_float_dtype(data), copy=False)
    # mode="nearest" extends edge voxels over their outer half; `inside` then blanks the rest.
    out = ndimage.affine_transform(
        values, matrix, offset, output_shape=shape, order=order, mode="nearest", prefilter=order > 1
    )
    inside = ndimage.affine_transform(
        np.pad(np.ones(data.shape, np.uint8), 1), matrix, offset + 1.0, output_shape=shape, order=0
    )
    out[inside == 0] = fill
    return out


def _float_dtype(data: np.ndarray) -> type:
    """float64 stays float64; everything else interpolates in float32."""
    return np.float64 if data.dtype == np.float64 else np.float32


def to_grid(vol: Volume, tf: GridTransform, *, order: int = 1, fill: float = 0.0) -> np.ndarray:
    """Resample a scan onto the model grid of `tf`.

    `vol` is usually the scan `tf` was made for, but any volume (a mask on another grid, say) works:
    the mapping goes through world coordinates. Use order 0 for masks and labels, 1 for images.
    """
    grid = (tf.grid_shape, tf.grid_affine)
    return resample_array(vol.data, vol.affine, *grid, order=order, fill=fill)


def from_grid(data: np.ndarray, tf: GridTransform, *, order: int = 1, fill: float = 0.0) -> Volume:
    """Resample model-grid data back onto the source scan's exact grid.

    Returns:
        A Volume with the source's shape and affine and a copy of its header (same qform/sform
        codes). Source voxels outside the grid's FOV get `fill`.
    """
    if tuple(data.shape) != tuple(tf.grid_shape):
        raise ValueError(f"data shape {data.shape} is not the grid shape {tf.grid_shape}")
    source = (tf.source_shape, tf.source_affine)
    out = resample_array(data, tf.grid_affine, *source, order=order, fill=fill)
    header = None if tf.source_header is None else tf.source_header.copy()
    return Volume(out, tf.source_affine.copy(), header, None)


def resample_to(
    vol: Volume,
    shape: Sequence[int],
    affine: np.ndarray,
    *,
    order: int = 1,
    fill: float = 0.0,
    header: nib.Nifti1Header | None = None,
) -> Volume:
    """Resample a volume onto any grid (`shape`, `affine`).

    The result carries `header` if given, else a copy of the volume's own header rewritten for the
    new affine and shape (same qform/sform codes).
    """
    out = resample_array(vol.data, vol.affine, shape, affine, order=order, fill=fill)
    hdr = header.copy() if header is not None else derive_header(vol.header, affine, out.shape)
    return Volume(out, np.asarray(affine, np.float64).copy(), hdr, vol.path)


def resample(vol: Volume, spacing: float | Sequence[float], order: int = 1) -> Volume:
    """The same field of view (centre and axes kept) sampled at a new voxel size."""
    new = np.asarray(_triple(spacing, float))
    old = voxel_sizes(vol.affine)
    shape = np.maximum(1, np.round(np.asarray(vol.shape) * old / new)).astype(int)
    affine = vol.affine.copy()
    affine[:3, :3] = vol.affine[:3, :3] / old * new
    # Keep the FOV centre where it was.
    affine[:3, 3] += fov_center(vol.shape, vol.affine) - fov_center(shape, affine)
    return resample_to(vol, shape, affine, order=order)


def crop_or_pad(
    data: np.ndarray, shape: Sequence[int], *, fill: float = 0.0
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Centre-crop or pad the last len(shape) axes of `data` to `shape`.

    Returns:
        (out, offsets): offsets[i] is the input index of output index 0 along that axis (negative
        when padded). `undo_crop_or_pad(out, offsets, data.shape)` reverses it, and
        `affine @ shift_affine(offsets)` is the affine of `out`.
    """
    lead = data.ndim - len(shape)
    offsets = tuple((n - m) // 2 for n, m in zip(data.shape[lead:], shape, strict=True))
    return _window(data, offsets, tuple(int(m) for m in shape), fill), offsets


def undo_crop_or_pad(
    data: np.ndarray, offsets: Sequence[int], shape: Sequence[int], *, fill: float = 0.0
) -> np.ndarray:
    """Inverse of crop_or_pad: put `data` back into an array of the original `shape`."""
    lead = data.ndim - len(offsets)
    return _window(data, tuple(-o for o in offsets), tuple(shape[lead:]), fill)


def _window(
    data: np.ndarray, offsets: tuple[int, ...], shape: tuple[int, ...], fill: float
) -> np.ndarray:
    """The window of `shape` starting at `offsets` in data's trailing axes, padded with `fill`."""
    lead = data.ndim - len(shape)
    out = np.full(data.shape[:lead] + shape, fill, dtype=data.dtype)
    src, dst = [slice(None)] * lead, [slice(None)] * lead
    for n, m, o in zip(data.shape[lead:], shape, offsets, strict=True):
        lo, hi = max(o, 0), min(o + m, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - o, hi - o))
    out[tuple(dst)] = data[tuple(src)]
    return out


def shift_affine(offsets: Sequence[int]) -> np.ndarray:
    """4x4 voxel translation by `offsets` (the affine of a crop: affine @ shift_affine(offsets))."""
    shift = np.eye(4)
    shift[:3, 3] = np.asarray(offsets[-3:], dtype=np.float64)
    return shift
