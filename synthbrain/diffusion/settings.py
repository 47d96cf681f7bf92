"""The one sampler-settings type: how a reverse process runs, shared by every engine."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from synthbrain.diffusion.spacing import Spacing, timesteps_for


@dataclass(frozen=True)
class SamplerSettings:
    """How the loop runs: sampler, number of steps, timestep spacing, DDIM η, precision."""

    sampler: str = "ddim"
    steps: int = 50
    spacing: str = "linspace"
    eta: float = 0.0
    precision: str = "fp32"

    def timesteps(self, T: int, t_start: int | None = None) -> Tensor:
        """Descending timesteps from t_start (or T − 1), at most as many as there are
        (ddpm: all of them, whatever `steps` says; `timesteps_for` holds that rule)."""
        top = T - 1 if t_start is None else t_start
        n = max(1, min(self.steps, top + 1))
        spacing: Spacing = self.spacing  # type: ignore[assignment]
        return timesteps_for(self.sampler, T, n, spacing=spacing, t_start=t_start)
