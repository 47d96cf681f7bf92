"""Deviation-space diffusion (PathoSyn, METHODS.md §1): the `deviation` engine package.

`model` is the networks, `tensors` the array-level implant / heal operations, `ops` the fixed
inpainting and blend maps, `config` the typed options, `train` / `generate` / `run` the file-level
commands, `sources` and `io` their inputs. The functions below are what
`synthbrain.engines.load("deviation")` hands the api; nothing in the package imports them back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from synthbrain.engines.deviation.tensors import (  # the model API, re-exported
    ClampX0,
    DeviationConfig,
    DeviationModel,
    MaskProjection,
    box_batch,
    heal_tensors,
    implant_tensors,
    load_config,
    unbatch,
)

if TYPE_CHECKING:
    from synthbrain.io.samples import EditJob, GenerateJob
    from synthbrain.training.request import TrainRequest


def train(request: TrainRequest) -> dict[str, Any]:
    """`synthbrain train --engine deviation`: see `deviation.training.train`."""
    from synthbrain.engines.deviation.training import train as run

    return run(request)


def generate_job(**options: Any) -> GenerateJob:
    """`synthbrain generate --engine deviation`, as a job the run layer writes (see
    `deviation.generation.generate`)."""
    from synthbrain.engines.deviation.generation import generate as job

    return job(**options)


def implant(inputs: Any, **options: Any) -> EditJob:
    """`synthbrain implant --engine deviation`: see `deviation.run.implant`."""
    from synthbrain.engines.deviation.run import implant as run

    return run(inputs, **options)


def heal(inputs: Any, **options: Any) -> EditJob:
    """`synthbrain heal --engine deviation --mask M`: see `deviation.run.heal`."""
    from synthbrain.engines.deviation.run import heal as run

    return run(inputs, **options)


__all__ = [
    "ClampX0",
    "DeviationConfig",
    "DeviationModel",
    "MaskProjection",
    "box_batch",
    "generate_job",
    "heal",
    "heal_tensors",
    "implant",
    "implant_tensors",
    "load_config",
    "train",
    "unbatch",
]
