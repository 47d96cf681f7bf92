"""Quality metrics shared by the evaluation scripts: PSNR, SSIM, L1 in/out of a lesion, Dice,
realism AUC with a bootstrap CI, first-order and GLCM texture statistics.

All functions take numpy arrays (3-D volumes or 2-D slices) and return plain floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def psnr(estimate: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None,
         data_range: float = 1.0) -> float:  # fmt: skip
    """Peak signal-to-noise ratio in dB, over `mask` when given."""
    diff = (np.asarray(estimate, np.float64) - np.asarray(reference, np.float64)) ** 2
    mse = float(diff[mask > 0].mean() if mask is not None else diff.mean())
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def ssim(estimate: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None,
         data_range: float = 1.0) -> float:  # fmt: skip
    """Structural similarity (11-tap Gaussian window, σ = 1.5), averaged over `mask` when given.

    One SSIM for the whole project: this wraps `synthbrain.nets.ssim` (the training loss's).
    """
    import torch

    from synthbrain.nets.ssim import ssim as ssim_map

    a = torch.as_tensor(np.asarray(estimate, np.float64))[None, None]
    b = torch.as_tensor(np.asarray(reference, np.float64))[None, None]
    values = ssim_map(a, b, data_range, padding="same", reduction="map")[0, 0].numpy()
    return float(values[mask > 0].mean() if mask is not None else values.mean())


def l1(estimate: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error, over `mask` when given (nan for an empty mask)."""
    diff = np.abs(np.asarray(estimate, np.float64) - np.asarray(reference, np.float64))
    if mask is None:
        return float(diff.mean())
    selected = diff[mask > 0]
    return float(selected.mean()) if selected.size else float("nan")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two binary masks (1.0 when both are empty)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def first_order(values: np.ndarray) -> dict[str, float]:
    """Mean, skewness and (excess) kurtosis of the intensities in a region."""
    from scipy.stats import kurtosis, skew

    values = np.asarray(values, np.float64).ravel()
    if values.size < 3:
        return {"mean": float(values.mean()) if values.size else float("nan"),
                "skewness": float("nan"), "kurtosis": float("nan")}  # fmt: skip
    return {"mean": float(values.mean()), "skewness": float(skew(values)),
            "kurtosis": float(kurtosis(values))}  # fmt: skip


def glcm_features(image: np.ndarray, mask: np.ndarray, levels: int = 16,
                  value_range: tuple[float, float] = (0.0, 1.0)) -> dict[str, float]:  # fmt: skip
    """GLCM contrast and homogeneity inside `mask`, offsets of one voxel along every axis.

    Intensities are quantised to `levels` bins over a fixed `value_range`, so that statistics
    of synthetic and true lesions are comparable.
    """
    lo, hi = value_range
    q = np.clip(
        ((np.asarray(image, np.float64) - lo) / (hi - lo) * levels).astype(int), 0, levels - 1
    )
    inside = np.asarray(mask) > 0
    counts = np.zeros((levels, levels), np.float64)
    for axis in range(q.ndim):
        head = [slice(None)] * q.ndim
        tail = [slice(None)] * q.ndim
        head[axis], tail[axis] = slice(None, -1), slice(1, None)
        pair = inside[tuple(head)] & inside[tuple(tail)]
        np.add.at(counts, (q[tuple(head)][pair], q[tuple(tail)][pair]), 1.0)
    counts = counts + counts.T  # symmetric co-occurrence
    if counts.sum() == 0:
        return {"contrast": float("nan"), "homogeneity": float("nan")}
    p = counts / counts.sum()
    i, j = np.indices(p.shape)
    return {
        "contrast": float((p * (i - j) ** 2).sum()),
        "homogeneity": float((p / (1.0 + np.abs(i - j))).sum()),
    }


def texture_statistics(image: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """First-order and GLCM statistics inside a lesion."""
    stats = first_order(np.asarray(image)[np.asarray(mask) > 0])
    stats.update(glcm_features(image, mask))
    return stats


def auc(scores_real: np.ndarray, scores_fake: np.ndarray) -> float:
    """ROC AUC of telling fake (positive) from real by score, via the Mann-Whitney statistic."""
    from scipy.stats import rankdata

    scores = np.concatenate([scores_real, scores_fake])
    ranks = rankdata(scores)
    n_real, n_fake = len(scores_real), len(scores_fake)
    rank_sum = ranks[n_real:].sum()
    return float((rank_sum - n_fake * (n_fake + 1) / 2) / (n_real * n_fake))


@dataclass
class RealismResult:
    """Realism AUC of a real-vs-synthetic classifier (0.5: indistinguishable) and its 95% CI."""

    auc: float
    ci_low: float
    ci_high: float
    n_real: int
    n_fake: int


def realism_auc(real: np.ndarray, fake: np.ndarray, *, folds: int = 5, bootstrap: int = 1000,
                seed: int = 0) -> RealismResult:  # fmt: skip
    """Cross-validated AUC of a small classifier telling real from synthetic feature vectors.

    Args:
        real, fake: [N, F] feature rows (e.g. lesion patches flattened with texture statistics).
        folds: stratified folds; each row is scored by a model that did not see it.
        bootstrap: resamples of the out-of-fold scores for the 95% confidence interval.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([real, fake]).astype(np.float64)
    y = np.concatenate([np.zeros(len(real)), np.ones(len(fake))])
    scores = np.zeros(len(y))
    splitter = StratifiedKFold(n_splits=min(folds, len(real), len(fake)), shuffle=True,
                               random_state=seed)  # fmt: skip
    for train_idx, test_idx in splitter.split(x, y):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        model.fit(x[train_idx], y[train_idx])
        scores[test_idx] = model.predict_proba(x[test_idx])[:, 1]
    value = auc(scores[y == 0], scores[y == 1])
    rng = np.random.default_rng(seed)
    boots = []
    real_idx, fake_idx = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    for _ in range(bootstrap):
        r = rng.choice(real_idx, len(real_idx))
        f = rng.choice(fake_idx, len(fake_idx))
        boots.append(auc(scores[r], scores[f]))
    low, high = np.percentile(boots, [2.5, 97.5])
    return RealismResult(value, float(low), float(high), len(real), len(fake))
