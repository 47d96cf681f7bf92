"""One pass over a case set: what every report section needs, without keeping the volumes.

Per case: lesion volume, the mask added into a frequency map, first-order and GLCM statistics
inside the lesion per contrast, a lesion-patch and a whole-image feature row for the realism
classifiers, and (for synthetic triplets) the consistency checks.

Intensities are compared after one normalisation applied alike to both sets: each image is
divided by the 99.5th percentile of its brain voxels and clipped to [0, 1], so a reference
stored in scanner units and a synthetic set in [0, 1] share the GLCM's fixed bins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from synthbrain.evaluation.cases import Case, CaseSet, voxel_ml
from synthbrain.evaluation.grid import Grid, align

PATCH = 16  # lesion patch edge in voxels (32 mm at 2 mm)
POOL = 4  # whole-image features: block means of POOL^3 voxels (8 mm at 2 mm)
SEAM_VOXELS = 2  # the paired engine's seam band (engines/paired/run.py), where image may differ
MIN_LESION_VOXELS = 5  # fewer voxels give no meaningful texture statistics


@dataclass
class SetFeatures:
    """What `measure` collected over one case set."""

    ids: list[str] = field(default_factory=list)
    ml: list[float] = field(default_factory=list)
    counts: np.ndarray | None = None  # per-voxel number of cases with a lesion there
    background: np.ndarray | None = None  # mean normalised first-contrast image (montage)
    texture: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    patch_rows: list[np.ndarray] = field(default_factory=list)
    patch_ids: list[str] = field(default_factory=list)
    whole_rows: list[np.ndarray] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)


def normalise(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """image / p99.5(brain voxels), clipped to [0, 1] (float32)."""
    values = image[brain] if brain.any() else image.ravel()
    scale = float(np.percentile(values, 99.5)) if values.size else 1.0
    scale = scale if scale > 0 else float(np.abs(image).max() or 1.0)
    return np.clip(image / scale, 0.0, 1.0).astype(np.float32)


def _patch(volume: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """A PATCH^3 box around `centre`, shifted to stay inside the volume (zero-padded if small)."""
    out = np.zeros((PATCH,) * 3, np.float32)
    lo = [int(np.clip(round(c) - PATCH // 2, 0, max(0, s - PATCH))) for c, s in
          zip(centre, volume.shape, strict=True)]  # fmt: skip
    box = volume[tuple(slice(a, a + PATCH) for a in lo)]
    out[tuple(slice(0, s) for s in box.shape)] = box
    return out


def _pooled(volume: np.ndarray) -> np.ndarray:
    """Block means of POOL^3 voxels, flattened (the grid is cropped to a multiple of POOL)."""
    s = [d // POOL * POOL for d in volume.shape]
    v = volume[: s[0], : s[1], : s[2]]
    return (
        v.reshape(s[0] // POOL, POOL, s[1] // POOL, POOL, s[2] // POOL, POOL)
        .mean((1, 3, 5))
        .ravel()
    )


def triplet_checks(case: Case) -> dict:
    """Consistency of one triplet: geometry, binary mask inside the brain, image = healthy
    outside the seam band (exactly, voxel for voxel)."""
    from scipy.ndimage import binary_dilation

    geo = list(case.geometry.values())
    same_geometry = all(g[0] == geo[0][0] and np.allclose(g[1], geo[0][1], atol=1e-5)
                        for g in geo)  # fmt: skip
    # One voxel of slack: the outermost brain voxels can be exactly 0 in an image, so the
    # envelope of the non-zero voxels (no brain mask is stored in a run) sits one voxel short.
    brain = binary_dilation(case.brain_mask(), np.ones((3, 3, 3), bool))
    out = {
        "id": case.id,
        "geometry_identical": bool(same_geometry),
        "mask_binary": set(case.mask_values) <= {0.0, 1.0},
        "mask_voxels_outside_brain": int((case.mask & ~brain).sum()),
        "changed_voxels_outside_seam": None,
        "max_change_outside_seam": None,
    }
    if case.healthy:
        band = binary_dilation(case.mask, np.ones((3, 3, 3), bool), iterations=SEAM_VOXELS)
        changed, worst = 0, 0.0
        for contrast, image in case.images.items():
            diff = np.abs(image - case.healthy[contrast])[~band]
            changed += int((diff != 0).sum())
            worst = max(worst, float(diff.max()) if diff.size else 0.0)
        out["changed_voxels_outside_seam"], out["max_change_outside_seam"] = changed, worst
    out["ok"] = bool(out["geometry_identical"] and out["mask_binary"]
                     and out["mask_voxels_outside_brain"] == 0
                     and not out["changed_voxels_outside_seam"])  # fmt: skip
    return out


def _add_case(acc: SetFeatures, case: Case, contrasts: Sequence[str]) -> None:
    """Fold one aligned case into the accumulator."""
    from synthbrain.metrics import texture_statistics

    brain = case.brain_mask()
    images = [normalise(case.images[c], brain) for c in contrasts]
    acc.ids.append(case.id)
    acc.ml.append(float(case.mask.sum()) * voxel_ml(case.affine))
    if acc.counts is None:
        acc.counts = np.zeros(case.shape, np.float32)
        acc.background = np.zeros(case.shape, np.float32)
    acc.counts += case.mask
    acc.background += images[0]
    acc.whole_rows.append(np.concatenate([_pooled(v) for v in images]))
    if case.mask.sum() < MIN_LESION_VOXELS:
        return
    centre = np.argwhere(case.mask).mean(0)
    row = []
    for name, image in zip(contrasts, images, strict=True):
        stats = texture_statistics(image, case.mask)
        acc.texture.setdefault(name, []).append(stats)
        row.append(np.concatenate([_patch(image, centre).ravel(),
                                   np.nan_to_num(list(stats.values()))]))  # fmt: skip
    acc.patch_rows.append(np.concatenate(row))
    acc.patch_ids.append(case.id)


def measure(cases: CaseSet, grid: Grid, contrasts: Sequence[str], *, triplets: bool,
            advance: Callable[[int], None]) -> SetFeatures:  # fmt: skip
    """Run over every case of `cases` (aligned to `grid`), collecting a SetFeatures."""
    acc = SetFeatures()
    for case in cases:
        if triplets:
            acc.checks.append(triplet_checks(case))
        _add_case(acc, align(case, grid, str(cases.source or cases.name)), contrasts)
        advance(1)
    return acc
