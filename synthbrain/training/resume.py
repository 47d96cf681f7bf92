"""Saving a stage's full state to its checkpoint, and putting it back on resume."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from synthbrain.errors import InputError
from synthbrain.io.statedict import save_state
from synthbrain.training.checkpoint import capture_rng, restore_rng, save_checkpoint
from synthbrain.training.run import Run
from synthbrain.training.sampler import ResumableSampler
from synthbrain.training.schedule import lr_factor


def save_run(run: Run, path: Path, n_train: int) -> None:
    """Write the checkpoint (rank 0 only: after each update every rank holds the same state).

    Data order, noise and dropout are functions of (seed, step, rank), so the step and the
    sampler's position are all the randomness a resumed run needs; the global RNG states are
    saved too, so the process continues as it would have.
    """
    if not run.ctx.is_main:
        return
    cfg = run.config
    sampler = ResumableSampler(n_train, cfg.seed, world_size=run.ctx.world_size)
    payload = {
        "stage": run.stage,
        "step": run.step,
        "config": cfg.model_dump(),
        "world_size": run.ctx.world_size,
        "model": run.engine.state_dict(),
        "ema": run.ema.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "meter": run.meter.state_dict(),
        "rng": {
            **capture_rng(run.device),
            "sampler": sampler.state_dict(run.step * cfg.batch_size),
            "train_generator": {"seed": cfg.seed, "derived_from": ["seed", "step", "rank"]},
        },
        "elapsed": run.seconds(),
        "lr": run.lr,
        "losses": run.losses,
        "val": run.val,
        "best": run.best.state_dict(),
        "precision": run.precision,
    }
    save_checkpoint(path, payload)


def export_ema(run: Run, path: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the EMA weights as safetensors (rank 0 only), with the run's metadata and
    {"training": {stage, step, ema_decay, ...extra}}."""
    if not run.ctx.is_main:
        return path
    training = {"stage": run.stage, "step": run.step, "ema_decay": run.config.ema_decay}
    meta = {**run.metadata, "training": {**training, **(extra or {})}}
    return save_state(run.ema.export(run.engine), path, metadata=meta)


def restore_run(run: Run, payload: dict[str, Any], path: Path) -> None:
    """Load a checkpoint into the run (every rank reads the same file)."""
    if payload["stage"] != run.stage:
        raise InputError(f"checkpoint is of stage {payload['stage']!r}, not {run.stage!r}", path)
    if payload["step"] > run.config.steps:
        msg = f"checkpoint is at step {payload['step']}, past the {run.config.steps} steps asked"
        raise InputError(msg, path)
    try:
        run.engine.load_state_dict(payload["model"])
        run.ema.load_state_dict(payload["ema"])
        run.optimizer.load_state_dict(payload["optimizer"])
    except (RuntimeError, KeyError, ValueError) as err:
        raise InputError(f"checkpoint does not match this model ({err})", path) from err
    run.scheduler.load_state_dict(payload["scheduler"])
    run.meter.load_state_dict(payload["meter"])
    restore_rng(payload["rng"], run.device)
    run.step, run.lr = int(payload["step"]), float(payload["lr"])
    _apply_config(run)
    run.elapsed_before = float(payload["elapsed"])
    run.losses, run.val = dict(payload["losses"]), dict(payload["val"])
    run.best.load_state_dict(payload.get("best"))  # absent in checkpoints of older versions
    _warn_changed(run, payload, path)


def _apply_config(run: Run) -> None:
    """The config's lr, schedule and weight decay rule from here on, not the checkpoint's.

    With an unchanged config this reproduces the saved values exactly (LambdaLR computes
    base_lr * factor the same way).
    """
    cfg = run.config
    run.scheduler.base_lrs = [cfg.lr for _ in run.optimizer.param_groups]
    for group in run.optimizer.param_groups:
        group["initial_lr"] = cfg.lr
        group["weight_decay"] = cfg.weight_decay
        group["lr"] = cfg.lr * lr_factor(run.step, cfg.warmup, cfg.steps)


def _warn_changed(run: Run, payload: dict[str, Any], path: Path) -> None:
    """Say when a resumed run cannot match the uninterrupted one exactly."""
    saved = payload["config"]
    keys = ("seed", "batch_size", "steps", "warmup", "lr", "ema_decay", "grad_clip")
    changed = [k for k in keys if saved.get(k) != getattr(run.config, k)]
    if payload["world_size"] != run.ctx.world_size:
        changed.append("world_size")
    if _saved_precision(payload, run) != run.precision:
        changed.append(f"precision ({_saved_precision(payload, run)} → {run.precision})")
    if changed and run.ctx.is_main:
        warnings.warn(
            f"{path}: resuming with a different {', '.join(changed)}: the run will not match "
            "an uninterrupted one",
            stacklevel=3,
        )


def _saved_precision(payload: dict[str, Any], run: Run) -> str:
    """The precision the checkpointed run trained in (older checkpoints: bf16 only for amp
    on CUDA)."""
    if "precision" in payload:
        return str(payload["precision"])
    legacy = payload["config"].get("amp", True) and run.device.type == "cuda"
    return "bf16" if legacy else "fp32"
