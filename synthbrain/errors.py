"""Errors that the CLI turns into one-line messages and exit codes."""

from __future__ import annotations

from pathlib import Path


class SynthbrainError(Exception):
    """Base class of the errors that reach the user as one line."""

    exit_code = 1


class InputError(SynthbrainError):
    """Bad input from the user (a file, an option, a folder): exit code 2."""

    exit_code = 2

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


class EngineUnavailable(SynthbrainError):
    """The command needs an engine or weights that this install does not have: exit code 2."""

    exit_code = 2
