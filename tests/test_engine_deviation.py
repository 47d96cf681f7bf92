"""Deviation engine (PathoSyn): operators, model, hooks and sampling on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthbrain.diffusion import Hook
from synthbrain.engines.deviation.config import load_config
from synthbrain.engines.deviation.ops import (
    blend_map,
    crop,
    harmonic_fill,
    lesion_window,
    ring_weight,
)
from synthbrain.engines.deviation.tensors import (
    DeviationConfig,
    DeviationModel,
    MaskProjection,
    box_batch,
    element_generators,
    heal_tensors,
    implant_tensors,
    unbatch,
)
from synthbrain.errors import InputError

TINY = {
    "contrasts": ["t1", "flair"],
    "crop": 16,
    "min_size": 16,
    "margin_mm": 4.0,
    "timesteps": 40,
    "denoiser": {"base_channels": 8, "channel_mults": [1, 2], "attention_levels": [-1]},
    "substrate": {"base_channels": 4, "channel_mults": [1, 2, 2, 2, 2], "attention_levels": []},
}


def tiny_model(**changes) -> DeviationModel:
    """A randomly initialised tiny model (fixed init), with output convs nudged off zero."""
    torch.manual_seed(0)
    model = DeviationModel(load_config(None, {**TINY, **changes})).eval()
    with torch.no_grad():  # zero-initialised heads would predict ε̂ = 0 everywhere
        for p in model.denoiser.heads.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def lesion_batch(b: int = 3, size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, a square lesion mask and full availability."""
    x = torch.rand(b, 2, size, size, generator=torch.Generator().manual_seed(1))
    m = torch.zeros(b, 1, size, size)
    m[:, :, 5:11, 4:12] = 1
    return x, m, torch.ones(b, 2)


# ---------------------------------------------------------------- fixed operators


def test_harmonic_fill_keeps_outside_and_is_harmonic_inside():
    x, m, _ = lesion_batch(2, 24)
    filled = harmonic_fill(x, m, iterations=200)
    assert torch.equal(filled * (1 - m), x * (1 - m))
    ramp = torch.linspace(0, 1, 24)[:, None].expand(24, 24)[None, None].clone()
    assert torch.allclose(harmonic_fill(ramp, m[:1], iterations=200), ramp, atol=1e-3)


def test_harmonic_fill_3d_and_empty_mask():
    x = torch.rand(1, 1, 12, 12, 12)
    m = torch.zeros(1, 1, 12, 12, 12)
    assert torch.equal(harmonic_fill(x, m), x)
    m[..., 3:9, 3:9, 3:9] = 1
    inside = harmonic_fill(x, m)[m > 0]
    assert inside.min() >= x.min() and inside.max() <= x.max()  # maximum principle


def test_blend_map_and_ring_weight():
    _, m, _ = lesion_batch(1, 24)
    s = blend_map(m, 1.0)
    w = ring_weight(s)
    assert float(s.min()) >= 0 and float(s.max()) <= 1
    assert float(w.max()) <= 1.0 + 1e-6 and float(w[0, 0, 0, 0]) == 0.0


def test_lesion_window_holds_the_lesion():
    m = torch.zeros(40, 50)
    m[30:36, 2:9] = 1
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        start = lesion_window(m, (16, 16), gen)
        assert crop(m, start, (16, 16)).sum() == m.sum()
    assert crop(torch.ones(1, 10, 10), (0, 0), (16, 16)).shape == (1, 16, 16)


# ---------------------------------------------------------------- model and hooks


class Recorder(Hook):
    """Keeps every state the loop passes after the projection hook."""

    def __init__(self) -> None:
        self.states = []

    def on_step(self, state):
        self.states.append((state.x_next.clone(), state.x0.clone()))
        return state


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm++"])
def test_projection_keeps_residual_zero_off_mask_at_every_step(sampler):
    model = tiny_model()
    x, m, a = lesion_batch()
    x_sub = model.substrate_of(x, m, a)
    seen = []
    r = model.sample_deviation(
        x_sub, m, a, torch.Generator().manual_seed(0), steps=5, sampler=sampler,
        callback=lambda s: seen.append((s.x_next.clone(), s.x0.clone())),
    )  # fmt: skip
    assert len(seen) == (model.schedule.T if sampler == "ddpm" else 5)
    for x_next, x0 in seen:
        assert torch.count_nonzero(x_next * (1 - m)) == 0
        assert torch.count_nonzero(x0 * (1 - m)) == 0
    assert torch.count_nonzero(r * (1 - m)) == 0 and torch.count_nonzero(r * m) > 0


def test_without_projection_the_residual_leaks():
    """The projection hook is what keeps r off the healthy tissue (the net alone does not)."""
    model = tiny_model(clip_x0=False)
    x, m, a = lesion_batch()
    x_sub = model.substrate_of(x, m, a)
    denoise = model._denoiser(x_sub, m, a)
    from synthbrain.diffusion import sample

    z = sample(denoise, torch.randn(x.shape) * m, model.schedule, model._steps(3, "ddim"))
    assert torch.count_nonzero(z * (1 - m)) > 0
    assert isinstance(MaskProjection(m), Hook)


def test_training_step_losses_and_gradients():
    model = tiny_model().train()
    x, m, _ = lesion_batch(2, 24)
    out = model.training_step({"images": x, "mask": m}, torch.Generator().manual_seed(0))
    assert {"loss", "sub", "diff", "dev", "syn"} <= set(out)
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    for net in (model.denoiser, model.substrate):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_training_projects_the_noisy_residual(monkeypatch):
    """Eq. 8 in training: the denoiser only ever sees r_t that is zero off the mask."""
    model = tiny_model().train()
    x, m, _ = lesion_batch(2, 16)
    seen = []
    original = model.eps
    monkeypatch.setattr(
        model, "eps", lambda z, t, c, mm, a: seen.append((z, mm)) or original(z, t, c, mm, a)
    )
    model.training_step({"images": x, "mask": m}, torch.Generator().manual_seed(0))
    z, mm = seen[0]
    assert torch.count_nonzero(z * (1 - mm)) == 0 and torch.count_nonzero(z) > 0


def test_image_space_baseline_trains_and_pastes():
    model = tiny_model(space="image")
    assert model.substrate is None
    x, m, a = lesion_batch()
    out = model.training_step({"images": x, "mask": m}, torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "diff"}
    res = implant_tensors(model, x, m, a, torch.Generator().manual_seed(0), steps=3)
    assert torch.equal(res["image"] * (1 - m), x * (1 - m))
    assert (res["raw"] - x).abs().mul(1 - m).sum() > 0  # the unpasted draw changed the anatomy
    with pytest.raises(InputError):
        heal_tensors(model, x, m, a)


def test_implant_outside_mask_exact_and_severity_zero_is_substrate():
    model = tiny_model()
    x, m, a = lesion_batch()
    gens = element_generators(3, x.shape[0])
    out = implant_tensors(model, x, m, a, gens, steps=4)
    assert torch.equal(out["image"][(m.expand_as(x) == 0)], x[(m.expand_as(x) == 0)])
    flat = implant_tensors(model, x, m, a, element_generators(3, 3), steps=4, severity=0.0)
    assert torch.equal(flat["image"], out["substrate"])
    assert torch.equal(heal_tensors(model, x, m, a), out["substrate"])


def test_seeds_reproduce_and_variants_differ():
    model = tiny_model()
    x, m, a = lesion_batch()
    first = implant_tensors(model, x, m, a, element_generators(7, 3), steps=4)["image"]
    again = implant_tensors(model, x, m, a, element_generators(7, 3), steps=4)["image"]
    other = implant_tensors(model, x, m, a, element_generators(8, 3), steps=4)["image"]
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-4


def test_box_batch_round_trip_2d_and_3d():
    x = np.random.default_rng(0).random((2, 16, 16, 6)).astype(np.float32)
    m = np.zeros((16, 16, 6), np.float32)
    m[4:9, 5:10, 2:4] = 1
    xb, mb, zs, pad = box_batch(x, m, 2, 16)
    assert xb.shape == (2, 2, 16, 16) and list(zs) == [2, 3]
    assert np.array_equal(unbatch(x, xb, zs, pad), x)
    xb3, mb3, zs3, pad3 = box_batch(x, m, 3, 16)
    assert xb3.shape == (1, 2, 16, 16, 16) and zs3 is None
    assert np.array_equal(unbatch(x, xb3, zs3, pad3), x)


def test_three_d_model_samples():
    model = tiny_model(dims=3)
    x = torch.rand(1, 2, 32, 32, 32)
    m = torch.zeros(1, 1, 32, 32, 32)
    m[..., 12:18, 12:18, 12:18] = 1
    out = implant_tensors(model, x, m, torch.ones(1, 2), torch.Generator().manual_seed(0), steps=2)
    assert torch.equal(out["image"] * (1 - m), x * (1 - m))


def test_contrast_dropout_keeps_one_contrast():
    model = tiny_model(contrast_dropout=0.9)
    a = model.draw_availability(64, torch.Generator().manual_seed(0), "cpu")
    assert bool((a.sum(1) >= 1).all()) and float(a.mean()) < 0.9


def test_config_defaults_and_validation(tmp_path):
    config = load_config(None, {"train.steps": 7})
    assert config.train.steps == 7 and config.train.batch_size == DeviationConfig().train.batch_size
    path = tmp_path / "c.toml"
    path.write_text("crop = 20\n[train]\nlr = 1e-3\n")
    with pytest.raises(InputError, match="crop"):
        load_config(path)
    path.write_text('contrasts = ["t1", "dwi"]\n')
    with pytest.raises(InputError, match="contrasts"):
        load_config(path)


@pytest.mark.slow
def test_three_d_training_step():
    model = tiny_model(dims=3, crop=32).train()
    x = torch.rand(1, 2, 36, 34, 30)
    m = torch.zeros(1, 1, 36, 34, 30)
    m[..., 12:20, 10:18, 8:14] = 1
    out = model.training_step({"images": x, "mask": m}, torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
