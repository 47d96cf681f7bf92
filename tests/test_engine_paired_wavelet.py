import torch

from synthbrain.engines.paired.wavelet import haar_forward, haar_inverse


def test_two_level_haar_has_the_latent_shape_and_an_exact_inverse():
    x = torch.rand(2, 1, 16, 24, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = haar_forward(x, 2)
    assert w.shape == (2, 64, 4, 6, 2)
    assert torch.allclose(haar_inverse(w, 2), x, atol=1e-12, rtol=0)
    # Orthonormal: energy kept; the first channel is the scaled block mean (the LLL-LLL band).
    assert torch.allclose((w**2).sum(), (x**2).sum())
    mean = torch.nn.functional.avg_pool3d(x, 4)
    assert torch.allclose(w[:, :1], mean * 8.0)


def test_haar_bands_of_a_constant_are_zero_except_the_low_band():
    w = haar_forward(torch.ones(1, 2, 8, 8, 8), 1)
    assert w.shape == (1, 16, 4, 4, 4)
    assert torch.allclose(w[:, :2], torch.full_like(w[:, :2], 8**0.5))
    assert torch.count_nonzero(w[:, 2:]) == 0


# ---------------------------------------------------------------------- representation = "haar"

import pytest  # noqa: E402

from synthbrain.engines.paired.model import PairedConfig, PairedModel  # noqa: E402


def haar_config(**kw) -> PairedConfig:
    """A 16^3 Haar model: latent 64 x 4^3, one-level denoisers, no attention."""
    base = dict(
        grid=(16, 16, 16), spacing=12.0, representation="haar", denoiser_base_channels=8,
        denoiser_channel_mults=(1,), denoiser_attention_levels=(), T=64,
    )  # fmt: skip
    base.update(kw)
    return PairedConfig(**base)


def test_haar_config_fixes_the_channel_count_and_survives_its_dump():
    config = haar_config()
    assert config.latent_channels == 64
    again = PairedConfig.model_validate(config.model_dump(mode="json"))
    assert again.latent_channels == 64 and again.representation == "haar"
    assert haar_config(contrasts=["t1", "flair"]).latent_channels == 128
    with pytest.raises(ValueError, match="latent_channels = 64"):
        haar_config(latent_channels=4)


def test_haar_model_round_trips_images_exactly_with_a_latent_norm():
    m = PairedModel(haar_config()).eval()
    assert m.ae is None and not any(k.startswith("ae.") for k in m.state_dict())
    g = torch.Generator().manual_seed(3)
    image = torch.rand(2, 1, 16, 16, 16, generator=g)
    shift = torch.randn(64, generator=g).tolist()
    scale = (torch.rand(64, generator=g) + 0.5).tolist()
    m.set_latent_norm(shift, scale)
    z = m.encode(image)
    assert z.shape == (2, 64, 4, 4, 4)
    assert torch.allclose(m.decode(z), image, atol=1e-5, rtol=0)
    m.stage = "autoencoder"
    with pytest.raises(ValueError, match="no autoencoder"):
        m.trainable_parameters()


def test_haar_model_trains_both_branches():
    m = PairedModel(haar_config(prediction="v"))
    m.stage = "diffusion"
    x = m.mask_to_x(torch.zeros(2, 1, 16, 16, 16))
    out = m.training_step({"z": torch.randn(2, 64, 4, 4, 4), "x": x}, torch.Generator())
    out["loss"].backward()
    assert all(p.grad is not None for p in m.eps_x.parameters())
    assert all(p.grad is not None for p in m.eps_y.parameters())


def test_lesion_weight_covers_the_dilated_lesion_and_changes_only_the_lesion_loss():
    m = PairedModel(haar_config(prediction="v"))
    mask = torch.zeros(2, 1, 16, 16, 16)
    mask[0, :, 4:8, 4:8, 4:8] = 1  # one latent voxel (4^3 block) of sample 0
    x0 = m.mask_to_x(mask)
    assert m.lesion_region_weight(x0) is None
    m.lesion_weight, m.lesion_dilate = 10.0, 1
    w = m.lesion_region_weight(x0)
    assert w.shape == (2, 1, 4, 4, 4)
    assert int((w[0] > 1).sum()) == 27 and float(w[0].max()) == 11.0  # 3^3 neighbourhood
    assert torch.equal(w[1], torch.ones_like(w[1]))  # an empty mask is weighted uniformly
    batch = {"z": torch.randn(2, 64, 4, 4, 4), "x": x0}
    weighted = m.training_step(batch, torch.Generator().manual_seed(0))
    m.lesion_weight = 0.0
    plain = m.training_step(batch, torch.Generator().manual_seed(0))
    assert torch.equal(weighted["loss_brain"], plain["loss_brain"])
    assert not torch.equal(weighted["loss_lesion"], plain["loss_lesion"])


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_weight_clips_the_low_noise_steps(prediction):
    m = PairedModel(haar_config(prediction=prediction))
    t = torch.tensor([0, 63])
    assert m.snr_weight(t) is None
    m.min_snr_gamma = 5.0
    w = m.snr_weight(t)
    abar = m.schedule.alphas_cumprod[t].float()
    snr = abar / (1 - abar)
    assert snr[0] > 5 and snr[1] < 5  # t = 0 is clipped, t = 63 is not
    expect = snr.clamp(max=5) / (snr if prediction == "eps" else snr + 1)
    assert torch.allclose(w, expect)


def test_brain_branch_can_predict_x0_while_the_lesion_branch_keeps_v():
    m = PairedModel(haar_config(prediction="v", brain_prediction="x0"))
    assert m.config.prediction_of("lesion") == "v" and m.config.prediction_of("brain") == "x0"
    assert PairedConfig(prediction="v").prediction_of("brain") == "v"  # None: the same
    g = torch.Generator().manual_seed(0)
    y0, noise = torch.randn(2, 64, 4, 4, 4, generator=g), torch.randn(2, 64, 4, 4, 4, generator=g)
    t = torch.tensor([5, 40])
    assert torch.equal(m.target(y0, t, noise, "brain"), y0)
    assert not torch.equal(m.target(y0, t, noise), y0)  # the lesion branch's v
    out = torch.randn(2, 64, 4, 4, 4, generator=g)
    assert torch.equal(m.x0_from(noise, t, out, "brain"), out)
    m.min_snr_gamma = 5.0
    abar = m.schedule.alphas_cumprod[t].float()
    assert torch.allclose(m.snr_weight(t, "brain"), (abar / (1 - abar)).clamp(max=5.0))


def test_a_frozen_branch_gets_no_gradient_and_is_not_trained():
    m = PairedModel(haar_config())
    m.train_branches = ("brain",)
    names = {id(p) for p in m.trainable_parameters()}
    assert names == {id(p) for p in m.eps_y.parameters()}
    batch = {"z": torch.randn(2, 64, 4, 4, 4), "x": torch.full((2, 8, 4, 4, 4), -1.0)}
    losses = m.training_step(batch, torch.Generator().manual_seed(0))
    losses["loss"].backward()
    assert torch.equal(losses["loss"], losses["loss_brain"])
    assert all(p.grad is None for p in m.eps_x.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.eps_y.parameters())
