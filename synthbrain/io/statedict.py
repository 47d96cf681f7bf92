"""Safe state-dict files: safetensors with JSON metadata, or weights-only torch files.

Nothing here unpickles Python objects: `.pt` files go through `torch.load(weights_only=True)`,
which refuses anything but tensors and plain containers. `synthbrain.weights` re-exports
these functions (`load_state`, `save_state`, `read_metadata`, `WeightsError`).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthbrain import __version__
from synthbrain.errors import SynthbrainError
from synthbrain.io.atomic import atomic_target
from synthbrain.io.outputs import sha256_file

if TYPE_CHECKING:  # torch is imported on use, so registry commands start fast
    import torch

STATE_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt")


class WeightsError(SynthbrainError):
    """Weights that cannot be found, downloaded, verified or loaded safely: exit code 2."""

    exit_code = 2

    def __init__(self, problem: str, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


def _check_hash(path: Path, sha256: str | None) -> None:
    """WeightsError when `path` does not hash to `sha256` (no check when None)."""
    if sha256 is not None and (actual := sha256_file(path)) != sha256.lower():
        raise WeightsError(f"sha256 mismatch: expected {sha256}, got {actual}", path)


def _read(path: Path) -> Any:
    """The raw object in a weights file (safetensors or a weights-only torch file)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise WeightsError(f"not a valid safetensors file ({exc})", path) from None
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported object"
        raise WeightsError(
            "refused: the file holds Python objects other than tensors, which would run code "
            f"when unpickled ({first})",
            path,
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise WeightsError(f"not a readable torch weights file ({exc})", path) from None


def load_state(
    path: str | os.PathLike[str], sha256: str | None = None, *, key: str | None = None
) -> dict[str, torch.Tensor]:
    """Load a state dict safely: safetensors, or `torch.load(weights_only=True)` for .pt files.

    Args:
        path: a `.safetensors`, `.pt`, `.pth` or `.ckpt` file.
        sha256: when given, the file must hash to it.
        key: take the tensor dict stored under this key (e.g. "ema" of a training checkpoint).

    Raises:
        WeightsError: missing file, wrong hash, unknown suffix, pickled Python objects, or
            content that is not a flat {name: tensor} dict.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError("weights file not found", path)
    if path.suffix not in STATE_SUFFIXES:
        raise WeightsError(f"unknown weights format (expected {', '.join(STATE_SUFFIXES)})", path)
    _check_hash(path, sha256)
    state = _read(path)
    if key is not None:
        if not isinstance(state, Mapping) or key not in state:
            raise WeightsError(f"no {key!r} entry in the weights file", path)
        state = state[key]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        keys = list(state)[:8] if isinstance(state, Mapping) else type(state).__name__
        raise WeightsError(f"not a flat {{name: tensor}} dict (found {keys}); pass key=", path)
    return dict(state)


METADATA_KEY = "synthbrain"


def save_state(
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a state dict as safetensors atomically, with JSON metadata (self-describing file).

    Args:
        state: name → tensor (moved to CPU; shared storage is copied).
        path: target ending in `.safetensors`.
        dtype: cast floating tensors to this dtype (e.g. torch.float16 to halve the file).
        metadata: JSON-able values (e.g. {"config": network settings, "engine": ...}); each is
            stored as JSON text and read back by `read_metadata`.

    Returns:
        The written path.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_state writes .safetensors files, got {path.name}")
    tensors = {}
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[name] = tensor.contiguous().clone()  # safetensors refuses shared storage
    meta = {"format": "pt", "synthbrain_version": __version__}
    meta.update({str(k): v for k, v in (metadata or {}).items()})
    # One key holding sorted JSON: safetensors keeps metadata in a hash map whose order varies
    # between saves, so several keys would make identical weights hash differently.
    packed = {METADATA_KEY: json.dumps(meta, sort_keys=True)}
    with atomic_target(path) as tmp:
        save_file(tensors, str(tmp), metadata=packed)
    return path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a safetensors file, JSON values decoded (plain strings kept as they are)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise WeightsError(f"not a valid safetensors file ({exc})", path) from None
    if METADATA_KEY in raw:
        return json.loads(raw[METADATA_KEY])
    out: dict[str, Any] = {}  # files written before metadata was packed under one key
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def save_tensors(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write a dict of tensors (and plain str / number values) atomically with torch.save: a
    cache that `load_tensors` reads back without unpickling code."""
    import torch

    from synthbrain.io.atomic import atomic_target

    with atomic_target(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_tensors(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a file written by `save_tensors` (or a training checkpoint) onto the CPU,
    weights_only: tensors and plain values, never pickled code."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
