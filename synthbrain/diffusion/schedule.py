"""Noise schedules, the forward process and the ε / x0 / v conversions.

Formulas: METHODS.md, "Shared notation".

Schedule arrays are computed once in float64 and cast to the dtype and device of the tensor they
meet, so a float16 network on a GPU and a float64 test on the CPU read the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from synthbrain.errors import InputError

ScheduleKind = Literal["linear", "scaled_linear", "cosine", "sigmoid"]
Parameterization = Literal["eps", "x0", "v"]

MAX_BETA = 0.999  # Nichol & Dhariwal clip betas here so the last steps stay invertible


@dataclass(frozen=True, eq=False)
class Schedule:
    """A discrete diffusion noise schedule over timesteps 0 … T−1.

    Attributes:
        betas: β_t, float64 [T].
        alphas: α_t = 1 − β_t, float64 [T].
        alphas_cumprod: ᾱ_t = ∏_{s≤t} α_s, float64 [T].
        kind: how the betas were made (for reports and saved configs).

    Timestep −1 stands for "clean data": ᾱ = 1, β = 0. The sampling loop uses it as the target
    of the last step, so the last step lands on x̂0.
    """

    betas: Tensor
    alphas: Tensor
    alphas_cumprod: Tensor
    kind: str = "custom"
    # Index i + 1 holds timestep i; index 0 holds timestep −1 (ᾱ = 1, β = 0).
    _abar_padded: Tensor = field(init=False, repr=False)
    _beta_padded: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
        abar = self.alphas_cumprod.detach().to("cpu", torch.float64)
        beta = self.betas.detach().to("cpu", torch.float64)
        object.__setattr__(self, "_abar_padded", torch.cat([one, abar]))
        object.__setattr__(self, "_beta_padded", torch.cat([zero, beta]))

    @classmethod
    def from_betas(cls, betas: Tensor, kind: str = "custom") -> Schedule:
        """Build a schedule from β_t (any float tensor [T], each in (0, 1])."""
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() < 1:
            shape = tuple(betas.shape)
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {shape}")
        if bool((betas <= 0).any()) or bool((betas > 1).any()):
            raise ValueError("betas must lie in (0, 1]")
        alphas = 1.0 - betas
        return cls(betas=betas, alphas=alphas, alphas_cumprod=torch.cumprod(alphas, 0), kind=kind)

    @property
    def T(self) -> int:
        """Number of timesteps."""
        return int(self.betas.shape[0])

    def abar(self, t: Tensor | int, like: Tensor) -> Tensor:
        """ᾱ_t gathered at timesteps ``t`` and shaped to broadcast against ``like``.

        Args:
            t: long timesteps [B] (one per batch element), or a scalar for the whole batch;
                −1 means ᾱ = 1 (clean data).
            like: the tensor the result will meet, [B, ...]; gives dtype, device and rank.

        Returns:
            ᾱ_t as ``like``'s dtype and device, shaped [B, 1, …, 1] (or [1, …, 1] for a scalar t).
        """
        return _gather(self._abar_padded, t, like, self.T)

    def beta(self, t: Tensor | int, like: Tensor) -> Tensor:
        """β_t gathered like :meth:`abar` (β = 0 at t = −1)."""
        return _gather(self._beta_padded, t, like, self.T)

    def snr(self, t: Tensor | int, like: Tensor) -> Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t), gathered like :meth:`abar` (t ≥ 0)."""
        abar = self._abar_padded
        return _gather(abar / (1.0 - abar).clamp_min(1e-300), t, like, self.T)


def _gather(table: Tensor, t: Tensor | int, like: Tensor, T: int) -> Tensor:
    """Index a padded float64 table at t + 1, cast to like's dtype/device, reshape to broadcast."""
    return _shape_like(_gather64(table, t, T), like)


def _gather64(table: Tensor, t: Tensor | int, T: int) -> Tensor:
    """Index a padded float64 CPU table at t + 1 (t = −1 reads the padding), flat [B]."""
    t = torch.as_tensor(t, dtype=torch.long).cpu()
    if t.ndim > 1:
        raise ValueError(f"timesteps must be a scalar or 1-D [B], got shape {tuple(t.shape)}")
    if t.numel() and (int(t.min()) < -1 or int(t.max()) >= T):
        raise ValueError(f"timesteps must lie in [-1, {T - 1}], got {t.min()}..{t.max()}")
    return table[t.reshape(-1) + 1]


def _shape_like(values: Tensor, like: Tensor) -> Tensor:
    """Cast a flat [B] CPU vector to like's dtype/device, shaped [B, 1, …, 1]."""
    values = values.to(device=like.device, dtype=like.dtype)
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def make_schedule(
    kind: ScheduleKind = "linear",
    T: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    *,
    rescale: bool = False,
    cosine_s: float = 0.008,
    sigmoid_range: tuple[float, float] = (-3.0, 3.0),
    sigmoid_tau: float = 1.0,
) -> Schedule:
    """Make a noise schedule.

    Args:
        kind: ``"linear"`` (β from beta_start to beta_end, DDPM), ``"scaled_linear"`` (√β linear,
            Stable Diffusion), ``"cosine"`` (Nichol & Dhariwal 2021, ᾱ = cos², betas clipped at
            0.999) or ``"sigmoid"`` (as in D3M's code, lucidrains' ``sigmoid_beta_schedule``).
        T: number of timesteps (1000 in PathoSyn and D3M, 1024 in USB).
        beta_start, beta_end: β range for the two linear kinds.
        rescale: multiply beta_start and beta_end by 1000 / T (Improved DDPM) so that a short
            schedule (T = 100, as in tests) still ends near pure noise. Every kind's betas are
            clipped at 0.999.
        cosine_s: the cosine schedule's offset s.
        sigmoid_range: (start, end) of the sigmoid's input range.
        sigmoid_tau: the sigmoid's temperature.

    Returns:
        A :class:`Schedule` with float64 arrays.
    """
    if T < 1:
        raise InputError(f"the number of diffusion timesteps must be at least 1, got {T}")
    if rescale:
        beta_start, beta_end = beta_start * 1000.0 / T, beta_end * 1000.0 / T
    if kind == "linear":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    elif kind == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    elif kind == "cosine":
        betas = _betas_from_abar(_cosine_abar(T, cosine_s))
    elif kind == "sigmoid":
        betas = _betas_from_abar(_sigmoid_abar(T, *sigmoid_range, sigmoid_tau))
    else:
        raise InputError(
            f"unknown noise schedule {kind!r}; choose linear, scaled_linear, cosine or sigmoid"
        )
    # A rescaled linear schedule with T < 50 would reach β ≥ 1 (ᾱ = 0): clip as cosine does.
    return Schedule.from_betas(betas.clamp(max=MAX_BETA), kind=kind)


def _cosine_abar(T: int, s: float) -> Tensor:
    """ᾱ(u) = cos²((u + s)/(1 + s) · π/2) on u = 0, 1/T, …, 1, normalised to ᾱ(0) = 1."""
    u = torch.linspace(0, 1, T + 1, dtype=torch.float64)
    f = torch.cos((u + s) / (1 + s) * math.pi * 0.5) ** 2
    return f / f[0]


def _sigmoid_abar(T: int, start: float, end: float, tau: float) -> Tensor:
    """lucidrains' sigmoid ᾱ on u = 0, 1/T, …, 1, normalised to ᾱ(0) = 1."""
    u = torch.linspace(0, 1, T + 1, dtype=torch.float64)
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    f = (v_end - torch.sigmoid((u * (end - start) + start) / tau)) / (v_end - v_start)
    return f / f[0]


def _betas_from_abar(abar: Tensor) -> Tensor:
    """β_t = 1 − ᾱ(t+1)/ᾱ(t) from a continuous ᾱ on T + 1 points, clipped to [0, 0.999]."""
    return (1.0 - abar[1:] / abar[:-1]).clamp(0.0, MAX_BETA)


def _coeffs(schedule: Schedule, t: Tensor | int, like: Tensor) -> tuple[Tensor, Tensor]:
    """(√ᾱ_t, √(1−ᾱ_t)): square roots taken in float64 on the CPU, then cast to like's dtype."""
    abar = _gather64(schedule._abar_padded, t, schedule.T)
    return _shape_like(abar.sqrt(), like), _shape_like((1.0 - abar).sqrt(), like)


def q_sample(schedule: Schedule, x0: Tensor, t: Tensor | int, noise: Tensor) -> Tensor:
    """Forward process x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε (METHODS, "Forward process")."""
    a, s = _coeffs(schedule, t, x0)
    return a * x0 + s * noise


def x0_from_eps(schedule: Schedule, x_t: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
    """x̂0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t (METHODS, ε-prediction)."""
    a, s = _coeffs(schedule, t, x_t)
    return (x_t - s * eps) / a


def eps_from_x0(schedule: Schedule, x_t: Tensor, t: Tensor | int, x0: Tensor) -> Tensor:
    """ε̂ = (x_t − √ᾱ_t x̂0) / √(1−ᾱ_t): the noise implied by x̂0 (t ≥ 0)."""
    a, s = _coeffs(schedule, t, x_t)
    return (x_t - a * x0) / s


def v_from_x0_eps(schedule: Schedule, x0: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
    """v = √ᾱ_t ε − √(1−ᾱ_t) x0 (METHODS, v-prediction): the v-prediction training target."""
    a, s = _coeffs(schedule, t, x0)
    return a * eps - s * x0


def x0_from_v(schedule: Schedule, x_t: Tensor, t: Tensor | int, v: Tensor) -> Tensor:
    """x̂0 = √ᾱ_t x_t − √(1−ᾱ_t) v̂ (METHODS, v-prediction)."""
    a, s = _coeffs(schedule, t, x_t)
    return a * x_t - s * v


def eps_from_v(schedule: Schedule, x_t: Tensor, t: Tensor | int, v: Tensor) -> Tensor:
    """ε̂ = √(1−ᾱ_t) x_t + √ᾱ_t v̂ (METHODS, v-prediction)."""
    a, s = _coeffs(schedule, t, x_t)
    return s * x_t + a * v


def to_x0_eps(
    schedule: Schedule,
    x_t: Tensor,
    t: Tensor | int,
    out: Tensor,
    parameterization: Parameterization,
) -> tuple[Tensor, Tensor]:
    """Turn a network output into the pair (x̂0, ε̂) that the sampling loop works with.

    Args:
        schedule: the noise schedule.
        x_t: the noisy input the network saw, [B, ...].
        t: its timesteps, long [B] (or a scalar), each ≥ 0.
        out: the network output, same shape as x_t.
        parameterization: what ``out`` predicts: ``"eps"``, ``"x0"`` or ``"v"``.

    Returns:
        (x̂0, ε̂), each shaped like x_t.
    """
    if parameterization == "eps":
        return x0_from_eps(schedule, x_t, t, out), out
    if parameterization == "x0":
        return out, eps_from_x0(schedule, x_t, t, out)
    if parameterization == "v":
        return x0_from_v(schedule, x_t, t, out), eps_from_v(schedule, x_t, t, out)
    raise InputError(f"unknown parameterization {parameterization!r}; choose eps, x0 or v")
