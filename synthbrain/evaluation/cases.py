"""Cases to evaluate, read lazily: one `Case` per subject, whatever folder or set it came from.

A `CaseSet` lists ids and loads one case at a time, so a report over hundreds of volumes never
holds them all. Sources (see `sources.py`): a run folder read through its manifest, a folder of
image/mask pairs (flat, BIDS or nnU-Net layout), a `preprocess` HDF5 set, or phantoms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Case:
    """One subject: images per contrast, binary lesion mask, optional healthy substrate.

    Attributes:
        images: contrast -> float32 volume, as stored (no normalisation).
        mask: bool lesion mask (label > 0).
        affine: 4x4 voxel -> world mm of `mask`'s grid.
        healthy: contrast -> the healthy substrate of a triplet (None for plain pairs).
        geometry: file key -> (shape, affine) of every file read, for the consistency check.
        mask_values: the distinct values the mask file held (binary check).
        brain: bool brain mask when the source knows it (phantoms, HDF5), else None.
    """

    id: str
    images: dict[str, np.ndarray]
    mask: np.ndarray
    affine: np.ndarray
    healthy: dict[str, np.ndarray] | None = None
    geometry: dict[str, tuple[tuple[int, ...], np.ndarray]] = field(default_factory=dict)
    mask_values: tuple[float, ...] = (0.0, 1.0)
    brain: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The grid shape."""
        return tuple(self.mask.shape)

    def brain_mask(self) -> np.ndarray:
        """The known brain mask, else the envelope of the non-zero voxels of the substrate (or
        image): closed and hole-filled, because dark CSF inside the brain can be exactly 0 in a
        skull-stripped T1 and a lesion reaching a sulcus is still inside the brain."""
        if self.brain is None:
            from scipy.ndimage import binary_closing, binary_fill_holes

            volumes = list((self.healthy or self.images).values())
            tissue = np.any([v != 0 for v in volumes], axis=0)
            closed = binary_closing(tissue, np.ones((3, 3, 3), bool), iterations=2)
            self.brain = binary_fill_holes(closed | tissue)
        return self.brain


@dataclass
class CaseSet:
    """A named, ordered list of case ids and a loader; `kind` says where they came from."""

    name: str
    kind: str  # run | flat | bids | nnunet | hdf5 | phantom
    ids: list[str]
    contrasts: tuple[str, ...]
    loader: Callable[[str], Case]
    lesion: str | None = None
    source: Path | None = None
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, case_id: str) -> Case:
        """One case, read from disk (or drawn, for phantoms)."""
        return self.loader(case_id)

    def __iter__(self) -> Iterator[Case]:
        for case_id in self.ids:
            yield self.load(case_id)

    def subset(self, ids: list[str]) -> CaseSet:
        """The same source restricted to `ids` (in that order)."""
        return CaseSet(self.name, self.kind, list(ids), self.contrasts, self.loader,
                       self.lesion, self.source, dict(self.info))  # fmt: skip


def voxel_ml(affine: np.ndarray) -> float:
    """Volume of one voxel of the grid in millilitres."""
    return abs(float(np.linalg.det(np.asarray(affine, np.float64)[:3, :3]))) / 1000.0
