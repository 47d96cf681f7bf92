"""The numbers behind `spatial.agreement.MIN_EDGE_AGREEMENT` (enhance's same-subject check).

Phantom subjects (2 mm, seeds derived from 77): each subject's T1 against its own T2 and FLAIR
(clean, with 10 % Gaussian noise, shifted by 1 and 2 voxels), against the other subjects' T2 and
FLAIR, and nilearn's real MNI152 T1 against every phantom's T2 / FLAIR (phantoms are warps of
MNI152's tissue maps, so that is the hardest "other subject").

    python scripts/calibrate_edge_agreement.py --n 6
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy import ndimage

from synthbrain.io.nifti import voxel_sizes
from synthbrain.spatial.agreement import MIN_EDGE_AGREEMENT, edge_agreement


def subjects(n: int) -> list:
    from synthbrain.phantom import draw_subject, make_subject
    from synthbrain.rng import derive_seed, generator_for

    return [make_subject(draw_subject(generator_for(derive_seed(77, k)), lesion="tumor",
                                      contrasts=["t1", "t2", "flair"], spacing=2.0))
            for k in range(n)]  # fmt: skip


def mni_t1(shape, affine) -> np.ndarray:  # noqa: ANN001
    from nibabel.processing import resample_from_to
    from nilearn import datasets

    target = (shape, affine)
    t1 = resample_from_to(datasets.load_mni152_template(resolution=1), target, order=1)
    brain = resample_from_to(datasets.load_mni152_brain_mask(resolution=1), target, order=0)
    return t1.get_fdata() * (brain.get_fdata() > 0)


def noisy(v: np.ndarray, rng: np.random.Generator, level: float = 0.10) -> np.ndarray:
    return v + level * float(v.max()) * rng.standard_normal(v.shape) * (v != 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6)
    args = parser.parse_args()
    subs = subjects(args.n)
    spacing = voxel_sizes(subs[0].affine)
    rng = np.random.default_rng(0)
    kinds = ("same", "same, 10 % noise", "same, shifted 1 voxel", "same, shifted 2 voxels",
             "other phantom", "MNI152 T1 vs phantom")  # fmt: skip
    rows: dict[str, list[float]] = {k: [] for k in kinds}
    mni = mni_t1(subs[0].images["t1"].shape, subs[0].affine)
    for i, s in enumerate(subs):
        t1 = s.images["t1"]
        for c in ("t2", "flair"):
            o = s.images[c]
            rows["same"].append(edge_agreement(t1, o, spacing))
            rows["same, 10 % noise"].append(edge_agreement(noisy(t1, rng), noisy(o, rng), spacing))
            for k in (1, 2):
                moved = ndimage.shift(o, (k, 0, 0), order=1)
                rows[f"same, shifted {k} voxel{'s' if k > 1 else ''}"].append(
                    edge_agreement(t1, moved, spacing))  # fmt: skip
            rows["MNI152 T1 vs phantom"].append(edge_agreement(mni, o, spacing))
            rows["other phantom"] += [edge_agreement(t1, other.images[c], spacing)
                                      for j, other in enumerate(subs) if j != i]  # fmt: skip
    table = {
        k: {"min": round(min(v), 3), "max": round(max(v), 3), "n": len(v)} for k, v in rows.items()
    }
    print(
        json.dumps(
            {"threshold": MIN_EDGE_AGREEMENT, "spacing_mm": spacing.tolist(), **table}, indent=1
        )
    )


if __name__ == "__main__":
    main()
