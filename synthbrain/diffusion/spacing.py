"""Which timesteps a sampler visits, and where an edit starts (SDEdit-style).

Spacings follow diffusers' names (Lin et al. 2024, "Common diffusion noise schedules and sample
steps are flawed", Table 2). Every list is strictly descending and unique; the sampling loop adds
the final target t' = −1 (clean data) itself.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from synthbrain.diffusion.noise import Generators, noise_like
from synthbrain.diffusion.schedule import Schedule, q_sample
from synthbrain.errors import InputError

Spacing = Literal["linspace", "trailing", "leading", "logsnr"]


def steps_for(sampler: str, T: int, n_steps: int) -> int:
    """How many denoiser calls a sampler makes: ddpm (ancestral) visits all T timesteps."""
    return T if sampler == "ddpm" else n_steps


def timesteps_for(
    sampler: str,
    T: int,
    n_steps: int,
    *,
    spacing: Spacing = "linspace",
    t_start: int | None = None,
    schedule: Schedule | None = None,
) -> Tensor:
    """`timesteps` for a sampler: ddpm takes every timestep from t_start (or T − 1) down to 0,
    whatever `n_steps` and `spacing` say (its steps assume a stride of one); the others take
    `n_steps` with `spacing`. The one place that knows this rule."""
    if sampler == "ddpm":
        top = T - 1 if t_start is None else t_start
        return timesteps(T, top + 1, spacing="trailing", t_start=t_start)
    return timesteps(T, n_steps, spacing=spacing, t_start=t_start, schedule=schedule)


def timesteps(
    T: int,
    n_steps: int,
    *,
    spacing: Spacing = "linspace",
    t_start: int | None = None,
    schedule: Schedule | None = None,
) -> Tensor:
    """The descending timesteps of an ``n_steps``-step sampler over a T-step schedule.

    Let ``top`` be ``t_start`` if given, else T − 1.

    - ``"linspace"``: round(linspace(0, top, n_steps)), so it starts at ``top`` and ends at 0.
    - ``"trailing"``: round(top + 1 − k·i) − 1 for i = 0 … n_steps − 1 with k = (top + 1)/n_steps:
      starts at ``top``; the last step goes from k − 1 straight to clean data.
    - ``"leading"``: integer stride k = ⌊(top + 1)/n_steps⌋. Without t_start it is k·i (diffusers'
      "leading": ends at 0 and may start below T − 1, e.g. 900, 800, …, 0 for T = 1000 and 10
      steps). With t_start it counts down from t_start by k, as USB's editing code does (stride 1
      when n_steps = t_start + 1).
    - ``"logsnr"``: uniform in λ = log(α/σ) from ``top`` to 0 (Lu et al. 2022's "logSNR" skip
      type, the spacing DPM-Solver++ is designed for; needs ``schedule``), nudged to stay unique.

    Args:
        T: number of timesteps of the schedule.
        n_steps: number of denoising steps, 1 … top + 1.
        spacing: ``"linspace"``, ``"trailing"``, ``"leading"`` or ``"logsnr"``.
        t_start: first timestep for editing (noise the input to t_start with :func:`start_from`,
            then denoise from there); ``None`` samples from pure noise.
        schedule: the noise schedule (only ``"logsnr"`` reads it; its T must equal ``T``).

    Returns:
        LongTensor [n_steps], strictly descending, unique, within [0, top], starting at ``top``
        (except ``"leading"`` without t_start, which starts at the largest multiple of k below T).
    """
    top = _check(T, n_steps, t_start)
    if n_steps == 1 and spacing != "leading":
        return torch.tensor([top], dtype=torch.long)
    if spacing == "linspace":
        steps = _round(torch.linspace(0.0, float(top), n_steps, dtype=torch.float64)).flip(0)
    elif spacing == "trailing":
        k = (top + 1) / n_steps
        steps = _round(top + 1 - k * torch.arange(n_steps, dtype=torch.float64)) - 1
    elif spacing == "leading":
        k = (top + 1) // n_steps
        steps = torch.arange(n_steps, dtype=torch.long) * k
        if t_start is not None:
            steps = steps + (t_start - steps[-1])
        steps = steps.flip(0)
    elif spacing == "logsnr":
        steps = _logsnr_steps(_need_schedule(schedule, T), top, n_steps)
    else:
        raise InputError(
            f"unknown timestep spacing {spacing!r}; choose linspace, trailing, leading or logsnr"
        )
    return steps.to(torch.long)


def _need_schedule(schedule: Schedule | None, T: int) -> Schedule:
    """The schedule that logsnr spacing needs, checked against T."""
    if schedule is None or schedule.T != T:
        raise InputError(f"logsnr spacing needs the noise schedule (with T = {T})")
    return schedule


def _logsnr_steps(schedule: Schedule, top: int, n_steps: int) -> Tensor:
    """Timesteps uniform in λ from top down to 0, made strictly descending and ≥ 0."""
    abar = schedule.alphas_cumprod[: top + 1]
    lam = 0.5 * (abar.log() - (1.0 - abar).log())  # decreasing in t
    targets = torch.linspace(float(lam[top]), float(lam[0]), n_steps, dtype=torch.float64)
    # λ(t) is decreasing, so interpolate t(λ) over the reversed (increasing) table.
    lam_up, t_up = lam.flip(0), torch.arange(top, -1, -1, dtype=torch.float64)
    idx = torch.searchsorted(lam_up, targets).clamp(1, top)
    lo, hi = lam_up[idx - 1], lam_up[idx]
    frac = ((targets - lo) / (hi - lo)).clamp(0.0, 1.0)
    steps = _round(t_up[idx - 1] + frac * (t_up[idx] - t_up[idx - 1])).tolist()
    steps[0], steps[-1] = top, 0
    # Where λ(t) is steep several targets share one t: push them apart, first down, then up.
    for i in range(1, n_steps):
        steps[i] = min(steps[i], steps[i - 1] - 1)
    steps[-1] = max(steps[-1], 0)
    for i in range(n_steps - 2, -1, -1):
        steps[i] = max(steps[i], steps[i + 1] + 1)
    return torch.tensor(steps, dtype=torch.long)


def _round(x: Tensor) -> Tensor:
    """Round half up (not half to even), so evenly spaced values never collide."""
    return torch.floor(x + 0.5).to(torch.long)


def _check(T: int, n_steps: int, t_start: int | None) -> int:
    """Validate the arguments of :func:`timesteps`; return the top timestep."""
    if T < 1:
        raise InputError(f"the number of diffusion timesteps must be at least 1, got {T}")
    if t_start is not None and not 0 <= t_start < T:
        raise InputError(f"the start timestep must lie in [0, {T - 1}], got {t_start}")
    top = T - 1 if t_start is None else int(t_start)
    if not 1 <= n_steps <= top + 1:
        raise InputError(
            f"the number of sampling steps must lie in [1, {top + 1}] "
            f"(timesteps 0…{top}), got {n_steps}"
        )
    return top


def start_from(
    schedule: Schedule, x0: Tensor, t_start: int, generator: Generators = None
) -> Tensor:
    """Noise clean data to timestep ``t_start`` for an SDEdit-style edit.

    Args:
        schedule: the noise schedule.
        x0: the input to edit, [B, ...] (in the model's space).
        t_start: the timestep to noise to; pass the same value to :func:`timesteps`.
        generator: one generator, one per batch element, or ``None`` (see ``noise_like``).

    Returns:
        x_{t_start} = √ᾱ x0 + √(1−ᾱ) ε, shaped like x0.
    """
    if not 0 <= t_start < schedule.T:
        raise InputError(f"the start timestep must lie in [0, {schedule.T - 1}], got {t_start}")
    t = torch.full((x0.shape[0],), int(t_start), dtype=torch.long)
    return q_sample(schedule, x0, t, noise_like(x0, generator))
