"""Paired lesion–brain diffusion (USB, METHODS.md §2): the `paired` engine package.

`model` is the model bundle and its losses (no files), `guidance` the samplers and guidance hooks,
`training` the two-stage training, `run` the shared run pieces (weights, decode, substrate),
`generation` the generate command, `scan` the heal / implant command, `edit` the edit regions,
`entry` the weights.toml entry of a training run, `wavelet` the training-free Haar representation.
The functions below are what `synthbrain.engines.load("paired")` hands the api; they import the
command modules lazily, and nothing in the package imports this module back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from synthbrain.engines.paired.model import (  # the model API, re-exported
    STAGES,
    PairedConfig,
    PairedModel,
    build_model,
)
from synthbrain.engines.paired.tensor_ops import depth_to_space, space_to_depth

if TYPE_CHECKING:
    from synthbrain.io.samples import EditJob, GenerateJob
    from synthbrain.training.request import TrainRequest


def train(request: TrainRequest) -> dict[str, Any]:
    """`synthbrain train --engine paired` (see `paired.training.train`)."""
    from synthbrain.engines.paired.training import train as run

    return run(request)


def generate_job(**options: Any) -> GenerateJob:
    """`synthbrain generate` with the paired engine, as a job the run layer writes (see
    `paired.generation.generate`)."""
    from synthbrain.engines.paired.generation import generate as job

    return job(**options)


def heal(inputs: Any, **options: Any) -> EditJob:
    """`synthbrain heal`: the healthy counterpart of `inputs.scan` (see `paired.scan.run_edit`)."""
    from synthbrain.engines.paired.scan import run_edit

    return run_edit("heal", inputs, **options)


def implant(inputs: Any, **options: Any) -> EditJob:
    """`synthbrain implant`: `inputs.scan` with the lesion of `inputs.mask` (see `run_edit`)."""
    from synthbrain.engines.paired.scan import run_edit

    return run_edit("implant", inputs, **options)


__all__ = [
    "PairedConfig",
    "PairedModel",
    "STAGES",
    "build_model",
    "depth_to_space",
    "generate_job",
    "heal",
    "implant",
    "space_to_depth",
    "train",
]
