"""NIfTI loading, saving and geometry: odd orientations, obliquity, scaling, bad files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

# tests/ is on sys.path (rootdir conftest, no __init__.py), so the helpers import as `niftis`.
from niftis import (
    AFFINE_ANISO,
    AFFINE_LPS,
    AFFINE_OBLIQUE,
    AFFINE_PIR,
    AFFINE_RAS,
    ball,
    centred,
    oblique_affine,
    smooth_pattern,
    world_coords,
    write_nifti,
)

from synthbrain.errors import InputError
from synthbrain.io import nifti
from synthbrain.io.nifti import (
    GridTransform,
    Volume,
    crop_or_pad,
    fov_center,
    from_grid,
    grid_for,
    load_volume,
    reorient_ras,
    resample,
    resample_to,
    save_volume,
    shift_affine,
    to_grid,
    undo_crop_or_pad,
)

SHAPE = (20, 16, 12)
# Second oblique case: rotated 15 deg about x and 30 deg about y, permuted, anisotropic, flipped.
AFFINE_OBLIQUE2 = oblique_affine((0.9, 1.3, 3.0), (15.0, 30.0, 0.0), (1,), permutation=(2, 0, 1))
GEOMETRIES = {
    "lps": AFFINE_LPS,
    "pir": AFFINE_PIR,
    "aniso": AFFINE_ANISO,
    "oblique": AFFINE_OBLIQUE,
    "oblique2": AFFINE_OBLIQUE2,
}


def scan_file(tmp_path: Path, name: str, affine: np.ndarray, shape=SHAPE, **kw) -> Path:
    """Write the smooth world-space pattern on a grid centred at the origin."""
    affine = centred(affine, shape)
    return write_nifti(tmp_path / f"{name}.nii.gz", smooth_pattern(shape, affine), affine, **kw)


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_load_keeps_voxel_order_and_affine(tmp_path, name):
    path = scan_file(tmp_path, name, GEOMETRIES[name])
    vol = load_volume(path)
    ref = nib.load(path)
    assert vol.data.dtype == np.float32 and vol.shape == SHAPE
    np.testing.assert_array_equal(vol.data, ref.get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(vol.affine, ref.affine)
    assert vol.path == path and vol.header["sform_code"] == 1
    np.testing.assert_allclose(vol.spacing, np.sqrt((ref.affine[:3, :3] ** 2).sum(0)))


def test_int16_with_slope_and_intercept_loads_scaled_float(tmp_path):
    raw = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE) % 300
    path = write_nifti(tmp_path / "scaled.nii", raw, AFFINE_RAS, slope=0.5, inter=-7.0)
    vol = load_volume(path)
    assert vol.data.dtype == np.float32
    np.testing.assert_allclose(vol.data, raw * 0.5 - 7.0)


def test_int16_without_scaling_loads_as_float(tmp_path):
    raw = (np.arange(np.prod(SHAPE)) % 1000 - 200).astype(np.int16).reshape(SHAPE)
    vol = load_volume(write_nifti(tmp_path / "int.nii.gz", raw, AFFINE_LPS))
    assert vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, raw.astype(np.float32))


def test_nifti2_and_uncompressed_files_load(tmp_path):
    data = smooth_pattern(SHAPE, AFFINE_RAS)
    vol = load_volume(write_nifti(tmp_path / "two.nii", data, AFFINE_RAS, nifti2=True))
    np.testing.assert_array_equal(vol.data, data)
    assert isinstance(vol.header, nib.Nifti2Header)


@pytest.mark.parametrize("extra", [(1,), (1, 1)])
def test_single_volume_4d_and_5d_are_squeezed(tmp_path, extra):
    data = smooth_pattern(SHAPE, AFFINE_RAS)
    vol = load_volume(write_nifti(tmp_path / "four.nii.gz", data.reshape(SHAPE + extra)))
    assert vol.shape == SHAPE
    np.testing.assert_array_equal(vol.data, data)


def test_qform_only_and_no_codes_follow_nibabel(tmp_path):
    data = smooth_pattern(SHAPE, AFFINE_RAS)
    for codes in [(1, 0), (0, 0)]:
        path = write_nifti(tmp_path / f"c{codes}.nii", data, AFFINE_PIR, qform_code=codes[0],
                           sform_code=codes[1])  # fmt: skip
        np.testing.assert_array_equal(load_volume(path).affine, nib.load(path).affine)


def assert_input_error(path: Path, match: str, **kw) -> InputError:
    """load_volume(path) raises InputError that names the file and matches `match`."""
    with pytest.raises(InputError, match=match) as info:
        load_volume(path, **kw)
    assert path.name in str(info.value)
    assert "\n" not in str(info.value)
    return info.value


def test_multi_volume_4d_is_rejected(tmp_path):
    path = write_nifti(tmp_path / "dwi.nii.gz", np.ones(SHAPE + (3,), np.float32))
    assert_input_error(path, "3 volumes")


def test_2d_data_is_rejected(tmp_path):
    assert_input_error(write_nifti(tmp_path / "flat.nii", np.ones((8, 8), np.float32)), "3-D")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_image_is_rejected(tmp_path, bad):
    data = smooth_pattern(SHAPE, AFFINE_RAS)
    data[3, 4, 5] = bad
    assert_input_error(write_nifti(tmp_path / "nan.nii.gz", data), "NaN or infinite")


def test_all_zero_image_is_rejected(tmp_path):
    path = write_nifti(tmp_path / "zeros.nii.gz", np.zeros(SHAPE, np.int16))
    assert_input_error(path, "empty")


def test_missing_file_and_folder_are_rejected(tmp_path):
    assert_input_error(tmp_path / "nothing.nii.gz", "not found")
    (tmp_path / "dir.nii").mkdir()
    assert_input_error(tmp_path / "dir.nii", "folder")


def test_non_nifti_files_are_rejected(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert_input_error(text, "not a NIfTI")
    fake = tmp_path / "fake.nii"
    fake.write_text("hello world " * 100)
    assert_input_error(fake, "not a readable NIfTI")
    not_gz = tmp_path / "plain.nii.gz"
    not_gz.write_bytes(b"\x00" * 400)
    assert_input_error(not_gz, "not a readable NIfTI")
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    assert_input_error(empty, "not a readable NIfTI")


def test_truncated_uncompressed_file_is_rejected(tmp_path):
    path = write_nifti(tmp_path / "full.nii", smooth_pattern(SHAPE, AFFINE_RAS))
    cut = tmp_path / "cut.nii"
    cut.write_bytes(path.read_bytes()[:-100])
    assert_input_error(cut, "truncated")


def test_truncated_gzip_file_is_rejected(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.random(SHAPE).astype(np.float32)  # incompressible, so the cut lands in the data
    path = write_nifti(tmp_path / "full.nii.gz", data)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.8)])
    with gzip.open(cut) as fobj:  # the header itself is still readable
        assert len(fobj.read(348)) == 348
    assert_input_error(cut, "truncated")


# ---------------------------------------------------------------- masks and labels


@pytest.mark.parametrize(
    "values, dtype",
    [((0, 1), np.uint8), ((0, 255), np.uint8), ((0, 1), bool), ((0.0, 1.0), np.float32),
     ((0, 1), np.int16), ((0, 255), np.float64)],
)  # fmt: skip
def test_binary_masks_load_as_uint8(tmp_path, values, dtype):
    sphere = ball(SHAPE, centred(AFFINE_RAS, SHAPE), 4.0)
    data = np.where(sphere > 0, values[1], values[0]).astype(dtype)
    vol = load_volume(write_nifti(tmp_path / "m.nii.gz", data), kind="mask")
    assert vol.data.dtype == np.uint8
    np.testing.assert_array_equal(vol.data, sphere)


def test_non_binary_mask_rejected_unless_labels(tmp_path):
    data = np.zeros(SHAPE, np.uint8)
    data[2:5, 2:5, 2:5], data[8:10, 8:10, 8:10] = 1, 2
    path = write_nifti(tmp_path / "labels.nii.gz", data)
    assert_input_error(path, "not binary", kind="mask")
    for kw in ({"kind": "mask", "label": True}, {"kind": "label"}):
        vol = load_volume(path, **kw)
        np.testing.assert_array_equal(vol.data, data)
        assert vol.data.dtype == np.uint8


def test_large_labels_keep_their_values(tmp_path):
    data = np.zeros(SHAPE, np.int32)
    data[1, 1, 1], data[2, 2, 2] = 4, 1000
    vol = load_volume(write_nifti(tmp_path / "big.nii", data), kind="label")
    assert vol.data.dtype == np.uint16 and vol.data.max() == 1000


def test_bad_mask_values_are_rejected(tmp_path):
    data = np.zeros(SHAPE, np.float32)
    data[1, 1, 1] = 0.5
    assert_input_error(write_nifti(tmp_path / "soft.nii.gz", data), "non-integer", kind="mask")
    data[1, 1, 1] = -1
    path = write_nifti(tmp_path / "neg.nii.gz", data)
    assert_input_error(path, "negative", kind="label")
    data[1, 1, 1] = np.nan
    assert_input_error(write_nifti(tmp_path / "nanmask.nii", data), "NaN", kind="mask")


def test_empty_mask_loads(tmp_path):
    vol = load_volume(write_nifti(tmp_path / "e.nii.gz", np.zeros(SHAPE, np.uint8)), kind="mask")
    assert not vol.data.any()


# ---------------------------------------------------------------- saving


@pytest.mark.parametrize("codes", [(1, 1), (0, 2), (2, 0), (1, 4)])
def test_save_round_trip_keeps_data_affine_and_codes(tmp_path, codes):
    path = scan_file(tmp_path, "src", AFFINE_OBLIQUE, qform_code=codes[0], sform_code=codes[1])
    vol = load_volume(path)
    out = save_volume(vol, tmp_path / "sub" / "copy.nii.gz")
    back = nib.load(out)
    assert (int(back.header["qform_code"]), int(back.header["sform_code"])) == codes
    np.testing.assert_array_equal(back.affine, vol.affine)
    np.testing.assert_array_equal(back.get_fdata(dtype=np.float32), vol.data)
    assert back.get_data_dtype() == np.float32


def test_save_without_header_and_without_codes(tmp_path):
    data = smooth_pattern(SHAPE, AFFINE_PIR)
    back = nib.load(save_volume(Volume(data, AFFINE_PIR), tmp_path / "new.nii"))
    assert (int(back.header["qform_code"]), int(back.header["sform_code"])) == (1, 1)
    np.testing.assert_allclose(back.affine, AFFINE_PIR, atol=1e-6)
    # A code-0 header with a non-default affine must not lose the geometry.
    hdr = nib.Nifti1Header()
    back = nib.load(save_volume(Volume(data, AFFINE_PIR, hdr), tmp_path / "codes0.nii"))
    np.testing.assert_allclose(back.affine, AFFINE_PIR, atol=1e-6)


def test_save_dtype_policy(tmp_path):
    sphere = ball(SHAPE, centred(AFFINE_RAS, SHAPE), 4.0)
    scaled = write_nifti(tmp_path / "s.nii", sphere.astype(np.int16) + 3, slope=2.0, inter=1.0)
    image = load_volume(scaled)
    assert nib.load(save_volume(image, tmp_path / "img.nii")).get_data_dtype() == np.float32
    cases = [(sphere, None, np.uint8), (sphere.astype(bool), None, np.uint8),
             (sphere.astype(bool), np.float32, np.float32),
             (sphere.astype(np.float32), np.uint8, np.uint8), (image.data, np.int16, np.int16),
             (sphere.astype(np.int32) * 1000, None, np.int16)]  # fmt: skip
    for k, (data, dtype, expected) in enumerate(cases):
        out = save_volume(
            Volume(data, AFFINE_RAS, image.header), tmp_path / f"{k}.nii.gz", dtype=dtype
        )
        back = nib.load(out)
        assert back.get_data_dtype() == expected
        np.testing.assert_array_equal(back.get_fdata(), data.astype(np.float64))
        # masks are stored verbatim (no slope that would turn 1 into 255)
        if expected == np.uint8:
            assert back.dataobj.get_unscaled().max() == 1


def test_save_refuses_non_nifti_names(tmp_path):
    with pytest.raises(InputError, match="out.mgz"):
        save_volume(Volume(np.ones(SHAPE), AFFINE_RAS), tmp_path / "out.mgz")


def crashing_save(img, filename):
    """Write half a file, then fail like a full disk or a kill would."""
    Path(filename).write_bytes(b"\x5c\x01\x00\x00" + b"\x00" * 200)
    raise OSError("No space left on device")


def test_save_is_atomic_when_the_writer_crashes(tmp_path, monkeypatch):
    vol = Volume(smooth_pattern(SHAPE, AFFINE_RAS), AFFINE_RAS)
    monkeypatch.setattr(nifti.nib, "save", crashing_save)
    target = tmp_path / "out" / "scan.nii.gz"
    with pytest.raises(OSError, match="No space"):
        save_volume(vol, target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_failed_overwrite_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "scan.nii"
    save_volume(Volume(np.ones(SHAPE, np.float32), AFFINE_RAS), target)
    before = target.read_bytes()
    monkeypatch.setattr(nifti.nib, "save", crashing_save)
    with pytest.raises(OSError):
        save_volume(Volume(np.zeros(SHAPE, np.float32), AFFINE_RAS), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["scan.nii"]


# ---------------------------------------------------------------- geometry


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_reorient_ras_keeps_every_voxel_in_place(tmp_path, name):
    vol = load_volume(scan_file(tmp_path, name, GEOMETRIES[name]))
    ras = reorient_ras(vol)
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    assert sorted(ras.shape) == sorted(vol.shape)
    # The same world function sampled at the new voxel positions: no interpolation happened.
    np.testing.assert_allclose(ras.data, smooth_pattern(ras.shape, ras.affine), atol=1e-5)
    assert ras.header["sform_code"] == vol.header["sform_code"]
    np.testing.assert_allclose(ras.header.get_sform(), ras.affine, atol=1e-5)
    np.testing.assert_allclose(fov_center(ras.shape, ras.affine), fov_center(vol.shape, vol.affine))


def test_grid_for_is_ras_aligned_and_centred():
    vol = Volume(np.ones(SHAPE, np.float32), centred(AFFINE_OBLIQUE, SHAPE, (5.0, -3.0, 2.0)))
    tf = grid_for(vol, (1.0, 1.5, 2.0), (16, 12, 10))
    np.testing.assert_array_equal(tf.grid_affine[:3, :3], np.diag([1.0, 1.5, 2.0]))
    np.testing.assert_allclose(fov_center(tf.grid_shape, tf.grid_affine), [5.0, -3.0, 2.0])
    tf = grid_for(vol, 2.0, 8, center=np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(fov_center((8, 8, 8), tf.grid_affine), [1.0, 2.0, 3.0])
    assert tf.grid_shape == (8, 8, 8) and tf.grid_spacing == (2.0, 2.0, 2.0)


@pytest.mark.parametrize("name", ["lps", "pir"])
def test_axis_aligned_scan_at_grid_spacing_is_copied_exactly(tmp_path, name):
    vol = load_volume(scan_file(tmp_path, name, GEOMETRIES[name]))
    tf = grid_for(vol, 1.0, (24, 24, 24))
    grid = to_grid(vol, tf)
    ras = reorient_ras(vol)
    # Every source value appears unchanged on the grid (snapped lattice, no blur) ...
    assert np.isin(ras.data, grid).all()
    # ... and the way back is exact.
    np.testing.assert_array_equal(from_grid(grid, tf).data, vol.data)


def voxel_coords(shape, affine: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Voxel coordinates under `target` of every voxel centre of a (shape, affine) grid."""
    to_target = np.linalg.inv(target) @ affine
    idx = np.indices(shape).reshape(3, -1)
    return (to_target[:3, :3] @ idx + to_target[:3, 3:4]).reshape((3, *shape))


def within(coords: np.ndarray, shape, margin: float) -> np.ndarray:
    """Where voxel coordinates lie at least `margin` inside [0, n - 1] on every axis."""
    hi = np.asarray(shape).reshape(3, 1, 1, 1) - 1 - margin
    return np.all((coords >= margin) & (coords <= hi), axis=0)


# Linear interpolation of the smooth pattern (wavelength 40 mm, values ~0.5-1.5) at <= 3 mm
# spacing errs by <= h^2/8 * max|f''| ~ 0.01 per pass (measured: <= 0.017 after two passes);
# a half-voxel mistake in either direction costs >= 0.05 on the same data.
ROUND_TRIP_TOL = 0.025


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_round_trip_to_model_grid_and_back(tmp_path, name):
    vol = load_volume(scan_file(tmp_path, name, GEOMETRIES[name]))
    tf = grid_for(vol, 1.2, (16, 16, 16))
    grid = to_grid(vol, tf)
    # On the grid: the same world function wherever grid voxels lie between source voxel centres
    # (the outer half voxel of the FOV holds edge values), and 0 outside the scan's FOV.
    in_source = voxel_coords(tf.grid_shape, tf.grid_affine, vol.affine)
    between = within(in_source, vol.shape, 0.0)
    assert between.mean() > 0.2
    truth = smooth_pattern(tf.grid_shape, tf.grid_affine)
    assert np.abs(grid - truth)[between].max() < ROUND_TRIP_TOL
    assert (grid[~within(in_source, vol.shape, -0.5)] == 0).all()
    back = from_grid(grid, tf)
    # Back on the source grid: voxels one voxel inside both FOVs match the original.
    inside = within(voxel_coords(vol.shape, vol.affine, tf.grid_affine), tf.grid_shape, 1.0)
    inside &= within(np.indices(vol.shape).astype(float), vol.shape, 1.0)
    assert inside.mean() > 0.2
    assert np.abs(back.data - vol.data)[inside].max() < ROUND_TRIP_TOL
    # Geometry is restored exactly, also through a save and reload.
    assert back.shape == vol.shape and back.data.dtype == np.float32
    np.testing.assert_array_equal(back.affine, vol.affine)
    reloaded = nib.load(save_volume(back, tmp_path / "back.nii.gz"))
    np.testing.assert_array_equal(reloaded.affine, vol.affine)
    assert reloaded.shape == vol.shape
    for code in ("qform_code", "sform_code"):
        assert reloaded.header[code] == vol.header[code]


@pytest.mark.parametrize("name", ["oblique", "aniso"])
def test_mask_round_trip_nearest_neighbour(tmp_path, name):
    affine = centred(GEOMETRIES[name], SHAPE)
    sphere = ball(SHAPE, affine, 6.0)
    mask = load_volume(write_nifti(tmp_path / "m.nii.gz", sphere, affine), kind="mask")
    tf = grid_for(mask, 1.0, (32, 32, 32))
    grid = to_grid(mask, tf, order=0)
    assert grid.dtype == np.uint8 and set(np.unique(grid)) <= {0, 1}
    # The ball drawn directly on the grid agrees apart from boundary voxels.
    direct = ball(tf.grid_shape, tf.grid_affine, 6.0)
    assert dice(grid, direct) > 0.85
    back = from_grid(grid, tf, order=0)
    assert back.data.dtype == np.uint8 and dice(back.data, sphere) > 0.85


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two binary arrays."""
    a, b = a > 0, b > 0
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def test_field_of_view_edges_follow_voxel_extents():
    # Source voxel centres at 0, 2, 4, 6 mm along x: the FOV is [-1, 7] mm.
    data = np.tile(np.arange(1.0, 5.0, dtype=np.float32)[:, None, None], (1, 4, 4))
    vol = Volume(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    tf = grid_for(vol, 0.5, (24, 1, 1), center=(3.0, 3.0, 3.0), snap=False)
    x = tf.grid_affine[0, 3] + 0.5 * np.arange(24)  # -2.75 ... 8.75: no point on an edge
    line = to_grid(vol, tf, fill=-1.0)[:, 0, 0]
    inside = (x > -1) & (x < 7)
    np.testing.assert_array_equal(line[~inside], -1.0)
    # Linear between centres, edge value over the outer half voxels.
    np.testing.assert_allclose(line[inside], np.clip(1 + x[inside] / 2, 1, 4), atol=1e-6)
    nearest = to_grid(vol, tf, order=0)[:, 0, 0]
    np.testing.assert_array_equal(nearest[inside], np.clip(np.round(1 + x[inside] / 2), 1, 4))


def test_from_grid_fill_and_shape_check():
    vol = Volume(np.ones(SHAPE, np.float32), centred(AFFINE_PIR, SHAPE))
    tf = grid_for(vol, 1.0, (6, 6, 6))
    back = from_grid(np.ones(tf.grid_shape, np.float32), tf, fill=-5.0)
    centre_voxel = tuple(n // 2 for n in SHAPE)
    assert back.data[centre_voxel] == 1.0 and back.data[0, 0, 0] == -5.0
    with pytest.raises(ValueError, match="grid shape"):
        from_grid(np.ones((5, 6, 6)), tf)


def test_grid_transform_attrs_round_trip_through_json():
    vol = Volume(np.ones(SHAPE, np.float32), centred(AFFINE_OBLIQUE, SHAPE))
    tf = grid_for(vol, 1.5, (10, 12, 14))
    again = GridTransform.from_attrs(json.loads(json.dumps(tf.attrs())))
    assert again.grid_shape == tf.grid_shape and again.source_shape == tf.source_shape
    np.testing.assert_array_equal(again.grid_affine, tf.grid_affine)
    np.testing.assert_array_equal(again.source_affine, tf.source_affine)


def test_resample_and_resample_to():
    affine = centred(AFFINE_LPS, SHAPE)
    vol = Volume(smooth_pattern(SHAPE, affine), affine)
    coarse = resample(vol, 2.0)
    assert coarse.shape == (10, 8, 6) and np.allclose(coarse.spacing, 2.0)
    np.testing.assert_allclose(fov_center(coarse.shape, coarse.affine), [0, 0, 0], atol=1e-9)
    assert nib.aff2axcodes(coarse.affine) == ("L", "P", "S")
    np.testing.assert_allclose(coarse.data, smooth_pattern(coarse.shape, coarse.affine), atol=0.02)
    same = resample_to(vol, vol.shape, vol.affine)
    np.testing.assert_array_equal(same.data, vol.data)


def test_crop_or_pad_and_undo():
    data = np.arange(2 * 7 * 6 * 5, dtype=np.float32).reshape(2, 7, 6, 5)
    out, offsets = crop_or_pad(data, (4, 8, 5))
    assert out.shape == (2, 4, 8, 5) and offsets == (1, -1, 0)
    np.testing.assert_array_equal(out[:, :, 1:7], data[:, 1:5])
    assert (out[:, :, 0] == 0).all() and (out[:, :, 7] == 0).all()
    restored = undo_crop_or_pad(out, offsets, data.shape)
    np.testing.assert_array_equal(restored[:, 1:5], data[:, 1:5])
    assert (restored[:, 0] == 0).all()
    # The cropped array's affine puts every kept voxel at the same world position.
    affine = centred(AFFINE_OBLIQUE, data.shape[1:])
    moved = affine @ shift_affine(offsets)
    w_crop = world_coords(out.shape[1:], moved)[:, 0, 1, 0]
    w_orig = world_coords(data.shape[1:], affine)[:, 1, 0, 0]
    np.testing.assert_allclose(w_crop, w_orig)
