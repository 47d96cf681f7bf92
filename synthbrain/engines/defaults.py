"""Which engine a command uses when none is named (`--engine` left out)."""

from __future__ import annotations

import os
from pathlib import Path

# The engine `generate --lesion L` uses without --engine, chosen per lesion type by the shared
# held-out table in docs/status.md ("Default engines"); lesion types not listed use paired.
# stroke: deviation (lesion-patch realism AUC 0.37 vs 0.84, whole-image 0.47 vs 0.97, 20/20 vs
# 14/20 triplets consistent; 20 samples each against phantom:20). WMH has paired weights only.
GENERATE_ENGINE = {"tumor": "deviation", "stroke": "deviation"}


def engine_of(weights: str | os.PathLike[str] | None) -> str | None:
    """The engine a --weights value belongs to (a registry name's entry, or an existing file's
    metadata); None when it cannot be told here (the weights loader reports the problem later)."""
    from synthbrain.weights import WeightsError, read_metadata, registry

    if weights is None:
        return None
    text = os.fspath(weights)
    entries = registry()
    if text in entries:
        return entries[text].engine
    path = Path(text).expanduser()
    if not path.is_file() or path.suffix != ".safetensors":
        return None
    try:
        engine = read_metadata(path).get("engine")
    except WeightsError:
        return None
    return engine if isinstance(engine, str) else None


def default_engine(
    command: str, lesion: str | None, weights: str | None, mask: Path | None = None
) -> str:
    """The engine of a command given without --engine: the one `weights` belong to; else for
    heal deviation when a mask is given; else for generate GENERATE_ENGINE's choice; else paired."""
    engine = engine_of(weights)
    if engine is not None:
        return engine
    if command == "heal":
        return "deviation" if mask is not None else "paired"
    if command == "generate":
        return GENERATE_ENGINE.get(str(lesion or "stroke"), "paired")
    return "paired"
