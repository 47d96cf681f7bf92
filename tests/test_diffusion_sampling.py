"""The sampling loop with analytic denoisers: exactness, Gaussian toy statistics, hooks, seeds."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import Tensor

from synthbrain.diffusion import (
    Denoiser,
    Hook,
    Sampler,
    Schedule,
    Spacing,
    StepState,
    eps_from_x0,
    make_schedule,
    randn,
    sample,
    start_from,
    timesteps,
)
from synthbrain.errors import InputError

MU, S = 0.5, 0.3  # the Gaussian toy: x0 ~ N(MU, S²) in every dimension
N = 4096  # toy batch: standard errors S/√N = 0.0047 (mean) and S/√(2N) = 0.0033 (std)
SE_MEAN, SE_STD = S / math.sqrt(N), S / math.sqrt(2 * N)


def oracle(schedule: Schedule, x0: Tensor) -> Denoiser:
    """A denoiser that knows the clean data: x̂0 = x0, ε̂ = the noise that x_t implies."""

    def denoise(x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return x0, eps_from_x0(schedule, x_t, t, x0)

    return denoise


def gaussian(schedule: Schedule) -> Denoiser:
    """The exact denoiser of the toy: E[x0 | x_t] = μ + a s²/(a² s² + 1 − a²) (x_t − a μ)."""

    def denoise(x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        abar = schedule.abar(t, x_t)
        a = abar.sqrt()
        x0 = MU + a * S**2 / (abar * S**2 + 1 - abar) * (x_t - a * MU)
        return x0, eps_from_x0(schedule, x_t, t, x0)

    return denoise


def ode_solution(schedule: Schedule, x_T: Tensor) -> Tensor:
    """Closed-form end of the probability-flow ODE for the toy (what deterministic DDIM nears)."""
    abar_T = schedule.alphas_cumprod[-1].item()
    return MU + (x_T - math.sqrt(abar_T) * MU) * S / math.sqrt(abar_T * S**2 + 1 - abar_T)


def ancestral_chain_std(schedule: Schedule) -> float:
    """Exact output std of the ancestral chain (posterior mean of the toy + variance β̃_t).

    The chain is linear-Gaussian, so Var(x_{t−1}) = A_t² Var(x_t) + β̃_t with A_t the slope of the
    step's mean in x_t. It falls short of S by a discretisation bias (about 0.004 at T = 1000),
    because the true reverse kernel also carries the posterior variance of x0.
    """
    var = 1.0
    for t in range(schedule.T - 1, -1, -1):
        abar, beta = schedule.alphas_cumprod[t].item(), schedule.betas[t].item()
        abar_prev = abar / (1 - beta)
        k = math.sqrt(abar) * S**2 / (abar * S**2 + 1 - abar)  # slope of x̂0 in x_t
        c0 = math.sqrt(abar_prev) * beta / (1 - abar)  # posterior-mean weights (Ho et al. Eq. 7)
        ct = math.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar)
        var = (c0 * k + ct) ** 2 * var + beta * (1 - abar_prev) / (1 - abar)
    return math.sqrt(var)


def toy_noise(seed: int = 0) -> Tensor:
    """x_T for the toy: N samples of a 1-D variable, float64."""
    return randn((N, 1), torch.Generator().manual_seed(seed), dtype=torch.float64)


# (2) the oracle makes every sampler land on x0


@pytest.mark.parametrize("n_steps", [1, 2, 7, 50])
@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
@pytest.mark.parametrize("sampler", ["ddim", "dpm++"])
def test_oracle_denoiser_returns_x0_exactly(
    n_steps: int, spacing: Spacing, sampler: Sampler
) -> None:
    s = make_schedule("linear", 1000)
    x0 = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x_T = randn(x0.shape, torch.Generator().manual_seed(1))
    ts = timesteps(1000, n_steps, spacing=spacing)
    out = sample(oracle(s, x0), x_T, s, ts, sampler=sampler)
    assert (out - x0).abs().max().item() < 1e-5


@pytest.mark.parametrize("sampler", ["ddim", "dpm++", "ddpm"])
def test_oracle_denoiser_with_t_start_edit(sampler: Sampler) -> None:
    s = make_schedule("linear", 1000)
    x0 = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(2)
    n = 301 if sampler == "ddpm" else 7
    x_start = start_from(s, x0, 300, g)
    out = sample(
        oracle(s, x0), x_start, s, timesteps(1000, n, t_start=300), sampler=sampler, generator=g
    )
    assert (out - x0).abs().max().item() < 1e-5


def test_last_ddim_step_returns_x0_of_the_last_prediction() -> None:
    s = make_schedule("linear", 1000)
    seen: list[StepState] = []
    out = sample(gaussian(s), toy_noise()[:16], s, timesteps(1000, 5), callback=seen.append)
    assert seen[-1].t_next.tolist() == [-1] * 16
    assert torch.equal(out, seen[-1].x0)


# (3) Gaussian toy: sample statistics


@pytest.mark.parametrize("sampler", ["ddpm", "ddim_eta1"])
def test_ancestral_samplers_match_gaussian_toy(sampler: Sampler) -> None:
    s = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(100)
    kwargs = {"sampler": "ddpm"} if sampler == "ddpm" else {"sampler": "ddim", "eta": 1.0}
    out = sample(gaussian(s), toy_noise(0), s, timesteps(1000, 1000), generator=g, **kwargs)
    chain_std = ancestral_chain_std(s)
    assert abs(chain_std - S) < 0.005  # the sampler's own bias at T = 1000 is small ...
    assert abs(out.mean().item() - MU) < 3 * SE_MEAN
    assert abs(out.std().item() - chain_std) < 3 * SE_STD  # ... and the samples show exactly it


def test_ddpm_and_ddim_eta1_are_the_same_chain() -> None:
    s = make_schedule("linear", 100, rescale=True)
    x_T = toy_noise(2)[:64]
    ddpm = sample(
        gaussian(s),
        x_T,
        s,
        timesteps(100, 100),
        sampler="ddpm",
        generator=torch.Generator().manual_seed(0),
    )
    ddim = sample(
        gaussian(s),
        x_T,
        s,
        timesteps(100, 100),
        eta=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.allclose(ddpm, ddim, atol=1e-9)


def test_deterministic_ddim_200_steps_matches_gaussian_toy() -> None:
    s = make_schedule("linear", 1000)
    x_T = toy_noise(3)
    out = sample(gaussian(s), x_T, s, timesteps(1000, 200))
    # DDIM transports x_T along the probability-flow ODE; 200 Euler-like steps stay within 0.03
    # of the closed-form end point for |x_T| < 4, and shrink the spread by about 2 % (0.006).
    assert (out - ode_solution(s, x_T)).abs().max().item() < 0.03
    assert abs(out.mean().item() - MU) < 3 * SE_MEAN
    assert abs(out.std().item() - S) < 3 * SE_STD + 0.01
    finer = sample(gaussian(s), x_T, s, timesteps(1000, 1000))
    assert (finer - ode_solution(s, x_T)).abs().max().item() < 0.006  # first-order convergence


# (4) DPM-Solver++(2M)


def test_dpm_solver_20_steps_reaches_ddim_200() -> None:
    s = make_schedule("linear", 1000)
    x_T = toy_noise(4)
    exact = ode_solution(s, x_T)
    ddim_200 = sample(gaussian(s), x_T, s, timesteps(1000, 200))
    ts_20 = timesteps(1000, 20, spacing="logsnr", schedule=s)
    dpm_20 = sample(gaussian(s), x_T, s, ts_20, sampler="dpm++")
    err_ddim, err_dpm = (ddim_200 - exact).abs().max(), (dpm_20 - exact).abs().max()
    # 20 DPM-Solver++ steps are at least as accurate as 200 DDIM steps (0.016 vs 0.024 here);
    # the two err on opposite sides, so they differ by at most their summed errors (< 0.05).
    assert err_dpm <= err_ddim
    assert (dpm_20 - ddim_200).abs().max().item() < 0.05
    dpm_200 = sample(gaussian(s), x_T, s, timesteps(1000, 200), sampler="dpm++")
    assert (dpm_200 - exact).abs().max() < err_ddim / 2  # second order beats first at equal steps


# (5) hooks


class Project(Hook):
    """PathoSyn-style projection: x_next ← x_next ⊙ m."""

    def __init__(self, mask: Tensor) -> None:
        self.mask = mask

    def on_step(self, state: StepState) -> StepState:
        state.x_next = state.x_next * self.mask
        return state


class SameState(Hook):
    """An on_prediction hook that changes nothing (but returns a copy of the state)."""

    def on_prediction(self, state: StepState) -> StepState:
        return dataclasses.replace(state)


class ReplaceX0(Hook):
    """Replaces x̂0 by a fixed target before the update (the shape of D3M's warp)."""

    def __init__(self, target: Tensor) -> None:
        self.target = target

    def on_prediction(self, state: StepState) -> StepState:
        return dataclasses.replace(state, x0=self.target)


@pytest.mark.parametrize(
    ("sampler", "eta", "T"),
    [("ddim", 0.0, 1000), ("ddim", 1.0, 1000), ("dpm++", 0.0, 1000), ("ddpm", 0.0, 10)],
)
def test_projection_hook_keeps_state_zero_off_mask(sampler: Sampler, eta: float, T: int) -> None:
    s = make_schedule("linear", T, rescale=True)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 3:7] = 1
    x_T = randn(mask.shape, torch.Generator().manual_seed(0)) * mask
    steps: list[int] = []

    def check(state: StepState) -> None:
        steps.append(state.index)
        assert state.x_next is not None and (state.x_next * (1 - mask)).abs().max().item() == 0.0

    n = T if sampler == "ddpm" else 6
    out = sample(
        gaussian(s),
        x_T,
        s,
        timesteps(T, n),
        sampler=sampler,
        eta=eta,
        generator=torch.Generator().manual_seed(1),
        hooks=[Project(mask)],
        callback=check,
    )
    assert steps == list(range(n))
    assert (out * (1 - mask)).abs().max().item() == 0.0 and (out * mask).abs().sum() > 0


@pytest.mark.parametrize("sampler", ["ddim", "dpm++"])
def test_identity_prediction_hook_leaves_result_unchanged(sampler: Sampler) -> None:
    s = make_schedule("linear", 1000)
    x_T = toy_noise(5)[:32]
    ts = timesteps(1000, 8)
    plain = sample(gaussian(s), x_T, s, ts, sampler=sampler, eta=0.0)
    hooked = sample(gaussian(s), x_T, s, ts, sampler=sampler, hooks=[SameState(), Hook()])
    assert torch.equal(plain, hooked)


def test_prediction_hook_rederives_eps_from_new_x0() -> None:
    s = make_schedule("linear", 1000)
    target = torch.full((4, 1), 0.25, dtype=torch.float64)
    seen: list[StepState] = []
    out = sample(
        gaussian(s),
        toy_noise(6)[:4],
        s,
        timesteps(1000, 5),
        hooks=[ReplaceX0(target)],
        callback=seen.append,
    )
    for state in seen:
        assert state.x0 is target
        assert torch.allclose(state.eps, eps_from_x0(s, state.x_t, state.t, target), atol=1e-12)
    assert torch.allclose(out, target)


def test_dpm_solver_extrapolates_from_the_x0_that_hooks_leave() -> None:
    class EditX0AfterStep(Hook):
        def on_step(self, state: StepState) -> StepState:
            return dataclasses.replace(state, x0=state.x0 + 1.0)

    s = make_schedule("linear", 1000)
    x_T, ts = toy_noise(8)[:8], timesteps(1000, 6)
    for sampler, changes in (("dpm++", True), ("ddim", False)):
        plain = sample(gaussian(s), x_T, s, ts, sampler=sampler)
        edited = sample(gaussian(s), x_T, s, ts, sampler=sampler, hooks=[EditX0AfterStep()])
        assert (not torch.equal(plain, edited)) is changes, sampler


# (6) per-sample generators


@pytest.mark.parametrize(("sampler", "eta"), [("ddim", 1.0), ("ddpm", 0.0)])
def test_batch_equals_one_at_a_time_with_per_sample_generators(
    sampler: Sampler, eta: float
) -> None:
    s = make_schedule("linear", 20, rescale=True)
    ts = timesteps(20, 20)

    def run(seeds: list[int]) -> Tensor:
        gens = [torch.Generator().manual_seed(k) for k in seeds]
        x_T = randn((len(seeds), 1, 8, 8), gens)
        return sample(gaussian(s), x_T, s, ts, sampler=sampler, eta=eta, generator=gens)

    batch = run([10, 11, 12, 13])
    for i, seed in enumerate([10, 11, 12, 13]):
        assert torch.equal(batch[i : i + 1], run([seed]))
    assert torch.equal(batch, run([10, 11, 12, 13]))  # same seeds, same output
    assert not torch.equal(batch[0], batch[1])


def test_single_generator_reproduces_and_other_seed_differs() -> None:
    s = make_schedule("linear", 1000)
    ts = timesteps(1000, 10)

    def run(seed: int) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        return sample(gaussian(s), randn((2, 1, 4, 4), g), s, ts, eta=0.5, generator=g)

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))


# validation


def test_sampler_rejects_bad_settings() -> None:
    s = make_schedule("linear", 1000)
    x = torch.zeros(1, 1, 4)
    with pytest.raises(InputError, match="ddpm sampler needs every timestep"):
        sample(gaussian(s), x, s, timesteps(1000, 10), sampler="ddpm")
    with pytest.raises(InputError, match="descending"):
        sample(gaussian(s), x, s, [5, 7, 3])
    with pytest.raises(InputError, match="unknown sampler"):
        sample(gaussian(s), x, s, [5, 3], sampler="euler")
    with pytest.raises(InputError, match=r"lie in \[0, 999\]"):
        sample(gaussian(s), x, s, [1000, 3])
    with pytest.raises(ValueError, match="one generator per batch element"):
        sample(gaussian(s), x.repeat(2, 1, 1), s, [5, 3], eta=1.0, generator=[torch.Generator()])
