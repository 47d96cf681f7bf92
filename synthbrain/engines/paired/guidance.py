"""USB samplers on the latent grid: the paired denoiser, consistency guidance hooks, four tasks.

Every task runs the one shared loop (`synthbrain.diffusion.sample`) over the joint state
[x, y] (lesion channels first). The tasks differ only in where they start and which hooks they
pass (METHODS.md §2):

- (a) `sample_joint`: x and y from noise; the denoiser runs the lesion branch, then the brain
  branch on the lesion estimate x̂0 (Eq. 7).
- (b) `sample_given_mask`: x fixed to a given mask: the denoiser skips the lesion branch and
  conditions the brain branch on x0, and `FixLesion` re-noises x0 to t' after every step.
- (c) heal and (d) implant (`edit`): y starts from the input noised to t_start; x is the empty
  mask (heal) or the given mask (implant); `AnatomyConsistency` pulls y back toward the input
  after every step (ACG, Eq. 12–13), gated by `1 − η·x_soft` where a lesion mask is known (LCG,
  Eq. 14–15).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from synthbrain.diffusion import (
    Generators,
    Hook,
    SamplerSettings,
    StepState,
    eps_from_x0,
    noise_like,
    q_sample,
    randn,
    sample,
    start_from,
)
from synthbrain.engines.paired.model import PairedModel

Target = Literal["clean", "renoised"]


@contextlib.contextmanager
def autocast_for(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast on CUDA when precision is "bf16"; nothing otherwise."""
    if device.type == "cuda" and precision == "bf16":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


class PairedDenoiser:
    """The joint denoiser (x_t, y_t) → (x̂0, ŷ0) of Eq. 7, as the loop's `Denoiser`.

    The lesion branch gives x̂0 from (x_t, y_t) (the paper's ŷ0 ≈ y_t approximation); the brain
    branch then gives ŷ0 conditioned on x̂0. With `x_fixed` the lesion is known: the lesion
    branch is skipped, x̂0 = x_fixed and the brain branch is conditioned on it (tasks b–d).
    """

    def __init__(
        self, model: PairedModel, *, x_fixed: Tensor | None = None, precision: str = "fp32"
    ) -> None:
        self.model = model
        self.x_fixed = x_fixed
        self.precision = precision
        self.cx = model.config.lesion_channels

    def __call__(self, state: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        m, schedule = self.model, self.model.schedule
        x_t, y_t = state[:, : self.cx], state[:, self.cx :]
        with autocast_for(state.device, self.precision):
            if self.x_fixed is None:
                out_x = m.lesion_out(x_t, y_t, t).float()
                x0 = m.x0_from(x_t, t, out_x).clamp(-1.0, 1.0)  # Suppl. C.3
            else:
                x0 = self.x_fixed
            out_y = m.brain_out(y_t, x0.to(y_t.dtype), t).float()
        y0 = m.x0_from(y_t, t, out_y, "brain")
        x0_all = torch.cat([x0.to(state.dtype), y0.to(state.dtype)], dim=1)
        # ε̂ consistent with the (clamped / fixed) x̂0, so the update lands on it exactly.
        return x0_all, eps_from_x0(schedule, state, t, x0_all)


class FixLesion(Hook):
    """Keep the lesion channels on a given x0: after each step x_{t'} = q(x0, t') (task b–d)."""

    def __init__(self, x0: Tensor, cx: int, schedule, generator: Generators) -> None:  # noqa: ANN001
        self.x0, self.cx, self.schedule, self.generator = x0, cx, schedule, generator

    def on_step(self, s: StepState) -> StepState:
        if int(s.t_next[0]) < 0:
            x_next = self.x0
        else:
            x_next = q_sample(self.schedule, self.x0, s.t_next, noise_like(self.x0, self.generator))
        x0 = torch.cat([self.x0, s.x0[:, self.cx :]], dim=1)
        nxt = torch.cat([x_next.to(s.x_next.dtype), s.x_next[:, self.cx :]], dim=1)
        return replace(s, x0=x0, x_next=nxt)


@dataclass
class ACGSettings:
    """Anatomy / lesion consistency guidance settings (METHODS §2; USB defaults).

    Attributes:
        alpha0: initial guidance strength α0 (20).
        k: temporal decay k (0.5).
        t_ref: N of α = α0·exp(−k·t/N); the published code edits with stride 1 from t_start,
            so N = t_start there, and we keep N = t_start whatever the number of steps.
        target: "clean" pulls y_{t'} toward the clean input (published code); "renoised" toward
            the input noised to t' (RePaint style).
        eta: LCG strength η (1).
    """

    alpha0: float = 20.0
    k: float = 0.5
    t_ref: int = 300
    target: Target = "clean"
    eta: float = 1.0


class AnatomyConsistency(Hook):
    """ACG (Eq. 12–13) with the optional LCG gate (Eq. 14–15), applied after every step.

    α = α0·exp(−k·t/N); λ = exp(−α|ŷ0 − y_in|) ⊙ (1 − η·x_soft); ŷ0 ← ŷ0 + λ(y_in − ŷ0);
    y_{t'} ← y_{t'} + λ(target − y_{t'}), target = y_in or y_in noised to t'.
    """

    def __init__(
        self,
        y_in: Tensor,
        cx: int,
        schedule,  # noqa: ANN001
        settings: ACGSettings,
        *,
        x_soft: Tensor | None = None,
        generator: Generators = None,
    ) -> None:
        self.y_in, self.cx, self.schedule, self.settings = y_in, cx, schedule, settings
        self.gate = None if x_soft is None else (1.0 - settings.eta * x_soft).clamp(0.0, 1.0)
        self.generator = generator

    def weight(self, y0: Tensor, t: Tensor) -> Tensor:
        """λ of Eq. 12 (times the LCG gate of Eq. 15 when a lesion map is known)."""
        st = self.settings
        shape = (-1,) + (1,) * (y0.ndim - 1)
        alpha = st.alpha0 * torch.exp(-st.k * t.to(y0.dtype) / max(st.t_ref, 1)).reshape(shape)
        lam = torch.exp(-alpha * (y0 - self.y_in).abs())  # Eq. 12
        return lam if self.gate is None else lam * self.gate  # Eq. 15

    def _target(self, t_next: Tensor) -> Tensor:
        """The state the guided y_{t'} is pulled toward."""
        if self.settings.target == "clean" or int(t_next[0]) < 0:
            return self.y_in
        return q_sample(self.schedule, self.y_in, t_next, noise_like(self.y_in, self.generator))

    def on_step(self, s: StepState) -> StepState:
        cx = self.cx
        y0, y_next = s.x0[:, cx:], s.x_next[:, cx:]
        lam = self.weight(y0, s.t)
        y0 = y0 + lam * (self.y_in - y0)  # Eq. 13 on the estimate
        y_next = y_next + lam * (self._target(s.t_next) - y_next)  # Eq. 13 on the state
        return replace(
            s,
            x0=torch.cat([s.x0[:, :cx], y0], dim=1),
            x_next=torch.cat([s.x_next[:, :cx], y_next], dim=1),
        )


def _latent_shape(model: PairedModel, batch: int) -> tuple[int, ...]:
    """[B, Cx + Cz, *latent grid] of the joint state."""
    c = model.config
    return (batch, c.lesion_channels + c.latent_channels, *c.latent_grid)


def _steps(model: PairedModel, run: SamplerSettings, t_start: int | None) -> Tensor:
    """Descending timesteps from t_start (or T − 1) with at most the available count."""
    return run.timesteps(model.schedule.T, t_start)


@torch.no_grad()
def sample_joint(
    model: PairedModel, generators: Sequence[torch.Generator], run: SamplerSettings
) -> tuple[Tensor, Tensor]:
    """Task (a): paired (x0, y0) from noise, one generator per sample. Returns (x0, y0)."""
    device = model.latent_shift.device
    x_T = randn(_latent_shape(model, len(generators)), list(generators), device)
    denoise = PairedDenoiser(model, precision=run.precision)
    out = sample(
        denoise, x_T, model.schedule, _steps(model, run, None), sampler=run.sampler,  # type: ignore[arg-type]
        eta=run.eta, generator=list(generators),
    )  # fmt: skip
    cx = model.config.lesion_channels
    return out[:, :cx], out[:, cx:]


@torch.no_grad()
def sample_given_mask(
    model: PairedModel, x0: Tensor, generators: Sequence[torch.Generator], run: SamplerSettings
) -> Tensor:
    """Task (b): y0 given lesion states x0 [B, Cx, *latent]; returns y0."""
    shape = _latent_shape(model, x0.shape[0])
    x_T = randn(shape, list(generators), x0.device)
    hooks = [FixLesion(x0, model.config.lesion_channels, model.schedule, list(generators))]
    denoise = PairedDenoiser(model, x_fixed=x0, precision=run.precision)
    out = sample(
        denoise, x_T, model.schedule, _steps(model, run, None), sampler=run.sampler,  # type: ignore[arg-type]
        eta=run.eta, generator=list(generators), hooks=hooks,
    )  # fmt: skip
    return out[:, model.config.lesion_channels :]


@torch.no_grad()
def edit(
    model: PairedModel,
    y_in: Tensor,
    x_cond: Tensor,
    generators: Sequence[torch.Generator],
    run: SamplerSettings,
    *,
    t_start: int,
    acg: ACGSettings | None,
    x_soft: Tensor | None = None,
) -> Tensor:
    """Tasks (c)/(d): y_in noised to t_start, reversed with x fixed to `x_cond` and guidance.

    Args:
        model: the bundle (eval mode).
        y_in: normalised latents of the input images [B, Cz, *latent].
        x_cond: the lesion condition [B, Cx, *latent]: `model.empty_x` to heal, the encoded
            mask to implant.
        generators: one per sample.
        run: sampler settings; `run.steps` steps spread over t_start … 0.
        t_start: the edit's start timestep (USB: 300 heal, 500 implant, of T = 1024).
        acg: guidance settings (None: plain SDEdit, no guidance).
        x_soft: the lesion's soft map on the latent grid [B, 1, *latent] for the LCG gate.

    Returns:
        The edited latents [B, Cz, *latent].
    """
    gens = list(generators)
    cx = model.config.lesion_channels
    y_start = start_from(model.schedule, y_in, t_start, gens)
    x_start = q_sample(
        model.schedule, x_cond, torch.full((x_cond.shape[0],), t_start, device=x_cond.device),
        noise_like(x_cond, gens),
    )  # fmt: skip
    hooks: list[Hook] = [FixLesion(x_cond, cx, model.schedule, gens)]
    if acg is not None:
        guide = AnatomyConsistency(y_in, cx, model.schedule, acg, x_soft=x_soft, generator=gens)
        hooks.append(guide)
    denoise = PairedDenoiser(model, x_fixed=x_cond, precision=run.precision)
    out = sample(
        denoise, torch.cat([x_start, y_start], dim=1), model.schedule,
        _steps(model, run, t_start), sampler=run.sampler, eta=run.eta,  # type: ignore[arg-type]
        generator=gens, hooks=hooks,
    )  # fmt: skip
    return out[:, cx:]


def substrate_steps(steps: int, t_start: int, T: int) -> int:  # noqa: N803
    """Steps for an edit over t_start … 0 at the stride `steps` has over the full range."""
    return max(2, math.ceil(steps * (t_start + 1) / T))
