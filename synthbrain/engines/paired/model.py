"""Paired lesion–brain diffusion (USB), engine `paired`: the model bundle and its losses.

One `PairedModel` holds the three networks of METHODS.md §2: a 3-D KL autoencoder for the brain
image y (x4 down), the lesion branch ε^x_θ(x_t, y_t, t) and the brain branch ε^y_θ(y_t, x̂0, t),
both 3-D U-Nets on the latent grid. The lesion x lives on the same latent grid as a soft map: the
binary mask average-pooled by `mask_pool`, then folded into channels (space-to-depth) by
4 / mask_pool, scaled to [-1, 1] (our reading; see docs/paired.md). The joint diffusion state is
one tensor, channels [x, y], so the shared sampling loop drives it.

This module knows no files: samplers and guidance hooks are in `guidance`, training in `training`,
validation metrics in `validation`, the commands in the package `__init__`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from synthbrain.diffusion import Schedule, make_schedule, q_sample, to_x0_eps, v_from_x0_eps
from synthbrain.engines.paired.data import crop_latents
from synthbrain.engines.paired.tensor_ops import (
    depth_to_space,
    seeded_randn,
    space_to_depth,
    weighted_mse,
)
from synthbrain.engines.paired.wavelet import haar_forward, haar_inverse
from synthbrain.nets import KLAutoencoder, UNet, autoencoder_loss

STAGES = ("autoencoder", "diffusion")
BRANCHES = ("lesion", "brain")
Branch = Literal["lesion", "brain"]
HAAR_LEVELS = 2  # 2 levels of x2 = the x4 down to the latent grid
HAAR_BANDS = 8**HAAR_LEVELS


class PairedConfig(BaseModel):
    """Network and diffusion settings of one paired model (stored in the weights' metadata).

    Attributes:
        lesion: the lesion type the model was trained for (stroke, wmh, ...).
        contrasts: image channels, in order.
        spacing: model grid spacing in mm (isotropic).
        grid: model grid shape (MNI152 space); divisible by 4 · 2^(levels − 1) of the denoiser.
        latent_channels: channels of the autoencoder's latent.
        ae_base_channels, ae_channel_mults: autoencoder widths (3 levels = x4 down).
        denoiser_base_channels, denoiser_channel_mults, denoiser_attention_levels: both U-Nets.
        mask_pool: the mask is average-pooled by this factor (1, 2 or 4) and the rest of the x4
            down to the latent grid is folded into channels ((4 / mask_pool)^3 lesion channels).
        T, beta_start, beta_end: the linear noise schedule (USB: 1024, 1e-4, 0.02).
        latent_shift, latent_scale: per-channel normalisation z ← (z − shift) · scale of the
            encoder mean, measured on the training latents (unit variance for the diffusion).
        lesion_sign: +1 when lesions are brighter than the tissue they replace, −1 darker,
            measured on the training set (used by evaluation and reported in the manifest).
        prediction: what both sub-models output: "eps" (USB, Eq. 10–11) or "v"
            (v = √ᾱ ε − √(1−ᾱ) x0). With ε the network must reproduce its noisy input at high
            noise, which a short-trained U-Net does badly (an error floor that x̂0 amplifies by
            1/√ᾱ); with v that regime is a near-constant output (docs/paired.md).
        representation: what maps the image onto the latent grid: "autoencoder" (USB's KL
            autoencoder, trained; the embedded weights) or "haar" (the training-free 2-level 3-D
            Haar packet of `paired.wavelet`, WDM's choice: exact inverse, no representation
            floor, latent_channels = 64 per contrast; no ae.* weights).
        brain_prediction: what the brain branch outputs when it differs from `prediction`
            (None: the same). "x0" suits the Haar latent: its 63 detail bands are near zero off
            the tissue edges, and with ε or v the branch must pass every band's noise through a
            U-Net far narrower than the 64 bands (16 channels), which it cannot, so the noise
            stays in its estimates and samples end as block noise (docs/paired.md); an x0
            output of 0 is the empty band, no pass-through needed.
    """

    model_config = ConfigDict(extra="forbid")

    lesion: str = "stroke"
    contrasts: list[str] = Field(default_factory=lambda: ["t1"], min_length=1)
    spacing: float = Field(default=2.0, gt=0)
    grid: tuple[int, int, int] = (96, 112, 96)
    latent_channels: int = Field(default=4, ge=1)
    ae_base_channels: int = Field(default=8, ge=1)
    ae_channel_mults: tuple[int, ...] = (1, 2, 4)
    denoiser_base_channels: int = Field(default=16, ge=1)
    denoiser_channel_mults: tuple[int, ...] = (1, 2, 2)
    denoiser_attention_levels: tuple[int, ...] = (-1,)
    mask_pool: int = 2
    T: int = Field(default=1024, ge=2)
    beta_start: float = 1e-4
    beta_end: float = 0.02
    latent_shift: list[float] | None = None
    latent_scale: list[float] | None = None
    lesion_sign: float = -1.0
    prediction: Literal["eps", "v"] = "eps"
    representation: Literal["autoencoder", "haar"] = "autoencoder"
    brain_prediction: Literal["eps", "v", "x0"] | None = None

    @model_validator(mode="after")
    def _check(self) -> PairedConfig:
        """Grid divisible by the networks' strides; a mask pool that divides 4; x4 autoencoder."""
        if self.representation == "haar":
            # Two Haar levels are the x4 down; their channel count is fixed by the transform.
            wanted = HAAR_BANDS * len(self.contrasts)
            if "latent_channels" not in self.model_fields_set:
                self.latent_channels = wanted
            elif self.latent_channels != wanted:
                raise ValueError(f"haar needs latent_channels = {wanted} (64 per contrast)")
        if len(self.ae_channel_mults) != 3:
            raise ValueError("the autoencoder needs 3 levels (x4 down to the latent grid)")
        if self.mask_pool not in (1, 2, 4):
            raise ValueError(f"mask_pool must be 1, 2 or 4, got {self.mask_pool}")
        multiple = 4 * 2 ** (len(self.denoiser_channel_mults) - 1)
        if any(g % multiple for g in self.grid):
            raise ValueError(f"grid {self.grid} must be divisible by {multiple}")
        for name in ("latent_shift", "latent_scale"):
            value = getattr(self, name)
            if value is not None and len(value) != self.latent_channels:
                raise ValueError(f"{name} needs {self.latent_channels} values")
        return self

    @property
    def image_channels(self) -> int:
        """Channels of the brain image (one per contrast)."""
        return len(self.contrasts)

    @property
    def lesion_channels(self) -> int:
        """Channels of the lesion's soft map on the latent grid."""
        return (4 // self.mask_pool) ** 3

    def prediction_of(self, branch: Branch) -> str:
        """What a branch ("lesion" or "brain") outputs."""
        if branch == "brain" and self.brain_prediction is not None:
            return self.brain_prediction
        return self.prediction

    @property
    def latent_grid(self) -> tuple[int, int, int]:
        """The latent grid (the model grid / 4)."""
        return tuple(g // 4 for g in self.grid)  # type: ignore[return-value]

    def schedule(self) -> Schedule:
        """The noise schedule (METHODS §2: linear betas, T = 1024)."""
        return make_schedule("linear", self.T, self.beta_start, self.beta_end)


class PairedModel(nn.Module):
    """The USB bundle: autoencoder + lesion branch ε^x_θ + brain branch ε^y_θ.

    `stage` picks what `training_step` trains: "autoencoder" (L1 + SSIM + KL on image crops) or
    "diffusion" (Eq. 10–11 on precomputed latents, the autoencoder frozen).

    Args:
        config: the network and diffusion settings.
        stage: "autoencoder" or "diffusion".
        p_true_condition: in the diffusion stage, the fraction of examples whose brain branch is
            conditioned on the true x0 instead of the lesion branch's one-step estimate x̂0
            (conditional generation, heal and implant give the true mask; joint sampling gives x̂0).
        kl_weight, ssim_weight: autoencoder loss weights.
    """

    def __init__(
        self,
        config: PairedConfig,
        *,
        stage: str = "diffusion",
        p_true_condition: float = 0.5,
        kl_weight: float = 1e-6,
        ssim_weight: float = 0.2,
    ) -> None:
        super().__init__()
        self.config = config
        self.stage = stage
        self.p_true_condition = p_true_condition
        self.latent_crop: int | None = None  # diffusion training on latent windows (paired_data)
        self.lesion_fraction = 0.0
        # Loss weights of the diffusion stage (training knobs, not part of the saved config).
        self.lesion_weight, self.lesion_dilate = 0.0, 1
        self.min_snr_gamma: float | None = None
        # The sub-models the diffusion stage trains; a frozen one runs without gradients.
        self.train_branches: tuple[str, ...] = BRANCHES
        self.kl_weight, self.ssim_weight = kl_weight, ssim_weight
        c, cx, cz = config.image_channels, config.lesion_channels, config.latent_channels
        # The Haar representation has no weights: no ae.* keys in its files.
        self.ae = (
            KLAutoencoder(
                3, c, cz, config.ae_base_channels, tuple(config.ae_channel_mults), norm="channel"
            )
            if config.representation == "autoencoder"
            else None
        )
        unet = {
            "base_channels": config.denoiser_base_channels,
            "channel_mults": tuple(config.denoiser_channel_mults),
            "attention_levels": tuple(config.denoiser_attention_levels),
        }
        self.eps_x = UNet(3, cx + cz, cx, **unet)  # ε^x_θ(x_t, y_t, t)
        self.eps_y = UNet(3, cz + cx, cz, **unet)  # ε^y_θ(y_t, x̂0, t)
        self.schedule = config.schedule()
        # Run the networks one sample at a time at inference, so a sample's numbers do not depend
        # on the batch it was drawn in (batched CPU kernels round differently): shards and batch
        # sizes then give byte-identical files. Costs nothing on the CPU; off by default on CUDA.
        self.batch_invariant = False
        self._set_latent_norm(config.latent_shift, config.latent_scale)

    # ------------------------------------------------------------------ latent space

    def _set_latent_norm(self, shift: list[float] | None, scale: list[float] | None) -> None:
        """Per-channel latent normalisation (identity until measured on training latents)."""
        cz = self.config.latent_channels
        self.register_buffer("latent_shift", torch.tensor(shift or [0.0] * cz), persistent=False)
        self.register_buffer("latent_scale", torch.tensor(scale or [1.0] * cz), persistent=False)

    def set_latent_norm(self, shift: list[float], scale: list[float]) -> None:
        """Store the measured latent normalisation in the buffers and the config."""
        self.latent_shift.copy_(torch.tensor(shift))
        self.latent_scale.copy_(torch.tensor(scale))
        self.config = self.config.model_copy(update={"latent_shift": shift, "latent_scale": scale})

    def _norm_shape(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Shift and scale shaped [1, C, 1, 1, 1] in t's dtype."""
        shape = (1, -1, 1, 1, 1)
        return (
            self.latent_shift.to(t.dtype).reshape(shape),
            self.latent_scale.to(t.dtype).reshape(shape),
        )

    def _each(self, fn, *args: Tensor) -> Tensor:  # noqa: ANN001
        """fn over the batch, one sample at a time when batch_invariant (see __init__)."""
        if not self.batch_invariant or args[0].shape[0] == 1 or self.training:
            return fn(*args)
        parts = [fn(*(a[i : i + 1] for a in args)) for i in range(args[0].shape[0])]
        return torch.cat(parts)

    def encode_raw(self, image: Tensor) -> Tensor:
        """Unnormalised latent of images [B, C, *grid]: the posterior mean, or Haar bands."""
        if self.ae is None:
            return haar_forward(image, HAAR_LEVELS)
        return self._each(lambda x: self.ae.encode(x).mode(), image)

    def encode(self, image: Tensor) -> Tensor:
        """Normalised latent y0 of images [B, C, *grid] in [0, 1]."""
        shift, scale = self._norm_shape(image)
        return (self.encode_raw(image) - shift) * scale

    def decode(self, z: Tensor) -> Tensor:
        """Images [B, C, *grid] from normalised latents."""
        shift, scale = self._norm_shape(z)
        if self.ae is None:
            return haar_inverse(z / scale + shift, HAAR_LEVELS)
        return self._each(self.ae.decode, z / scale + shift)

    def mask_to_x(self, mask: Tensor) -> Tensor:
        """Lesion state x0 in [-1, 1] [B, Cx, *latent] of binary masks [B, 1, *grid]."""
        pool = self.config.mask_pool
        soft = F.avg_pool3d(mask.float(), pool) if pool > 1 else mask.float()
        return space_to_depth(soft, 4 // pool) * 2.0 - 1.0

    def x_to_soft(self, x: Tensor) -> Tensor:
        """The lesion probability map [B, 1, *grid] of a lesion state (trilinear, in [0, 1])."""
        soft = depth_to_space((x.float().clamp(-1, 1) + 1.0) / 2.0, 4 // self.config.mask_pool)
        if self.config.mask_pool > 1:
            soft = F.interpolate(soft, scale_factor=self.config.mask_pool, mode="trilinear")
        return soft.clamp(0.0, 1.0)

    def empty_x(self, batch: int, like: Tensor) -> Tensor:
        """The empty-mask condition x_∅ (all −1) for `batch` samples."""
        shape = (batch, self.config.lesion_channels, *like.shape[2:])
        return torch.full(shape, -1.0, dtype=like.dtype, device=like.device)

    # ------------------------------------------------------------------ branches

    def lesion_out(self, x_t: Tensor, y_t: Tensor, t: Tensor) -> Tensor:
        """The lesion branch (ε^x_θ or v^x_θ)(x_t, y_t, t), conditioned on y_t (ŷ0 proxy)."""
        return self._each(self.eps_x, torch.cat([x_t, y_t], dim=1), t)

    def brain_out(self, y_t: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        """The brain branch (ε^y_θ or v^y_θ)(y_t, x̂0, t), conditioned on the lesion estimate."""
        return self._each(self.eps_y, torch.cat([y_t, x0], dim=1), t)

    def x0_from(self, x_t: Tensor, t: Tensor, out: Tensor, branch: Branch = "lesion") -> Tensor:
        """One-step estimate x̂0 of a branch output (Suppl. C.3 for ε)."""
        return to_x0_eps(self.schedule, x_t, t, out, self.config.prediction_of(branch))[0]

    def target(self, x0: Tensor, t: Tensor, noise: Tensor, branch: Branch = "lesion") -> Tensor:
        """The regression target of a branch: ε, x0, or v = √ᾱ_t ε − √(1−ᾱ_t) x0."""
        kind = self.config.prediction_of(branch)
        if kind == "eps":
            return noise
        if kind == "x0":
            return x0
        return v_from_x0_eps(self.schedule, x0, t, noise)

    # ------------------------------------------------------------------ training

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The autoencoder in stage 1; both denoisers in stage 2 (autoencoder frozen)."""
        if self.stage == "autoencoder":
            if self.ae is None:
                raise ValueError("the haar representation has no autoencoder to train")
            return list(self.ae.parameters())
        nets = {"lesion": self.eps_x, "brain": self.eps_y}
        return [p for b in self.train_branches for p in nets[b].parameters()]

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        """Route to training_step (DDP syncs gradients through forward)."""
        return self.training_step(batch, generator)

    def validation_step(self, batch: dict[str, Tensor], generator: torch.Generator) -> dict:
        """Losses plus the task metrics of engines.paired.validation (lesion Dice, brain PSNR)."""
        from synthbrain.engines.paired.validation import validation_metrics

        return validation_metrics(self, batch, generator)

    def training_step(self, batch: dict[str, Tensor], generator: torch.Generator) -> dict:
        """The stage's loss: autoencoder_loss, or L_lesion + L_brain (Eq. 10–11)."""
        if self.stage == "autoencoder":
            image = batch["image"]
            recon, posterior = self.ae(image, generator)
            return autoencoder_loss(
                image, recon, posterior, kl_weight=self.kl_weight, ssim_weight=self.ssim_weight
            )
        z, x = batch["z"], batch["x"]
        if self.latent_crop:
            z, x = crop_latents(z, x, self.latent_crop, generator, self.lesion_fraction)
        return self.diffusion_loss(z, x, generator)

    def diffusion_loss(self, y0: Tensor, x0: Tensor, generator: torch.Generator) -> dict:
        """‖ε_x − ε^x_θ(x_t, y_t, t)‖² + ‖ε_y − ε^y_θ(y_t, x̂0, t)‖² (METHODS §2, Eq. 10–11)."""
        b = y0.shape[0]
        t = torch.randint(0, self.schedule.T, (b,), generator=generator, device=generator.device)
        t = t.to(y0.device)
        noise_x = seeded_randn(x0, generator)
        noise_y = seeded_randn(y0, generator)
        x_t = q_sample(self.schedule, x0, t, noise_x)  # Eq. 4
        y_t = q_sample(self.schedule, y0, t, noise_y)  # Eq. 5
        with torch.set_grad_enabled(torch.is_grad_enabled() and "lesion" in self.train_branches):
            out_x = self.lesion_out(x_t, y_t, t)
        # The brain branch sees the lesion branch's one-step estimate (detached: the two
        # sub-models co-evolve without back-propagating through each other) or the true x0.
        x0_hat = self.x0_from(x_t, t, out_x.detach()).clamp(-1.0, 1.0)
        u = torch.rand((b,), generator=generator, device=generator.device).to(y0.device)
        use_true = (u < self.p_true_condition).reshape(b, 1, 1, 1, 1)
        condition = torch.where(use_true, x0, x0_hat)
        with torch.set_grad_enabled(torch.is_grad_enabled() and "brain" in self.train_branches):
            out_y = self.brain_out(y_t, condition, t)
        region = self.lesion_region_weight(x0)  # Eq. 10 (ε) or its v form, lesion-weighted
        target_x = self.target(x0, t, noise_x)
        loss_x = weighted_mse(out_x, target_x, self.snr_weight(t), region)
        target_y = self.target(y0, t, noise_y, "brain")
        loss_y = weighted_mse(out_y, target_y, self.snr_weight(t, "brain"), None)  # Eq. 11
        trained = {"lesion": loss_x, "brain": loss_y}
        loss = sum(trained[b] for b in self.train_branches)
        return {"loss": loss, "loss_lesion": loss_x, "loss_brain": loss_y}

    def snr_weight(self, t: Tensor, branch: Branch = "lesion") -> Tensor | None:
        """Min-SNR-γ per-sample loss weight (Hang et al. 2023) of the branch target, or None.

        ε: min(SNR, γ) / SNR; x0: min(SNR, γ); v: min(SNR, γ) / (SNR + 1); SNR = ᾱ / (1 − ᾱ).
        """
        if not self.min_snr_gamma:
            return None
        abar = self.schedule.alphas_cumprod.to(t.device)[t].float()
        snr = abar / (1.0 - abar)
        clipped = snr.clamp(max=self.min_snr_gamma)
        kind = self.config.prediction_of(branch)
        if kind == "x0":
            return clipped
        return clipped / (snr if kind == "eps" else snr + 1.0)

    def lesion_region_weight(self, x0: Tensor) -> Tensor | None:
        """1 + lesion_weight on the lesion's entries dilated by lesion_dilate latent voxels.

        Lesion entries are ~0.3 % of a lesion state, so an unweighted MSE is satisfied by the
        empty prior; this weight makes the loss see them (and the background around them, so
        the branch also learns where a lesion stops). None when lesion_weight is 0.
        """
        if not self.lesion_weight:
            return None
        inside = (x0.float() > -1.0 + 1e-3).any(dim=1, keepdim=True).float()
        k = 2 * self.lesion_dilate + 1
        if self.lesion_dilate:
            inside = F.max_pool3d(inside, k, stride=1, padding=self.lesion_dilate)
        return 1.0 + self.lesion_weight * inside


def build_model(config: PairedConfig | dict[str, Any], **kwargs: Any) -> PairedModel:
    """A PairedModel from a config (or its dict form)."""
    if not isinstance(config, PairedConfig):
        config = PairedConfig.model_validate(config)
    return PairedModel(config, **kwargs)


# ---------------------------------------------------------------------- engine entry points
