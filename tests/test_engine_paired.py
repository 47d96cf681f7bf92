"""Paired engine (USB) model bundle, samplers and guidance hooks, on tiny random models."""

from __future__ import annotations

import pytest
import torch

from synthbrain.diffusion import StepState, make_schedule, sample, timesteps
from synthbrain.engines.paired.guidance import (
    ACGSettings,
    AnatomyConsistency,
    FixLesion,
    SamplerSettings,
    edit,
    sample_given_mask,
    sample_joint,
    substrate_steps,
)
from synthbrain.engines.paired.model import (
    PairedConfig,
    PairedModel,
    depth_to_space,
    space_to_depth,
)


def tiny_config(**kw) -> PairedConfig:
    """A 16^3 model: latent 4^3, one-level denoisers, no attention."""
    base = dict(
        grid=(16, 16, 16), spacing=12.0, ae_base_channels=4, ae_channel_mults=(1, 2, 2),
        denoiser_base_channels=8, denoiser_channel_mults=(1,), denoiser_attention_levels=(),
        T=64,
    )  # fmt: skip
    base.update(kw)
    return PairedConfig(**base)


@pytest.fixture(scope="module")
def model() -> PairedModel:
    torch.manual_seed(0)
    m = PairedModel(tiny_config())
    for p in m.parameters():  # the U-Nets start with zero output convs: give them some output
        p.data.add_(0.05 * torch.randn_like(p))
    return m.eval()


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


RUN = SamplerSettings(steps=3)


def test_space_to_depth_round_trip():
    x = torch.randn(2, 1, 8, 12, 4)
    folded = space_to_depth(x, 2)
    assert folded.shape == (2, 8, 4, 6, 2)
    assert torch.equal(depth_to_space(folded, 2), x)


@pytest.mark.parametrize("pool", [1, 2, 4])
def test_mask_state_round_trip(pool):
    m = PairedModel(tiny_config(mask_pool=pool))
    mask = torch.zeros(1, 1, 16, 16, 16)
    mask[..., 4:12, 4:8, 8:16] = 1  # aligned to 4-voxel blocks: exact at every pool
    x = m.mask_to_x(mask)
    assert x.shape == (1, (4 // pool) ** 3, 4, 4, 4)
    assert x.min() >= -1 and x.max() <= 1
    back = m.x_to_soft(x) > 0.5
    overlap = 2 * (back & (mask > 0.5)).sum() / (back.sum() + (mask > 0.5).sum())
    assert overlap > 0.85  # trilinear upsampling rounds off block corners
    if pool == 1:
        assert torch.equal(back, mask > 0.5)


def test_empty_mask_is_minus_one(model):
    empty = model.empty_x(1, torch.zeros(1, 4, 4, 4, 4))
    assert torch.equal(model.mask_to_x(torch.zeros(1, 1, 16, 16, 16)), empty)


def test_training_steps_train_their_stage():
    m = PairedModel(tiny_config())
    g = torch.Generator().manual_seed(0)
    m.stage = "autoencoder"
    out = m.training_step({"image": torch.rand(2, 1, 16, 16, 16)}, g)
    assert torch.isfinite(out["loss"])
    assert {id(p) for p in m.trainable_parameters()} == {id(p) for p in m.ae.parameters()}
    m.stage = "diffusion"
    batch = {"z": torch.randn(3, 4, 4, 4, 4), "x": m.mask_to_x(torch.zeros(3, 1, 16, 16, 16))}
    out = m.training_step(batch, g)
    assert set(out) == {"loss", "loss_lesion", "loss_brain"}
    out["loss"].backward()
    assert all(p.grad is not None for p in m.eps_x.parameters())
    assert all(p.grad is not None for p in m.eps_y.parameters())
    assert all(p.grad is None for p in m.ae.parameters())


def test_joint_sampling_shapes_and_seeds(model):
    x0, y0 = sample_joint(model, gens(1, 2), RUN)
    assert x0.shape == (2, 8, 4, 4, 4) and y0.shape == (2, 4, 4, 4, 4)
    assert x0.min() >= -1 and x0.max() <= 1
    again_x, again_y = sample_joint(model, gens(2), RUN)  # sample 2 alone = sample 2 in a batch
    assert torch.allclose(again_y[0], y0[1], atol=1e-5)
    assert torch.allclose(again_x[0], x0[1], atol=1e-5)
    assert not torch.allclose(y0[0], y0[1])


@pytest.mark.parametrize("sampler", ["ddim", "dpm++"])
def test_given_mask_sampling(model, sampler):
    mask = torch.zeros(1, 1, 16, 16, 16)
    mask[..., 4:8, 4:8, 4:8] = 1
    x0 = model.mask_to_x(mask)
    y0 = sample_given_mask(model, x0, gens(3), SamplerSettings(sampler=sampler, steps=3))
    assert y0.shape == (1, 4, 4, 4, 4) and torch.isfinite(y0).all()


def test_fix_lesion_hook_lands_on_the_given_mask():
    schedule = make_schedule("linear", 50)
    x0 = torch.rand(1, 2, 3, 3, 3) * 2 - 1
    hook = FixLesion(x0, 2, schedule, gens(0))

    def denoise(state, t):  # predicts noise for everything: the hook must still pin x
        return state * 0.5, torch.zeros_like(state)

    out = sample(denoise, torch.randn(1, 5, 3, 3, 3), schedule, timesteps(50, 4), hooks=[hook])
    assert torch.equal(out[:, :2], x0)


def _guided(settings: ACGSettings, gate=None):
    """A loop whose denoiser predicts y_in plus a bump in one corner; returns (out, y_in)."""
    schedule = make_schedule("linear", 100)
    y_in = torch.rand(1, 2, 4, 4, 4)
    bump = torch.zeros_like(y_in)
    bump[..., :2, :2, :2] = 1.0

    def denoise(state, t):
        x0 = torch.cat([state[:, :1] * 0, y_in + bump], dim=1)
        from synthbrain.diffusion import eps_from_x0

        return x0, eps_from_x0(schedule, state, t, x0)

    hook = AnatomyConsistency(y_in, 1, schedule, settings, x_soft=gate, generator=gens(0))
    start = torch.randn(1, 3, 4, 4, 4)
    out = sample(denoise, start, schedule, timesteps(100, 5, t_start=60), hooks=[hook])
    return out[:, 1:], y_in, bump


def test_acg_keeps_unedited_voxels_and_frees_the_lesion():
    out, y_in, bump = _guided(ACGSettings(alpha0=20.0, k=0.5, t_ref=60))
    outside = bump == 0
    assert torch.allclose(out[outside], y_in[outside], atol=1e-6)  # λ = 1 where ŷ0 = y_in
    assert (out[~outside] - y_in[~outside]).abs().min() > 0.5  # the bump survives


def test_lcg_gate_releases_the_mask():
    gate = torch.zeros(1, 1, 4, 4, 4)
    gate[..., 2:, 2:, 2:] = 1.0
    out, y_in, bump = _guided(ACGSettings(t_ref=60, eta=1.0), gate=gate)
    kept = (bump == 0) & (gate.expand_as(bump) == 0)
    assert torch.allclose(out[kept], y_in[kept], atol=1e-6)


def test_acg_weight_follows_eq12():
    schedule = make_schedule("linear", 100)
    y_in = torch.zeros(2, 1, 2, 2, 2)
    hook = AnatomyConsistency(y_in, 0, schedule, ACGSettings(alpha0=20.0, k=0.5, t_ref=100))
    y0 = torch.full_like(y_in, 0.1)
    lam = hook.weight(y0, torch.tensor([100, 0]))
    expected = torch.exp(-20.0 * torch.exp(torch.tensor([-0.5, 0.0])) * 0.1)
    assert torch.allclose(lam[:, 0, 0, 0, 0], expected)


@pytest.mark.parametrize("target", ["clean", "renoised"])
def test_edit_shapes_and_reproducibility(model, target):
    y_in = torch.randn(1, 4, 4, 4, 4)
    empty = model.empty_x(1, y_in)
    acg = ACGSettings(t_ref=30, target=target)
    a = edit(model, y_in, empty, gens(5), RUN, t_start=30, acg=acg)
    b = edit(model, y_in, empty, gens(5), RUN, t_start=30, acg=acg)
    assert a.shape == y_in.shape and torch.equal(a, b)


def test_state_hooks_return_new_tensors(model):
    z = torch.zeros(1, 12, 4, 4, 4)
    s = StepState(0, 1, torch.tensor([5]), torch.tensor([-1]), z, z, z, torch.ones_like(z))
    hook = AnatomyConsistency(torch.zeros(1, 4, 4, 4, 4), 8, model.schedule, ACGSettings())
    out = hook.on_step(s)
    assert out.x0 is not s.x0 and torch.equal(out.x_next[:, 8:], torch.zeros(1, 4, 4, 4, 4))


def test_substrate_steps_keep_the_stride():
    assert substrate_steps(50, 300, 1024) == 15
    assert substrate_steps(2, 300, 1024) == 2


def test_anomaly_randomisation_is_replayable_and_lesion_like():
    from synthbrain.engines.paired.data import apply_anomaly, draw_anomaly, transform_mask

    brain = torch.zeros(20, 20, 20, dtype=torch.uint8)
    brain[2:18, 2:18, 2:18] = 1
    healthy = torch.full((1, 20, 20, 20), 0.8) * brain
    source = torch.zeros(20, 20, 20, dtype=torch.bool)
    source[6:12, 7:11, 8:13] = True
    p = draw_anomaly(torch.Generator().manual_seed(1), 1, [0.4])
    assert p == draw_anomaly(torch.Generator().manual_seed(1), 1, [0.4])
    image, mask = apply_anomaly(healthy.numpy(), brain.numpy(), source.numpy(), p, 2.0)
    again, mask2 = apply_anomaly(healthy.numpy(), brain.numpy(), source.numpy(), p, 2.0)
    assert (image == again).all() and (mask == mask2).all()
    assert mask.any() and not mask[brain.numpy() == 0].any()
    inside = image[0][mask > 0].mean() / 0.8
    assert 0.3 < inside < 0.6  # painted near the drawn lesion-to-tissue ratio
    assert (image[0][brain.numpy() == 0] == 0).all()
    moved = transform_mask(source.numpy(), p, 2.0)
    assert 0.5 < moved.sum() / source.sum() < 2.5


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_oracle_output_gives_x0_back(prediction):
    """The branch target of (x0, t, noise) turns back into x0 through x0_from."""
    m = PairedModel(tiny_config(prediction=prediction))
    x0 = torch.rand(2, 4, 4, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([5, 60])
    x_t = m.schedule.abar(t, x0).sqrt() * x0 + (1 - m.schedule.abar(t, x0)).sqrt() * noise
    assert torch.allclose(m.x0_from(x_t, t, m.target(x0, t, noise)), x0, atol=1e-4)


def test_v_model_trains_and_samples():
    """A v-prediction model has a finite loss with gradients and samples the usual shapes."""
    torch.manual_seed(0)
    m = PairedModel(tiny_config(prediction="v"))
    m.stage = "diffusion"
    z, x = torch.randn(2, 4, 4, 4, 4), torch.full((2, 8, 4, 4, 4), -1.0)
    loss = m.diffusion_loss(z, x, torch.Generator().manual_seed(1))
    loss["loss"].backward()
    assert torch.isfinite(loss["loss"])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.eps_y.parameters())
    x_s, y_s = sample_joint(m.eval(), gens(0, 1), RUN)
    assert x_s.shape == (2, 8, 4, 4, 4) and y_s.shape == (2, 4, 4, 4, 4)


def test_latent_crops_centre_on_lesions_and_replay():
    from synthbrain.engines.paired.data import crop_latents

    z = torch.randn(3, 4, 10, 12, 8)
    x = torch.full((3, 8, 10, 12, 8), -1.0)
    x[0, 2, 7, 9, 5] = 0.5  # one lesion entry in example 0; 1 and 2 are healthy
    a = crop_latents(z, x, 4, torch.Generator().manual_seed(3), lesion_fraction=1.0)
    b = crop_latents(z, x, 4, torch.Generator().manual_seed(3), lesion_fraction=1.0)
    assert a[0].shape == (3, 4, 4, 4, 4) and a[1].shape == (3, 8, 4, 4, 4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert (a[1][0] > -1).any()  # the window holds the lesion
    whole = crop_latents(z, x, 32, torch.Generator().manual_seed(0), lesion_fraction=0.5)
    assert torch.equal(whole[0], z) and torch.equal(whole[1], x)  # larger than the grid: all of it


def test_cropped_diffusion_training_step():
    m = PairedModel(tiny_config(denoiser_channel_mults=(1, 2)), stage="diffusion")
    m.latent_crop, m.lesion_fraction = 2, 0.5
    batch = {"z": torch.randn(2, 4, 4, 4, 4), "x": torch.full((2, 8, 4, 4, 4), -1.0)}
    out = m.training_step(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad


def test_heal_region_is_one_compact_outlier_not_a_global_drift():
    import numpy as np

    from synthbrain.engines.paired.edit import anomaly_core

    rng = np.random.default_rng(0)
    shape = (32, 32, 32)
    brain = np.zeros(shape, np.float32)
    brain[2:30, 2:30, 2:30] = 1
    reference = rng.uniform(0.3, 0.7, shape).astype(np.float32) * brain
    # The heal brightens the whole brain by 0.1 (drift) plus noise, and a 4³ lesion by 0.5.
    edited = reference + (0.1 + 0.01 * rng.standard_normal(shape)).astype(np.float32) * brain
    edited[10:14, 10:14, 10:14] += 0.5
    edited[22:24, 22:24, 22:24] += 0.05  # a faint second change: not an outlier
    core = anomaly_core(edited, reference, brain, sign=-1.0)
    assert core[11:13, 11:13, 11:13].all()
    assert core.sum() < 400 and not core[22:24, 22:24, 22:24].any()
    # A lesion darkened (the wrong direction for a heal of a dark lesion) is no edit; nor is drift.
    assert not anomaly_core(reference - (edited - reference), reference, brain, sign=-1.0).any()
    assert not anomaly_core(reference + 0.1 * brain, reference, brain, sign=-1.0).any()
