"""Deformation-driven DDIM (D3M, METHODS.md §3): the `deformation` engine package.

`model` is the model bundle, its losses and the warp hook (no files), `config` the typed options,
`data` the slice batches, `volume` whole-volume sampling, `inputs` and `run` the file-level
commands. The functions below are what `synthbrain.engines.load("deformation")` hands the api.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from synthbrain.engines.deformation.model import (  # the model API, re-exported
    MASK,
    DeformationModel,
    WarpHook,
    build_schedule,
)
from synthbrain.errors import InputError

if TYPE_CHECKING:
    from synthbrain.io.samples import EditJob
    from synthbrain.training.request import TrainRequest


def train(request: TrainRequest) -> dict[str, Any]:
    """`synthbrain train --engine deformation` (see `deformation.run.train`)."""
    from synthbrain.engines.deformation import run as deformation_run

    return deformation_run.train(request)


def enhance(inputs: Any, **options: Any) -> EditJob:
    """`synthbrain enhance`, as the job the run layer writes (see `deformation.run.enhance`)."""
    from synthbrain.engines.deformation import run as deformation_run

    return deformation_run.enhance(inputs, **options)


def _only_enhance(command: str) -> InputError:
    """The error for commands D3M does not do."""
    return InputError(
        f"the deformation engine (D3M) synthesises contrast-enhanced T1 only; it has no "
        f"`{command}`: use `synthbrain enhance`, or --engine paired / deviation for {command}"
    )


def generate(**_: Any) -> dict[str, Any]:
    """Not a D3M command: raises InputError pointing to `enhance` and the other engines."""
    raise _only_enhance("generate")


generate_job = generate  # the name the api's generate asks every engine for


def heal(inputs: Any, **_: Any) -> dict[str, Any]:
    """Not a D3M command: raises InputError pointing to `enhance` and the other engines."""
    raise _only_enhance("heal")


def implant(inputs: Any, **_: Any) -> dict[str, Any]:
    """Not a D3M command: raises InputError pointing to `enhance` and the other engines."""
    raise _only_enhance("implant")


__all__ = [
    "DeformationModel",
    "MASK",
    "WarpHook",
    "build_schedule",
    "enhance",
    "generate",
    "heal",
    "implant",
    "train",
]
