"""Test helpers for `synthbrain evaluate`: tiny run and reference folders written on the fly.

A "brain" is a ball of tissue (value ~0.6 with noise) in a 24^3 grid at 2 mm; a lesion is a
small dark ball at a seeded place. Synthetic and reference sets differ on purpose where a test
wants a section to see a difference (lesion size, lesion intensity).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

SHAPE = (24, 24, 24)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = -23.0


def ball(centre, radius: float, shape=SHAPE) -> np.ndarray:  # noqa: ANN001
    """Bool ball of `radius` voxels around `centre`."""
    grid = np.indices(shape).astype(np.float64)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
    return d2 <= radius**2


def triplet(seed: int, radius: float, lesion_value: float, shape=SHAPE) -> dict:  # noqa: ANN001
    """healthy, image and mask arrays of one tiny subject."""
    rng = np.random.default_rng(seed)
    centre = np.array(shape) / 2 - 0.5
    brain = ball(centre, shape[0] * 0.42, shape)
    healthy = np.where(brain, 0.6 + 0.05 * rng.standard_normal(shape), 0.0).astype(np.float32)
    offset = rng.uniform(-2.5, 2.5, 3)
    mask = ball(centre + offset, radius, shape) & brain
    image = healthy.copy()
    image[mask] = lesion_value + 0.02 * rng.standard_normal(int(mask.sum()))
    return {"healthy": healthy, "image": image, "mask": mask}


def write_run(folder: Path, n: int, *, radius: float = 3.0, lesion_value: float = 0.2,
              seed: int = 0, layout: str = "flat", affine: np.ndarray = AFFINE,
              healthy: bool = True) -> Path:  # fmt: skip
    """A run folder (manifest, config.json) of `n` tiny triplets, flat/bids/nnunet layout."""
    from synthbrain.io.nifti import Volume
    from synthbrain.io.runwriter import RunWriter

    config = {"command": "generate", "engine": "test", "lesion": "stroke", "n": n,
              "contrasts": ["t1"], "seed": seed, "layout": layout}  # fmt: skip
    with RunWriter(folder, layout=layout, config=config, channel_names=("t1",)) as writer:
        for k in range(n):
            t = triplet(1000 * seed + k, radius, lesion_value)
            volumes = {"image": Volume(t["image"], affine), "mask": Volume(t["mask"], affine)}
            if healthy:
                volumes["healthy"] = Volume(t["healthy"], affine)
            writer.write_sample(f"case{k:03d}", volumes, record={"lesion": "stroke"}, index=k)
    return folder


def write_pairs(folder: Path, n: int, layout: str, **kwargs) -> Path:  # noqa: ANN003
    """Image/mask pairs in a layout, without our manifest (a user's reference folder)."""
    write_run(folder, n, layout=layout, healthy=False, **kwargs)
    for name in ("config.json", "manifest.jsonl", ".bidsignore"):
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / "healthyTr", ignore_errors=True)
    return folder
