"""The paired diffusion stage's validation metrics: lesion-branch denoising Dice, brain PSNR."""

import math

import torch

from synthbrain.engines.paired.model import PairedConfig, PairedModel


def tiny_model() -> PairedModel:
    config = PairedConfig(
        grid=(16, 16, 16), spacing=12.0, representation="haar", prediction="v",
        denoiser_base_channels=8, denoiser_channel_mults=(1,), denoiser_attention_levels=(), T=1024,
    )  # fmt: skip
    model = PairedModel(config).eval()
    model.stage = "diffusion"
    return model


def batch(model: PairedModel, lesion: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 1, 16, 16, 16, generator=g)
    mask = torch.zeros(2, 1, 16, 16, 16)
    if lesion:
        mask[:, :, 4:12, 4:12, 4:12] = 1
    return {"z": model.encode(image), "x": model.mask_to_x(mask)}


def oracle_lesion_branch(model: PairedModel, x0: torch.Tensor):
    """A lesion branch that returns the v whose one-step estimate is exactly `x0`."""

    def lesion_out(x_t, y_t, t):  # noqa: ANN001, ARG001
        abar = model.schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1, 1).float()
        return (abar.sqrt() * x_t - x0) / (1 - abar).sqrt()

    return lesion_out


@torch.no_grad()
def test_oracle_scores_dice_one_and_an_empty_branch_zero():
    model = tiny_model()
    b = batch(model, lesion=True)
    model.lesion_out = oracle_lesion_branch(model, b["x"])
    out = model.validation_step(b, torch.Generator().manual_seed(1))
    assert all(abs(out[f"dice_t{t}"] - 1.0) < 1e-6 for t in (100, 300, 500))
    model.lesion_out = oracle_lesion_branch(model, torch.full_like(b["x"], -1.0))
    out = model.validation_step(b, torch.Generator().manual_seed(1))
    assert out["dice"] == 0.0


@torch.no_grad()
def test_metrics_are_reproducible_and_nan_without_a_lesion():
    model = tiny_model()
    b = batch(model, lesion=True)
    first = model.validation_step(b, torch.Generator().manual_seed(5))
    again = model.validation_step(b, torch.Generator().manual_seed(5))
    assert first == again
    assert 0.0 <= first["dice"] <= 1.0 and math.isfinite(first["psnr_brain"])
    assert math.isfinite(first["psnr_image"])
    assert {"loss", "loss_lesion", "loss_brain"} <= first.keys()
    healthy = model.validation_step(batch(model, lesion=False), torch.Generator().manual_seed(5))
    assert math.isnan(healthy["dice"]) and math.isfinite(healthy["psnr_brain"])


def test_latent_norm_shared_keeps_each_channels_share():
    """shared: one scale (the largest channel's 1/std) for all; channel: unit variance each."""
    import torch

    from synthbrain.engines.paired.latents import latent_norm

    gen = torch.Generator().manual_seed(0)
    spread = torch.tensor([4.0, 1.0, 0.25]).reshape(1, 3, 1, 1, 1)
    z = torch.randn(6, 3, 4, 4, 4, generator=gen) * spread
    _, per_channel = latent_norm(z)
    shift, shared = latent_norm(z, shared=True)
    assert len(set(shared)) == 1 and shared[0] == min(per_channel)
    normed = (z - torch.tensor(shift).reshape(1, 3, 1, 1, 1)) * shared[0]
    stds = normed.transpose(0, 1).reshape(3, -1).std(1)
    assert abs(float(stds[0]) - 1.0) < 1e-4 and float(stds[2]) < 0.1
