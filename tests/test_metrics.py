"""Quality metrics against values known in closed form."""

import numpy as np
import pytest

from synthbrain import metrics


def test_psnr_known_value():
    a = np.zeros((8, 8, 8))
    b = np.full((8, 8, 8), 0.1)
    assert metrics.psnr(a, b) == pytest.approx(20.0)
    assert metrics.psnr(a, a) == float("inf")


def test_ssim_identity_and_drop():
    rng = np.random.default_rng(0)
    a = rng.random((16, 16, 16))
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    assert metrics.ssim(a, a + rng.normal(0, 0.3, a.shape)) < 0.9


def test_l1_inside_and_outside_mask():
    a = np.zeros((4, 4))
    b = np.zeros((4, 4))
    b[:2] = 1.0
    mask = np.zeros((4, 4))
    mask[:2] = 1
    assert metrics.l1(a, b, mask) == 1.0
    assert metrics.l1(a, b, 1 - mask) == 0.0
    assert metrics.l1(a, b) == 0.5


def test_dice():
    a = np.zeros(10)
    b = np.zeros(10)
    a[:4] = 1
    b[2:6] = 1
    assert metrics.dice(a, b) == pytest.approx(0.5)
    assert metrics.dice(np.zeros(3), np.zeros(3)) == 1.0


def test_glcm_flat_versus_checkerboard():
    mask = np.ones((8, 8))
    flat = np.full((8, 8), 0.5)
    checker = (np.indices((8, 8)).sum(0) % 2).astype(float) * 0.99
    assert metrics.glcm_features(flat, mask)["contrast"] == 0.0
    assert metrics.glcm_features(flat, mask)["homogeneity"] == pytest.approx(1.0)
    assert metrics.glcm_features(checker, mask)["contrast"] == pytest.approx(15.0**2)


def test_first_order_symmetric():
    values = np.array([-1.0, 0.0, 1.0] * 50)
    stats = metrics.first_order(values)
    assert stats["mean"] == pytest.approx(0.0)
    assert stats["skewness"] == pytest.approx(0.0, abs=1e-9)


def test_auc_extremes():
    assert metrics.auc(np.array([0.1, 0.2]), np.array([0.8, 0.9])) == 1.0
    assert metrics.auc(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.5


def test_realism_auc_separable_and_not():
    rng = np.random.default_rng(0)
    real = rng.normal(0, 1, (60, 5))
    same = rng.normal(0, 1, (60, 5))
    shifted = rng.normal(2, 1, (60, 5))
    easy = metrics.realism_auc(real, shifted, bootstrap=200)
    hard = metrics.realism_auc(real, same, bootstrap=200)
    assert easy.auc > 0.9 and easy.ci_low > 0.8
    assert hard.ci_low < 0.5 + 0.15 and hard.auc < 0.75
