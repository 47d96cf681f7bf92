"""The paired engine's edit regions: what of a scan an edit may change, and the blend back.

Scans reach the model grid through `synthbrain.spatial.template.scan_to_grid`. Model results are
mapped back through the same transform and the inverse window, and blended into the scan only
inside the edit region: out = in + w · (model − in), with w = 0 exactly outside the region, so
every other voxel is the input's, bit for bit.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from synthbrain.io.geometry import Volume, from_grid
from synthbrain.spatial.template import ScanOnGrid
from synthbrain.spatial.window import from_unit


def dilate(mask: np.ndarray, voxels: int) -> np.ndarray:
    """Binary dilation by a ball of `voxels` radius."""
    if voxels <= 0:
        return mask.astype(bool)
    ball = ndimage.generate_binary_structure(3, 1)
    return ndimage.binary_dilation(mask, ball, iterations=voxels)


def blend_weight(core: np.ndarray, seam: int) -> np.ndarray:
    """w in [0, 1]: 1 on the core, falling to 0 across a seam band of `seam` voxels, 0 beyond."""
    core = core.astype(bool)
    if not core.any():
        return np.zeros(core.shape, np.float32)
    band = dilate(core, seam)
    distance = ndimage.distance_transform_edt(~core)
    w = np.clip(1.0 - distance / (seam + 1.0), 0.0, 1.0)
    w[~band] = 0.0
    return w.astype(np.float32)


def anomaly_core(
    edited: np.ndarray, reference: np.ndarray, brain: np.ndarray, *, sign: float = -1.0,
    z: float = 6.0, local_sigma: float = 8.0, min_voxels: int = 8,
) -> np.ndarray:  # fmt: skip
    """Where a heal undid a lesion: one compact, strongly outlying blob of the change, or nothing.

    The change d = (edited − reference) · (−sign) is positive where the heal removed lesion
    contrast (a darker-than-tissue lesion, sign −1, is brightened). Its smooth, brain-wide part
    (σ = `local_sigma` voxels) is a global intensity drift of the diffusion, not a lesion, so it
    is subtracted; the rest is scored as a robust z (median / MAD over the brain). Only voxels with
    z > `z` count, and of their blobs (≥ `min_voxels`) only the one of largest summed z is kept:
    a heal edits near one detected lesion or, when nothing stands out, not at all. The old rule
    (|d| > 0.1 anywhere) marked ~20 % of the brain and made healed scans worse than the input
    (docs/paired.md).
    """
    diff = (edited - reference).max(axis=0) if edited.ndim == 4 else edited - reference
    d = ndimage.gaussian_filter(diff.astype(np.float32) * -float(np.sign(sign) or -1.0), 1.0)
    if local_sigma > 0:
        d = d - ndimage.gaussian_filter(d, local_sigma)
    inside = brain > 0
    if inside.sum() < 2:
        return np.zeros(d.shape, bool)
    values = d[inside]
    med = float(np.median(values))
    mad = 1.4826 * float(np.median(np.abs(values - med)))
    score = (d - med) / max(mad, 1e-6)
    labels, n = ndimage.label((score > z) & inside)
    if not n:
        return np.zeros(d.shape, bool)
    sizes = np.bincount(labels.ravel())[1:]
    mass = np.asarray(ndimage.sum(score, labels, index=np.arange(1, n + 1)))
    mass[sizes < min_voxels] = -np.inf
    if not np.isfinite(mass).any():
        return np.zeros(d.shape, bool)
    return labels == int(np.argmax(mass)) + 1


def back_to_scan(
    grid_values: np.ndarray, weight: np.ndarray, sg: ScanOnGrid, source: Volume, channel: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Blend model values [0, 1] on the grid into the source scan; returns (data, weight).

    The data equal the source's voxel for voxel wherever the mapped weight is 0.
    """
    lo, hi = sg.window[channel]
    values = from_grid(from_unit(grid_values, lo, hi).astype(np.float32), sg.tf, order=1).data
    w = from_grid(weight.astype(np.float32), sg.tf, order=1, fill=0.0).data
    w = np.clip(w, 0.0, 1.0)
    w[w < 1e-3] = 0.0
    data = source.data.astype(np.float32, copy=True)
    edit = w > 0
    data[edit] = data[edit] + w[edit] * (values[edit] - data[edit])
    return data, w
