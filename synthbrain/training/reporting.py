"""Metrics: running means, the metrics.jsonl file, and what the terminal shows."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch

from synthbrain.io.atomic import atomic_target
from synthbrain.training.ddp import DistContext, all_reduce_mean


class Meter:
    """Sums of scalar losses over a logging window, kept on the device (no sync per step)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        """Add one step's scalar values."""
        for key, value in values.items():
            value = value.detach().float()
            if key in self.sums:
                self.sums[key] += value
            else:
                self.sums[key] = value.clone()
        self.count += 1

    def mean(self, ctx: DistContext) -> dict[str, float]:
        """The window's means, averaged over ranks (every rank must call this)."""
        if self.count == 0:
            return {}
        keys = sorted(self.sums)
        stacked = torch.stack([self.sums[k] for k in keys]) / self.count
        return dict(zip(keys, all_reduce_mean(stacked, ctx).tolist(), strict=True))

    def reset(self) -> None:
        """Start a new window."""
        self.sums, self.count = {}, 0

    def state_dict(self) -> dict[str, Any]:
        """The open window, for a checkpoint (so a resumed run logs the same means)."""
        return {"sums": dict(self.sums), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a window saved by `state_dict`."""
        self.sums, self.count = dict(state["sums"]), int(state["count"])


class Throughput:
    """Samples per second and seconds waiting for data per update, over a window and overall.

    Wall-clock measurements of this process only: they are logged, never checkpointed.
    """

    def __init__(self, step: int, samples_per_update: int) -> None:
        self.samples_per_update = samples_per_update
        now = time.perf_counter()
        self.start, self.mark = (step, now), (step, now)
        self.data_wait, self.total_wait = 0.0, 0.0

    def waited(self, seconds: float) -> None:
        """Add the time one update waited for its batch."""
        self.data_wait += seconds
        self.total_wait += seconds

    def window(self, step: int) -> dict[str, float]:
        """samples_per_s and data_wait_s (per update) since the previous call."""
        (last, then), now = self.mark, time.perf_counter()
        updates = max(step - last, 1)
        rate = (step - last) * self.samples_per_update / max(now - then, 1e-9)
        wait = self.data_wait / updates
        self.mark, self.data_wait = (step, now), 0.0
        return {"samples_per_s": round(rate, 3), "data_wait_s": round(wait, 5)}

    def overall(self, step: int) -> dict[str, float]:
        """samples_per_s and data_wait_s since this process began the stage's loop."""
        first, began = self.start
        updates = step - first
        seconds = max(time.perf_counter() - began, 1e-9)
        return {"samples_per_s": round(updates * self.samples_per_update / seconds, 3),
                "data_wait_s": round(self.total_wait / max(updates, 1), 5)}  # fmt: skip


def scalar_values(out: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The 0-d tensor (or number) entries of a training_step result, as tensors."""
    found = {}
    for key, value in out.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            found[key] = value.reshape(())
        elif isinstance(value, int | float) and not isinstance(value, bool):
            found[key] = torch.tensor(float(value))
    return found


class MetricsLog:
    """out_dir/metrics.jsonl: one JSON object per line; only the main rank writes."""

    def __init__(self, path: Path, stage: str, enabled: bool) -> None:
        self.path, self.stage, self.enabled = path, stage, enabled

    def restart(self, after_step: int | None) -> None:
        """Drop this stage's lines past `after_step` (all of them when None): a fresh or resumed
        stage then writes the file an uninterrupted run would have written."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a killed run
            mine = record.get("stage") == self.stage
            if not mine or (after_step is not None and record.get("step", 0) <= after_step):
                kept.append(line + "\n")
        with atomic_target(self.path) as tmp:
            tmp.write_text("".join(kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append one line."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def format_record(record: dict[str, Any], total: int) -> str:
    """One plain log line for a metrics record."""
    skip = {"stage", "step", "kind", "seconds", "samples_per_s", "data_wait_s", "best"}
    parts = [f"[{record['stage']}] step {record['step']}/{total}"]
    for key, value in record.items():
        if key in skip:
            continue
        parts.append(f"{key} {value:.3e}" if key == "lr" else f"{key} {value:.5g}")
    if record.get("best"):
        parts.append("(best)")
    return "  ".join(parts)


def format_eta(seconds: float) -> str:
    """2h05m, 7m30s or 45s."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


Mode = Literal["bar", "lines", "off"]


def choose_mode(progress: bool, is_main: bool) -> Mode:
    """A rich bar when stdout is a terminal, plain lines otherwise, nothing off rank 0."""
    if not (progress and is_main):
        return "off"
    return "bar" if sys.stdout.isatty() else "lines"


class Reporter:
    """The terminal side (stderr): a rich progress bar or plain periodic lines (or nothing)."""

    def __init__(self, stage: str, total: int, start: int, mode: Mode) -> None:
        self.stage, self.total, self.mode = stage, total, mode
        self._progress = None
        self._task = None
        self._mark = (start, time.perf_counter())

    def __enter__(self) -> Reporter:
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            # stderr, as every synthbrain command: stdout is kept for the --json summary.
            self._progress = Progress(
                TextColumn(f"[bold]{self.stage}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(stderr=True, highlight=False),
            )
            self._progress.start()
            self._task = self._progress.add_task(
                self.stage, total=self.total, completed=self._mark[0], info=""
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def rate(self, step: int) -> float:
        """Updates per second since the previous call."""
        last_step, last_time = self._mark
        now = time.perf_counter()
        self._mark = (step, now)
        return (step - last_step) / max(now - last_time, 1e-9)

    def show(self, step: int, loss: float, lr: float, samples_per_update: int) -> None:
        """Move the bar to `step` and show the latest loss, lr and speed (the bar has the ETA)."""
        if self._progress is not None:
            rate = self.rate(step) * samples_per_update
            info = f"loss {loss:.4g}  lr {lr:.2e}  {rate:.1f} samples/s"
            self._progress.update(self._task, completed=step, info=info)

    def stopped(self, step: int, reason: str) -> None:
        """Say that the stage stopped early, and why."""
        if self.mode == "off":
            return
        line = f"[{self.stage}] stopped at step {step}/{self.total} ({reason}): checkpoint written"
        if self._progress is not None:
            self._progress.console.print(line, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)

    def log(self, record: dict[str, Any]) -> None:
        """Print a metrics record as one line (above the bar in bar mode)."""
        if self.mode == "off":
            return
        line = format_record(record, self.total)
        if record.get("kind") == "train" and self.mode == "lines":
            updates_per_s = self.rate(record["step"])
            eta = (self.total - record["step"]) / max(updates_per_s, 1e-9)
            line += f"  {record.get('samples_per_s', 0.0):.1f} samples/s  ETA {format_eta(eta)}"
        if self._progress is not None:
            self._progress.console.print(line, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)
