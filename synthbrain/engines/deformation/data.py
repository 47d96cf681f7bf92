"""Training data of the deformation engine: 2.5-D slices, the enhancing-tumour label, crops.

`EnhanceSlices` wraps `synthbrain.io.dataset.SliceDataset` and hands the engine what D3M needs
(condition contrasts on 2k + 1 slices, the T1Gd target, the enhancing-tumour mask, the brain);
`enhancing_label` reads (or detects, and says so) the label convention of an HDF5 set;
`crop_batch` / `flip_batch` are the generator-driven augmentations of a training batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from synthbrain.engines.deformation.config import ENHANCING_LABEL
from synthbrain.errors import InputError
from synthbrain.io.dataset import SliceDataset, read_info, split_ids
from synthbrain.io.h5format import open_set


def enhancing_label(path: str | os.PathLike[str]) -> tuple[int, str, str]:
    """The enhancing-tumour label value of an HDF5 training set, its convention and how known.

    The file's ``label_convention`` attribute (written by preprocess / phantom) decides:
    "brats2023" → 3, "brats2020" → 4. When it is "unknown" (or absent), the label values of the
    training subjects decide: 3 without 4 → brats2023, 4 without 3 → brats2020; anything else
    is refused rather than guessed.

    Returns:
        (value, convention, source) with source "attribute" or "detected from label values".

    Raises:
        InputError: a binary / label-free set, or values that fit neither convention.
    """
    info = read_info(path)
    convention = str(info.get("label_convention", "unknown"))
    if convention in ENHANCING_LABEL:
        return ENHANCING_LABEL[convention], convention, "attribute"
    if convention in ("binary", "none"):
        raise InputError(
            f"the deformation engine needs BraTS tumour labels with an enhancing-tumour class; "
            f"this set's label_convention is {convention!r}",
            path,
        )
    values = _label_values(path, split_ids(path, "train"))
    if 3 in values and 4 not in values:
        return 3, "brats2023", "detected from label values"
    if 4 in values and 3 not in values:
        return 4, "brats2020", "detected from label values"
    raise InputError(
        "label_convention is unknown and the label values "
        f"{sorted(values)} fit neither BraTS 2023 (enhancing = 3) nor BraTS 2020 (enhancing = 4); "
        "re-run preprocess with the cohort's convention",
        path,
    )


def _label_values(path: str | os.PathLike[str], ids: Sequence[str]) -> set[int]:
    """Distinct label values over the given subjects."""
    values: set[int] = set()
    with open_set(path) as h5:
        for sid in ids:
            group = h5["subjects"][sid]
            if "labels" in group:
                values.update(int(v) for v in np.unique(group["labels"][()]))
    return values


def channel_indices(contrasts: Sequence[str], available: Sequence[str], context: int) -> list[int]:
    """Image channels of `contrasts` on the 2k + 1 slices of a SliceDataset item.

    SliceDataset stacks offset-major ([offset][contrast]); the result keeps that order, which
    is also the order `deformation_volume.slice_stack` builds at inference.
    """
    n = len(available)
    return [o * n + list(available).index(c) for o in range(2 * context + 1) for c in contrasts]


class EnhanceSlices(torch.utils.data.Dataset):
    """Axial training items for D3M from a synthbrain HDF5 split.

    Items are dicts of float32 tensors: ``cond`` [(2k+1)·C, X, Y] (the input contrasts on the
    2k + 1 slices, offset-major), ``target`` [1, X, Y] (T1Gd, centre slice), ``mask`` [1, X, Y]
    (enhancing tumour, 0/1), ``tumour`` [1, X, Y] (any tumour label, 0/1) and ``brain``.
    Slices holding enhancing tumour are repeated so that they make up at least
    `tumour_fraction` of the items (deterministically).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        split: str,
        *,
        contrasts: Sequence[str],
        target: str,
        label: int,
        context: int = 0,
        tumour_fraction: float = 0.0,
    ) -> None:
        self.slices = SliceDataset(path, split, context=context)
        available = list(self.slices.info["contrasts"])
        missing = [c for c in (*contrasts, target) if c not in available]
        if missing:
            raise InputError(
                f"the training set has no {', '.join(missing)} images "
                f"(it has {', '.join(available)}); D3M needs {', '.join((*contrasts, target))}",
                path,
            )
        self.cond_index = channel_indices(contrasts, available, context)
        self.target_index = channel_indices([target], available, 0)[0] + context * len(available)
        self.label = int(label)
        self.hits = self._tumour_rows()
        self.index = _oversample(self.hits, tumour_fraction)

    def _tumour_rows(self) -> np.ndarray:
        """Per item of the slice index: does its centre slice hold the enhancing label?"""
        rows = self.slices.index
        hits = np.zeros(len(rows), dtype=bool)
        with open_set(self.slices.path) as h5:
            for i, sid in enumerate(self.slices.ids):
                group = h5["subjects"][sid]
                if "labels" not in group:
                    continue
                z_hit = (group["labels"][()] == self.label).any(axis=(0, 1))
                mine = rows[:, 0] == i
                hits[mine] = z_hit[rows[mine, 1]]
        return hits

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = self.slices[int(self.index[index])]
        images = item["images"]
        return {
            "cond": images[self.cond_index],
            "target": images[self.target_index : self.target_index + 1],
            "mask": (item["labels"].round() == self.label).to(torch.float32),
            "tumour": (item["labels"].round() > 0).to(torch.float32),
            "brain": item["brain_mask"].to(torch.float32),
        }


def tumour_subset(dataset: EnhanceSlices, n: int) -> torch.utils.data.Subset:
    """A fixed validation set: `n` slices holding enhancing tumour, spread evenly over the split.

    The training loop validates on the first items of its validation set; without this they
    would be the lowest slices of the first subject, which hold no tumour to score.
    """
    rows = np.flatnonzero(dataset.hits)
    if len(rows) == 0:
        return torch.utils.data.Subset(dataset, list(range(min(n, len(dataset)))))
    pick = rows[np.linspace(0, len(rows) - 1, min(n, len(rows))).round().astype(int)]
    # item i < len(hits) of EnhanceSlices is slice row i itself (repeats come after)
    return torch.utils.data.Subset(dataset, [int(i) for i in np.unique(pick)])


def _oversample(hits: np.ndarray, fraction: float) -> np.ndarray:
    """Item indices where the `hits` items are repeated to make up ≥ `fraction` of them."""
    every = np.arange(len(hits))
    n_hit = int(hits.sum())
    if fraction <= 0 or n_hit == 0 or n_hit >= fraction * len(hits):
        return every
    # n_hit·r / (n_miss + n_hit·r) ≥ fraction  ⇔  r ≥ fraction·n_miss / (n_hit·(1 − fraction))
    repeats = int(np.ceil(fraction * (len(hits) - n_hit) / (n_hit * (1.0 - fraction))))
    return np.concatenate([every, np.repeat(every[hits], repeats - 1)])


def crop_batch(
    batch: dict[str, Tensor], size: int, generator: torch.Generator, centre_fraction: float
) -> dict[str, Tensor]:
    """Cut one `size`² window per item (all keys alike), drawn with `generator`.

    With probability `centre_fraction` (and when the item has any) the window is centred on a
    random enhancing-tumour voxel of ``batch["mask"]``; otherwise its corner is uniform. A slice
    smaller than `size` along an axis keeps that whole axis.
    """
    mask = batch["mask"]
    height, width = mask.shape[-2:]
    ch, cw = min(size, height), min(size, width)
    windows, on = [], {"generator": generator, "device": generator.device}
    for b in range(mask.shape[0]):
        coin = float(torch.rand((), **on))
        hits = torch.nonzero(mask[b, 0] > 0.5)
        if coin < centre_fraction and len(hits):
            y, x = hits[int(torch.randint(len(hits), (), **on))].tolist()
            top, left = y - ch // 2, x - cw // 2
        else:
            top = int(torch.randint(height - ch + 1, (), **on))
            left = int(torch.randint(width - cw + 1, (), **on))
        top, left = min(max(top, 0), height - ch), min(max(left, 0), width - cw)
        windows.append((top, left))
    return {
        key: torch.stack([v[b, :, t : t + ch, s : s + cw] for b, (t, s) in enumerate(windows)])
        for key, v in batch.items()
    }


def flip_batch(batch: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
    """Mirror a random half of the items left-right (the first in-plane axis is R-L in RAS)."""
    first = next(iter(batch.values()))
    flip = torch.rand(first.shape[0], generator=generator, device=generator.device) < 0.5
    flip = flip.to(first.device).view(-1, 1, 1, 1)
    return {key: torch.where(flip, v.flip(-2), v) for key, v in batch.items()}


def describe(label: int, convention: str, source: str) -> dict[str, Any]:
    """The label facts recorded with trained weights and printed by train."""
    return {"enhancing_label": label, "label_convention": convention, "label_source": source}
