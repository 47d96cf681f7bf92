"""Output layouts: how a sample's volumes are named on disk (flat, BIDS derivatives, nnU-Net v2).

A layout maps (sample id, volume key) to a path relative to the run folder and says which
metadata files the folder carries. Volume keys: `image` (or `image_<contrast>` with several
contrasts), `healthy` / `healthy_<contrast>`, `mask` (binary lesion mask), `labels` (a label
map), `editmask`, and any other `<key>` an engine adds.

flat:
    `<id>_image.nii.gz` (`<id>_image-<contrast>.nii.gz` per contrast), `<id>_mask.nii.gz`,
    `<id>_healthy.nii.gz`, `<id>_editmask.nii.gz`, any `<key>` → `<id>_<key>.nii.gz`.
bids (BIDS derivatives, ids reduced to alphanumeric labels):
    `sub-<L>/anat/sub-<L>_desc-synthetic_T1w.nii.gz`, `..._desc-healthy_T1w.nii.gz`,
    `..._label-lesion_mask.nii.gz`, `..._desc-edit_mask.nii.gz`, `..._desc-lesion_dseg.nii.gz`;
    t1→T1w, t2→T2w, flair→FLAIR, pd→PDw, t1gd→T1w with `ce-gadolinium`; any other `<key>`
    → `..._desc-<key>_<suffix>`. `dataset_description.json` (DatasetType "derivative") and a
    `.bidsignore` for our manifest and config.
nnunet (nnU-Net v2 raw dataset; point the run folder at `$nnUNet_raw/DatasetXXX_Name`):
    `imagesTr/<case>_0000.nii.gz` (one file per channel, `_0000`, `_0001`, … in `channel_names`
    order), `labelsTr/<case>.nii.gz` (`labels` if given, else `mask`), and `dataset.json`.
    The healthy substrates go to `healthyTr/<case>_0000.nii.gz` (same channel numbering):
    nnU-Net never reads that folder, it is kept for paired use. Other keys go to
    `<key>Tr/<case>.nii.gz` (a mask when `labels` is the label target → `maskTr/`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from synthbrain import __version__
from synthbrain.errors import InputError

EXT = ".nii.gz"
CONTRAST_KEYS = ("image", "healthy")
# contrast name → (BIDS suffix, ce- entity)
BIDS_CONTRASTS: dict[str, tuple[str, str | None]] = {
    "t1": ("T1w", None),
    "t2": ("T2w", None),
    "flair": ("FLAIR", None),
    "pd": ("PDw", None),
    "t1gd": ("T1w", "gadolinium"),
    "t1ce": ("T1w", "gadolinium"),
}
NNUNET_CHANNELS = {
    "t1": "T1",
    "t2": "T2",
    "flair": "FLAIR",
    "pd": "PD",
    "t1gd": "T1Gd",
    "t1ce": "T1Gd",
}
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*(_[A-Za-z0-9][A-Za-z0-9-]*)?$")


def _alnum(text: str) -> str:
    """Only the letters and digits of `text` (BIDS labels allow nothing else)."""
    return re.sub(r"[^A-Za-z0-9]", "", text)


def split_key(key: str, channel_names: Sequence[str]) -> tuple[str, str | None]:
    """('image', 't2') for 'image_t2' when t2 is a channel; (key, None) otherwise."""
    if not _KEY_RE.match(key):
        raise ValueError(f"volume key {key!r} must be letters, digits and '-' with one '_'")
    base, _, contrast = key.partition("_")
    if contrast and contrast in channel_names:
        return base, contrast
    return key, None


class Layout:
    """Base layout: file naming, the folder's metadata files and the folders it wholly owns."""

    name = "flat"

    def __init__(
        self,
        channel_names: Sequence[str],
        labels: dict[str, int],
        dataset_name: str,
    ) -> None:
        self.channel_names = tuple(channel_names)
        self.labels = dict(labels)
        self.dataset_name = dataset_name

    def label(self, sample_id: str) -> str:
        """The sample id as it appears in file names."""
        return sample_id

    def check(self, keys: Sequence[str]) -> None:
        """Raise ValueError when a sample's volume keys cannot be laid out."""
        for key in keys:
            split_key(key, self.channel_names)

    def relpaths(self, label: str, keys: Sequence[str]) -> dict[str, str]:
        """Path of each volume key, relative to the run folder (POSIX separators)."""
        out = {}
        for key in keys:
            base, contrast = split_key(key, self.channel_names)
            out[key] = f"{label}_{base}-{contrast}{EXT}" if contrast else f"{label}_{key}{EXT}"
        return out

    def owned_folders(self) -> tuple[str, ...]:
        """Folders that only this layout writes into (cleared wholesale on overwrite)."""
        return ()

    def start_files(self) -> dict[str, Any]:
        """Metadata files (name → JSON object or text) written when a run starts."""
        return {}

    def close_files(self, n_cases: int) -> dict[str, Any]:
        """Metadata files (name → JSON object or text) written when a run closes."""
        return {}

    def metadata_names(self) -> tuple[str, ...]:
        """Names of every metadata file this layout may write."""
        return tuple(self.start_files()) + tuple(self.close_files(0))


class BidsLayout(Layout):
    """BIDS derivatives: `sub-<label>/anat/sub-<label>_<entities>_<suffix>.nii.gz`."""

    name = "bids"

    def label(self, sample_id: str) -> str:
        """The BIDS subject label: the id's letters and digits only."""
        label = _alnum(sample_id)
        if not label:
            raise InputError(f"sample id {sample_id!r} has no letters or digits for a BIDS label")
        return label

    def _suffix(self, contrast: str) -> tuple[str, str | None]:
        """(suffix, ce entity) of a contrast name; unknown contrasts keep their own name."""
        return BIDS_CONTRASTS.get(contrast.lower(), (_alnum(contrast), None))

    def _name(self, key: str) -> str:
        """The entities and suffix of one volume key, e.g. `desc-healthy_T2w`."""
        base, contrast = split_key(key, self.channel_names)
        if base in CONTRAST_KEYS:
            suffix, ce = self._suffix(contrast or self.channel_names[0])
            desc = "synthetic" if base == "image" else "healthy"
            return (f"ce-{ce}_" if ce else "") + f"desc-{desc}_{suffix}"
        fixed = {
            "mask": "label-lesion_mask",
            "editmask": "desc-edit_mask",
            "labels": "desc-lesion_dseg",
        }
        if key in fixed:
            return fixed[key]
        if contrast:
            suffix, ce = self._suffix(contrast)
            return (f"ce-{ce}_" if ce else "") + f"desc-{_alnum(base)}_{suffix}"
        suffix = "mask" if key.endswith("mask") else self._suffix(self.channel_names[0])[0]
        return f"desc-{_alnum(key)}_{suffix}"

    def relpaths(self, label: str, keys: Sequence[str]) -> dict[str, str]:
        """`sub-<L>/anat/sub-<L>_<entities>_<suffix>.nii.gz` for each key."""
        out = {key: f"sub-{label}/anat/sub-{label}_{self._name(key)}{EXT}" for key in keys}
        if len(set(out.values())) != len(out):
            raise ValueError(f"volume keys {sorted(keys)} give clashing BIDS names")
        return out

    def start_files(self) -> dict[str, Any]:
        """`dataset_description.json` and a `.bidsignore` for our own non-BIDS files."""
        description = {
            "Name": self.dataset_name,
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [
                {
                    "Name": "synthbrain",
                    "Version": __version__,
                    "Description": "Synthetic paired brain MRI generated with diffusion models",
                }
            ],
        }
        return {
            "dataset_description.json": description,
            ".bidsignore": "manifest*.jsonl\nconfig.json\n",
        }


class NnunetLayout(Layout):
    """nnU-Net v2 raw dataset: imagesTr/, labelsTr/, dataset.json (+ healthyTr/ for pairs)."""

    name = "nnunet"

    def __init__(self, channel_names: Sequence[str], labels: dict[str, int], dataset_name: str):
        super().__init__(channel_names, labels, dataset_name)
        if self.labels.get("background") != 0:
            raise InputError(f"nnU-Net labels need 'background': 0, got {self.labels}")
        values = list(self.labels.values())
        if len(set(values)) != len(values) or any(not isinstance(v, int) for v in values):
            raise InputError(f"nnU-Net labels must map names to distinct integers: {self.labels}")

    def label(self, sample_id: str) -> str:
        """The nnU-Net case identifier: letters, digits, '_' and '-'."""
        return re.sub(r"[^A-Za-z0-9_-]", "-", sample_id)

    def check(self, keys: Sequence[str]) -> None:
        """Every channel must be present (nnU-Net needs all of them for each case)."""
        super().check(keys)
        if len(self.channel_names) == 1 and "image" in keys:
            return
        missing = [c for c in self.channel_names if f"image_{c}" not in keys]
        if missing:
            raise ValueError(f"nnU-Net layout needs image_<c> for every channel; missing {missing}")

    def _channel(self, contrast: str | None) -> int:
        """The `_XXXX` channel number of a contrast (the only channel when None)."""
        return 0 if contrast is None else self.channel_names.index(contrast)

    def relpaths(self, label: str, keys: Sequence[str]) -> dict[str, str]:
        """imagesTr/<case>_XXXX, labelsTr/<case>, healthyTr/<case>_XXXX, <key>Tr/<case>."""
        target = "labels" if "labels" in keys else "mask"
        out = {}
        for key in keys:
            base, contrast = split_key(key, self.channel_names)
            if base in CONTRAST_KEYS:
                folder = "imagesTr" if base == "image" else "healthyTr"
                out[key] = f"{folder}/{label}_{self._channel(contrast):04d}{EXT}"
            elif key == target:
                out[key] = f"labelsTr/{label}{EXT}"
            elif contrast:
                out[key] = f"{_alnum(base)}Tr/{label}_{self._channel(contrast):04d}{EXT}"
            else:
                out[key] = f"{_alnum(key)}Tr/{label}{EXT}"
        return out

    def owned_folders(self) -> tuple[str, ...]:
        """imagesTr, labelsTr and healthyTr hold nothing but our cases."""
        return ("imagesTr", "labelsTr", "healthyTr")

    def close_files(self, n_cases: int) -> dict[str, Any]:
        """nnU-Net v2 `dataset.json`: channel_names, labels, numTraining, file_ending."""
        channels = {
            str(i): NNUNET_CHANNELS.get(c.lower(), c) for i, c in enumerate(self.channel_names)
        }
        dataset = {
            "channel_names": channels,
            "labels": dict(sorted(self.labels.items(), key=lambda item: item[1])),
            "numTraining": int(n_cases),
            "file_ending": EXT,
            "name": self.dataset_name,
            "description": "Synthetic cases from synthbrain. healthyTr/ holds each case's "
            "healthy substrate (same channel numbering); nnU-Net does not read it.",
        }
        return {"dataset.json": dataset}


LAYOUTS: dict[str, type[Layout]] = {"flat": Layout, "bids": BidsLayout, "nnunet": NnunetLayout}


def make_layout(
    name: str, channel_names: Sequence[str], labels: dict[str, int], dataset_name: str
) -> Layout:
    """The layout called `name` (flat | bids | nnunet); InputError for any other name."""
    if name not in LAYOUTS:
        raise InputError(f"unknown layout {name!r}; choose one of {', '.join(LAYOUTS)}")
    if not channel_names:
        raise InputError("at least one channel (contrast) name is needed")
    return LAYOUTS[name](channel_names, labels, dataset_name)
