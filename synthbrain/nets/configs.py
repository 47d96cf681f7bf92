"""Named default network configurations of the engines (the ones the embedded weights use).

Sizes are chosen so each engine's embedded weights stay small in fp16 (docs/networks.md):
paired ≤ 25 MB, deviation ≤ 20 MB, deformation ≤ 15 MB. Working sizes assume the 2 mm model grid
of 96 x 112 x 96 voxels (it holds the 91 x 109 x 91 MNI152 2 mm box); 2-D engines see its
96 x 112 axial slices, the paired engine its 24 x 28 x 24 latent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from synthbrain.nets.autoencoder import KLAutoencoder
from synthbrain.nets.unet import UNet


@dataclass(frozen=True)
class NetConfig:
    """One named network: what it is for, how to build it and the input size it works at."""

    name: str
    kind: Literal["unet", "autoencoder"]
    engine: Literal["paired", "deviation", "deformation"]
    role: str
    kwargs: Mapping[str, Any]
    input_shape: tuple[int, ...]  # [C, *spatial] of one working-size sample (C counts cond)
    copies: int = 1  # how many weight sets of this config the engine embeds
    notes: str = field(default="")

    @property
    def dims(self) -> int:
        """Spatial dimensionality."""
        return int(self.kwargs["dims"])

    @property
    def timed(self) -> bool:
        """Whether forward() takes timesteps."""
        return self.kind == "unet" and bool(self.kwargs.get("time_embedding", True))

    def build(self, **overrides: Any) -> nn.Module:
        """Instantiate the network (keyword overrides replace entries of ``kwargs``)."""
        kw = {**self.kwargs, **overrides}
        return UNet(**kw) if self.kind == "unet" else KLAutoencoder(**kw)


# byte budgets of each engine's embedded fp16 weights (all its weight sets together)
ENGINE_BUDGET_BYTES = {"paired": 25_000_000, "deviation": 20_000_000, "deformation": 15_000_000}

_GRID_2D = (96, 112)
_GRID_3D = (96, 112, 96)
_LATENT_3D = (24, 28, 24)


def _configs() -> list[NetConfig]:
    """The list behind ``default_configs``."""
    return [
        NetConfig(
            "paired-ae-2mm", "autoencoder", "paired", "3-D KL autoencoder, x4 (image and mask)",
            {"dims": 3, "in_channels": 1, "latent_channels": 4, "base_channels": 16,
             "channel_mults": (1, 2, 4)},
            (1, *_GRID_3D),
        ),
        NetConfig(
            "paired-denoiser-2mm", "unet", "paired", "3-D latent ε-denoiser, one per USB branch",
            {"dims": 3, "in_channels": 8, "out_channels": 4, "base_channels": 32,
             "channel_mults": (1, 2, 3), "attention_levels": (-1,)},
            (8, *_LATENT_3D), copies=2,
            notes="in = own latent (4) + the other branch's latent condition (4)",
        ),
        NetConfig(
            "deviation-2d", "unet", "deviation", "2-D residual ε-denoiser ε_θ([r_t, x_sub, m], t)",
            {"dims": 2, "in_channels": 3, "out_channels": 1, "base_channels": 32,
             "channel_mults": (1, 2, 4, 4), "attention_levels": (-1,)},
            (3, *_GRID_2D),
            notes="in = r_t, x_sub, m for one contrast (2C + 1 for C contrasts)",
        ),
        NetConfig(
            "deviation-substrate-2d", "unet", "deviation", "2-D plain U-Net f_sub(x ⊙ m̄, m̄)",
            {"dims": 2, "in_channels": 2, "out_channels": 1, "base_channels": 16,
             "channel_mults": (1, 2, 4, 8, 8), "attention_levels": (), "time_embedding": False,
             "zero_init_out": False},
            (2, *_GRID_2D),
            notes="4 downsampling stages (PathoSyn Eq. 3)",
        ),
        NetConfig(
            "deformation-2d", "unet", "deformation", "2-D dual-stream v-denoiser (v̂_x, v̂_m)",
            {"dims": 2, "in_channels": 5, "out_channels": (1, 1), "base_channels": 32,
             "channel_mults": (1, 2, 4, 4), "attention_levels": (-1,),
             "separate_decoders": True},
            (5, *_GRID_2D),
            notes="in = x_t, m_t, T1, T2, FLAIR (+2 with self-conditioning)",
        ),
        NetConfig(
            "deformation-warp-2d", "unet", "deformation", "2-D deformation net U(m̂_0) → û",
            {"dims": 2, "in_channels": 1, "out_channels": 2, "base_channels": 16,
             "channel_mults": (1, 2, 4, 4), "attention_levels": (), "time_embedding": False,
             "zero_init_out": False, "out_init_std": 1e-5},
            (1, *_GRID_2D),
            notes="output: displacement in voxels for nets.warp; starts near identity",
        ),
    ]  # fmt: skip


def default_configs() -> dict[str, NetConfig]:
    """Named default configurations, keyed by name."""
    return {c.name: c for c in _configs()}


def build_net(name: str | NetConfig, **overrides: Any) -> nn.Module:
    """Build a network from a config name in ``default_configs()`` (or a NetConfig)."""
    config = name if isinstance(name, NetConfig) else default_configs().get(name)
    if config is None:
        raise ValueError(f"unknown network config {name!r}; known: {sorted(default_configs())}")
    return config.build(**overrides)


def count_params(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def engine_bytes_fp16(engine: str) -> int:
    """Bytes of an engine's embedded fp16 weights: 2 bytes x params x copies, over its configs."""
    return sum(
        2 * count_params(c.build()) * c.copies
        for c in default_configs().values()
        if c.engine == engine
    )
