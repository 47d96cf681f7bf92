"""The deformation engine's configuration (pydantic): networks, loss, sampling, training.

A TOML file (examples/configs/deformation-*.toml) holds these keys at the top level, the network
settings under ``[denoiser]`` / ``[warp_net]``, sampling defaults under ``[sampling]`` and the
training settings under ``[train]`` (synthbrain.training TrainConfig). Everything but ``train``
defines the model; it is stored in the weights file's metadata, so a weights file rebuilds its
own model (`DeformationConfig.model_dict`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from synthbrain.training.config import TrainConfig

INPUT_CONTRASTS = ("t1", "t2", "flair")
TARGET_CONTRAST = "t1gd"
# BraTS enhancing-tumour label per naming convention (METHODS.md §3, "Labels").
ENHANCING_LABEL = {"brats2023": 3, "brats2020": 4}


class NetSettings(BaseModel):
    """Width and depth of one U-Net (dims and channel counts follow from the engine config)."""

    model_config = ConfigDict(extra="forbid")

    base_channels: int = Field(default=8, ge=2)
    channel_mults: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = Field(default=1, ge=1)
    attention_levels: tuple[int, ...] = ()
    groups: int = Field(default=4, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)


class Sampling(BaseModel):
    """Defaults of the reverse process at inference.

    Attributes:
        steps: sampler steps (the paper and its code use 250 DDIM steps; ours is chosen for
            ≤ 60 s per 2 mm volume on 2 CPU cores, see docs/deformation.md).
        sampler: "ddim" (the paper's), "dpm++" (DPM-Solver++(2M)) or "ddpm".
        eta: DDIM η (0: deterministic, as in the paper's code).
        spacing: timestep spacing; "trailing" matches the code's linspace(−1, T−1, steps+1).
        warp_mode: "x0" warps the clipped x̂0 before the update (the published code, our
            default); "combined" warps x_{t−1} after the DDIM combination (the paper's equation).
        noise: "slice" draws x_T per slice (seeded by slice index); "shared" starts every slice
            of a volume from the same x_T, which keeps deterministic DDIM outputs coherent
            through-plane (see docs/deformation.md).
        chunk: slices per batch on the CPU (a CUDA device takes the whole volume at once).
    """

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(default=12, ge=1)
    sampler: Literal["ddim", "ddpm", "dpm++"] = "ddim"
    eta: float = Field(default=0.0, ge=0)
    spacing: Literal["linspace", "trailing", "leading", "logsnr"] = "trailing"
    warp_mode: Literal["x0", "combined"] = "x0"
    noise: Literal["slice", "shared"] = "shared"
    chunk: int = Field(default=24, ge=1)


class DeformationConfig(BaseModel):
    """Everything that defines a deformation-engine (D3M) model, plus its training settings.

    Attributes:
        lesion: the lesion type the weights are for (D3M: brain tumours).
        contrasts: the non-contrast inputs c, in channel order.
        target: the synthesised contrast (T1Gd).
        spacing: model grid spacing in mm.
        grid: model grid in voxels (2-D models see its axial slices).
        context: k neighbouring slices on each side as extra condition channels (2.5-D); 0 is
            the paper's plain 2-D model.
        decoder: "dual" (two decoders over one encoder: the paper's dual-stream DSIMD) or
            "single" (one decoder, two output channels: the published code and the ablation).
        mask_stream: diffuse the enhancing-tumour mask beside the image; False gives the plain
            conditional DDIM baseline (image only, no deformation possible).
        deform: use the deformation net U and the warp (MSSDM); False is the ablation.
        self_condition: feed the previous x̂0 to the denoiser (half of the training steps, every
            sampling step after the first). Off by default: the published code never passes it.
        schedule, timesteps: the noise schedule (sigmoid, T = 1000, as the published code).
        min_snr_gamma: clip the SNR at this value in the loss weight (min-SNR weighting);
            None keeps w_t = SNR/(SNR + 1), the code's v-prediction default.
        smooth_weight: weight of the smoothness term w_t·‖∇û‖² (the code uses 1).
        clip_x0: clamp x̂0 to [−1, 1] before the warp (as the code does).
        crop: training window (pixels per side) cut from each slice; None trains on whole
            slices. The networks are fully convolutional, so sampling runs on whole slices.
        tumour_fraction: share of training items drawn from slices that hold enhancing tumour
            (slices are repeated to reach it) and of crops centred on an enhancing voxel.
        centre_fraction: share of crops centred on an enhancing voxel when it should differ
            from tumour_fraction (None: tumour_fraction).
        tumour_weight: extra loss weight inside the tumour (labels > 0) dilated by
            tumour_margin pixels: per-pixel weight 1 + tumour_weight there (0: the plain loss).
        tumour_margin: pixels around the tumour that share its weight (the rim's surroundings).
        dice_weight: weight of a soft Dice loss on the mask stream's (warped) x̂0, w_t-weighted
            per item (0: none, the published loss).
        regression: a plain regression U-Net baseline: the denoiser (no time embedding) maps the
            condition straight to x0 (image, and the mask with a mask stream); no diffusion.
        val_steps: DDIM steps of the sampled validation (ET Dice, tumour PSNR) in training.
        flip: random left-right flips in training.
    """

    model_config = ConfigDict(extra="forbid")

    engine: Literal["deformation"] = "deformation"
    lesion: str = "tumor"
    contrasts: tuple[str, ...] = INPUT_CONTRASTS
    target: str = TARGET_CONTRAST
    spacing: float = Field(default=2.0, gt=0)
    grid: tuple[int, int, int] = (96, 112, 96)
    context: int = Field(default=1, ge=0, le=4)
    decoder: Literal["dual", "single"] = "dual"
    mask_stream: bool = True
    deform: bool = True
    self_condition: bool = False
    schedule: Literal["sigmoid", "linear", "cosine", "scaled_linear"] = "sigmoid"
    timesteps: int = Field(default=1000, ge=2)
    min_snr_gamma: float | None = Field(default=None, gt=0)
    smooth_weight: float = Field(default=1.0, ge=0)
    clip_x0: bool = True
    crop: int | None = Field(default=48, ge=4)
    tumour_fraction: float = Field(default=0.5, ge=0, lt=1)
    centre_fraction: float | None = Field(default=None, ge=0, le=1)
    # Defaults keep the published loss, so configs and weights from before issue 15 still mean
    # what they meant; the shipped config turns them on.
    tumour_weight: float = Field(default=0.0, ge=0)
    tumour_margin: int = Field(default=3, ge=0)
    dice_weight: float = Field(default=0.0, ge=0)
    regression: bool = False
    val_steps: int = Field(default=4, ge=1)
    flip: bool = True
    sampling: Sampling = Sampling()
    denoiser: NetSettings = NetSettings(base_channels=12)
    warp_net: NetSettings = NetSettings(base_channels=4, channel_mults=(1, 2, 4, 8), groups=2)
    # Sized for a 2-core CPU budget (docs/deformation.md); the paper: Adam 8e-5, batch 16, 200k.
    train: TrainConfig = TrainConfig(
        steps=1500, batch_size=8, lr=1e-3, warmup=30, ema_decay=0.995, checkpoint_every=25,
        log_every=10, val_every=100, val_batches=2, num_workers=1,
    )  # fmt: skip

    @model_validator(mode="after")
    def _consistent(self) -> DeformationConfig:
        """Known contrasts, and no warp without a mask stream to drive it."""
        if not self.contrasts or len(set(self.contrasts)) != len(self.contrasts):
            raise ValueError("contrasts must be distinct names")
        if self.target in self.contrasts:
            raise ValueError(f"the target {self.target!r} cannot also be an input contrast")
        if self.deform and not self.mask_stream:
            raise ValueError("deform=true needs mask_stream=true (U reads the mask estimate)")
        if self.regression and (self.deform or self.self_condition):
            raise ValueError("regression=true is a plain U-Net: deform, self_condition false")
        if self.crop is not None and self.crop % self.multiple:
            raise ValueError(f"crop must be a multiple of {self.multiple} (the U-Nets' stride)")
        return self

    @property
    def multiple(self) -> int:
        """Spatial sizes the networks accept are multiples of this."""
        levels = max(len(self.denoiser.channel_mults), len(self.warp_net.channel_mults))
        return 2 ** (levels - 1)

    @property
    def crop_centre_fraction(self) -> float:
        """Share of training crops centred on an enhancing voxel."""
        return self.tumour_fraction if self.centre_fraction is None else self.centre_fraction

    @property
    def state_channels(self) -> int:
        """Channels of the diffusion state: image (+ mask)."""
        return 2 if self.mask_stream else 1

    @property
    def cond_channels(self) -> int:
        """Condition channels: each input contrast on 2k + 1 slices."""
        return len(self.contrasts) * (2 * self.context + 1)

    def model_dict(self) -> dict[str, Any]:
        """The model-defining part (no training settings), as stored in weights metadata."""
        return self.model_dump(mode="json", exclude={"train"})


def load_config(
    file: Path | None = None, overrides: dict[str, Any] | None = None
) -> DeformationConfig:
    """A DeformationConfig from a TOML/JSON file and overrides ("train.steps"-style keys).

    A ``[train]`` table may set only some keys: the rest keep the engine's defaults.
    Overrides whose value is None are ignored (an option the user did not give).
    """
    from synthbrain.config import resolve

    return resolve(DeformationConfig, file, overrides, partial_tables=("train",))
