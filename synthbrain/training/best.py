"""The best validation so far by a task metric, and its EMA weights on disk."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthbrain.errors import InputError


def best_path(ckpt: Path) -> Path:
    """checkpoints/[<stage>/]best.safetensors, beside the stage's last.pt."""
    return ckpt.with_name("best.safetensors")


@dataclass
class Best:
    """Which validation was best by `metric` (None: no selection), and its value.

    The state is part of the checkpoint, so a resumed run keeps comparing against the best of
    the steps before the interruption.
    """

    metric: str | None
    higher: bool = False
    value: float | None = None
    step: int | None = None

    def improves(self, val: dict[str, float], step: int) -> bool:
        """Whether the validation `val` at `step` beats the best so far (and becomes it).

        A metric that validation_step never returned is a config error; a NaN value (a metric
        undefined on this subset, e.g. Dice without any lesion) is skipped with a warning.
        """
        if self.metric is None:
            return False
        if self.metric not in val:
            known = ", ".join(sorted(val)) or "none"
            raise InputError(
                f"select_by = {self.metric!r} is not among the validation metrics ({known})"
            )
        value = float(val[self.metric])
        if not math.isfinite(value):
            warnings.warn(f"{self.metric} is {value} at step {step}: not a candidate", stacklevel=2)
            return False
        if self.value is not None:
            worse = value <= self.value if self.higher else value >= self.value
            if worse:  # ties keep the earlier weights
                return False
        self.value, self.step = value, step
        return True

    def state_dict(self) -> dict[str, Any]:
        """For the checkpoint."""
        return {"metric": self.metric, "value": self.value, "step": self.step}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore a saved best; one saved for another metric (or none, an older checkpoint)
        is dropped, so selection restarts by the metric now asked for."""
        if state and state.get("metric") == self.metric:
            self.value, self.step = state.get("value"), state.get("step")

    def summary(self, path: Path) -> dict[str, Any] | None:
        """What the fit summary says about the best weights (None without selection)."""
        if self.metric is None:
            return None
        found = self.step is not None and path.exists()
        return {"metric": self.metric, "value": self.value, "step": self.step,
                "weights": str(path) if found else None}  # fmt: skip
