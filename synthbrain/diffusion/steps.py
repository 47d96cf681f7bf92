"""Reverse-step updates: DDIM, DDPM ancestral and DPM-Solver++(2M).

Each is written once and is pure apart from DPM-Solver++'s one remembered x̂0. They take the
denoiser's (x̂0, ε̂) pair, so every parameterisation and every engine hook goes through them.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from synthbrain.diffusion.schedule import Schedule, _gather64, _shape_like


def ddim_sigma(abar_t: Tensor, abar_next: Tensor, eta: float) -> Tensor:
    """σ = η √((1−ᾱ_{t'})/(1−ᾱ_t)) √(1−ᾱ_t/ᾱ_{t'}) (METHODS, DDIM step)."""
    ratio = ((1.0 - abar_next) / (1.0 - abar_t)).clamp_min(0.0)
    return eta * ratio.sqrt() * (1.0 - abar_t / abar_next).clamp_min(0.0).sqrt()


def ddim_step(
    x_t: Tensor,
    x0: Tensor,
    eps: Tensor,
    abar_t: Tensor,
    abar_next: Tensor,
    *,
    eta: float = 0.0,
    noise: Tensor | None = None,
) -> Tensor:
    """One DDIM update from timestep t to an earlier timestep t' (Song et al. 2021).

    x_{t'} = √ᾱ_{t'} x̂0 + √(1−ᾱ_{t'}−σ²) ε̂ + σ z (METHODS, DDIM step). With ᾱ_{t'} = 1 (the
    step to t' = −1) σ = 0 and the result is x̂0 exactly.

    Args:
        x_t: current state [B, ...] (unused by the formula; kept so all steps share a shape).
        x0: the estimate x̂0, shaped like x_t.
        eps: the noise estimate ε̂ consistent with x̂0 at t, shaped like x_t.
        abar_t: ᾱ_t broadcastable to x_t (from ``Schedule.abar``).
        abar_next: ᾱ_{t'} broadcastable to x_t (1 for t' = −1).
        eta: 0 for the deterministic sampler, 1 for DDPM-like ancestral noise.
        noise: z ~ N(0, I) shaped like x_t; required when σ > 0.

    Returns:
        x_{t'} shaped like x_t.
    """
    del x_t  # DDIM rebuilds x_{t'} from (x̂0, ε̂) alone
    out = abar_next.sqrt() * x0
    if eta == 0.0:
        # Eq. DDIM with σ = 0; 0·ε̂ at ᾱ' = 1 keeps x̂0 exact.
        return out + (1.0 - abar_next).clamp_min(0.0).sqrt() * eps
    sigma = ddim_sigma(abar_t, abar_next, eta)
    out = out + (1.0 - abar_next - sigma**2).clamp_min(0.0).sqrt() * eps
    if bool((sigma > 0).any()):
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs noise for steps with sigma > 0")
        out = out + sigma * noise
    return out


def ddpm_step(
    x_t: Tensor,
    eps: Tensor,
    beta_t: Tensor,
    abar_t: Tensor,
    *,
    noise: Tensor | None = None,
    variance: Literal["posterior", "beta"] = "posterior",
) -> Tensor:
    """One DDPM ancestral update from t to t − 1 (Ho et al. 2020).

    x_{t−1} = (x_t − β_t/√(1−ᾱ_t) ε̂)/√α_t + σ_t z (METHODS, DDPM ancestral step).

    Args:
        x_t: current state [B, ...].
        eps: the noise estimate ε̂, shaped like x_t.
        beta_t: β_t broadcastable to x_t (from ``Schedule.beta``).
        abar_t: ᾱ_t broadcastable to x_t.
        noise: z ~ N(0, I) shaped like x_t; ``None`` means z = 0 (the last step, t = 0).
        variance: σ_t² = β̃_t = β_t (1−ᾱ_{t−1})/(1−ᾱ_t) (``"posterior"``, the exact posterior
            variance and the same as DDIM with η = 1) or σ_t² = β_t (``"beta"``).

    Returns:
        x_{t−1} shaped like x_t.
    """
    alpha_t = 1.0 - beta_t
    mean = (x_t - beta_t / (1.0 - abar_t).sqrt() * eps) / alpha_t.sqrt()
    if noise is None:
        return mean
    if variance == "posterior":
        abar_prev = abar_t / alpha_t
        var = beta_t * ((1.0 - abar_prev) / (1.0 - abar_t)).clamp_min(0.0)
    elif variance == "beta":
        var = beta_t
    else:
        raise ValueError(f"unknown DDPM variance {variance!r}; choose posterior or beta")
    return mean + var.sqrt() * noise


class DPMSolverPP2M:
    """DPM-Solver++(2M): multistep second-order solver in data-prediction form (Lu et al. 2022).

    Works over any descending list of timesteps (all of them, a strided subset, or one that starts
    at t_start for editing), with α = √ᾱ, σ = √(1−ᾱ) and λ = log(α/σ). The first step, and the
    step to t' = −1 (σ' = 0, λ' = ∞), are first order (DDIM with η = 0); the others combine the
    current and previous x̂0. One instance serves one trajectory; call :meth:`reset` to reuse it.

    Attributes:
        x0_prev: the previous step's x̂0 (the sampling loop overwrites it with the x̂0 that the
            hooks left, so guidance that edits x̂0 is seen by the next step).
        lambda_prev: λ at the previous step's timestep, float64 [B] on the CPU.
    """

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.x0_prev: Tensor | None = None
        self.lambda_prev: Tensor | None = None

    def reset(self) -> None:
        """Forget the previous step (start a new trajectory)."""
        self.x0_prev = None
        self.lambda_prev = None

    def _alpha_sigma(self, t: Tensor | int) -> tuple[Tensor, Tensor]:
        """(α, σ) at t as float64 [B] CPU vectors."""
        abar = _gather64(self.schedule._abar_padded, t, self.schedule.T)
        return abar.sqrt(), (1.0 - abar).clamp_min(0.0).sqrt()

    def step(self, x_t: Tensor, x0: Tensor, t: Tensor | int, t_next: Tensor | int) -> Tensor:
        """Advance x_t at t to t_next (< t; −1 for clean data) given x̂0 at t; remember x̂0.

        Args:
            x_t: current state [B, ...].
            x0: the data prediction x̂0 at t, shaped like x_t.
            t: current timesteps, long [B] or a scalar.
            t_next: next timesteps, long [B] or a scalar (−1 after the last step).

        Returns:
            x_{t_next} shaped like x_t.
        """
        alpha_t, sigma_t = self._alpha_sigma(t)
        alpha_n, sigma_n = self._alpha_sigma(t_next)
        # e^{-h} = (σ'/α')/(σ/α) written without λ' so that σ' = 0 gives 0, not inf·0.
        exp_neg_h = (sigma_n * alpha_t) / (alpha_n * sigma_t)
        c_x = _shape_like(sigma_n / sigma_t, x_t)
        c_d = _shape_like(alpha_n * (1.0 - exp_neg_h), x_t)  # −α′(e^{−h} − 1), DPM-Solver++(1)
        lambda_t = alpha_t.log() - sigma_t.log()
        last = bool((torch.as_tensor(t_next) < 0).any())
        if self.x0_prev is None or self.lambda_prev is None or last:
            d = x0  # first order: DPM-Solver++(1), identical to deterministic DDIM
        else:
            h = (alpha_n.log() - sigma_n.log()) - lambda_t
            r = (lambda_t - self.lambda_prev) / h
            w = _shape_like(0.5 / r, x_t)
            d = (1.0 + w) * x0 - w * self.x0_prev  # Lu et al. Algorithm 2, D_i
        self.x0_prev, self.lambda_prev = x0, lambda_t
        return c_x * x_t + c_d * d
