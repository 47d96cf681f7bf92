"""Exponential moving average of the trainable weights."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class EMA:
    """A float copy of the trainable parameters, averaged after every optimiser update.

    After update k: ema ← ema + (1 − d_k)(θ − ema), i.e. ema = d_k · ema + (1 − d_k) · θ, with
    d_k = decay, or min(decay, (1 + k) / (10 + k)) when `warmup` is set. Frozen parameters and
    buffers are not averaged: they are taken from the model when the EMA weights are exported.

    Args:
        model: the module whose parameters are tracked (names are its state_dict keys).
        names: the names of the parameters to average (the trainable ones).
        decay: the target decay in [0, 1).
        warmup: ramp the decay up over the first updates.
    """

    def __init__(self, model: nn.Module, names: list[str], decay: float, warmup: bool) -> None:
        params = dict(model.named_parameters())
        self.names = list(names)
        self.decay, self.warmup = decay, warmup
        # Half-precision weights are averaged in float32: tiny (1 - d) steps would round away.
        self.shadow = [_widen(params[name].detach().clone()) for name in self.names]

    def decay_at(self, update: int) -> float:
        """The decay used after the 1-based update `update`."""
        if self.warmup:
            return min(self.decay, (1 + update) / (10 + update))
        return self.decay

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        """The tracked parameters of `model`, in shadow order."""
        params = dict(model.named_parameters())
        return [params[name] for name in self.names]

    @torch.no_grad()
    def update(self, model: nn.Module, update: int) -> None:
        """Average the model's current parameters in, after the 1-based update `update`."""
        weight = 1.0 - self.decay_at(update)
        pairs = zip(self._params(model), self.shadow, strict=True)
        current = [p.detach().to(s.dtype) for p, s in pairs]
        torch._foreach_lerp_(self.shadow, current, weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged tensors by parameter name."""
        return dict(zip(self.names, self.shadow, strict=True))

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore averaged tensors saved by `state_dict` (the names must match)."""
        missing = set(self.names) ^ set(state)
        if missing:
            raise KeyError(f"EMA state does not match the trainable parameters: {sorted(missing)}")
        for shadow, name in zip(self.shadow, self.names, strict=True):
            shadow.copy_(state[name])

    def export(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's state_dict with the averaged tensors in place of the trainable weights."""
        state = {k: v.detach() for k, v in model.state_dict().items()}
        for name, shadow in zip(self.names, self.shadow, strict=True):
            state[name] = shadow.to(state[name].dtype)
        return state

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Within the block the model holds the EMA weights; its own are restored exactly after."""
        params = self._params(model)
        with torch.no_grad():
            backup = [p.detach().clone() for p in params]
            for p, s in zip(params, self.shadow, strict=True):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(params, backup, strict=True):
                    p.copy_(b)


def _widen(t: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 → float32; other dtypes unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
