"""Engines: each is a model bundle + training losses + hooks over the shared diffusion loop."""

from __future__ import annotations

import importlib
from types import ModuleType

from synthbrain.errors import EngineUnavailable, InputError

# Engine name -> (module, the issue that builds it). A module that is not there yet makes the
# commands that need it say so plainly instead of writing anything.
ENGINES: dict[str, str] = {
    "paired": "synthbrain.engines.paired",
    "deviation": "synthbrain.engines.deviation",
    "deformation": "synthbrain.engines.deformation",
}
DESCRIPTIONS = {
    "paired": "paired lesion-brain diffusion (USB)",
    "deviation": "deviation-space diffusion (PathoSyn)",
    "deformation": "deformation-driven DDIM (D3M)",
}


def check_name(name: str) -> str:
    """Reject an unknown engine name with the list of known ones."""
    if name not in ENGINES:
        raise InputError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")
    return name


def load(name: str, *, command: str) -> ModuleType:
    """Import an engine module, or explain that this version does not have it yet."""
    check_name(name)
    try:
        return importlib.import_module(ENGINES[name])
    except ModuleNotFoundError as err:
        if err.name != ENGINES[name]:
            raise
        raise EngineUnavailable(
            f"`synthbrain {command}` needs the {name} engine ({DESCRIPTIONS[name]}), "
            "which is not built in this version of synthbrain yet"
        ) from None
