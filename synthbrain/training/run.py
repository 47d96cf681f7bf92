"""The state of one training stage: model, optimiser, schedule, EMA, counters."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from synthbrain.training.best import Best
from synthbrain.training.config import TrainConfig
from synthbrain.training.ddp import DistContext
from synthbrain.training.ema import EMA
from synthbrain.training.precision import resolve_precision
from synthbrain.training.reporting import Meter, MetricsLog, Throughput
from synthbrain.training.schedule import make_scheduler


class StepModule(nn.Module):
    """Routes forward() to engine.training_step, so DistributedDataParallel sees the call."""

    def __init__(self, engine: nn.Module) -> None:
        super().__init__()
        self.engine = engine

    def forward(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        return self.engine.training_step(batch, generator)


@dataclass
class Run:
    """Everything one stage's loop reads and updates."""

    engine: nn.Module
    model: nn.Module  # StepModule, wrapped in DistributedDataParallel on several processes
    config: TrainConfig
    ctx: DistContext
    device: torch.device
    stage: str
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: EMA
    log: MetricsLog
    meter: Meter = field(default_factory=Meter)
    step: int = 0  # optimiser updates done
    lr: float = 0.0  # the lr of the latest update
    elapsed_before: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    losses: dict[str, float] = field(default_factory=dict)
    val: dict[str, float] = field(default_factory=dict)
    best: Best = field(default_factory=lambda: Best(None))
    metadata: dict[str, Any] = field(default_factory=dict)  # stored in exported weights
    precision: str = "fp32"  # resolved: "fp32" or "bf16" (autocast of the forward pass)
    speed: Throughput | None = None  # set by the loop; wall-clock only, never checkpointed

    def seconds(self) -> float:
        """Training wall time of this stage, summed over resumed runs."""
        return self.elapsed_before + time.perf_counter() - self.started


def new_run(
    engine: nn.Module,
    config: TrainConfig,
    ctx: DistContext,
    device: torch.device,
    stage: str,
    out_dir: Path,
) -> Run:
    """Optimiser, schedule, EMA, metrics file and the (DDP-wrapped) step module of a stage.

    The engine must already be on `device` with its frozen parameters marked (`only_trainable`).
    """
    names, params = trainable(engine)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    model: nn.Module = StepModule(engine)
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.find_unused_parameters,
        )
    return Run(
        engine=engine,
        model=model,
        config=config,
        ctx=ctx,
        device=device,
        stage=stage,
        params=params,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, config.warmup, config.steps),
        ema=EMA(engine, names, config.ema_decay, config.ema_warmup),
        log=MetricsLog(out_dir / "metrics.jsonl", stage, ctx.is_main),
        best=Best(config.select_by, bool(config.higher_is_better)),
        precision=resolve_precision(config.precision, device),
    )


def trainable(engine: nn.Module) -> tuple[list[str], list[nn.Parameter]]:
    """Names and parameters this stage trains: engine.trainable_parameters() when defined,
    else every parameter that requires grad."""
    chooser = getattr(engine, "trainable_parameters", None)
    if callable(chooser):
        params = list({id(p): p for p in chooser()}.values())  # tied weights listed once
    else:
        params = [p for p in engine.parameters() if p.requires_grad]
    name_of = {id(p): name for name, p in engine.named_parameters()}
    if not params or any(id(p) not in name_of for p in params):
        raise ValueError(
            f"{type(engine).__name__}: the trainable parameters must be a non-empty subset of "
            "the engine's own parameters"
        )
    return [name_of[id(p)] for p in params], params


@contextlib.contextmanager
def only_trainable(engine: nn.Module) -> Iterator[None]:
    """Within the block only the stage's parameters require grad (DDP then ignores the rest);
    every parameter's flag is restored afterwards."""
    keep = {id(p) for p in trainable(engine)[1]}
    before = [(p, p.requires_grad) for p in engine.parameters()]
    for p, _ in before:
        p.requires_grad_(id(p) in keep)
    try:
        yield
    finally:
        for p, flag in before:
            p.requires_grad_(flag)
