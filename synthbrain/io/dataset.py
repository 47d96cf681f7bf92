"""Torch Datasets over the synthbrain HDF5 training set (3-D volumes, random crops, 2-D slices).

The format and its writer live in `synthbrain.io.h5format`; they are re-exported here, so
``from synthbrain.io.dataset import H5Writer, read_info, split_ids`` is the one import to use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch

from synthbrain.io.h5format import (
    FORMAT,
    LABEL_CONVENTIONS,
    SPLITS,
    VERSION,
    VOLUME_KEYS,
    H5Writer,
    LazyH5,
    decode_attr,
    make_split,
    read_info,
    read_subject,
    split_ids,
)
from synthbrain.rng import hash_seed

__all__ = [
    "FORMAT",
    "LABEL_CONVENTIONS",
    "SPLITS",
    "VERSION",
    "H5Writer",
    "SliceDataset",
    "VolumeDataset",
    "crop_seed",
    "lesion_mask_from_labels",
    "make_split",
    "read_info",
    "read_subject",
    "split_ids",
]


def lesion_mask_from_labels(
    labels: torch.Tensor | np.ndarray,
    which: str | int | Sequence[int | str] = "any",
    label_names: dict[str, int] | None = None,
) -> torch.Tensor | np.ndarray:
    """A float32 {0, 1} mask of the chosen labels, same type and shape as `labels`.

    `which` is "any" (every non-zero label: the union of tumour sub-regions as one support mask),
    a label value, a label name looked up in `label_names` (e.g. "enhancing"), or a list of these.
    Labels stored as floats (as the Datasets return them) are rounded first.
    """
    if isinstance(which, str) and which == "any":
        values = None
    else:
        chosen = [which] if isinstance(which, str | int) else list(which)
        values = []
        for w in chosen:
            if isinstance(w, str):
                if not label_names or w not in label_names:
                    raise ValueError(f"unknown label name {w!r} (known: {label_names})")
                w = label_names[w]
            values.append(int(w))
    if isinstance(labels, torch.Tensor):
        lab = labels.round()
        hit = lab > 0 if values is None else torch.isin(lab, torch.tensor(values, dtype=lab.dtype))
        return hit.to(torch.float32)
    lab = np.round(np.asarray(labels))
    hit = lab > 0 if values is None else np.isin(lab, values)
    return hit.astype(np.float32)


def crop_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for item `index`'s crop in `epoch`: a hash, so nearby seeds decorrelate."""
    return hash_seed(seed, epoch, index)


class _H5Dataset(LazyH5, torch.utils.data.Dataset):
    """Shared lazy-open logic: each worker process opens its own read handle on first use."""

    def __init__(self, path: str | os.PathLike[str], split: str, keys: Sequence[str]) -> None:
        self.path = Path(path)
        unknown = set(keys) - set(VOLUME_KEYS)
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} (choose from {VOLUME_KEYS})")
        self.keys = tuple(keys)
        self.info = read_info(self.path)
        self.ids = split_ids(self.path, split)
        self.split = split
        self.grid = tuple(self.info["grid"])

    def _read(self, sid: str, key: str, region: tuple[slice, ...]) -> np.ndarray | None:
        """Read `region` of one volume with a leading channel axis; None when absent.

        A subject without labels reads as all background; `healthy` of a healthy subject is its
        images; `healthy` of a lesion subject without a stored substrate is None (key omitted).
        """
        group = self._file()["subjects"][sid]
        if key in group:
            data = group[key][(slice(None), *region) if key in ("images", "healthy") else region]
        elif key == "labels":
            return np.zeros((1, *self._region_shape(region)), dtype=np.float32)
        elif key == "healthy" and bool(decode_attr(group.attrs.get("healthy", False))):
            data = group["images"][(slice(None), *region)]
        else:
            return None
        data = data.astype(np.float32)
        return data if key in ("images", "healthy") else data[None]

    def _region_shape(self, region: tuple[slice, ...]) -> tuple[int, ...]:
        """Shape of a region of the grid (slices with explicit bounds)."""
        return tuple(len(range(*r.indices(n))) for r, n in zip(region, self.grid, strict=True))


class VolumeDataset(_H5Dataset):
    """3-D items from a synthbrain HDF5 split: dicts of float32 tensors [C|1, X, Y, Z].

    Args:
        path: the HDF5 file; split: "train", "val", "test" or "all".
        keys: volumes to return, from ("images", "brain_mask", "labels", "healthy"). Labels are the
            label values as floats (all zero for subjects without labels).
        crop: when set (an int or three ints), a random crop of that size. The crop of item i is
            drawn from a torch.Generator seeded by hash(generator_seed, epoch, i), so a run is
            reproducible, whatever the worker count; call `set_epoch` each epoch for fresh crops.
        generator_seed: the seed of the crop draws.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        split: str,
        *,
        keys: Sequence[str] = ("images", "brain_mask", "labels"),
        crop: int | Sequence[int] | None = None,
        generator_seed: int = 0,
    ) -> None:
        super().__init__(path, split, keys)
        if crop is not None:
            crop = (int(crop),) * 3 if np.isscalar(crop) else tuple(int(c) for c in crop)
            if len(crop) != 3 or any(c < 1 or c > g for c, g in zip(crop, self.grid, strict=True)):
                raise ValueError(f"crop {crop} must be three sizes within the grid {self.grid}")
        self.crop = crop
        self.generator_seed = int(generator_seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose crops the next items use."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def crop_region(self, index: int) -> tuple[slice, ...]:
        """The region item `index` reads this epoch (the whole grid without crop)."""
        if self.crop is None:
            return tuple(slice(0, g) for g in self.grid)
        gen = torch.Generator().manual_seed(crop_seed(self.generator_seed, self.epoch, index))
        sizes = zip(self.grid, self.crop, strict=True)
        starts = [int(torch.randint(0, g - c + 1, (1,), generator=gen)) for g, c in sizes]
        return tuple(slice(s, s + c) for s, c in zip(starts, self.crop, strict=True))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        region = self.crop_region(index)
        sid = self.ids[index]
        item = {key: self._read(sid, key, region) for key in self.keys}
        return {key: torch.from_numpy(v) for key, v in item.items() if v is not None}


class SliceDataset(_H5Dataset):
    """2-D axial items from a synthbrain HDF5 split: dicts of float32 tensors [C|1, X, Y].

    Items are the slices listed in /slices/<split> (written with ``--slices``); without that index
    the slices meeting each subject's brain mask are found once, here.

    With ``context=k`` the images (and healthy) carry the k neighbouring slices on each side as
    extra channels (2.5-D), clamped at the volume's edges: shape [(2k+1)*C, X, Y], offset-major,
    so channels ``k*C:(k+1)*C`` are the centre slice (see `center_channels`). brain_mask and
    labels are the centre slice only.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        split: str,
        *,
        keys: Sequence[str] = ("images", "brain_mask", "labels"),
        context: int = 0,
    ) -> None:
        super().__init__(path, split, keys)
        if context < 0:
            raise ValueError("context must be >= 0")
        self.context = int(context)
        self.n_contrasts = len(self.info["contrasts"])
        self.index = self._slice_index()

    def _slice_index(self) -> np.ndarray:
        """The (subject index in split, z) rows: stored, or computed from the brain masks."""
        with h5py.File(self.path, "r") as h5:
            if self.split != "all" and f"slices/{self.split}" in h5:
                return h5["slices"][self.split][()].astype(np.int64).reshape(-1, 2)
            rows = []
            for i, sid in enumerate(self.ids):
                z = np.flatnonzero(h5["subjects"][sid]["brain_mask"][()].any(axis=(0, 1)))
                rows.extend((i, int(k)) for k in z)
        return np.array(rows, dtype=np.int64).reshape(-1, 2)

    def center_channels(self) -> slice:
        """The image channels of the centre slice."""
        return slice(self.context * self.n_contrasts, (self.context + 1) * self.n_contrasts)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        subject, z = (int(v) for v in self.index[index])
        sid, k, depth = self.ids[subject], self.context, self.grid[2]
        lo, hi = max(z - k, 0), min(z + k, depth - 1)
        item: dict[str, torch.Tensor] = {}
        for key in self.keys:
            if key in ("images", "healthy"):
                block = self._read(sid, key, (slice(None), slice(None), slice(lo, hi + 1)))
                if block is None:
                    continue
                zs = np.clip(np.arange(z - k, z + k + 1), 0, depth - 1) - lo
                data = np.moveaxis(block[..., zs], -1, 0).reshape(-1, *block.shape[1:3])
            else:
                data = self._read(sid, key, (slice(None), slice(None), slice(z, z + 1)))[..., 0]
            item[key] = torch.from_numpy(np.ascontiguousarray(data))
        return item
