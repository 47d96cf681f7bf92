"""Shared diffusion core: one schedule, one DDIM update, one sampling loop with hooks.

Engines (deviation, paired, deformation) supply a denoiser ``(x_t, t) -> (x̂0, ε̂)`` and hooks;
everything else (noise schedules, parameterisation conversions, samplers, timestep selection,
per-sample random noise) lives here.
"""

from synthbrain.diffusion.loop import SAMPLERS, Denoiser, Hook, Sampler, StepState, sample
from synthbrain.diffusion.noise import Generators, noise_like, randn
from synthbrain.diffusion.schedule import (
    Parameterization,
    Schedule,
    ScheduleKind,
    eps_from_v,
    eps_from_x0,
    make_schedule,
    q_sample,
    to_x0_eps,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)
from synthbrain.diffusion.settings import SamplerSettings
from synthbrain.diffusion.spacing import Spacing, start_from, steps_for, timesteps, timesteps_for
from synthbrain.diffusion.steps import DPMSolverPP2M, ddim_sigma, ddim_step, ddpm_step

__all__ = [
    "SAMPLERS",
    "DPMSolverPP2M",
    "Denoiser",
    "Generators",
    "Hook",
    "Parameterization",
    "Sampler",
    "SamplerSettings",
    "Schedule",
    "ScheduleKind",
    "Spacing",
    "StepState",
    "ddim_sigma",
    "ddim_step",
    "ddpm_step",
    "eps_from_v",
    "eps_from_x0",
    "make_schedule",
    "noise_like",
    "q_sample",
    "randn",
    "sample",
    "start_from",
    "steps_for",
    "timesteps",
    "timesteps_for",
    "to_x0_eps",
    "v_from_x0_eps",
    "x0_from_eps",
    "x0_from_v",
]
