"""User-facing input checks: mask values, mask vs image grid, output folder state."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

# tests/ is on sys.path (rootdir conftest, no __init__.py), so the helpers import as `niftis`.
from niftis import AFFINE_OBLIQUE, AFFINE_RAS, ball, centred, smooth_pattern, write_nifti

from synthbrain.errors import InputError
from synthbrain.io.nifti import Volume, load_volume
from synthbrain.io.validate import (
    check_output_dir,
    check_same_grid,
    grid_mismatch_mm,
    mask_brain_overlap,
    require_binary_mask,
    require_nonempty_mask,
    resample_mask_to,
)

SHAPE = (16, 14, 12)


def image_and_mask(tmp_path: Path, affine=AFFINE_OBLIQUE, mask_affine=None, mask_shape=SHAPE):
    """An image file and a ball mask file, loaded."""
    affine = centred(affine, SHAPE)
    mask_affine = affine if mask_affine is None else mask_affine
    image = load_volume(write_nifti(tmp_path / "t1.nii.gz", smooth_pattern(SHAPE, affine), affine))
    sphere = ball(mask_shape, mask_affine, 4.0)
    mask = load_volume(write_nifti(tmp_path / "lesion.nii.gz", sphere, mask_affine), kind="mask")
    return image, mask


# ---------------------------------------------------------------- mask values


def test_require_binary_mask_accepts_and_converts():
    data = np.zeros(SHAPE, np.float32)
    data[2:4, 2:4, 2:4] = 255
    out = require_binary_mask(data, "m.nii")
    assert out.dtype == np.uint8 and out.max() == 1 and out.sum() == 8
    vol = require_binary_mask(Volume(data > 0, AFFINE_RAS, path=Path("m.nii")))
    assert isinstance(vol, Volume) and vol.data.dtype == np.uint8 and vol.data.sum() == 8


def test_require_binary_mask_names_the_file():
    data = np.zeros(SHAPE, np.uint8)
    data[1, 1, 1], data[2, 2, 2] = 1, 3
    with pytest.raises(InputError, match=r"labels\.nii\.gz: mask is not binary") as info:
        require_binary_mask(Volume(data, AFFINE_RAS, path=Path("/x/labels.nii.gz")))
    assert "0, 1, 3" in str(info.value)


def test_require_nonempty_mask(tmp_path):
    empty = Volume(np.zeros(SHAPE, np.uint8), AFFINE_RAS, path=tmp_path / "empty.nii.gz")
    with pytest.raises(InputError, match=r"empty\.nii\.gz: mask is empty"):
        require_nonempty_mask(empty)
    with pytest.raises(InputError, match=r"given\.nii"):
        require_nonempty_mask(empty, "given.nii")
    empty.data[3, 3, 3] = 1
    require_nonempty_mask(empty)


# ---------------------------------------------------------------- mask vs image grid


def test_same_grid_passes(tmp_path):
    image, mask = image_and_mask(tmp_path)
    check_same_grid(image, mask)


def test_shape_mismatch_is_refused_naming_the_mask(tmp_path):
    image, mask = image_and_mask(tmp_path, mask_shape=(16, 14, 10))
    with pytest.raises(InputError, match=r"lesion\.nii\.gz: mask shape .*--resample-mask"):
        check_same_grid(image, mask)


def test_affine_tolerance_is_in_mm(tmp_path):
    image, mask = image_and_mask(tmp_path)
    moved = mask.affine.copy()
    moved[:3, 3] += (0.0, 5e-4, 0.0)  # 0.5 micrometre: within the 1e-3 mm tolerance
    check_same_grid(image, Volume(mask.data, moved, path=mask.path))
    moved[:3, 3] += (0.0, 0.5, 0.0)
    with pytest.raises(InputError, match=r"lesion\.nii\.gz: mask affine differs .*0\.5"):
        check_same_grid(image, Volume(mask.data, moved, path=mask.path))
    # A tiny zoom error grows across the FOV: measured at the far corner, not per entry.
    scaled = mask.affine.copy()
    scaled[:3, :3] *= 1.0002
    assert grid_mismatch_mm(image, Volume(mask.data, scaled)) > 1e-3
    with pytest.raises(InputError):
        check_same_grid(image, Volume(mask.data, scaled, path=mask.path))
    with pytest.raises(InputError, match="t2 affine differs"):
        check_same_grid(image, Volume(mask.data, scaled, path=mask.path), what="t2")


def test_resample_mask_to_image_grid(tmp_path):
    image_affine = centred(AFFINE_OBLIQUE, SHAPE)
    coarse = centred(np.diag([2.0, 2.0, 2.0, 1.0]), (8, 8, 8))
    image, mask = image_and_mask(tmp_path, mask_affine=coarse, mask_shape=(8, 8, 8))
    with pytest.raises(InputError):
        check_same_grid(image, mask)
    out = resample_mask_to(image, mask)
    check_same_grid(image, out)
    assert out.data.dtype == np.uint8 and set(np.unique(out.data)) <= {0, 1}
    assert out.header["sform_code"] == image.header["sform_code"]
    # Nearest neighbour from a 2 mm ball: the 4 mm ball drawn on the image grid, give or take.
    direct = ball(SHAPE, image_affine, 4.0) > 0
    got = out.data > 0
    assert 2 * (got & direct).sum() / (got.sum() + direct.sum()) > 0.7


def test_mask_brain_overlap():
    mask = np.zeros(SHAPE, np.uint8)
    brain = np.zeros(SHAPE, np.uint8)
    mask[0:4, 0:2, 0:1] = 1  # 8 voxels
    brain[0:2, :, :] = 1  # holds 4 of them
    assert mask_brain_overlap(mask, brain) == pytest.approx(0.5)
    assert mask_brain_overlap(Volume(mask, AFFINE_RAS), Volume(brain, AFFINE_RAS)) == 0.5
    assert mask_brain_overlap(np.zeros(SHAPE), brain) == 0.0
    with pytest.raises(ValueError):
        mask_brain_overlap(mask, brain[:-1])


# ---------------------------------------------------------------- output folder

CONFIG = {"engine": "deviation", "n": 4, "grid": (32, 32, 32), "out": Path("/x")}


def write_run(folder: Path, config: dict | str, manifest: bool = True) -> None:
    """A folder that looks like a finished run."""
    folder.mkdir(parents=True, exist_ok=True)
    text = config if isinstance(config, str) else json.dumps(config, default=str)
    (folder / "config.json").write_text(text)
    if manifest:
        (folder / "manifest.jsonl").write_text('{"id": "s0"}\n')


def test_new_and_empty_folders_are_fine(tmp_path):
    assert check_output_dir(tmp_path / "missing", CONFIG) == "new"
    assert check_output_dir(tmp_path, CONFIG) == "new"
    (tmp_path / ".DS_Store").write_text("")
    assert check_output_dir(tmp_path, CONFIG) == "new"


def test_same_run_is_accepted(tmp_path):
    write_run(tmp_path, {**CONFIG, "grid": [32, 32, 32], "out": "/x"})  # as JSON saved it
    assert check_output_dir(tmp_path, CONFIG) == "same"
    assert check_output_dir(tmp_path, CONFIG, resume=True) == "resume"


def test_different_run_is_refused_unless_overwrite_or_resume(tmp_path):
    write_run(tmp_path, {**CONFIG, "n": 8})
    with pytest.raises(InputError, match="different run") as info:
        check_output_dir(tmp_path, CONFIG)
    assert str(tmp_path) in str(info.value)
    assert check_output_dir(tmp_path, CONFIG, overwrite=True) == "overwrite"
    assert check_output_dir(tmp_path, CONFIG, resume=True) == "resume"
    assert check_output_dir(tmp_path, CONFIG, ignore=["n"]) == "same"


def test_manifest_without_config_is_refused_unless_overwrite_or_resume(tmp_path):
    (tmp_path / "manifest.jsonl").write_text('{"id": "s0"}\n')
    with pytest.raises(InputError, match="without config.json"):
        check_output_dir(tmp_path, CONFIG)
    assert check_output_dir(tmp_path, CONFIG, resume=True) == "resume"
    assert check_output_dir(tmp_path, CONFIG, overwrite=True) == "overwrite"


def test_unreadable_config_is_refused_unless_overwrite(tmp_path):
    write_run(tmp_path, "{not json")
    for resume in (False, True):
        with pytest.raises(InputError, match="unreadable config.json"):
            check_output_dir(tmp_path, CONFIG, resume=resume)
    assert check_output_dir(tmp_path, CONFIG, overwrite=True) == "overwrite"


def test_unrelated_files_are_refused_unless_overwrite(tmp_path):
    (tmp_path / "thesis.docx").write_text("important")
    for resume in (False, True):
        with pytest.raises(InputError, match="holds no synthbrain run"):
            check_output_dir(tmp_path, CONFIG, resume=resume)
    assert check_output_dir(tmp_path, CONFIG, overwrite=True) == "overwrite"


def test_output_path_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "out"
    target.write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        check_output_dir(target, CONFIG, overwrite=True)
