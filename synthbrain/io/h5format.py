"""The HDF5 training-set format, written by `preprocess` and `phantom --hdf5`: the format itself.

Layout (see docs/architecture.md)::

    /   attrs: format, version, contrasts, spacing, grid, label_names, label_convention
    /subjects/<id>/images      float32 [C, X, Y, Z]  model grid (RAS), [0, 1] in brain, 0 outside
    /subjects/<id>/brain_mask  uint8   [X, Y, Z]
    /subjects/<id>/labels      uint8   [X, Y, Z]     (subjects with lesion labels)
    /subjects/<id>/healthy     float32 [C, X, Y, Z]  (phantom subjects: the true substrate)
    /splits          attrs: seed, fractions; datasets train / val / test (utf-8 subject ids)
    /slices/<split>  int32 [N, 2]: (subject index in the split, axial z), slices meeting the brain

Every volume is chunked one axial slice per chunk, so 2-D readers decompress only what they use.
The torch Datasets over this format live in `synthbrain.io.dataset`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from synthbrain.errors import InputError

FORMAT = "synthbrain-hdf5"
VERSION = 1
SPLITS = ("train", "val", "test")
LABEL_CONVENTIONS = ("brats2023", "brats2020", "binary", "none", "unknown")
VOLUME_KEYS = ("images", "brain_mask", "labels", "healthy")
_STR = h5py.string_dtype("utf-8")


def _json_attr(value: Any) -> Any:
    """An attribute value h5py can store: dicts and string lists become JSON text."""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, list | tuple) and any(isinstance(v, str | dict) for v in value):
        return json.dumps(list(value))
    if isinstance(value, list | tuple):
        return np.asarray(value)
    if isinstance(value, Path):
        return str(value)
    return value


def decode_attr(value: Any) -> Any:
    """Undo `_json_attr`: JSON text back to Python objects, numpy scalars to Python scalars."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Subjects per split by rounding the cumulative fractions, so the counts always sum to n."""
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or (f < 0).any() or f.sum() <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers, got {fractions}")
    edges = np.floor(np.cumsum(f) / f.sum() * n + 0.5).astype(int)
    return np.diff(np.concatenate([[0], edges])).tolist()


def make_split(ids: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, list[str]]:
    """A seeded subject-level split: the same ids and seed give the same split in any order."""
    ordered = sorted(ids)
    perm = torch.randperm(len(ordered), generator=torch.Generator().manual_seed(int(seed)))
    counts = split_counts(len(ordered), fractions)
    out, start = {}, 0
    for name, count in zip(SPLITS, counts, strict=True):
        out[name] = sorted(ordered[i] for i in perm[start : start + count].tolist())
        start += count
    return out


class H5Writer:
    """Write a synthbrain HDF5 training set: add subjects one by one, then `finish`.

    The file is written to ``<path>.tmp`` and renamed onto `path` by `finish`, so a killed run
    leaves no final-named file. Used as a context manager, an exception aborts the write and
    removes the temporary file.

    Args:
        path: the final .h5 file.
        contrasts: channel names in order (e.g. ``["t1", "t2", "flair"]``).
        spacing: the model grid spacing in mm (one float or three).
        grid: the model grid shape (X, Y, Z); every subject's volumes have this shape.
        label_names: ``{name: value}`` of the lesion labels (empty for healthy-only sets).
        label_convention: one of ``LABEL_CONVENTIONS``.
        compression: "lzf" (fast, default) or "gzip".
        overwrite: replace an existing file at `path` (else InputError).
        extra_attrs: further global string attributes (e.g. ``{"space": "template"}``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        contrasts: Sequence[str],
        spacing: float | Sequence[float],
        grid: Sequence[int],
        label_names: dict[str, int],
        label_convention: str,
        compression: str = "lzf",
        overwrite: bool = False,
        extra_attrs: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise InputError("output file exists (use overwrite to replace it)", self.path)
        if label_convention not in LABEL_CONVENTIONS:
            raise ValueError(f"label_convention must be one of {LABEL_CONVENTIONS}")
        if len(grid) != 3 or not contrasts:
            raise ValueError("grid must have three sizes and contrasts at least one name")
        self.contrasts = [str(c) for c in contrasts]
        sp = [float(spacing)] * 3 if np.isscalar(spacing) else [float(s) for s in spacing]
        self.spacing, self.grid = sp, [int(g) for g in grid]
        self.compression = compression
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._h5: h5py.File | None = h5py.File(self.tmp, "w")
        attrs = self._h5.attrs
        attrs.update(format=FORMAT, version=VERSION, label_convention=label_convention)
        attrs["contrasts"] = json.dumps(self.contrasts)
        attrs["spacing"] = json.dumps(self.spacing)
        attrs["grid"] = json.dumps(self.grid)
        attrs["label_names"] = json.dumps({str(k): int(v) for k, v in label_names.items()})
        attrs.update({str(k): str(v) for k, v in (extra_attrs or {}).items()})
        self._subjects = self._h5.create_group("subjects")
        self._brain_z: dict[str, np.ndarray] = {}

    def __enter__(self) -> H5Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def _volume(self, group: h5py.Group, name: str, data: np.ndarray, dtype: type) -> None:
        """Store one volume chunked one axial slice (last axis) per chunk."""
        chunks = (*data.shape[:-1], 1)
        opts = {"compression_opts": 4} if self.compression == "gzip" else {}
        group.create_dataset(
            name,
            data=data.astype(dtype, copy=False),
            chunks=chunks,
            compression=self.compression,
            shuffle=self.compression == "gzip",
            **opts,
        )

    def _check(self, name: str, data: np.ndarray, channels: bool) -> np.ndarray:
        """Validate a volume's shape against the grid (and the contrast count)."""
        data = np.asarray(data)
        want = (len(self.contrasts), *self.grid) if channels else tuple(self.grid)
        if data.shape != tuple(want):
            raise ValueError(f"{name} has shape {data.shape}, expected {tuple(want)}")
        if not np.isfinite(data).all():
            raise ValueError(f"{name} holds NaN or Inf values")
        return data

    def add_subject(
        self,
        subject_id: str,
        images: np.ndarray,
        brain_mask: np.ndarray,
        labels: np.ndarray | None = None,
        healthy: np.ndarray | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> None:
        """Add one subject: images [C, X, Y, Z], brain_mask [X, Y, Z], optional labels / healthy.

        `attrs` (affine, source_affine, source_shape, source_paths, intensity, healthy,
        lesion_type, ...) are stored on the subject's group; dicts and string lists as JSON.
        """
        if self._h5 is None:
            raise RuntimeError("H5Writer is closed")
        sid = str(subject_id)
        if not sid or "/" in sid or sid in self._brain_z:
            raise ValueError(f"subject id {sid!r} is empty, holds '/' or was already added")
        # validate everything before creating the group, so a rejected subject leaves no trace
        volumes = {
            "images": (self._check("images", images, True), np.float32),
            "brain_mask": (self._check("brain_mask", brain_mask, False) > 0, np.uint8),
        }
        if labels is not None:
            lab = self._check("labels", labels, False)
            if lab.min() < 0 or lab.max() > 255 or not np.array_equal(lab, np.round(lab)):
                raise ValueError("labels must be integers in 0..255")
            volumes["labels"] = (lab, np.uint8)
        if healthy is not None:
            volumes["healthy"] = (self._check("healthy", healthy, True), np.float32)
        values = {"spacing": self.spacing, "healthy": labels is None, **(attrs or {})}
        encoded = {key: _json_attr(value) for key, value in values.items()}
        group = self._subjects.create_group(sid)
        for name, (data, dtype) in volumes.items():
            self._volume(group, name, data, dtype)
        group.attrs.update(encoded)
        mask = volumes["brain_mask"][0]
        self._brain_z[sid] = np.flatnonzero(mask.any(axis=(0, 1)))

    def finish(
        self,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        seed: int = 0,
        slices: bool = False,
    ) -> Path:
        """Write the seeded subject split (and slice index), close, rename; return the path."""
        if self._h5 is None:
            raise RuntimeError("H5Writer is closed")
        if not self._brain_z:
            self.abort()
            raise ValueError("no subjects were added")
        split = make_split(list(self._brain_z), split_fractions, seed)
        group = self._h5.create_group("splits")
        group.attrs["seed"] = int(seed)
        group.attrs["fractions"] = json.dumps([float(f) for f in split_fractions])
        for name, ids in split.items():
            group.create_dataset(name, data=np.array(ids, dtype=object), dtype=_STR)
        if slices:
            index = self._h5.create_group("slices")
            for name, ids in split.items():
                rows = [(i, z) for i, sid in enumerate(ids) for z in self._brain_z[sid]]
                index.create_dataset(name, data=np.array(rows, dtype=np.int32).reshape(-1, 2))
        self._h5.close()
        self._h5 = None
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close and remove the temporary file; the final path is never touched."""
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
        self.tmp.unlink(missing_ok=True)


def _open(path: str | os.PathLike[str]) -> h5py.File:
    """Open a synthbrain HDF5 file for reading, or raise InputError naming it."""
    try:
        h5 = h5py.File(path, "r")
    except (OSError, ValueError) as err:
        raise InputError(f"not a readable HDF5 file ({err})", path) from None
    if decode_attr(h5.attrs.get("format", "")) != FORMAT:
        h5.close()
        raise InputError(f"not a {FORMAT} file (run `synthbrain preprocess`)", path)
    return h5


def read_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The dataset's global attributes, subject count, splits and whether slices are indexed."""
    with _open(path) as h5:
        info = {key: decode_attr(value) for key, value in h5.attrs.items()}
        info["n_subjects"] = len(h5["subjects"])
        splits = h5.get("splits")
        if splits is not None:
            info["split_seed"] = decode_attr(splits.attrs["seed"])
            info["split_fractions"] = decode_attr(splits.attrs["fractions"])
            info["split_sizes"] = {name: len(splits[name]) for name in SPLITS if name in splits}
        info["slices"] = "slices" in h5
    return info


def split_ids(path: str | os.PathLike[str], split: str) -> list[str]:
    """Subject ids of a split ("train", "val", "test", or "all" for every subject, sorted)."""
    with _open(path) as h5:
        if split == "all":
            return sorted(h5["subjects"])
        if split not in SPLITS or "splits" not in h5:
            raise InputError(f"unknown split {split!r} (choose from train, val, test, all)", path)
        return [s.decode("utf-8") if isinstance(s, bytes) else s for s in h5["splits"][split][()]]


def read_subject(path: str | os.PathLike[str], subject_id: str) -> dict[str, Any]:
    """One subject's volumes as numpy arrays plus its decoded attrs under "attrs"."""
    with _open(path) as h5:
        if subject_id not in h5["subjects"]:
            raise InputError(f"no subject {subject_id!r} in the dataset", path)
        group = h5["subjects"][subject_id]
        out: dict[str, Any] = {key: group[key][()] for key in VOLUME_KEYS if key in group}
        out["attrs"] = {key: decode_attr(value) for key, value in group.attrs.items()}
    return out


class LazyH5:
    """A read handle on `self.path` opened on first use in each process.

    HDF5 handles must not cross a fork, so DataLoader workers each open their own: the handle is
    dropped when the object is pickled and reopened when the process id changes. Mixed into
    every dataset that reads a training set (io.dataset and the engines' own datasets).
    """

    path: Path
    _h5: h5py.File | None = None
    _pid: int | None = None

    def _file(self) -> h5py.File:
        """The open handle for this process."""
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"], state["_pid"] = None, None
        return state


def open_set(path: str | os.PathLike[str]) -> h5py.File:
    """A training set opened read-only, for a `with` block: the one way code outside io reads
    an HDF5 set's groups and attributes in one pass (datasets use `LazyH5`)."""
    return h5py.File(path, "r")
