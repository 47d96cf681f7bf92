"""Validation by the task for the deviation engine: implanted lesions against true ones."""

from __future__ import annotations

import pytest
import torch

from synthbrain.engines.deviation.validation import lesion_statistics, stat_gap
from tests.test_deviation_substrate import batch, residual_model


def test_lesion_statistics_match_numpy_on_the_mask():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 8, 8, generator=g)
    m = torch.zeros(1, 1, 8, 8)
    m[..., 2:6, 1:7] = 1
    stats = lesion_statistics(x, m)[0, 0]
    v = x[m > 0].double()
    sd = v.std(unbiased=False)
    assert float(stats[0]) == pytest.approx(float(v.mean()), abs=1e-6)
    assert float(stats[1]) == pytest.approx(float(sd), abs=1e-6)
    assert float(stats[2]) == pytest.approx(float(((v - v.mean()) ** 3).mean() / sd**3), abs=1e-4)
    box = x[0, 0, 2:6, 1:7]
    down, across = (box[1:] - box[:-1]).abs(), (box[:, 1:] - box[:, :-1]).abs()
    pairs = torch.cat([down.flatten(), across.flatten()])
    assert float(stats[3]) == pytest.approx(float(pairs.mean()), abs=1e-6)


def test_stat_gap_is_zero_for_the_same_lesions_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(1)
    true = torch.rand(8, 2, 4, generator=g)
    assert torch.all(stat_gap(true, true) == 0)
    assert torch.all(stat_gap(true + 0.5, true) > stat_gap(true + 0.1, true))


def test_validation_reports_implant_realism_only_when_asked():
    data = batch(4, 16)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = residual_model().validation_step(data, gen())
    assert "stat_gap" not in plain
    model = residual_model(sampling={"val_steps": 2})
    first = model.validation_step(data, gen())
    assert first["stat_gap"] >= 0 and first["diversity"] > 0  # two draws differ
    assert {"gap_mean", "gap_std", "gap_skewness", "gap_texture"} <= set(first)
    assert model.validation_step(data, gen())["stat_gap"] == first["stat_gap"]  # seeded
    # a real cohort stores no true substrate: the lesions go into the model's own substrate
    real = model.validation_step({k: data[k] for k in ("images", "mask")}, gen())
    assert "sub_l1" not in real and real["stat_gap"] >= 0


@pytest.mark.parametrize("recompose", ["blend", "mask"])
def test_recompose_adds_the_deviation_as_drawn_or_blended(recompose):
    """recompose = "mask": x̂ = x_sub + m ⊙ r (r whole up to the mask's edge); "blend": S ⊙ r,
    smaller inside the edge. Off the mask both keep the input bit for bit."""
    from synthbrain.engines.deviation.ops import blend_map
    from synthbrain.engines.deviation.tensors import element_generators, implant_tensors

    model = residual_model(sampling={"recompose": recompose})
    with torch.no_grad():  # zero-initialised heads would draw r = 0
        for p in model.denoiser.heads.parameters():
            p.add_(0.05 * torch.randn_like(p))
    data = batch(2)
    x, m, a = data["images"], data["mask"], torch.ones(2, 2)
    out = implant_tensors(model, x, m, a, element_generators(3, 2), steps=3)
    weight = m if recompose == "mask" else blend_map(m, model.config.blend_sigma)
    assert torch.allclose(out["image"], out["substrate"] + weight * out["deviation"])
    off = m.expand_as(x) == 0
    assert torch.equal(out["image"][off], x[off])


def test_timestep_spacing_comes_from_the_config():
    """trailing (the default) ends with x̂0 taken at t = T/steps − 1; logsnr reaches t = 0 with
    more of its steps below that, where a lesion's texture is drawn."""
    n = 8
    trailing = residual_model()._steps(n, "ddim")
    logsnr = residual_model(sampling={"spacing": "logsnr"})._steps(n, "ddim")
    T = residual_model().schedule.T  # noqa: N806
    assert len(trailing) == len(logsnr) == n
    assert int(trailing[0]) == int(logsnr[0]) == T - 1
    assert int(trailing[-1]) == T // n - 1 and int(logsnr[-1]) == 0
    assert int((logsnr < T // n).sum()) >= 2
    assert torch.all(logsnr[:-1] > logsnr[1:])


def test_invert_tanh_undoes_eq5_and_keeps_the_deviation_on_the_mask():
    """invert_tanh: the drawn r becomes δ·artanh(r/δ) (larger in magnitude, same sign, |Δ| ≤ 1),
    still exactly 0 off m; the same seed draws the same state either way."""
    from synthbrain.engines.deviation.tensors import element_generators

    data = batch(2)
    x, m, a = data["images"], data["mask"], torch.ones(2, 2)
    plain, inverted = residual_model(), residual_model(sampling={"invert_tanh": True})
    for model in (plain, inverted):
        with torch.no_grad():  # zero-initialised heads would draw r = 0
            torch.manual_seed(5)
            for p in model.denoiser.heads.parameters():
                p.add_(0.5 * torch.randn_like(p))
    r = plain.sample_deviation(x, m, a, element_generators(3, 2), steps=3)
    big = inverted.sample_deviation(x, m, a, element_generators(3, 2), steps=3)
    delta = plain.config.delta
    bound = torch.tanh(torch.tensor(1.0 / delta))
    expected = delta * torch.atanh((r / delta).clamp(-bound, bound))
    assert torch.allclose(big, expected, atol=1e-5)
    off = m.expand_as(r) == 0
    assert torch.all(big[off] == 0) and float(big.abs().max()) <= 1.0 + 1e-5
    assert torch.all(big.abs() >= r.abs() - 1e-6) and float(r.abs().max()) > 0


def test_clamp_image_keeps_the_lesion_in_the_training_range_and_the_rest_exact():
    data = batch(2)
    x_sub, m = data["images"], data["mask"]
    r = 3.0 * torch.ones_like(x_sub) * m - 0.1 * m  # pushes the lesion far above 1
    plain = residual_model(sampling={"recompose": "mask"}).recompose(x_sub, m, r)
    clamped = residual_model(sampling={"recompose": "mask", "clamp_image": True})
    kept = clamped.recompose(x_sub, m, r)
    on = m.expand_as(x_sub) > 0
    assert float(plain[on].max()) > 1.0 and float(kept[on].max()) <= 1.0
    assert float(kept[on].min()) >= 0.0
    assert torch.equal(kept[~on], x_sub[~on]) and torch.equal(plain[~on], x_sub[~on])
