"""Phantom corpus: reproducibility, exact ground truth, tissue orderings, lesion appearance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from synthbrain.errors import InputError
from synthbrain.phantom import (
    VOLUME_RANGES_ML,
    SubjectParams,
    draw_subject,
    grid_shape,
    iter_subjects,
    make_subject,
    template,
)
from synthbrain.phantom.anatomy import integrate_velocity, phi_lattice, warp_anatomy
from synthbrain.phantom.lesion_shapes import lesion_geometry
from synthbrain.rng import derive_seed, generator_for

ALL = ("t1", "t2", "flair", "t1gd")


def _draw(seed: int, lesion: str, contrasts=ALL, **kw) -> SubjectParams:
    return draw_subject(
        torch.Generator().manual_seed(seed), lesion=lesion, contrasts=contrasts, **kw
    )


@pytest.fixture(scope="module")
def subjects():
    """One 2 mm subject per lesion type, all four contrasts."""
    return {kind: make_subject(_draw(3, kind)) for kind in ("none", "stroke", "wmh", "tumor")}


def _anatomy(subject):
    return warp_anatomy(template(subject.params.spacing), subject.params.anatomy)


def _ring(labels: np.ndarray, brain: np.ndarray, width: int = 2) -> np.ndarray:
    """Brain voxels within `width` voxels of the lesion, outside it."""
    lesion = labels > 0
    return ndimage.binary_dilation(lesion, iterations=width) & ~lesion & (brain > 0)


def _bytes(subject) -> bytes:
    parts = [subject.images[c].tobytes() + subject.healthy[c].tobytes() for c in subject.images]
    return b"".join(parts) + subject.labels.tobytes() + subject.brain_mask.tobytes()


def test_grids_and_template():
    assert grid_shape(2.0) == (96, 112, 96)
    assert grid_shape(1) == (192, 224, 192)
    tpl = template(2.0)
    assert tpl.t1.shape == tpl.gm.shape == tpl.csf.shape == (96, 112, 96)
    assert np.all(np.diag(tpl.affine)[:3] == 2.0)
    assert tpl.csf.min() >= 0
    inside = tpl.brain_mask > 0
    np.testing.assert_allclose((tpl.gm + tpl.wm + tpl.csf)[inside], 1.0, atol=1e-5)
    # Centred on the template: the grid centre sits within a voxel of MNI (0, -18, 0)-ish.
    centre = tpl.affine[:3, :3] @ (np.array(tpl.shape) - 1) / 2 + tpl.affine[:3, 3]
    assert np.all(np.abs(centre - np.array([-1.0, -19.0, 21.0])) <= 2.0)
    assert tpl.t1_means["wm"] > tpl.t1_means["gm"] > tpl.t1_means["csf"]
    with pytest.raises(InputError):
        grid_shape(1.5)


def test_same_seed_same_bytes(subjects):
    params = _draw(3, "stroke")
    assert params.to_json() == subjects["stroke"].params.to_json()
    assert _bytes(make_subject(params)) == _bytes(subjects["stroke"])
    assert _draw(4, "stroke").to_json() != params.to_json()


def test_json_round_trip_replays_subject(subjects):
    text = subjects["tumor"].params.to_json()
    again = SubjectParams.from_json(text)
    assert again.to_json() == text
    assert _bytes(make_subject(again)) == _bytes(subjects["tumor"])


def test_images_in_unit_range_zero_outside_brain(subjects):
    for subject in subjects.values():
        outside = subject.brain_mask == 0
        assert subject.labels.dtype == np.uint8 and subject.brain_mask.dtype == np.uint8
        for c in ALL:
            for image in (subject.images[c], subject.healthy[c]):
                assert image.dtype == np.float32 and image.shape == (96, 112, 96)
                assert image.min() >= 0.0 and image.max() <= 1.0
                assert not image[outside].any()


@pytest.mark.parametrize("kind", ["none", "stroke", "wmh", "tumor"])
def test_image_equals_healthy_outside_lesion(subjects, kind):
    subject = subjects[kind]
    outside = subject.labels == 0
    for c in ALL:
        assert np.array_equal(subject.images[c][outside], subject.healthy[c][outside])
        if kind != "none":
            assert not np.array_equal(subject.images[c], subject.healthy[c])


def test_label_sets_and_lesions_inside_brain(subjects):
    assert set(np.unique(subjects["none"].labels)) == {0}
    assert set(np.unique(subjects["stroke"].labels)) == {0, 1}
    assert set(np.unique(subjects["wmh"].labels)) == {0, 1}
    assert set(np.unique(subjects["tumor"].labels)) == {0, 1, 2, 3}
    for subject in subjects.values():
        assert np.all(subject.brain_mask[subject.labels > 0] == 1)


def test_healthy_tissue_orderings(subjects):
    expected = {
        "t1": ("wm", "gm", "csf"),
        "t1gd": ("wm", "gm", "csf"),
        "t2": ("csf", "gm", "wm"),
        "flair": ("gm", "wm", "csf"),
    }
    for kind in ("none", "tumor"):
        subject = subjects[kind]
        anat = _anatomy(subject)
        probs = {"csf": anat.csf, "gm": anat.gm, "wm": anat.wm}
        for c, order in expected.items():
            means = [subject.healthy[c][probs[t] > 0.9].mean() for t in order]
            assert means[0] > means[1] > means[2], (kind, c, means)


def test_stroke_dark_on_t1_bright_on_t2_flair_rim(subjects):
    subject = subjects["stroke"]
    lesion, ring = subject.labels > 0, _ring(subject.labels, subject.brain_mask)
    assert subject.images["t1"][lesion].mean() < subject.images["t1"][ring].mean() - 0.1
    assert subject.images["t2"][lesion].mean() > subject.images["t2"][ring].mean() + 0.1
    geo = lesion_geometry(_anatomy(subject), subject.params.lesion, 2.0)
    rim = geo.compartments == 2
    assert rim.any() and np.all(lesion[rim])
    assert subject.images["flair"][rim].mean() > subject.images["flair"][ring].mean() + 0.1


def test_wmh_in_white_matter_bright_on_flair(subjects):
    subject = subjects["wmh"]
    anat = _anatomy(subject)
    lesion = subject.labels > 0
    assert np.all(anat.wm[lesion] > 0.5)
    normal_wm = (anat.wm > 0.9) & ~lesion
    flair = subject.images["flair"]
    assert flair[lesion].mean() > flair[normal_wm].mean() + 0.15
    assert flair[lesion].mean() > flair[(anat.gm > 0.9)].mean()
    assert subject.images["t1"][lesion].mean() < subject.images["t1"][normal_wm].mean()


def test_tumour_compartments(subjects):
    subject = subjects["tumor"]
    labels, brain = subject.labels, subject.brain_mask
    ring = _ring(labels, brain)
    enhancing = labels == 3
    rel_gd = subject.images["t1gd"][enhancing].mean() - subject.images["t1gd"][ring].mean()
    rel_t1 = subject.images["t1"][enhancing].mean() - subject.images["t1"][ring].mean()
    assert rel_gd > rel_t1 + 0.1
    assert rel_gd > 0
    assert subject.images["t1"][labels == 1].mean() < subject.images["t1"][ring].mean() - 0.1
    for c in ("t2", "flair"):
        assert subject.images[c][labels == 2].mean() > subject.images[c][ring].mean()
    # Nesting: oedema wraps the core (necrosis and enhancing shell) on every side.
    for core_label in (1, 3):
        assert np.all(labels[ndimage.binary_dilation(labels == core_label)] > 0)


@pytest.mark.parametrize("kind", ["stroke", "wmh", "tumor"])
def test_lesion_volumes_in_range(kind):
    low, high = VOLUME_RANGES_ML[kind]
    tpl = template(2.0)
    for seed in range(3):
        params = _draw(10 + seed, kind, contrasts=("t1",))
        anat = warp_anatomy(tpl, params.anatomy)
        labels = lesion_geometry(anat, params.lesion, 2.0).labels
        ml = (labels > 0).sum() * 8.0 / 1000.0
        assert low <= ml <= high
        assert abs(ml - params.lesion.total_ml) <= 0.008 + 1e-9


def test_mass_effect_keeps_undisplaced_substrate():
    params = _draw(7, "tumor", contrasts=("t1",), mass_effect=True)
    assert params.lesion.mass_effect > 0
    pushed = make_subject(params)
    still = SubjectParams.from_dict({**params.to_dict()})
    still.lesion.mass_effect = 0.0
    plain = make_subject(still)
    assert np.array_equal(pushed.healthy["t1"], plain.healthy["t1"])
    assert np.array_equal(pushed.labels, plain.labels)
    outside = pushed.labels == 0
    assert not np.array_equal(pushed.images["t1"][outside], pushed.healthy["t1"][outside])


def test_anatomy_varies_and_warp_is_diffeomorphic():
    tpl = template(2.0)
    params = _draw(0, "none").anatomy
    params.velocity_std_mm = 4.0
    params.ventricle_enlargement = 0.0
    params.atrophy = 0.0
    base = warp_anatomy(tpl, params)
    phi, _ = phi_lattice(tpl, params)
    jac = np.stack([np.stack(np.gradient(phi[i]), 0) for i in range(3)])
    det = np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))
    assert det.min() > 0
    assert np.all(integrate_velocity(np.zeros((3, 5, 6, 7), np.float32)) == 0)
    params.ventricle_enlargement = 0.4
    enlarged = warp_anatomy(tpl, params)
    assert (enlarged.ventricle_distance[enlarged.brain] < 1).sum() > 1.2 * (
        base.ventricle_distance[base.brain] < 1
    ).sum()
    params.atrophy = 0.5
    atrophied = warp_anatomy(tpl, params)
    assert atrophied.gm.sum() < 0.95 * enlarged.gm.sum()
    other = warp_anatomy(tpl, _draw(1, "none").anatomy)
    assert not np.array_equal(other.brain, base.brain)


def test_iter_subjects_uses_derived_seeds():
    runs = list(iter_subjects(3, seed=42, lesion="none", indices=[2]))
    assert [k for k, _, _ in runs] == [2]
    expected = draw_subject(generator_for(derive_seed(42, 2)), lesion="none")
    assert runs[0][1].to_json() == expected.to_json()
    assert runs[0][2].images["t1"].shape == (96, 112, 96)


def test_contrast_subset_shares_anatomy_and_acquisition():
    one = _draw(5, "wmh", contrasts=("flair",))
    four = _draw(5, "wmh")
    assert one.anatomy == four.anatomy and one.lesion == four.lesion
    assert one.acquisition["flair"] == four.acquisition["flair"]


def test_bad_inputs_raise_input_error():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(InputError):
        draw_subject(g, lesion="glioma")
    with pytest.raises(InputError):
        draw_subject(g, lesion="stroke", mass_effect=True)
    with pytest.raises(InputError):
        draw_subject(g, lesion="none", contrasts=("dwi",))
    with pytest.raises(InputError):
        draw_subject(g, lesion="none", spacing=3.0)
    with pytest.raises(InputError):
        SubjectParams.from_json("{not json")
    with pytest.raises(InputError):
        SubjectParams.from_json('{"version": 1, "spacing": 2.0}')
