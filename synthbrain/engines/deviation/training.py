"""`synthbrain train --engine deviation`: lesion slices (or volumes) of an HDF5 set, joint fit.

The set may come from `synthbrain preprocess` (BraTS layout, ATLAS, ...) or `synthbrain phantom
--hdf5`. Items are the axial slices that meet the lesion (2-D) or whole volumes that hold one
(3-D), with the config's contrasts as channels and the chosen labels merged into one mask.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthbrain.engines.deviation.config import DeviationConfig, load_config
from synthbrain.errors import InputError
from synthbrain.io.h5format import LazyH5, open_set
from synthbrain.training.request import TrainRequest


def contrast_channels(path: Path, wanted: tuple[str, ...]) -> list[int]:
    """Indices of `wanted` in the set's channels; InputError naming any that are missing."""
    from synthbrain.io.dataset import read_info

    have = list(read_info(path)["contrasts"])
    missing = [c for c in wanted if c not in have]
    if missing:
        raise InputError(
            f"the training set lacks contrast(s) {', '.join(missing)} that the config asks for "
            f"(it has {', '.join(have) or 'none'}); set `contrasts` in the config to a subset "
            "or preprocess those contrasts too",
            path,
        )
    return [have.index(c) for c in wanted]


class LesionItems(LazyH5, torch.utils.data.Dataset):
    """Items {images [C, ...], mask [1, ...], healthy [C, ...] where stored} of one split: lesion
    slices (2-D) or volumes (3-D).

    Args:
        path: the HDF5 set.
        split: "train", "val", "test" or "all".
        config: contrasts (channel order), labels (which make m) and dims.
    """

    def __init__(self, path: str | os.PathLike[str], split: str, config: DeviationConfig) -> None:
        from synthbrain.io.dataset import read_info, split_ids

        self.path = Path(path)
        self.channels = contrast_channels(self.path, config.contrasts)
        self.info = read_info(self.path)
        self.which = config.labels
        self.dims = config.dims
        self.ids = split_ids(self.path, split)
        self.has_healthy = False
        self.index = self._lesion_index()

    def _mask(self, labels: np.ndarray) -> np.ndarray:
        """The support mask m of a label array (the chosen labels merged)."""
        from synthbrain.io.dataset import lesion_mask_from_labels

        names = self.info.get("label_names") or {}
        try:
            return lesion_mask_from_labels(labels, self.which, names) > 0
        except ValueError as err:
            raise InputError(f"config labels: {err}", self.path) from None

    def _lesion_index(self) -> np.ndarray:
        """(subject, z) rows of slices meeting the lesion; z = −1 for whole volumes (3-D).

        Sets has_healthy when every lesion subject stores its true substrate (phantoms), so all
        items carry one or none (a batch cannot mix them)."""
        rows, healthy = [], []
        with open_set(self.path) as h5:
            for i, sid in enumerate(self.ids):
                group = h5["subjects"][sid]
                if "labels" not in group:
                    continue
                healthy.append("healthy" in group)
                hit = self._mask(group["labels"][()])
                if self.dims == 3:
                    rows += [(i, -1)] if hit.any() else []
                else:
                    rows += [(i, int(z)) for z in np.flatnonzero(hit.any(axis=(0, 1)))]
        self.has_healthy = bool(healthy) and all(healthy)
        return np.array(rows, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        subject, z = (int(v) for v in self.index[index])
        group = self._file()["subjects"][self.ids[subject]]
        where = (slice(None),) * 3 if z < 0 else (slice(None), slice(None), z)
        images = np.stack([group["images"][(c, *where)] for c in self.channels])
        mask = self._mask(group["labels"][where])[None]
        item = {
            "images": torch.from_numpy(images.astype(np.float32)),
            "mask": torch.from_numpy(mask.astype(np.float32)),
        }
        if self.has_healthy:  # the true substrate: the residual f_sub's target
            healthy = np.stack([group["healthy"][(c, *where)] for c in self.channels])
            item["healthy"] = torch.from_numpy(healthy.astype(np.float32))
        return item


def train(request: TrainRequest) -> dict[str, Any]:
    """Fit f_sub and ε_θ jointly (Eq. 15) on an HDF5 set; resumable, DDP-ready (torchrun).

    The request's HDF5 set must hold the config's contrasts; its run folder gets checkpoints/,
    metrics.jsonl, main.safetensors (EMA weights with the config in their metadata: usable as
    --weights) and config.json; its config file is a TOML/JSON like
    examples/configs/deviation-*.toml, and its overrides are dotted keys (e.g. {"space": "image"}).
    """
    from synthbrain.engines.deviation.model import DeviationModel
    from synthbrain.io.outputs import atomic_write_json
    from synthbrain.train import fit

    data, out = request.data, request.out
    config = load_config(request.config_file, request.train_overrides())
    train_set = LesionItems(data, "train", config)
    if len(train_set) == 0:
        raise InputError("the training split holds no lesion voxels for the chosen labels", data)
    val_set = LesionItems(data, "val", config)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", config.model_dump(mode="json"))
    summary = fit(
        DeviationModel(config), train_set, val_set if len(val_set) else None, config.train, out,
        resume=request.resume, progress=request.progress().show_progress,
        metadata={"engine": "deviation", "config": config.model_dict()},
    )  # fmt: skip
    summary.update({"engine": "deviation", "items": len(train_set), "data": str(data)})
    return summary


def export_checkpoint(run_dir: Path, target: Path, *, fp16: bool = True) -> Path:
    """The EMA weights of a run's (possibly unfinished) checkpoint as a weights file."""
    from synthbrain.engines.deviation.model import DeviationModel
    from synthbrain.engines.deviation.run import save_weights
    from synthbrain.io.statedict import load_tensors

    run_dir = Path(run_dir)
    payload = load_tensors(run_dir / "checkpoints" / "last.pt")
    config = load_config(run_dir / "config.json")
    model = DeviationModel(config)
    state = dict(payload["model"])
    state.update(payload["ema"])
    model.load_state_dict(state)
    meta = {"training": {"step": int(payload["step"]), "ema_decay": config.train.ema_decay}}
    return save_weights(model, target, dtype=torch.float16 if fp16 else None, metadata=meta)
