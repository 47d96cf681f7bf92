"""The one sampling loop. Engines differ only by their denoiser and the hooks they pass.

Per step: the denoiser gives (x̂0, ε̂) at t; ``Hook.on_prediction`` may replace x̂0 (D3M's warp),
after which ε̂ is re-derived from it; the sampler's update gives x_{t'}; ``Hook.on_step`` may change
x_{t'} and x̂0 (PathoSyn's mask projection, USB's consistency guidance); ``callback`` sees the
final state of the step. The last step targets t' = −1 (ᾱ = 1), so the loop returns clean data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from synthbrain.diffusion.noise import Generators, noise_like
from synthbrain.diffusion.schedule import Schedule, eps_from_x0
from synthbrain.diffusion.steps import DPMSolverPP2M, ddim_step, ddpm_step
from synthbrain.errors import InputError

Denoiser = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
Sampler = Literal["ddim", "ddpm", "dpm++"]
SAMPLERS: tuple[str, ...] = ("ddim", "ddpm", "dpm++")


@dataclass
class StepState:
    """Everything one reverse step knows; hooks read it and return it (changed or not).

    Attributes:
        index: step number, 0 … n_steps − 1.
        n_steps: number of steps in this trajectory.
        t: current timesteps, long [B] on x_t's device.
        t_next: next timesteps, long [B]; −1 after the last step (ᾱ = 1, clean data).
        x_t: the state at t, [B, ...].
        x0: the estimate x̂0 at t.
        eps: the noise estimate ε̂ at t, consistent with x0.
        x_next: the state at t_next (``None`` until the sampler's update has run).
    """

    index: int
    n_steps: int
    t: Tensor
    t_next: Tensor
    x_t: Tensor
    x0: Tensor
    eps: Tensor
    x_next: Tensor | None = None


class Hook:
    """A per-step intervention; subclass and override either method (defaults are identity).

    Hooks must return new tensors rather than write into the state's tensors in place: the loop
    notices a changed x̂0 by identity (``state.x0 is not old``) to re-derive ε̂.
    """

    def on_prediction(self, state: StepState) -> StepState:
        """Change x̂0 before the update (e.g. D3M's warp); ε̂ is then re-derived from it."""
        return state

    def on_step(self, state: StepState) -> StepState:
        """Change x_next (and x̂0) after the update (mask projection, consistency guidance)."""
        return state


@torch.no_grad()
def sample(
    denoise: Denoiser,
    x_T: Tensor,
    schedule: Schedule,
    timesteps: Tensor | Sequence[int],
    *,
    sampler: Sampler = "ddim",
    eta: float = 0.0,
    generator: Generators = None,
    hooks: Sequence[Hook] = (),
    callback: Callable[[StepState], None] | None = None,
) -> Tensor:
    """Run the reverse process from x_T over ``timesteps`` and return clean data.

    Args:
        denoise: ``(x_t, t) -> (x̂0, ε̂)`` with t long [B]; engines convert their network output
            with ``to_x0_eps``.
        x_T: the starting state [B, ...]: pure noise (``randn``) or, for editing, an input
            noised to ``timesteps[0]`` (``start_from``).
        schedule: the noise schedule.
        timesteps: strictly descending timesteps in [0, T − 1] (from ``timesteps()``); the loop
            appends the final target −1.
        sampler: ``"ddim"`` (η from ``eta``), ``"ddpm"`` (ancestral; needs every timestep from
            timesteps[0] down to 0) or ``"dpm++"`` (DPM-Solver++(2M), deterministic).
        eta: DDIM's η: 0 deterministic, 1 as noisy as DDPM. Only the DDIM sampler uses it.
        generator: one generator, one per batch element (each sample's noise then depends on its
            own generator alone), or ``None``.
        hooks: applied in order at each step (see :class:`Hook`).
        callback: called with the step's final :class:`StepState` after each step.

    Returns:
        The final state, shaped like x_T: x̂0 of the last step (after the hooks).

    Gradients are off; a hook that needs them can open ``torch.enable_grad()`` itself.
    """
    steps = _check_timesteps(timesteps, schedule.T, sampler, eta)
    solver = DPMSolverPP2M(schedule) if sampler == "dpm++" else None
    x, n, batch = x_T, len(steps), x_T.shape[0]
    for i, t_int in enumerate(steps):
        t_next_int = steps[i + 1] if i + 1 < n else -1
        t = torch.full((batch,), t_int, dtype=torch.long, device=x.device)
        t_next = torch.full((batch,), t_next_int, dtype=torch.long, device=x.device)
        x0, eps = denoise(x, t)
        state = StepState(i, n, t, t_next, x, x0, eps)
        state = _apply_prediction_hooks(schedule, state, t_int, hooks)
        state.x_next = _update(schedule, state, t_int, t_next_int, sampler, eta, generator, solver)
        for hook in hooks:
            state = hook.on_step(state)
        if solver is not None:
            solver.x0_prev = state.x0  # the next 2nd-order step extrapolates from the guided x̂0
        if callback is not None:
            callback(state)
        x = state.x_next
    return x


def _apply_prediction_hooks(
    schedule: Schedule, state: StepState, t_int: int, hooks: Sequence[Hook]
) -> StepState:
    """Run on_prediction hooks; after each that replaced x̂0, re-derive ε̂ from it."""
    for hook in hooks:
        x0_before = state.x0
        state = hook.on_prediction(state)
        if state.x0 is not x0_before:
            state.eps = eps_from_x0(schedule, state.x_t, t_int, state.x0)
    return state


def _update(
    schedule: Schedule,
    state: StepState,
    t_int: int,
    t_next_int: int,
    sampler: str,
    eta: float,
    generator: Generators,
    solver: DPMSolverPP2M | None,
) -> Tensor:
    """The sampler's update from t to t_next, drawing noise only where the step needs it."""
    x_t = state.x_t
    if solver is not None:
        return solver.step(x_t, state.x0, t_int, t_next_int)
    abar_t = schedule.abar(t_int, x_t)
    if sampler == "ddpm":
        noise = noise_like(x_t, generator) if t_next_int >= 0 else None  # z = 0 at the last step
        return ddpm_step(x_t, state.eps, schedule.beta(t_int, x_t), abar_t, noise=noise)
    noise = noise_like(x_t, generator) if eta > 0 and t_next_int >= 0 else None
    abar_next = schedule.abar(t_next_int, x_t)
    return ddim_step(x_t, state.x0, state.eps, abar_t, abar_next, eta=eta, noise=noise)


def _check_timesteps(
    timesteps: Tensor | Sequence[int],
    T: int,
    sampler: str,
    eta: float,
) -> list[int]:
    """Validate the sampler settings; return the timesteps as Python ints."""
    if sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if eta < 0:
        raise InputError(f"the DDIM eta must be >= 0, got {eta}")
    steps = torch.as_tensor(timesteps, dtype=torch.long).cpu()
    if steps.ndim != 1 or steps.numel() == 0:
        raise InputError(f"timesteps must be a non-empty 1-D list, got shape {tuple(steps.shape)}")
    values = [int(v) for v in steps]
    if min(values) < 0 or max(values) >= T:
        raise InputError(f"timesteps must lie in [0, {T - 1}], got {min(values)}…{max(values)}")
    if any(a <= b for a, b in zip(values, values[1:], strict=False)):
        raise InputError("timesteps must be strictly descending")
    if sampler == "ddpm" and (values[-1] != 0 or len(values) != values[0] + 1):
        raise InputError(
            f"the ddpm sampler needs every timestep from {values[0]} down to 0 "
            f"({values[0] + 1} steps), got {len(values)}; use ddim or dpm++ for fewer steps"
        )
    return values
