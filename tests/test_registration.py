"""Affine registration to the MNI152 template (SimpleITK) and the transforms around it."""

from __future__ import annotations

import numpy as np
import pytest
from niftis import AFFINE_OBLIQUE, AFFINE_PIR, centred, oblique_affine, rotation

from synthbrain.errors import InputError
from synthbrain.io.geometry import Volume, from_grid, resample_array, to_grid
from synthbrain.spatial.registration import (
    Registration,
    check_registration,
    register_to_template,
    template_transform,
    to_sitk,
)

GRID = (48, 56, 48)  # the template at 4 mm keeps these tests fast


@pytest.fixture(scope="module")
def tpl():
    from synthbrain.spatial.template import template_arrays

    return template_arrays(4.0, GRID)


def _scan_through(tpl, world: np.ndarray, affine: np.ndarray, shape) -> Volume:
    """The template as a scanner would see it when template = world @ scanner (scaled units)."""
    t1, _, t_aff = tpl
    data = resample_array(t1, t_aff, shape, world @ affine, order=1)
    return Volume((data * 700 + 30).astype(np.float32), affine)


@pytest.mark.parametrize("affine", [AFFINE_OBLIQUE, AFFINE_PIR])
def test_sitk_geometry_matches_the_affine(affine):
    image = to_sitk(np.zeros((5, 6, 7), np.float32), affine)
    ras = affine @ np.array([2.0, 3.0, 4.0, 1.0])
    lps = np.asarray(image.TransformIndexToPhysicalPoint((2, 3, 4)))
    assert np.allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-6)


def test_registration_recovers_a_known_misalignment(tpl):
    t1, brain, t_aff = tpl
    world = np.eye(4)  # scanner -> template: 6 degree rotation and a 9 mm shift
    world[:3, :3] = rotation((6.0, 0.0, -4.0))
    world[:3, 3] = (9.0, -6.0, 4.0)
    shape = (50, 44, 46)
    affine = centred(oblique_affine((3.5, 4.2, 3.8), flip_axes=(1,)), shape, (-5.0, 10.0, 2.0))
    scan = _scan_through(tpl, world, affine, shape)
    result = register_to_template(scan, t1, t_aff, brain)
    assert result.overlap > 0.8
    # template points inside the brain land within 3 mm of where they should
    pts = np.argwhere(brain > 0)[::97]
    world_pts = t_aff[:3, :3] @ pts.T + t_aff[:3, 3:4]
    truth = np.linalg.inv(world)[:3] @ np.vstack([world_pts, np.ones(len(pts))])
    found = np.linalg.inv(result.world)[:3] @ np.vstack([world_pts, np.ones(len(pts))])
    assert np.abs(found - truth).max() < 3.0


def test_noise_is_not_registrable(tpl):
    t1, brain, t_aff = tpl
    rng = np.random.default_rng(0)
    blob = np.zeros((40, 40, 40), np.float32)
    blob[2:10, 30:38, 5:12] = rng.random((8, 8, 7)) + 1.0  # a small bright corner blob
    scan = Volume(blob, oblique_affine((4.0, 4.0, 4.0), origin=(-80, -80, -80)))
    with pytest.raises(InputError, match="--in-template-space"):
        register_to_template(scan, t1, t_aff, brain, iterations=20)


def test_degenerate_transforms_are_refused():
    squash = np.diag([3.0, 1.0, 1.0, 1.0])
    with pytest.raises(InputError, match="more than 2x"):
        check_registration(Registration(squash, -1.0, 0.9, 10), None, 0.6)
    with pytest.raises(InputError, match="Dice"):
        check_registration(Registration(np.eye(4), -0.1, 0.2, 10), None, 0.6)


def test_grid_round_trip_through_a_registration(tpl):
    _, brain, t_aff = tpl
    shape = (40, 46, 38)
    affine = centred(AFFINE_OBLIQUE @ np.diag([3.0, 3.0, 3.0, 1.0]), shape)
    scan = Volume(np.random.default_rng(1).random(shape).astype(np.float32), affine)
    world = np.eye(4)
    world[:3, 3] = (3.0, -2.0, 5.0)
    tf = template_transform(scan, brain.shape, t_aff, Registration(world, -1.0, 0.9, 1))
    on_grid = to_grid(Volume(scan.data, tf.source_affine), tf, order=0)
    back = from_grid(np.ones_like(on_grid), tf, order=0)
    assert back.data.shape == shape and np.allclose(back.affine, tf.source_affine)
    # a constant field maps back as itself wherever the grid covers the scan
    assert set(np.unique(back.data)) <= {0.0, 1.0} and back.data.sum() > 0


def test_brain_sized_noise_is_refused_by_its_t1_correlation(tpl):
    """A noise ball registers with good overlap; its correlation with the template T1 stops it."""
    from synthbrain.spatial.template import MIN_T1_CORRELATION, scan_to_grid

    shape = (44, 52, 44)
    affine = centred(oblique_affine((4.0, 4.0, 4.0)), shape, (0.0, -18.0, 18.0))
    rng = np.random.default_rng(0)
    centre = (np.array(shape) - 1)[:, None, None, None] / 2
    ball = np.linalg.norm(np.indices(shape) - centre, axis=0)
    noise = ((rng.random(shape) * 100.0 + 1.0) * (ball < 17)).astype(np.float32)
    with pytest.raises(InputError, match="correlates with the template T1") as err:
        scan_to_grid([Volume(noise, affine)], 4.0, GRID, in_template_space=False, t1_weighted=True)
    assert "--in-template-space" in str(err.value)
    good = _scan_through(tpl, np.eye(4), affine, shape)
    sg = scan_to_grid([good], 4.0, GRID, in_template_space=False, t1_weighted=True)
    assert sg.t1_correlation > 2 * MIN_T1_CORRELATION
