"""Export of the final (EMA) weights as safetensors."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from synthbrain.io.atomic import atomic_target


def export_weights(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    """Write a state_dict to `path` as safetensors, atomically; returns the path.

    Tensors are copied to the CPU as independent contiguous tensors: safetensors refuses
    tensors that share storage (tied weights).
    """
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    with atomic_target(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path
