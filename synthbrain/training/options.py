"""Settings of one training command that apply to every stage it trains.

`synthbrain train --precision/--max-time` concern the whole command, while an engine may call
`fit` several times (paired: autoencoder, then diffusion) with configs it builds itself. The
api enters `command_options(...)` around the engine's train call, and every `fit` inside reads
them here, so no engine has to pass them through.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from synthbrain.errors import InputError


@dataclass
class CommandOptions:
    """precision: overrides every stage's config (None: the config decides).
    deadline: time.monotonic() by which the command must have stopped (None: no limit).
    stages: the summaries of the stages trained so far (samples/s, wall time)."""

    precision: str | None = None
    deadline: float | None = None
    started: float = field(default_factory=time.monotonic)
    stages: list[dict[str, Any]] = field(default_factory=list)


_current: contextvars.ContextVar[CommandOptions | None] = contextvars.ContextVar(
    "synthbrain_train_command", default=None
)


def current() -> CommandOptions:
    """The options of the enclosing training command (empty ones outside any)."""
    return _current.get() or CommandOptions()


@contextlib.contextmanager
def command_options(
    precision: str | None = None, max_time: float | None = None
) -> Iterator[CommandOptions]:
    """Within the block every `fit` uses these options; `max_time` counts from now."""
    options = CommandOptions(precision=precision)
    if max_time is not None:
        options.deadline = options.started + max_time
    token = _current.set(options)
    try:
        yield options
    finally:
        _current.reset(token)


_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str | float | int) -> float:
    """Seconds in "2h45m", "90m", "1d2h", "45s", "3600" (seconds) or Slurm's "[D-]HH:MM:SS".

    Raises:
        InputError: text that is none of these, or a duration that is not positive.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        seconds = _parse_text(str(text).strip().lower())
    if not seconds > 0:
        raise InputError(f"max time {text!r} must be positive")
    return seconds


def _parse_text(text: str) -> float:
    """The seconds of a duration string (see parse_duration)."""
    bad = InputError(f"cannot read max time {text!r} (use e.g. 2h45m, 90m, 3600 or 02:45:00)")
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    slurm = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d\d)(?::(\d\d))?", text)
    if slurm:
        days, first, second, third = slurm.groups()
        hms = (int(first), int(second), int(third)) if third else (0, int(first), int(second))
        return int(days or 0) * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2]
    parts = re.findall(r"(\d+(?:\.\d+)?)([dhms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise bad
    return sum(float(n) * _UNITS[u] for n, u in parts)
