"""Checkpoints: one atomic file holding everything a resumed run needs."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from synthbrain.errors import InputError
from synthbrain.io.atomic import atomic_target

CHECKPOINT_FORMAT = "synthbrain-train-checkpoint"
CHECKPOINT_VERSION = 1


def checkpoint_path(out_dir: Path, stage: str) -> Path:
    """checkpoints/last.pt for the default stage, checkpoints/<stage>/last.pt for the others."""
    folder = out_dir / "checkpoints"
    return folder / "last.pt" if stage == "main" else folder / stage / "last.pt"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` through a temporary file and os.replace.

    A run killed mid-write leaves the previous last.pt intact (and at most a hidden temporary
    file, which the next save replaces with its own).
    """
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    with atomic_target(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (tensors only, never pickled code)."""
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError) as err:
        raise InputError(f"not a readable training checkpoint ({err})", path) from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError("not a synthbrain training checkpoint", path)
    if payload.get("version") != CHECKPOINT_VERSION:
        raise InputError(f"checkpoint version {payload.get('version')} is not supported", path)
    return payload


def capture_rng(device: torch.device) -> dict[str, torch.Tensor]:
    """The process's global CPU (and current CUDA device) RNG states."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng(states: dict[str, torch.Tensor], device: torch.device) -> None:
    """Put back RNG states saved by `capture_rng` (the CUDA one only on a CUDA run)."""
    torch.set_rng_state(states["cpu"].cpu())
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"].cpu(), device)
