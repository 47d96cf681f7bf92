"""What `synthbrain train` hands an engine: one typed request instead of loose keywords.

The api builds it once from the command's options; each engine's `train(request)` reads the
fields it uses, and its config loader applies `train_overrides()` (the dotted keys every engine's
config understands) on top of the config file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthbrain.progress import Reporter


@dataclass(frozen=True)
class TrainRequest:
    """A training run: the data, the run folder and the values that override the config.

    Args:
        data: HDF5 training set (`synthbrain preprocess` or `synthbrain phantom --hdf5`).
        out: the run folder (checkpoints, metrics, the exported weights).
        config_file: a TOML config (examples/configs/<engine>-*.toml); None: the defaults.
        steps, batch_size: override the config's training values (None: keep them).
        resume: continue from the run folder's checkpoints.
        device: auto | cpu | cuda.
        seed: data order, noise and augmentation.
        reporter: progress and messages (None: quiet).
        overrides: more settings as dotted keys (e.g. {"context": 0}), for scripts and tests.
    """

    data: Path
    out: Path
    config_file: Path | None = None
    steps: int | None = None
    batch_size: int | None = None
    resume: bool = False
    device: str = "auto"
    seed: int = 0
    reporter: Reporter | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))

    def train_overrides(self) -> dict[str, Any]:
        """The dotted `train.*` keys of the options given, then `overrides` (which win)."""
        values = {"train.steps": self.steps, "train.batch_size": self.batch_size,
                  "train.device": self.device, "train.seed": self.seed}  # fmt: skip
        return {**{k: v for k, v in values.items() if v is not None}, **self.overrides}

    def progress(self) -> Reporter:
        """The reporter to use (a quiet one when none was given)."""
        return self.reporter or Reporter(quiet=True)
