"""Noise schedules, ᾱ gathering, ε/x0/v conversions, timestep selection and noise helpers."""

from __future__ import annotations

import math

import pytest
import torch

from synthbrain.diffusion import (
    Spacing,
    eps_from_v,
    eps_from_x0,
    make_schedule,
    noise_like,
    q_sample,
    randn,
    start_from,
    timesteps,
    to_x0_eps,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)
from synthbrain.errors import InputError

KINDS = ("linear", "scaled_linear", "cosine", "sigmoid")


def test_linear_schedule_matches_ddpm() -> None:
    for T in (1000, 1024):
        s = make_schedule("linear", T)
        assert s.T == T and s.betas.dtype == torch.float64
        assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(
            0.02
        )
        assert torch.allclose(s.alphas, 1 - s.betas)
        assert torch.allclose(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0))


def test_rescaled_linear_schedule_keeps_end_noise_level() -> None:
    s = make_schedule("linear", 100, rescale=True)
    assert s.betas[0].item() == pytest.approx(1e-3) and s.betas[-1].item() == pytest.approx(0.2)
    assert s.alphas_cumprod[-1].item() < 1e-4  # still ends close to pure noise
    short = make_schedule("linear", 20, rescale=True)  # 0.02 · 50 = 1 would zero ᾱ: clipped
    assert short.betas.max().item() == pytest.approx(0.999) and short.alphas_cumprod[-1] > 0


def test_scaled_linear_is_linear_in_sqrt_beta() -> None:
    s = make_schedule("scaled_linear", 1000, 0.00085, 0.012)
    root = s.betas.sqrt()
    assert torch.allclose(root.diff(), torch.full((999,), root.diff()[0].item(), dtype=root.dtype))
    assert s.betas[0].item() == pytest.approx(0.00085) and s.betas[-1].item() == pytest.approx(
        0.012
    )


def test_cosine_schedule_closed_form() -> None:
    T, s_off = 1000, 0.008
    s = make_schedule("cosine", T)
    t = torch.arange(T, dtype=torch.float64)
    f = torch.cos(((t + 1) / T + s_off) / (1 + s_off) * math.pi / 2) ** 2
    f0 = math.cos(s_off / (1 + s_off) * math.pi / 2) ** 2
    unclipped = s.betas < 0.999
    assert unclipped[:-1].all()  # only the very last steps may hit the clip
    assert torch.allclose(s.alphas_cumprod[unclipped], (f / f0)[unclipped], rtol=1e-9, atol=1e-12)
    assert s.betas.max().item() <= 0.999


def test_sigmoid_schedule_matches_lucidrains_closed_form() -> None:
    T = 1000
    s = make_schedule("sigmoid", T)
    t = torch.arange(T, dtype=torch.float64)
    v_start, v_end = 1 / (1 + math.exp(3.0)), 1 / (1 + math.exp(-3.0))
    expected = (v_end - torch.sigmoid((t + 1) / T * 6 - 3)) / (v_end - v_start)
    # the last β would be 1 (ᾱ = 0) and is clipped at 0.999
    assert torch.allclose(s.alphas_cumprod[:-1], expected[:-1], rtol=1e-9, atol=1e-12)
    assert s.betas[-1].item() == pytest.approx(0.999)


@pytest.mark.parametrize("kind", KINDS)
def test_every_schedule_decreases_from_one_towards_zero(kind: str) -> None:
    s = make_schedule(kind, 1000)
    abar = s.alphas_cumprod
    assert (abar.diff() < 0).all() and 0.99 < abar[0].item() < 1 and abar[-1].item() < 0.01
    assert (s.betas > 0).all() and (s.betas <= 0.999).all()


def test_unknown_schedule_is_an_input_error() -> None:
    with pytest.raises(InputError, match="noise schedule"):
        make_schedule("quadratic")


def test_abar_gathers_broadcasts_and_casts() -> None:
    s = make_schedule("linear", 1000)
    like = torch.zeros(3, 2, 4, 4, dtype=torch.float32)
    a = s.abar(torch.tensor([-1, 0, 999]), like)
    assert a.shape == (3, 1, 1, 1) and a.dtype == torch.float32
    assert a[0].item() == 1.0
    assert a[1].item() == pytest.approx(s.alphas_cumprod[0].item())
    assert a[2].item() == pytest.approx(s.alphas_cumprod[999].item())
    assert s.abar(5, like).shape == (1, 1, 1, 1)  # one timestep for the whole batch
    assert s.beta(torch.tensor([-1]), like).item() == 0.0
    with pytest.raises(ValueError):
        s.abar(torch.tensor([1000]), like)
    with pytest.raises(ValueError):
        s.abar(torch.tensor([-2]), like)


@pytest.mark.parametrize("kind", KINDS)
def test_conversions_round_trip_all_parameterisations(kind: str) -> None:
    s = make_schedule(kind, 1000)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 1, 100, 500, 900, 990])
    x0 = torch.randn(6, 2, 5, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 2, 5, 5, generator=g, dtype=torch.float64)
    x_t = q_sample(s, x0, t, eps)
    v = v_from_x0_eps(s, x0, t, eps)
    tol = {"atol": 1e-6, "rtol": 0.0}
    for param, out in (("eps", eps), ("x0", x0), ("v", v)):
        x0_hat, eps_hat = to_x0_eps(s, x_t, t, out, param)
        assert torch.allclose(x0_hat, x0, **tol), param
        assert torch.allclose(eps_hat, eps, **tol), param
    assert torch.allclose(x0_from_eps(s, x_t, t, eps), x0, **tol)
    assert torch.allclose(eps_from_x0(s, x_t, t, x0), eps, **tol)
    assert torch.allclose(x0_from_v(s, x_t, t, v), x0, **tol)
    assert torch.allclose(eps_from_v(s, x_t, t, v), eps, **tol)


def test_q_sample_formula_and_dtype() -> None:
    s = make_schedule("linear", 1000)
    x0, eps = torch.ones(2, 1, 3), torch.full((2, 1, 3), 2.0)
    t = torch.tensor([10, 700])
    out = q_sample(s, x0, t, eps)
    abar = s.alphas_cumprod[t].view(2, 1, 1)
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), abar.sqrt() + 2 * (1 - abar).sqrt(), atol=1e-6)
    with pytest.raises(InputError, match="parameterization"):
        to_x0_eps(s, out, t, out, "score")


SPACING_CASES = [(n, t_start) for n in (1, 2, 7, 50, 1000) for t_start in (None, 299, 999)]


@pytest.mark.parametrize("spacing", ["linspace", "trailing", "leading", "logsnr"])
@pytest.mark.parametrize(("n_steps", "t_start"), SPACING_CASES)
def test_timesteps_descending_unique_from_start(
    spacing: Spacing, n_steps: int, t_start: int | None
) -> None:
    T = 1000
    top = T - 1 if t_start is None else t_start
    if n_steps > top + 1:
        with pytest.raises(InputError, match="sampling steps"):
            timesteps(T, n_steps, spacing=spacing, t_start=t_start)
        return
    sched = make_schedule("cosine", T)
    ts = timesteps(T, n_steps, spacing=spacing, t_start=t_start, schedule=sched)
    assert ts.dtype == torch.long and ts.shape == (n_steps,)
    assert (ts.diff() < 0).all() and len(set(ts.tolist())) == n_steps
    assert ts.min() >= 0 and ts.max() <= top
    if spacing != "leading" or t_start is not None:
        assert ts[0].item() == top
    if n_steps == top + 1:  # every timestep
        assert torch.equal(ts, torch.arange(top, -1, -1))


def test_timesteps_known_values() -> None:
    assert timesteps(1000, 10).tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert timesteps(1000, 10, spacing="trailing").tolist()[:3] == [999, 899, 799]
    assert timesteps(1000, 10, spacing="leading").tolist()[:3] == [900, 800, 700]
    assert timesteps(1024, 301, spacing="leading", t_start=300).tolist()[:3] == [300, 299, 298]
    assert timesteps(1000, 4, t_start=300).tolist() == [300, 200, 100, 0]


def test_timesteps_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="start timestep"):
        timesteps(1000, 10, t_start=1000)
    with pytest.raises(InputError, match="sampling steps"):
        timesteps(1000, 0)
    with pytest.raises(InputError, match="spacing"):
        timesteps(1000, 10, spacing="karras")
    with pytest.raises(InputError, match="schedule"):
        timesteps(1000, 10, spacing="logsnr")


def test_start_from_noises_input_to_t_start() -> None:
    s = make_schedule("linear", 1000)
    x0 = torch.rand(2, 1, 4, 4)
    x_t = start_from(s, x0, 300, torch.Generator().manual_seed(3))
    noise = noise_like(x0, torch.Generator().manual_seed(3))
    assert torch.equal(x_t, q_sample(s, x0, torch.tensor([300, 300]), noise))
    with pytest.raises(InputError):
        start_from(s, x0, 1000)


def test_randn_per_element_generators() -> None:
    gens = [torch.Generator().manual_seed(k) for k in range(3)]
    batch = randn((3, 2, 4), gens)
    for k in range(3):
        alone = randn((1, 2, 4), [torch.Generator().manual_seed(k)])
        assert torch.equal(batch[k], alone[0])
    one = randn((3, 2, 4), torch.Generator().manual_seed(0))
    assert torch.equal(one, randn((3, 2, 4), torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="one generator per batch element"):
        randn((2, 4), gens)


def test_noise_like_keeps_dtype_and_draws_same_numbers() -> None:
    x = torch.zeros(2, 3, dtype=torch.float16)
    low = noise_like(x, torch.Generator().manual_seed(1))
    full = noise_like(x.float(), torch.Generator().manual_seed(1))
    assert low.dtype == torch.float16 and torch.equal(low, full.half())
