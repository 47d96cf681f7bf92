"""Terminal reporting: rich progress bars, messages and the one-line JSON summary for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Advance = Callable[[int], None]


def _noop(_: int = 1) -> None:
    """Progress callback that shows nothing."""


class Reporter:
    """What a command shows: bars and messages on stderr, the --json summary alone on stdout."""

    def __init__(
        self, *, quiet: bool = False, json_mode: bool = False, progress: bool | None = None
    ):
        self.quiet = quiet
        self.json_mode = json_mode
        # Bars only for a person watching: stdout is a terminal, unless --progress asks for them.
        self.show_progress = (
            progress if progress is not None else (sys.stdout.isatty() and not quiet)
        )
        self._console = None

    @property
    def console(self):  # noqa: ANN201 - rich is imported lazily
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
        return self._console

    def info(self, message: str) -> None:
        """A status line on stderr (silent with --quiet or --json)."""
        if not (self.quiet or self.json_mode):
            self.console.print(message)

    def warn(self, message: str) -> None:
        """A warning on stderr, shown even with --quiet."""
        self.console.print(f"[yellow]warning:[/yellow] {message}")

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Advance]:
        """A progress bar for `total` units of work; yields advance(n)."""
        if not self.show_progress:
            yield _noop
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console, transient=False) as bar:
            task_id = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task_id, n)

    def summary(self, data: dict[str, Any]) -> None:
        """Print the result: one JSON line on stdout with --json, a short table otherwise."""
        if self.json_mode:
            sys.stdout.write(json.dumps(data, default=str, sort_keys=True) + "\n")
            sys.stdout.flush()
            return
        if self.quiet:
            return
        for key, value in data.items():
            if isinstance(value, list | dict) and len(value) > 8:
                value = f"{type(value).__name__} of {len(value)}"
            self.console.print(f"[bold]{key}[/bold]: {value}")
