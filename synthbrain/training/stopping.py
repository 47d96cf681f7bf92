"""Stopping a run early and cleanly: time limits and the signals a batch system sends.

Slurm (and most schedulers) send SIGTERM, or a chosen signal such as SIGUSR1 with
`--signal=USR1@120`, some time before killing a job. The handlers here only set a flag; the
loop looks at it after each update, writes the checkpoint and the weights there, and returns, so
a resumed run continues exactly where this one stopped.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


class TrainingStopped(Exception):  # noqa: N818 - not an error: the run stopped as asked
    """A stage stopped before its last update (time limit or signal), checkpoint written.

    Attributes:
        reason: "max-time" or the signal's name ("SIGTERM", "SIGUSR1").
        summary: fit's summary of the stopped stage (step reached, checkpoint, weights, ...).
    """

    def __init__(self, reason: str, summary: dict[str, Any]) -> None:
        super().__init__(f"stage {summary.get('stage')} stopped at step {summary.get('step')} "
                         f"({reason})")  # fmt: skip
        self.reason, self.summary = reason, summary


class StopSignals:
    """The first stop signal received while the handlers are installed (None: none yet)."""

    def __init__(self) -> None:
        self.received: str | None = None

    def handle(self, signum: int, frame: object) -> None:
        """Signal handler: remember the signal; the loop stops at its next update boundary."""
        self.received = signal.Signals(signum).name


_active: list[StopSignals] = []


@contextlib.contextmanager
def catch_stop_signals() -> Iterator[StopSignals]:
    """Within the block SIGTERM and SIGUSR1 set a flag instead of killing the process.

    Nested blocks share the outer one's flag, so a signal that arrives between two stages of
    one command stops the next stage at its first boundary. Outside the main thread (where
    Python cannot install handlers) nothing is installed.
    """
    if _active:
        yield _active[-1]
        return
    flag = StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    names = [name for name in STOP_SIGNALS if hasattr(signal, name)]
    previous = {name: signal.signal(getattr(signal, name), flag.handle) for name in names}
    _active.append(flag)
    try:
        yield flag
    finally:
        _active.pop()
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


class Stopper:
    """Decides after each update whether the stage must stop now.

    A time limit stops the run when what may still come before the next chance to stop (the
    next update, a validation or checkpoint due with it) plus the final checkpoint and export
    would not fit before the deadline, with half again as much as a margin; the costs are the
    longest seen so far in this process.
    """

    def __init__(self, deadline: float | None, signals: StopSignals) -> None:
        self.deadline, self.signals = deadline, signals
        self.costs = {"update": 0.0, "val": 0.0, "save": 0.0}

    @contextlib.contextmanager
    def timed(self, kind: str) -> Iterator[None]:
        """Measure a block as one `kind` ("update", "val" or "save")."""
        start = time.monotonic()
        yield
        self.costs[kind] = max(self.costs[kind], time.monotonic() - start)

    def reason(self, val_next: bool, save_next: bool) -> str | None:
        """Why to stop now ("max-time", a signal name), or None to go on."""
        if self.signals.received:
            return self.signals.received
        if self.deadline is None:
            return None
        costs = self.costs
        save = max(costs["save"], 1.0)  # no checkpoint written yet: assume a second
        ahead = costs["update"] + val_next * costs["val"] + save_next * save
        if time.monotonic() + 1.5 * (ahead + 2 * save) > self.deadline:
            return "max-time"
        return None


_REASONS = ("", "max-time", *STOP_SIGNALS)


def agree(reason: str | None, distributed: bool, device: torch.device) -> str | None:
    """The same decision on every rank: stop when any rank wants to (a collective)."""
    if not distributed:
        return reason
    code = torch.tensor([_REASONS.index(reason or "")], device=device)
    torch.distributed.all_reduce(code, op=torch.distributed.ReduceOp.MAX)
    return _REASONS[int(code.item())] or None
