"""synthbrain command-line interface: parse, validate, call `synthbrain.api`, report. No maths here.

torch and the heavy libraries are imported inside the commands, so `synthbrain --help` is instant.
The app and shared options live in `cli.options`, the commands in `cli.data`, `cli.engines`
and `cli.evaluate`; this module, the entry point, only imports them (nothing imports it back).
"""

from __future__ import annotations

import sys
import traceback

import typer

# The command modules register their commands on `app` when imported, in --help order.
from synthbrain.cli import data, engines, evaluate  # noqa: F401
from synthbrain.cli.options import _state, app
from synthbrain.errors import SynthbrainError

# Typer ships its own copy of click; take the exception classes from the copy it raises.
_click_errors = sys.modules[typer.BadParameter.__module__]


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning errors into one-line messages and exit codes."""
    try:
        app(args=argv, prog_name="synthbrain", standalone_mode=False)
    except typer.Exit as stop:
        sys.exit(stop.exit_code)
    except _click_errors.ClickException as err:  # usage errors: exit 2
        err.show()
        sys.exit(err.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except SynthbrainError as err:
        if _state["debug"]:
            traceback.print_exc()
        sys.stderr.write(f"error: {err}\n")
        sys.exit(err.exit_code)
    except Exception as err:  # noqa: BLE001 - the last line of defence
        if _state["debug"]:
            traceback.print_exc()
        sys.stderr.write(
            f"internal error: {type(err).__name__}: {err}\n"
            "re-run with --debug (synthbrain --debug …) for the traceback\n"
        )
        sys.exit(1)
