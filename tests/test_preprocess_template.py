"""preprocess --space template: subjects registered to MNI152 onto the paired engine's grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import h5py
import nibabel as nib
import numpy as np
import pytest
from cli_runner import exit_code
from niftis import centred, oblique_affine, rotation, write_nifti
from scipy import ndimage

from synthbrain.errors import InputError
from synthbrain.io.dataset import read_info
from synthbrain.io.geometry import resample_array
from synthbrain.preprocessing.run import preprocess

SPACING, GRID = 4.0, (48, 56, 48)  # registration and grids at 4 mm keep these tests fast
LESION_MM, LESION_RADIUS = np.array([-30.0, -14.0, 22.0]), 10.0  # left white matter, MNI mm
TPL_FIELDS = ("t1", "brain", "affine")


@pytest.fixture(scope="module")
def tpl() -> dict[str, np.ndarray]:
    """The 2 mm MNI152 template (what the scans are made of) and the 4 mm grid it lands on."""
    from synthbrain.spatial.template import template_arrays

    fine = dict(zip(TPL_FIELDS, template_arrays(2.0), strict=True))
    coarse = dict(zip(TPL_FIELDS, template_arrays(SPACING, GRID), strict=True))
    return {**fine, **{f"grid_{k}": v for k, v in coarse.items()}}


def _world(angles, shift) -> np.ndarray:
    """Scanner world -> template world: a rotation and a shift (what registration must find)."""
    world = np.eye(4)
    world[:3, :3] = rotation(angles)
    world[:3, 3] = shift
    return world


def _through(data: np.ndarray, tpl: dict, world: np.ndarray, affine, shape, order=1):
    """Template-space `data` as a scanner with `affine` (scanner mm) sees it."""
    return resample_array(data, tpl["affine"], shape, world @ affine, order=order)


def _lesion(tpl: dict) -> np.ndarray:
    """A 10 mm ball in the left white matter, on the 2 mm template grid."""
    idx = np.indices(tpl["t1"].shape).reshape(3, -1)
    mm = tpl["affine"][:3, :3] @ idx + tpl["affine"][:3, 3:4]
    dist = np.linalg.norm(mm - LESION_MM[:, None], axis=0).reshape(tpl["t1"].shape)
    return ((dist <= LESION_RADIUS) & (tpl["brain"] > 0)).astype(np.float32)


class Cohort(NamedTuple):
    """The two input folders and, per good subject, its scan and true scanner → template map."""

    atlas: Path
    healthy: Path
    truth: dict[str, tuple[Path, np.ndarray]]


def write_cohort(root: Path, tpl: dict) -> Cohort:
    """An ATLAS subject (oblique, anisotropic, flipped, shifted, dark lesion) and a healthy folder:
    a permuted scan with a bright skull shell and its brain mask, plus two noise scans."""
    truth = {}
    lesion = _lesion(tpl)
    shape = (58, 46, 64)
    world = _world((7.0, -4.0, 5.0), (9.0, -11.0, 6.0))
    affine = centred(oblique_affine((3.0, 4.2, 2.6), (4.0, 3.0, -6.0), (0,)), shape, (-5, 8, 3))
    t1 = _through(tpl["t1"] * (1.0 - 0.6 * lesion), tpl, world, affine, shape)
    label = _through(lesion, tpl, world, affine, shape) > 0.5
    anat = root / "atlas" / "sub-01" / "ses-1" / "anat"
    write_nifti(anat / "sub-01_ses-1_T1w.nii.gz", (t1 * 600.0).astype(np.float32), affine)
    truth["sub-01_ses-1"] = (anat / "sub-01_ses-1_T1w.nii.gz", world)
    write_nifti(
        anat / "sub-01_ses-1_label-L_desc-T1lesion_mask.nii.gz", label.astype(np.uint8), affine
    )

    healthy = root / "healthy"
    shape = (50, 40, 52)
    world = _world((-5.0, 6.0, 0.0), (-8.0, 12.0, -7.0))
    affine = centred(oblique_affine((4.0, 5.0, 3.5), permutation=(2, 0, 1)), shape, (4, -6, 10))
    brain = tpl["brain"] > 0
    skull = ndimage.binary_dilation(brain, iterations=5) & ~ndimage.binary_dilation(
        brain, iterations=2
    )
    scan = _through(tpl["t1"] + 1.5 * skull, tpl, world, affine, shape)
    mask = _through(tpl["brain"], tpl, world, affine, shape) > 0.5
    write_nifti(healthy / "h-good.nii.gz", (scan * 400.0).astype(np.float32), affine)
    write_nifti(healthy / "h-good_brainmask.nii.gz", mask.astype(np.uint8), affine)
    truth["h-good"] = (healthy / "h-good.nii.gz", world)
    rng = np.random.default_rng(0)
    box = rng.random(shape).astype(np.float32) * 100.0 + 1.0
    write_nifti(healthy / "h-noise.nii.gz", box, affine)
    ball = np.linalg.norm(
        np.indices(shape) - (np.array(shape) - 1)[:, None, None, None] / 2, axis=0
    )
    blob = box * (ball < 18)  # brain-sized noise: registration shapes it onto the brain
    write_nifti(healthy / "h-blob.nii.gz", blob.astype(np.float32), affine)
    return Cohort(root / "atlas", healthy, truth)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, tpl) -> Cohort:
    return write_cohort(tmp_path_factory.mktemp("cohort"), tpl)


@pytest.fixture(scope="module")
def template_h5(cohort, tmp_path_factory):
    """The whole cohort preprocessed once into template space."""
    out = tmp_path_factory.mktemp("out") / "tpl.h5"
    inputs = [cohort.atlas, cohort.healthy]
    report = preprocess(inputs, out, space="template", spacing=SPACING, grid=GRID)
    return out, report


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * (a & b).sum() / (a.sum() + b.sum()))


def _moved(world: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Template points [3, N] carried back to the scanner by the inverse of `world`."""
    return (np.linalg.inv(world) @ np.vstack([points, np.ones(points.shape[1])]))[:3]


def test_subjects_land_on_the_template_grid(template_h5, cohort, tpl):
    out, report = template_h5
    assert report.subjects == ["h-good", "sub-01_ses-1"] and report.space == "template"
    info = read_info(out)
    assert info["space"] == "template" and info["grid"] == list(GRID)
    assert info["spacing"] == [SPACING] * 3
    brain, grid_affine = tpl["grid_brain"] > 0, tpl["grid_affine"]
    points = grid_affine[:3, :3] @ np.argwhere(brain)[::40].T + grid_affine[:3, 3:4]
    with h5py.File(out) as h5:
        for sid in report.subjects:
            group = h5["subjects"][sid]
            assert group.attrs["space"] == "template"
            np.testing.assert_allclose(group.attrs["affine"], grid_affine, atol=1e-9)
            reg = json.loads(group.attrs["registration"])
            assert reg["contrast"] == "t1" and reg["overlap"] > 0.8
            path, world = cohort.truth[sid]
            # the template brain reaches the scanner within half a grid voxel of the truth
            error = np.abs(_moved(np.array(reg["world"]), points) - _moved(world, points))
            assert error.max() < SPACING / 2, (sid, error.max())
            mask = group["brain_mask"][()] > 0
            assert _dice(mask, brain) > 0.9, sid
            # the image is the scan as the true map puts it on the grid, and like the template
            img = nib.load(path)
            ideal = resample_array(img.get_fdata(), world @ img.affine, GRID, grid_affine)
            image = group["images"][0]
            both = mask & brain
            assert np.corrcoef(image[both], ideal[both])[0, 1] > 0.95, sid
            assert np.corrcoef(image[both], tpl["grid_t1"][both])[0, 1] > 0.9, sid
            assert image.min() >= 0.0 and image.max() <= 1.0 and not image[~mask].any()


def test_the_skull_shell_stays_outside(template_h5, tpl):
    """The given brain mask keeps the bright shell out of the registered image."""
    out, _ = template_h5
    with h5py.File(out) as h5:
        image = h5["subjects/h-good/images"][0]
    far = ~ndimage.binary_dilation(tpl["grid_brain"] > 0, iterations=2)
    assert not image[far].any()


def test_lesion_labels_stay_binary_and_in_place(template_h5, tpl):
    out, _ = template_h5
    with h5py.File(out) as h5:
        labels = h5["subjects/sub-01_ses-1/labels"][()]
    assert set(np.unique(labels)) == {0, 1}
    centre = (
        tpl["grid_affine"][:3, :3] @ np.array(ndimage.center_of_mass(labels))
        + tpl["grid_affine"][:3, 3]
    )
    assert np.linalg.norm(centre - LESION_MM) < SPACING
    ml = labels.sum() * SPACING**3 / 1000.0
    assert abs(ml / (4.0 / 3.0 * np.pi * LESION_RADIUS**3 / 1000.0) - 1.0) < 0.35


def test_noise_is_skipped_with_a_clear_reason(template_h5, cohort):
    _, report = template_h5
    reasons = dict(report.skipped)
    assert sorted(reasons) == ["h-blob", "h-noise"]
    for sid, reason in reasons.items():
        assert reason.startswith(str(cohort.healthy / f"{sid}.nii.gz") + ": cannot register"), (
            reason
        )
        assert "MNI152" in reason and "--in-template-space" not in reason
    assert "correlates with the template T1" in reasons["h-blob"]
    fingerprint = json.loads(report.fingerprint.read_text())
    assert fingerprint["options"]["space"] == "template"
    assert [s for s, _ in fingerprint["skipped"]] == ["h-blob", "h-noise"]


def test_strict_stops_at_the_noise_and_writes_nothing(cohort, tmp_path):
    out = tmp_path / "strict.h5"
    with pytest.raises(InputError, match="cannot register") as err:
        preprocess([cohort.healthy], out, space="template", spacing=SPACING, grid=GRID, strict=True)
    assert err.value.path is not None and "h-" in Path(err.value.path).name
    assert list(tmp_path.iterdir()) == []


def test_native_stays_the_default(cohort, tmp_path, tpl):
    report = preprocess([cohort.atlas], tmp_path / "n.h5", spacing=SPACING, grid_multiple=8)
    info = read_info(tmp_path / "n.h5")
    assert report.space == info["space"] == "native"
    with h5py.File(tmp_path / "n.h5") as h5:
        group = h5["subjects/sub-01_ses-1"]
        assert group.attrs["space"] == "native" and "registration" not in group.attrs
    with pytest.raises(InputError, match="space must be one of native, template"):
        preprocess([cohort.atlas], tmp_path / "x.h5", space="mni")


def test_default_template_grid_is_the_paired_grid(cohort, tmp_path, tpl):
    from synthbrain.preprocessing.prepare import template_grid

    assert template_grid(2.0) == [96, 112, 96] and template_grid(1.0) == [192, 224, 192]
    assert template_grid(SPACING, 8) == list(GRID)


_cli = exit_code


def test_cli_space_option(cohort, tmp_path, tpl, capsys):
    out = tmp_path / "cli.h5"
    args = ["preprocess", str(cohort.atlas), "--out", str(out), "--spacing", "4"]
    assert _cli([*args, "--space", "mni"]) == 2
    assert "space" in capsys.readouterr().err and not out.exists()
    assert _cli([*args, "--space", "template", "--grid", "48,56,48", "--quiet"]) == 0
    assert read_info(out)["space"] == "template"
    with h5py.File(out) as h5:
        np.testing.assert_allclose(h5["subjects/sub-01_ses-1"].attrs["affine"], tpl["grid_affine"])
