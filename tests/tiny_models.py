"""Tiny random models saved as weights files, shared by the tests that need a bundle on disk."""

from __future__ import annotations

from pathlib import Path

import torch

PAIRED_GRID, PAIRED_SPACING = (16, 16, 16), 12.0


def tiny_paired_bundle(folder: Path, *, jitter: float = 0.0) -> Path:
    """A paired bundle on a 16³ grid at 12 mm (seed 0); `jitter` perturbs every weight so
    the random model draws non-trivial masks."""
    from synthbrain.engines.paired.model import PairedConfig, PairedModel
    from synthbrain.engines.paired.training import export_bundle

    torch.manual_seed(0)
    cfg = PairedConfig(
        grid=PAIRED_GRID, spacing=PAIRED_SPACING, ae_base_channels=4, ae_channel_mults=(1, 2, 2),
        denoiser_base_channels=8, denoiser_channel_mults=(1,), denoiser_attention_levels=(),
    )  # fmt: skip
    model = PairedModel(cfg)
    if jitter:
        for p in model.parameters():
            p.data.add_(jitter * torch.randn_like(p))
    return export_bundle(model, Path(folder) / "tiny.safetensors", {})
