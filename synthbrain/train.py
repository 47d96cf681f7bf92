"""The one training loop shared by every engine.

An engine is an `nn.Module` with

- `training_step(batch: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]`,
  whose result holds the scalar "loss" (its other scalar entries are logged too);
- optionally `validation_step(batch, generator) -> dict[str, float]` (default: the losses of
  training_step under no_grad);
- optionally `trainable_parameters()` (default: every parameter that requires grad), so a stage
  can train part of the model with the rest frozen.

`fit` trains it with AdamW, linear warm-up + cosine decay, EMA weights, gradient clipping, bf16
autocast (CUDA, and CPUs with native bf16), atomic checkpoints that resume bit for bit, and
DistributedDataParallel when started by torchrun. The engine need not define forward(): the
loop routes DDP's forward to training_step itself. See docs/training.md.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from synthbrain.errors import InputError
from synthbrain.io.atomic import atomic_target
from synthbrain.io.statedict import load_state
from synthbrain.training.best import best_path
from synthbrain.training.checkpoint import checkpoint_path, load_checkpoint
from synthbrain.training.config import TrainConfig, resolve_device
from synthbrain.training.data import check_dataset
from synthbrain.training.ddp import (
    DistContext,
    env_context,
    finish_distributed,
    init_distributed,
    launch_local,
)
from synthbrain.training.loop import train_loop
from synthbrain.training.options import current as current_command
from synthbrain.training.resume import export_ema, restore_run
from synthbrain.training.run import Run, new_run, only_trainable
from synthbrain.training.sampler import ResumableSampler
from synthbrain.training.schedule import lr_factor
from synthbrain.training.stopping import Stopper, TrainingStopped, catch_stop_signals

__all__ = [
    "TrainConfig",
    "fit",
    "is_main_process",
    "launch_local",
    "lr_factor",
    "process_group",
    "ResumableSampler",
]


def is_main_process() -> bool:
    """True on rank 0 of a torchrun job and in a plain single process: the one that writes files.

    Callers of `fit` (api, engines) use it to write their own outputs (config.json, reports)
    once under torchrun.
    """
    return env_context().is_main


@contextlib.contextmanager
def process_group(device: str | torch.device = "auto") -> Iterator[DistContext]:
    """Hold one process group for the whole block: engines trained in stages wrap every `fit`.

    Under torchrun the group is created here (gloo on CPU, nccl on CUDA, for `device` as a
    TrainConfig names it) unless one exists already; `fit` inside the block joins it instead of
    making its own. Creating the group a second time under the same torchrun store can hang, so
    a multi-stage engine must not let each `fit` create and destroy it. At the end all ranks meet
    at a barrier and the group is destroyed if this block created it; after an error it is
    destroyed without a barrier (the other ranks may never reach one). A single process gets a
    one-process context and no group.
    """
    ctx = env_context()
    if not isinstance(device, torch.device):
        device = resolve_device(device, ctx.local_rank if ctx.distributed else None)
    ctx = init_distributed(ctx, device)
    try:
        yield ctx
    except BaseException:
        if ctx.owns_group:
            torch.distributed.destroy_process_group()
        raise
    finish_distributed(ctx)


def fit(
    engine: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None,
    config: TrainConfig | dict[str, Any],
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stage: str = "main",
    load_ema_at_end: bool = False,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train `engine` for `config.steps` updates and export its EMA weights.

    Under torchrun (RANK / WORLD_SIZE / LOCAL_RANK set) every process calls fit: it joins one
    process group (gloo on CPU, nccl on CUDA), trains with DistributedDataParallel, and only
    rank 0 writes files. The group is the caller's when one exists (see `process_group`, which
    engines trained in several `fit` calls must use), else fit creates and destroys its own.

    Args:
        engine: the model bundle (see the module docstring); moved to the training device and
            trained in place (it ends holding the raw weights unless `load_ema_at_end`).
        train_set: a map-style Dataset whose items are dicts of tensors.
        val_set: the same kind of Dataset for validation, or None.
        config: a TrainConfig (or a dict of its fields).
        out_dir: the run folder: checkpoints/, metrics.jsonl and <stage>.safetensors go here.
        resume: continue from the stage's checkpoint when there is one (a finished stage only
            re-exports its weights); without it the stage starts from scratch.
        progress: show progress on the terminal (a rich bar on a TTY, plain lines otherwise).
        stage: the stage name, for engines trained in stages ("autoencoder", then
            "denoiser", ...): it names the weights file and the checkpoint (checkpoints/last.pt
            for "main", checkpoints/<stage>/last.pt otherwise) and tags the metrics lines.
        load_ema_at_end: leave the EMA weights (the exported ones) in `engine` at the end.
        metadata: JSON-able entries stored in the exported safetensors file beside
            {"training": {stage, step, ema_decay}} (e.g. the engine's network settings, so
            `synthbrain.weights.read_metadata` can rebuild the model).

    Returns:
        A summary: stage, steps, step (reached), resumed_from (a step or None), losses (the
        last logged train means), val (the last validation means), checkpoint, weights and
        metrics paths (str), seconds (training time, summed over resumed runs), device,
        world_size.

    Raises:
        InputError: an empty training set, an unusable device or checkpoint, a bad stage name.
        SynthbrainError: the loss became NaN or infinite.
    """
    config = config if isinstance(config, TrainConfig) else TrainConfig.model_validate(config)
    command = current_command()
    if command.precision is not None:  # `synthbrain train --precision` wins over the config
        config = config.model_copy(update={"precision": command.precision, "amp": None})
    if not re.fullmatch(r"[A-Za-z0-9_-]+", stage):
        raise InputError(f"stage name {stage!r} must be letters, digits, '-' or '_'")
    check_dataset(train_set, "training set")
    json.dumps(metadata or {})  # fail now, not after training, on what the export cannot store
    here = env_context()
    device = resolve_device(config.device, here.local_rank if here.distributed else None)
    options = {"resume": resume, "progress": progress, "load_ema": load_ema_at_end}
    options["metadata"] = dict(metadata or {})
    with process_group(device) as ctx:
        return _fit_stage(engine, train_set, val_set, config, Path(out_dir), ctx, device, stage,
                          options)  # fmt: skip


def _fit_stage(
    engine: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None,
    config: TrainConfig,
    out_dir: Path,
    ctx: DistContext,
    device: torch.device,
    stage: str,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Set up, restore, loop, export: one stage on one process."""
    engine.to(device)
    ckpt = checkpoint_path(out_dir, stage)
    weights = out_dir / f"{stage}.safetensors"
    with only_trainable(engine):
        run = new_run(engine, config, ctx, device, stage, out_dir)
        resumed_from = None
        if options["resume"] and ckpt.exists():
            restore_run(run, load_checkpoint(ckpt, device), ckpt)
            resumed_from = run.step
        elif ctx.is_main:
            ckpt.unlink(missing_ok=True)  # a stale one would be resumed if this run dies early
        run.log.restart(resumed_from)
        run.metadata = options["metadata"]
        with catch_stop_signals() as signals:
            stopper = Stopper(_deadline(config), signals)
            stopped = train_loop(run, train_set, val_set, ckpt, options["progress"], stopper)
        chosen = _export(run, weights, ckpt, quiet=stopped is not None)
        if options["load_ema"] and stopped is None:
            _load_exported(run, weights, chosen)
    summary = _summary(run, ckpt, weights, resumed_from, chosen)
    current_command().stages.append(summary)
    if stopped is not None:
        raise TrainingStopped(stopped, {**summary, "stopped": stopped})
    return summary


def _deadline(config: TrainConfig) -> float | None:
    """When this stage must have stopped (time.monotonic()): the command's limit or the
    config's max_time from now, whichever comes first (None: no limit)."""
    limits = [current_command().deadline]
    if config.max_time is not None:
        limits.append(time.monotonic() + config.max_time)
    found = [t for t in limits if t is not None]
    return min(found) if found else None


def _summary(
    run: Run, ckpt: Path, weights: Path, resumed_from: int | None, chosen: str
) -> dict[str, Any]:
    """What fit returns about a stage."""
    return {
        "stage": run.stage,
        "steps": run.config.steps,
        "step": run.step,
        "resumed_from": resumed_from,
        "losses": dict(run.losses),
        "val": dict(run.val),
        "checkpoint": str(ckpt),
        "weights": str(weights),
        "metrics": str(run.log.path),
        "best": run.best.summary(best_path(ckpt)),
        "exported": chosen,
        "seconds": run.seconds(),
        "device": str(run.device),
        "precision": run.precision,
        "world_size": run.ctx.world_size,
        **(run.speed.overall(run.step) if run.speed else {}),
    }


def _export(run: Run, weights: Path, ckpt: Path, *, quiet: bool = False) -> str:
    """Write <stage>.safetensors: the best EMA weights when the config selects by a metric
    (the last ones then go to checkpoints/last.safetensors), else the last. Returns which."""
    best = best_path(ckpt)
    want_best = run.best.metric is not None and run.config.export == "best"
    if want_best and (run.best.step is None or not best.exists()):
        if run.ctx.is_main and not quiet:  # a stopped run may simply not have validated yet
            warnings.warn(f"no validation chose a best by {run.best.metric}: exporting the last "
                          "EMA weights", stacklevel=3)  # fmt: skip
        want_best = False
    if not want_best:
        export_ema(run, weights)
        return "last"
    if run.ctx.is_main:
        export_ema(run, ckpt.with_name("last.safetensors"))
        with atomic_target(weights) as tmp:
            shutil.copyfile(best, tmp)
    return "best"


def _load_exported(run: Run, weights: Path, chosen: str) -> None:
    """Leave the exported EMA weights in the engine (every rank)."""
    if chosen == "last":
        run.engine.load_state_dict(run.ema.export(run.engine))
        return
    if run.ctx.distributed:
        torch.distributed.barrier()  # rank 0 may have written the best file just now
    run.engine.load_state_dict(load_state(weights))
