"""enhance's same-subject check (`spatial.agreement`): edges of one subject's contrasts line up,
another subject's do not; refused inputs give one line naming the file, exit 2, nothing written."""

from __future__ import annotations

import numpy as np
import pytest
from cli_runner import invoke
from niftis import AFFINE_OBLIQUE, ball, centred, smooth_pattern, write_nifti

from synthbrain.errors import InputError
from synthbrain.io.nifti import Volume
from synthbrain.spatial.agreement import (
    MIN_EDGE_AGREEMENT,
    check_same_subject,
    edge_agreement,
    voxel_spacing,
)


def phantom(k: int):  # noqa: ANN201
    from synthbrain.phantom import draw_subject, make_subject
    from synthbrain.rng import derive_seed, generator_for

    params = draw_subject(generator_for(derive_seed(77, k)), lesion="tumor",
                          contrasts=["t1", "t2", "flair"], spacing=2.0)  # fmt: skip
    return make_subject(params)


def test_one_subjects_contrasts_agree_and_another_subjects_do_not():
    a, b = phantom(0), phantom(1)
    spacing = voxel_spacing(a.affine)
    for contrast in ("t2", "flair"):
        assert edge_agreement(a.images["t1"], a.images[contrast], spacing) > 0.5
        assert edge_agreement(a.images["t1"], b.images[contrast], spacing) < MIN_EDGE_AGREEMENT


def test_an_image_without_edges_scores_zero_and_is_refused_by_name(tmp_path):
    shape = (20, 22, 14)
    aff = centred(AFFINE_OBLIQUE, shape)
    t1 = Volume((smooth_pattern(shape, aff) * 300 + 40) * ball(shape, aff, 9.0), aff)
    flat = Volume(np.ones(shape, np.float32), aff, path=tmp_path / "flat.nii.gz")
    assert edge_agreement(t1.data, flat.data, voxel_spacing(aff)) == 0.0
    with pytest.raises(InputError, match="does not line up with t1") as err:
        check_same_subject(t1, flat, "t2")
    assert err.value.path == tmp_path / "flat.nii.gz"


def _pattern(path, shape, aff, wavelength: float, scale: float):  # noqa: ANN001, ANN202
    data = (smooth_pattern(shape, aff, wavelength=wavelength) * scale + 40) * ball(shape, aff, 9.0)
    return write_nifti(path, data, aff, dtype=np.int16)


def test_enhance_refuses_t2_and_flair_of_another_subject(tmp_path, capsys):
    shape = (20, 22, 14)
    aff = centred(AFFINE_OBLIQUE, shape)
    t1 = _pattern(tmp_path / "t1.nii.gz", shape, aff, 40.0, 300)
    t2 = _pattern(tmp_path / "t2.nii.gz", shape, aff, 11.0, 600)
    flair = _pattern(tmp_path / "flair.nii.gz", shape, aff, 40.0, 900)
    out = tmp_path / "t1gd.nii.gz"
    args = ["enhance", "--t1", str(t1), "--t2", str(t2), "--flair", str(flair), "--out", str(out)]
    code, _, err = invoke(args, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "t2.nii.gz" in err and "does not line up with t1" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "flair.nii.gz", "t1.nii.gz", "t2.nii.gz"]  # fmt: skip
