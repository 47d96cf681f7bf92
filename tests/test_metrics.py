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


# ---------------------------------------------------------------- agreement with the references


def _pair(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth-ish image in [0, 1] and a noisy, shifted copy of it."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    a = gaussian_filter(rng.random(shape), 1.0)
    a = (a - a.min()) / (a.max() - a.min())
    b = np.clip(np.roll(a, 1, axis=0) + rng.normal(0, 0.05, shape), 0, 1)
    return a, b


@pytest.mark.parametrize("shape", [(24, 24, 24), (20, 28, 16), (32, 32)])
def test_ssim_matches_scikit_image(shape):
    skm = pytest.importorskip("skimage.metrics")
    a, b = _pair(shape)
    ref = skm.structural_similarity(b, a, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)  # fmt: skip
    assert metrics.ssim(a, b) == pytest.approx(ref, abs=1e-6)


def test_ssim_mask_restricts_to_interior():
    a, b = _pair((24, 24, 24), seed=1)
    mask = np.zeros(a.shape)
    mask[8:16, 8:16, 8:16] = 1
    full = metrics.ssim_map(a, b)[8:16, 8:16, 8:16].mean()
    assert metrics.ssim(a, b, mask) == pytest.approx(full)
    border = np.zeros(a.shape)
    border[:3] = 1  # lies wholly in the 5-voxel rim skimage leaves out
    assert np.isnan(metrics.ssim(a, b, border))


def test_psnr_matches_scikit_image():
    skm = pytest.importorskip("skimage.metrics")
    a, b = _pair((16, 16, 16), seed=2)
    ref = skm.peak_signal_noise_ratio(a, b, data_range=1.0)
    assert metrics.psnr(b, a) == pytest.approx(ref, abs=1e-9)


def test_auc_matches_scikit_learn():
    skl = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    real, fake = rng.normal(0, 1, 40), rng.normal(0.7, 1, 30)
    real[:5] = fake[:5]  # ties are scored half, as roc_auc_score does
    y = np.r_[np.zeros(40), np.ones(30)]
    ref = skl.roc_auc_score(y, np.r_[real, fake])
    assert metrics.auc(real, fake) == pytest.approx(ref, abs=1e-12)


def test_glcm_matches_scikit_image_on_a_square_slice():
    skf = pytest.importorskip("skimage.feature")
    image, _ = _pair((20, 20), seed=4)
    levels = 16
    ours = metrics.glcm_features(image, np.ones_like(image), levels=levels)
    q = np.clip((image * levels).astype(int), 0, levels - 1).astype(np.uint8)
    # Offsets of one voxel along each axis (0° = along columns, 90° = along rows), symmetric.
    glcm = skf.graycomatrix(q, [1], [0, np.pi / 2], levels=levels, symmetric=True, normed=True)
    for name in ("contrast", "homogeneity"):
        # Both angles have the same pair count on a square slice, so the pooled matrix's
        # statistic is the mean of the per-angle ones.
        assert ours[name] == pytest.approx(skf.graycoprops(glcm, name).mean(), abs=1e-9)


def test_realism_auc_returns_out_of_fold_scores():
    rng = np.random.default_rng(5)
    real, fake = rng.normal(0, 1, (20, 3)), rng.normal(3, 1, (15, 3))
    res = metrics.realism_auc(real, fake, bootstrap=50)
    assert res.auc > 0.9 and res.ci_low <= res.auc <= res.ci_high
    assert res.fake_scores is not None and res.fake_scores.shape == (15,)
    with pytest.raises(ValueError, match="2 rows"):
        metrics.realism_auc(real, fake[:1])
