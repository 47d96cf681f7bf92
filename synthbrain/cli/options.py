"""The CLI's app, its sub-apps and the option aliases and parsers every command module shares.

Kept apart from `synthbrain.cli.app` (the entry point) so the command modules import it, not
the entry point that imports them: no import cycle. Only typer is imported here (fast --help).
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from synthbrain import __version__

app = typer.Typer(
    name="synthbrain",
    help="Synthetic paired brain-MRI datasets with diffusion models: "
    "generate lesion/brain pairs, heal and implant lesions in real scans, synthesise contrast.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
weights_app = typer.Typer(help="List, verify and locate model weights.", no_args_is_help=True)
manifest_app = typer.Typer(help="Validate and merge run manifests.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")
app.add_typer(manifest_app, name="manifest")

_state = {"debug": bool(os.environ.get("SYNTHBRAIN_DEBUG"))}

# Options shared by the commands (Annotated aliases keep every signature short).
Seed = Annotated[int, typer.Option(help="Run seed; sample k uses a seed derived from (seed, k).")]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON summary line on stdout.")]
Progress = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        help="Force progress bars on or off (default: on when stdout is a terminal).",
        show_default=False,
    ),
]
Overwrite = Annotated[
    bool, typer.Option(help="Replace a previous run in the output folder (only our own files).")
]
Resume = Annotated[bool, typer.Option(help="Continue a previous run, skipping verified samples.")]
Shard = Annotated[
    str | None,
    typer.Option(
        help="Run shard i of N as 'i/N' (0-based); default from SLURM_ARRAY_TASK_ID/COUNT.",
        show_default=False,
    ),
]
Layout = Annotated[str, typer.Option(help="Output layout: flat | bids | nnunet.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"synthbrain {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of internal errors.")
    ] = False,
) -> None:
    """Synthetic paired brain-MRI datasets with diffusion models."""
    _state["debug"] = _state["debug"] or debug


def _reporter(quiet: bool, json_mode: bool, progress: bool | None):  # noqa: ANN202
    from synthbrain.progress import Reporter

    return Reporter(quiet=quiet, json_mode=json_mode, progress=progress)


def _csv(value: str | None) -> tuple[str, ...] | None:
    """'t1,t2' -> ('t1', 't2')."""
    if value is None:
        return None
    return tuple(part.strip().lower() for part in value.split(",") if part.strip())


def _ints(value: str | None, option: str) -> tuple[int, ...] | None:
    """'96,112,96' -> (96, 112, 96), with a usage error naming the option."""
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.replace("x", ",").split(","))
    except ValueError:
        raise typer.BadParameter(
            f"expected comma-separated integers, got {value!r}", param_hint=option
        ) from None


def _floats(value: str | None, option: str) -> tuple[float, ...] | None:
    """'0.8,0.1,0.1' -> (0.8, 0.1, 0.1)."""
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise typer.BadParameter(
            f"expected comma-separated numbers, got {value!r}", param_hint=option
        ) from None
