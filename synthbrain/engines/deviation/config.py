"""The deviation engine's configuration (pydantic): model, losses (Eq. 15 λ's), sampling, training.

A TOML file (examples/configs/deviation-*.toml) holds these keys at the top level and the
training settings under ``[train]`` (synthbrain.training TrainConfig). The part that defines the
networks (everything but ``train``) is stored in the weights file's metadata, so a weights file
rebuilds its own model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from synthbrain.training.config import TrainConfig

CONTRASTS = ("t1", "t1gd", "t2", "flair")


class NetSettings(BaseModel):
    """Width and depth of one U-Net (dims and channel counts follow from the engine config)."""

    model_config = ConfigDict(extra="forbid")

    base_channels: int = Field(default=16, ge=4)
    channel_mults: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = Field(default=1, ge=1)
    attention_levels: tuple[int, ...] = (-1,)
    groups: int = Field(default=8, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)


class Lambdas(BaseModel):
    """Loss weights of Eq. 3, 13 and 15 (the paper does not publish its values; ours)."""

    model_config = ConfigDict(extra="forbid")

    out: float = Field(default=1.0, ge=0, description="λ_out: substrate fidelity off the mask")
    inside: float = Field(default=1.0, ge=0, description="λ_in: substrate vs Inp(x, m) on m")
    diff: float = Field(default=1.0, ge=0, description="λ_diff: masked ε loss (Eq. 9)")
    dev: float = Field(default=0.1, ge=0, description="λ_dev: deviation regulariser (Eq. 13)")
    pat: float = Field(default=1.0, ge=0, description="λ_pat: r̂0 vs r0 on m")
    ring: float = Field(default=1.0, ge=0, description="λ_ring: r̂0 vs r0 on the ring")
    leak: float = Field(default=0.1, ge=0, description="λ_leak: r̂0 off the mask")
    syn: float = Field(default=0.1, ge=0, description="λ_syn: seam-aware recomposition")


class Sampling(BaseModel):
    """Defaults of the reverse process at inference: DDIM (as the paper) with η = 1, i.e. fresh
    noise at every step like the ancestral sampler of Alg. 2 (η = 0 is the deterministic DDIM)."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(default=25, ge=1)
    sampler: Literal["ddim", "ddpm", "dpm++"] = "ddim"
    eta: float = Field(default=1.0, ge=0)
    val_steps: int = Field(
        default=0, ge=0, description="validation implants lesions with this many steps (0: off)"
    )
    # r is exactly 0 off m (Eq. 8), so S ⊙ r of Eq. 14 never reaches past the mask: it only
    # attenuates the lesion inside its own edge. "mask" adds r as drawn (x_sub + m ⊙ r), the
    # lesion the denoiser was trained on; measured better on held-out strokes (docs/deviation.md).
    recompose: Literal["blend", "mask"] = "blend"
    # Where the steps fall. "trailing" ends with x̂0 predicted at t = T/steps − 1 (t = 39 for 25
    # steps: noise of 0.14 in r's units, above a lesion's texture, so that texture is averaged
    # away, never drawn); "logsnr" spaces the steps uniformly in log-SNR, so the last ones are
    # drawn at t ≈ 19, 11, 6, 3, 1, 0 for the same cost (docs/deviation.md).
    spacing: Literal["trailing", "linspace", "leading", "logsnr"] = "trailing"
    # The model draws r in the bounded space of Eq. 5, r = δ·tanh(Δ/δ), which shrinks large
    # deviations (a stroke's dark core by ~10 % at δ = 1). True: add Δ = δ·artanh(r/δ) instead
    # (our reading of δ as a soft bound, not a scale; |Δ| ≤ 1, the intensity range).
    invert_tanh: bool = False
    # Training images are windowed into [0, 1] and saturate there (most of a phantom glioma's
    # FLAIR sits at 1.0); x_sub + r can leave that range. True: clamp x̂ to [0, 1] on m.
    clamp_image: bool = False


class DeviationConfig(BaseModel):
    """Everything that defines a deviation-engine model, plus its training settings.

    Attributes:
        lesion: the lesion type the weights are for ("tumor", "stroke", ...).
        contrasts: channel order of the images (a subject's contrasts share one residual).
        labels: which label values form the support mask m: "any" (all tumour sub-regions merged)
            or a list of values / names (e.g. ["enhancing"]).
        dims: 2 (axial slices, the paper's setting) or 3 (3-D patches, same networks).
        spacing: model grid spacing in mm.
        space: "deviation" (PathoSyn) or "image" (the baseline: the same denoiser diffuses the
            whole crop conditioned on x ⊙ m̄, and the result is pasted into m).
        delta: δ of Eq. 5; the diffusion state is r0 / δ, which lies in (−1, 1).
        blend_sigma: σ (voxels) of the Gaussian that makes S from m (Eq. 11, 14).
        inpaint_iterations: Jacobi sweeps per pyramid level of Inp (Eq. 3).
        crop: training window (voxels per axis) around the lesion; a multiple of 16.
        margin_mm: context kept around the lesion's bounding box at inference.
        min_size: smallest inference window (voxels per axis).
        contrast_dropout: training probability of hiding each contrast (at least one stays), so
            one model serves scans with any subset of its contrasts.
        detach_substrate: stop gradients of L_diff / L_dev through x_sub (the residual target and
            the denoiser's condition), so the substrate cannot shrink r0 to make diffusion easy
            (and, with ``substrate_mode = "residual"``, of L_syn too).
        substrate_mode: "direct" (the paper: f_sub's output is the substrate) or "residual": f_sub
            predicts a correction added to Inp(x, m) from a zero-initialised output layer, so an
            untrained model heals exactly like Inp; it is trained towards the true substrate
            where the set stores one (phantoms), else towards Inp (the correction stays ~0).
        clip_x0: clamp x̂0 of the diffusion state to [−1, 1] during sampling.
    """

    model_config = ConfigDict(extra="forbid")

    engine: Literal["deviation"] = "deviation"
    lesion: str = "tumor"
    contrasts: tuple[str, ...] = CONTRASTS
    labels: Literal["any"] | list[int | str] = "any"
    dims: Literal[2, 3] = 2
    spacing: float = Field(default=2.0, gt=0)
    space: Literal["deviation", "image"] = "deviation"
    delta: float = Field(default=1.0, gt=0)
    blend_sigma: float = Field(default=1.0, ge=0)
    inpaint_iterations: int = Field(default=40, ge=1)
    crop: int = Field(default=48, ge=16)
    margin_mm: float = Field(default=16.0, ge=0)
    min_size: int = Field(default=32, ge=16)
    contrast_dropout: float = Field(default=0.25, ge=0, lt=1)
    detach_substrate: bool = True
    substrate_mode: Literal["direct", "residual"] = "direct"
    clip_x0: bool = True
    schedule: Literal["linear", "cosine", "scaled_linear"] = "linear"
    timesteps: int = Field(default=1000, ge=2)
    beta_start: float = Field(default=1e-4, gt=0)
    beta_end: float = Field(default=0.02, gt=0)
    lambdas: Lambdas = Lambdas()
    sampling: Sampling = Sampling()
    denoiser: NetSettings = NetSettings()
    substrate: NetSettings = NetSettings(
        base_channels=8, channel_mults=(1, 2, 4, 8, 8), attention_levels=()
    )
    train: TrainConfig = TrainConfig(steps=2000, batch_size=8, warmup=100, checkpoint_every=100)

    @field_validator("contrasts")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [c for c in value if c not in CONTRASTS]
        if unknown or not value or len(set(value)) != len(value):
            raise ValueError(f"contrasts must be distinct names from {', '.join(CONTRASTS)}")
        return value

    @field_validator("crop", "min_size")
    @classmethod
    def _multiple(cls, value: int) -> int:
        if value % 16:
            raise ValueError(f"must be a multiple of 16 (the substrate U-Net's), got {value}")
        return value

    @property
    def n_contrasts(self) -> int:
        """C: channels of the image, the substrate and the residual."""
        return len(self.contrasts)

    def model_dict(self) -> dict[str, Any]:
        """The network-defining part (no training settings), as stored in weights metadata."""
        return self.model_dump(mode="json", exclude={"train"})


def load_config(
    file: Path | None = None, overrides: dict[str, Any] | None = None
) -> DeviationConfig:
    """A DeviationConfig from a TOML/JSON file and overrides ("train.steps" style dotted keys);
    a [train] table may set only some keys (the rest keep the engine's defaults)."""
    from synthbrain.config import resolve

    return resolve(DeviationConfig, file, overrides, partial_tables=("train",))
