"""TrainConfig: the settings of one training stage, and the device it resolves to."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from synthbrain.errors import InputError
from synthbrain.training.options import parse_duration


class TrainConfig(BaseModel):
    """Settings of one training stage (a pydantic model, so config files can embed it).

    Attributes:
        steps: optimiser updates in the stage.
        batch_size: examples per update on each process (the global batch is this × world size).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW decoupled weight decay.
        warmup: updates of linear warm-up before the cosine decay.
        ema_decay: decay of the exponential moving average of the weights.
        ema_warmup: ramp the EMA decay as min(ema_decay, (1 + k) / (10 + k)) at update k, so a
            short run's EMA is not dominated by the random initialisation.
        grad_clip: maximum global gradient norm (0 disables clipping).
        checkpoint_every: write checkpoints/last.pt every this many updates (and at the end).
        log_every: one metrics line every this many updates (and at the end).
        val_every: validate the EMA weights every this many updates (and at the end).
        val_batches: batches of the validation set per validation (0 disables validation): a
            fixed subset of val_batches × batch_size examples drawn with `val_seed`.
        val_seed: the seed of the validation subset and of its noise, independent of `seed`
            so runs with different training seeds are validated on the same examples.
        select_by: a validation metric ("val_<name>", e.g. "val_dice" when validation_step
            returns "dice") that picks the best EMA weights; None keeps no best checkpoint.
        higher_is_better: the direction of `select_by`; may be left out only for a name that
            contains "loss" (lower is better).
        export: which EMA weights become <stage>.safetensors when `select_by` is set: "best"
            (checkpoints/best.safetensors) or "last".
        seed: the seed of data order, noise and dropout.
        precision: "auto" (bf16 autocast where the device computes bf16 natively: Ampere+
            GPUs, CPUs with AVX512-BF16/AMX; fp32 elsewhere), "fp32", or "bf16" (an error on a
            device without it). Losses, gradients, optimiser state and EMA stay float32.
        amp: the old switch, kept so old configs load: false means precision "fp32"; true
            (the old default) leaves `precision` as it is.
        max_time: stop this stage cleanly (checkpoint and weights written) once it has run
            this long in this process: seconds, or a string such as "2h45m", "90m" or Slurm's
            "02:45:00". `synthbrain train --max-time` limits the whole command instead.
        curves: draw curves.png (losses and validation metrics against updates) in the run
            folder at every validation.
        cache_gb: keep up to this many GiB of training items in memory after their first read
            (0: none), for datasets whose items depend on the index alone; split between the
            DataLoader workers, each holding its own cache.
        num_workers: DataLoader worker processes reading the data.
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        find_unused_parameters: passed to DistributedDataParallel; only needed when a trainable
            parameter gets no gradient in some step.
    """

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)
    warmup: int = Field(default=100, ge=0)
    ema_decay: float = Field(default=0.999, ge=0, lt=1)
    ema_warmup: bool = True
    grad_clip: float = Field(default=1.0, ge=0)
    checkpoint_every: int = Field(default=500, ge=1)
    log_every: int = Field(default=50, ge=1)
    val_every: int = Field(default=500, ge=1)
    val_batches: int = Field(default=4, ge=0)
    val_seed: int = Field(default=0, ge=0)
    select_by: str | None = Field(default=None, pattern=r"^val_\w+$")
    higher_is_better: bool | None = None
    export: Literal["best", "last"] = "best"
    seed: int = Field(default=0, ge=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    amp: bool | None = None
    max_time: float | None = None
    curves: bool = True
    cache_gb: float = Field(default=0.0, ge=0)
    num_workers: int = Field(default=2, ge=0)
    device: str = "auto"
    find_unused_parameters: bool = False

    @field_validator("max_time", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float | None:
        """"2h45m", "90m", "02:45:00" or seconds → seconds."""
        if value is None:
            return None
        try:
            return parse_duration(value)  # type: ignore[arg-type]
        except InputError as err:
            raise ValueError(str(err)) from None

    @model_validator(mode="after")
    def _direction(self) -> TrainConfig:
        """A select_by metric needs its direction; only a loss is assumed lower-is-better."""
        if self.select_by is not None and self.higher_is_better is None:
            if "loss" not in self.select_by:
                raise ValueError(
                    f"select_by = {self.select_by!r} needs higher_is_better = true or false"
                )
            self.higher_is_better = False
        return self

    @model_validator(mode="after")
    def _legacy_amp(self) -> TrainConfig:
        """amp = false of older configs is precision = "fp32"."""
        if self.amp is False:
            if self.precision == "bf16":
                raise ValueError('amp = false contradicts precision = "bf16" (drop amp)')
            self.precision = "fp32"
        return self


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """The torch.device for a config's `device`; under DDP on CUDA, the local rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise InputError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} asked for, but CUDA is not available")
        if device.index is None:
            index = local_rank if local_rank is not None else torch.cuda.current_device()
            device = torch.device("cuda", index)
        if device.index >= torch.cuda.device_count():
            raise InputError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s) visible")
    elif device.type != "cpu":
        raise InputError(f"device {name!r} is not supported (use auto, cpu, cuda or cuda:N)")
    return device
