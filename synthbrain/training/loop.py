"""The update loop: train steps, periodic logging, validation and checkpoints."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from synthbrain.errors import SynthbrainError
from synthbrain.training.best import best_path
from synthbrain.training.curves import write_curves
from synthbrain.training.data import to_device, train_loader, val_loader
from synthbrain.training.precision import autocast
from synthbrain.training.reporting import Reporter, Throughput, choose_mode, scalar_values
from synthbrain.training.resume import export_ema, save_run
from synthbrain.training.run import Run
from synthbrain.training.sampler import derive_seed, make_generator
from synthbrain.training.stopping import Stopper, StopSignals, agree


def train_loop(
    run: Run,
    train_set: Dataset,
    val_set: Dataset | None,
    ckpt: Path,
    progress: bool,
    stopper: Stopper | None = None,
) -> str | None:
    """Train from run.step to config.steps, logging, validating and checkpointing on the way.

    Logging, validation and checkpoints fall on multiples of their intervals and on the last
    update, so a resumed run does them at the same steps as an uninterrupted one. When the
    stopper says so (time limit, SIGTERM, SIGUSR1) the loop writes the checkpoint at that
    update boundary and returns the reason; it returns None when the stage is complete.
    """
    cfg = run.config
    if run.step >= cfg.steps:
        return None
    stopper = stopper or Stopper(None, StopSignals())
    loader = train_loader(train_set, cfg, run.ctx, run.device, run.step)
    val = val_loader(val_set, cfg, run.device) if run.ctx.is_main else None
    display_every = min(cfg.log_every, 10)  # a bar refresh costs a device sync
    run.engine.train()
    per_update = cfg.batch_size * run.ctx.world_size
    run.speed = Throughput(run.step, per_update)
    with Reporter(run.stage, cfg.steps, run.step, choose_mode(progress, run.ctx.is_main)) as rep:
        batches = iter(loader)
        try:
            while run.step < cfg.steps:
                with stopper.timed("update"):
                    asked = time.perf_counter()
                    batch = next(batches)
                    run.speed.waited(time.perf_counter() - asked)
                    loss = train_step(run, to_device(batch, run.device))
                due = _due(run, val is not None)
                if rep.mode == "bar" and (run.step % display_every == 0 or due["last"]):
                    rep.show(run.step, loss.item(), run.lr, per_update)
                if due["log"]:
                    log_train(run, rep)
                if due["val"]:
                    with stopper.timed("val"):
                        validate(run, val, rep, best_path(ckpt))
                if due["save"]:
                    with stopper.timed("save"):
                        save_run(run, ckpt, len(train_set))
                reason = None if due["last"] else _stop_now(run, stopper, val is not None)
                if reason is not None:
                    if not due["save"]:
                        save_run(run, ckpt, len(train_set))
                    rep.stopped(run.step, reason)
                    return reason
        finally:
            del batches  # stops the DataLoader workers
    return None


def _stop_now(run: Run, stopper: Stopper, validates: bool) -> str | None:
    """The stopper's decision before the next update, the same on every rank."""
    following = _due(run, validates, ahead=1)
    reason = stopper.reason(following["val"], following["save"])
    return agree(reason, run.ctx.distributed, run.device)


def _due(run: Run, validates: bool, ahead: int = 0) -> dict[str, bool]:
    """What falls on the update `ahead` updates after run.step: log, val, save, last."""
    cfg, step = run.config, run.step + ahead
    last = step == cfg.steps
    return {
        "last": last,
        "log": step % cfg.log_every == 0 or last,
        "val": validates and (step % cfg.val_every == 0 or last),
        "save": step % cfg.checkpoint_every == 0 or last,
    }


def train_step(run: Run, batch: dict[str, Any]) -> torch.Tensor:
    """One optimiser update; returns the detached loss."""
    cfg, rank = run.config, run.ctx.rank
    # Noise comes from `generator`, dropout from the global RNG: both are functions of
    # (seed, step, rank) alone, so a resumed run redraws exactly what the original drew.
    generator = make_generator(derive_seed("noise", cfg.seed, run.step, rank), run.device)
    with seeded_global_rng(run.device, derive_seed("global", cfg.seed, run.step, rank)):
        with autocast(run.device, run.precision):
            out = run.model(batch, generator)
        loss = loss_of(out, run.engine)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
    grad_norm = nn.utils.clip_grad_norm_(run.params, max_norm)
    run.lr = run.optimizer.param_groups[0]["lr"]
    run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    run.ema.update(run.engine, run.step)
    values = scalar_values(out)
    values["grad_norm"] = grad_norm
    run.meter.add(values)
    return loss.detach()


def log_train(run: Run, rep: Reporter) -> None:
    """Average the window over steps and ranks, write one metrics line, stop on divergence."""
    means = run.meter.mean(run.ctx)  # a collective: every rank calls it at the same steps
    run.meter.reset()
    if not math.isfinite(means.get("loss", 0.0)):
        raise SynthbrainError(
            f"training diverged: stage {run.stage}, step {run.step}, loss {means['loss']} "
            "(try a lower lr or a smaller grad_clip)"
        )
    run.losses = {k: v for k, v in means.items() if k != "grad_norm"}
    record = {"stage": run.stage, "step": run.step, "kind": "train", **means, "lr": run.lr}
    if run.speed is not None:
        record.update(run.speed.window(run.step))
    record["seconds"] = round(run.seconds(), 3)
    run.log.write(record)
    rep.log(record)


def validate(run: Run, loader: DataLoader, rep: Reporter, best_file: Path) -> None:
    """Means of the EMA weights' validation values, logged as val_* (rank 0); keeps the best.

    Each value is averaged over the batches where it is finite, so a task metric that is
    undefined on some batch (Dice of a batch without lesion: NaN) does not poison the mean.
    """
    sums, counts = _validation_sums(run, loader)
    run.val = {f"val_{k}": sums[k] / counts[k] if counts[k] else math.nan for k in sums}
    record = {"stage": run.stage, "step": run.step, "kind": "val", **run.val}
    record["seconds"] = round(run.seconds(), 3)
    if run.best.improves(run.val, run.step):
        export_ema(run, best_file, {"select_by": run.best.metric, "value": run.best.value})
        record["best"] = True
    run.log.write(record)
    rep.log(record)
    if run.config.curves:
        draw_curves(run.log.path)


def _validation_sums(run: Run, loader: DataLoader) -> tuple[dict[str, float], dict[str, int]]:
    """Per key: the sum of the finite batch values and how many there were."""
    engine, cfg = run.engine, run.config
    step_fn = getattr(engine, "validation_step", None) or engine.training_step
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    engine.eval()
    with run.ema.applied(engine), torch.no_grad():
        for index, batch in enumerate(loader):
            # The same noise at every validation, so successive values are comparable.
            generator = make_generator(derive_seed("val-noise", cfg.val_seed, index), run.device)
            rng_seed = derive_seed("val-global", cfg.val_seed, index)
            with seeded_global_rng(run.device, rng_seed), autocast(run.device, run.precision):
                out = step_fn(to_device(batch, run.device), generator)
            for key, value in scalar_values(out).items():
                value = float(value)
                sums.setdefault(key, 0.0)
                counts.setdefault(key, 0)
                if math.isfinite(value):
                    sums[key] += value
                    counts[key] += 1
    engine.train()
    return sums, counts


def draw_curves(metrics: Path) -> None:
    """curves.png beside metrics.jsonl; a failure to plot warns but never stops training."""
    try:
        write_curves(metrics, metrics.with_name("curves.png"))
    except Exception as err:  # noqa: BLE001 - a plot must not end a long run
        warnings.warn(f"curves.png not written: {type(err).__name__}: {err}", stacklevel=2)


@contextlib.contextmanager
def seeded_global_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Seed the global CPU (and this GPU's) RNG inside the block; the caller's state comes back."""
    devices = [device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.default_generators[device.index].manual_seed(seed)
        yield


def loss_of(out: Any, engine: nn.Module) -> torch.Tensor:
    """The scalar "loss" of a training_step result, or a TypeError naming the engine."""
    loss = out.get("loss") if isinstance(out, dict) else None
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        name = type(engine).__name__
        raise TypeError(f"{name}.training_step must return a dict with a scalar tensor 'loss'")
    return loss.reshape(()).float()  # the loss is float32 whatever autocast did
