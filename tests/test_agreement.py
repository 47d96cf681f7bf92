"""enhance's same-subject check (`spatial.agreement`): edges of one subject's contrasts line up,
another subject's do not; refused inputs give one line naming the file, exit 2, nothing written."""

from __future__ import annotations

import numpy as np
import pytest
from cli_runner import invoke
from niftis import AFFINE_OBLIQUE, ball, centred, smooth_pattern, write_nifti

from synthbrain.errors import InputError
from synthbrain.io.nifti import Volume, voxel_sizes
from synthbrain.spatial.agreement import (
    MIN_EDGE_AGREEMENT,
    check_same_subject,
    edge_agreement,
)


@pytest.fixture(scope="module")
def phantoms():  # noqa: ANN201
    """Two phantom subjects (2 mm) with T1, T2 and FLAIR."""
    from synthbrain.phantom import draw_subject, make_subject
    from synthbrain.rng import derive_seed, generator_for

    return [make_subject(draw_subject(generator_for(derive_seed(77, k)), lesion="tumor",
                                      contrasts=["t1", "t2", "flair"], spacing=2.0))
            for k in range(2)]  # fmt: skip


def test_one_subjects_contrasts_agree_and_another_subjects_do_not(phantoms):
    a, b = phantoms
    spacing = voxel_sizes(a.affine)
    for contrast in ("t2", "flair"):
        assert edge_agreement(a.images["t1"], a.images[contrast], spacing) > 0.5
        assert edge_agreement(a.images["t1"], b.images[contrast], spacing) < MIN_EDGE_AGREEMENT


def test_a_fine_grid_is_judged_at_the_coarse_scale(phantoms):
    """Upsampled 2x (1 mm), the same pairs give nearly the same scores."""
    a, b = phantoms
    up = lambda v: np.repeat(np.repeat(np.repeat(v, 2, 0), 2, 1), 2, 2)  # noqa: E731
    for other, expected in ((a, True), (b, False)):
        fine = edge_agreement(up(a.images["t1"]), up(other.images["t2"]), (1.0, 1.0, 1.0))
        coarse = edge_agreement(a.images["t1"], other.images["t2"], voxel_sizes(a.affine))
        assert abs(fine - coarse) < 0.05 and (fine >= MIN_EDGE_AGREEMENT) == expected


def test_an_image_without_edges_scores_zero_and_is_refused_by_name(tmp_path):
    shape = (20, 22, 14)
    aff = centred(AFFINE_OBLIQUE, shape)
    t1 = Volume((smooth_pattern(shape, aff) * 300 + 40) * ball(shape, aff, 9.0), aff)
    flat = Volume(np.ones(shape, np.float32), aff, path=tmp_path / "flat.nii.gz")
    assert edge_agreement(t1.data, flat.data, voxel_sizes(aff)) == 0.0
    with pytest.raises(InputError, match="does not line up with t1") as err:
        check_same_subject(t1, flat, "t2")
    assert err.value.path == tmp_path / "flat.nii.gz"


def test_enhance_refuses_t2_and_flair_of_another_subject(tmp_path, capsys, phantoms):
    a, b = phantoms
    t1 = write_nifti(tmp_path / "t1.nii.gz", a.images["t1"] * 1000, a.affine, dtype=np.float32)
    t2 = write_nifti(tmp_path / "t2.nii.gz", b.images["t2"] * 1000, a.affine, dtype=np.float32)
    flair = write_nifti(tmp_path / "flair.nii.gz", a.images["flair"] * 1000, a.affine,
                        dtype=np.float32)  # fmt: skip
    out = tmp_path / "t1gd.nii.gz"
    args = ["enhance", "--t1", str(t1), "--t2", str(t2), "--flair", str(flair), "--out", str(out)]
    code, _, err = invoke(args, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "t2.nii.gz" in err and "does not line up with t1" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "flair.nii.gz", "t1.nii.gz", "t2.nii.gz"]  # fmt: skip
