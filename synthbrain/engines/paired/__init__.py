"""Paired lesion–brain diffusion (USB, METHODS.md §2): the `paired` engine package.

`model` is the model bundle and its losses (no files), `guidance` the samplers and guidance hooks,
`train` the two-stage training, `run` / `generate` / `entry` the file-level commands, `scan` and
`edit` the scan ↔ model-grid mapping, `wavelet` the training-free Haar representation.
The functions below are what `synthbrain.engines.load("paired")` hands the api; they import the
command modules lazily, and nothing in the package imports this module back.
"""

from __future__ import annotations

from typing import Any

from synthbrain.engines.paired.model import (  # the model API, re-exported
    STAGES,
    PairedConfig,
    PairedModel,
    build_model,
    depth_to_space,
    space_to_depth,
)


def train(**options: Any) -> dict[str, Any]:
    """`synthbrain train --engine paired` (see `paired.train.train`)."""
    from synthbrain.engines.paired.training import train as run

    return run(**options)


def generate(**options: Any) -> dict[str, Any]:
    """`synthbrain generate` with the paired engine (see `paired.run.generate`)."""
    from synthbrain.engines.paired.run import generate as run

    return run(**options)


def heal(inputs: Any, **options: Any) -> dict[str, Any]:
    """`synthbrain heal` with the paired engine (see `paired.run.heal`)."""
    from synthbrain.engines.paired.run import heal as run

    return run(inputs, **options)


def implant(inputs: Any, **options: Any) -> dict[str, Any]:
    """`synthbrain implant` with the paired engine (see `paired.run.implant`)."""
    from synthbrain.engines.paired.run import implant as run

    return run(inputs, **options)


__all__ = [
    "PairedConfig",
    "PairedModel",
    "STAGES",
    "build_model",
    "depth_to_space",
    "generate",
    "heal",
    "implant",
    "space_to_depth",
    "train",
]
