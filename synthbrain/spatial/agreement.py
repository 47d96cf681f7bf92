"""Do two contrasts on one grid show the same brain? An edge-agreement check for `enhance`.

Contrasts of one subject, aligned, put their edges (tissue boundaries, ventricles, sulci) in the
same places whatever the intensities do, so the smoothed gradient magnitudes of T1 and T2 (or
FLAIR) correlate strongly; another subject's scan, or one left unregistered, does not. The
brain's outline is left out (the common foreground eroded by ERODE_MM): any two skull-stripped
brains in one template space share it.

Calibrated by `scripts/calibrate_edge_agreement.py` (6 phantom subjects at 2 mm; the table is in
`docs/deformation.md`): one subject's T1 against its own T2 / FLAIR 0.54-0.97 (0.51-0.91 with
10 % noise, 0.39-0.74 shifted by 2 mm, 0.20-0.44 shifted by 4 mm: refused or not, such a pair
needs --register); against another phantom subject's 0.00-0.28; the real MNI152 T1 against
phantom T2 / FLAIR 0.06-0.34 (phantoms are warps of MNI152's tissue maps: the hardest case).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from synthbrain.errors import InputError
from synthbrain.io.nifti import voxel_sizes

MIN_EDGE_AGREEMENT = 0.30
SMOOTH_MM = 2.0  # gradient scale: above noise, below the cortex's folds
ERODE_MM = 6.0  # how much of the foreground's outline is left out
MIN_VOXELS = 64  # below this the eroded region is too small to judge: use the whole foreground


def coarsened(v: np.ndarray, factors) -> np.ndarray:  # noqa: ANN001
    """Block means over `factors` voxels per axis (the remainder at the far edges dropped)."""
    f = [int(k) for k in factors]
    trimmed = v[tuple(slice(0, (n // k) * k) for n, k in zip(v.shape, f, strict=True))]
    shape = [x for n, k in zip(trimmed.shape, f, strict=True) for x in (n // k, k)]
    return trimmed.reshape(shape).mean(axis=(1, 3, 5), dtype=np.float32)


def edge_agreement(a: np.ndarray, b: np.ndarray, spacing) -> float:  # noqa: ANN001
    """Correlation of the smoothed gradient magnitudes of a and b inside their common
    foreground less its outer ERODE_MM; 0 where either image has no edges there. Grids finer
    than SMOOTH_MM are block-averaged to about it first (the scale the threshold was set at;
    a 1 mm head then costs ~0.7 s, not ~5 s)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    factors = np.maximum(1, np.floor(SMOOTH_MM / spacing)).astype(int)
    if np.any(factors > 1):
        a, b = (
            coarsened(np.asarray(a, np.float32), factors),
            coarsened(np.asarray(b, np.float32), factors),
        )
        spacing = spacing * factors
    foreground = ndimage.binary_fill_holes((a != 0) | (b != 0))
    inner = ndimage.distance_transform_edt(foreground, sampling=spacing) > ERODE_MM
    region = inner if inner.sum() >= MIN_VOXELS else foreground
    sigma = SMOOTH_MM / spacing
    ga, gb = (ndimage.gaussian_gradient_magnitude(np.asarray(v, np.float32), sigma)[region]
              for v in (a, b))  # fmt: skip
    if ga.size < 2 or ga.std() == 0 or gb.std() == 0:
        return 0.0
    return float(np.corrcoef(ga.astype(np.float64), gb.astype(np.float64))[0, 1])


def check_same_subject(reference, other, what: str, reference_name: str = "t1") -> float:  # noqa: ANN001
    """The edge agreement of two Volumes on one grid; InputError naming `other`'s file when it is
    below MIN_EDGE_AGREEMENT (another subject's scan, or not registered onto the reference)."""
    score = edge_agreement(reference.data, other.data, voxel_sizes(reference.affine))
    if score < MIN_EDGE_AGREEMENT:
        raise InputError(
            f"{what} does not line up with {reference_name} (edge agreement {score:.2f}, needs "
            f"≥ {MIN_EDGE_AGREEMENT:.2f}): a scan of another subject, or not registered to "
            f"{reference_name} (try --register)",
            other.path,
        )
    return score
