"""The weights.toml entry of a paired training run (`weights-entry.toml` in the run folder).

Its name is the run folder's, made unique against the registered names (the embedded
`paired-stroke-2mm` / `paired-wmh-2mm` among them), so that `$SYNTHBRAIN_WEIGHTS` accepts the
file as written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from synthbrain.io.outputs import sha256_file

if TYPE_CHECKING:
    from synthbrain.engines.paired.model import PairedModel

WEIGHTS_LICENCE = "Apache-2.0"


class _Steps(Protocol):
    steps: int


class TrainSettings(Protocol):
    """What an entry reads of `training.PairedTrainConfig` (typed here without importing the
    training module, which imports this one)."""

    diffusion: _Steps


def weights_entry(
    model: PairedModel,
    weights: Path,
    data: Path,
    config_file: Path | None,
    counts: dict[str, int],
    cfg: TrainSettings,
) -> str:
    """A [[weights]] table for weights.toml (or a user registry) describing the file."""
    c = model.config
    sha = sha256_file(weights)
    name = entry_name(weights.parent, sha)
    params = sum(p.numel() for p in model.parameters())
    command = f"synthbrain train --engine paired --data {data} --out {weights.parent}"
    if config_file is not None:
        command += f" --config {config_file}"
    examples = ", ".join(f"{v} {k}" for k, v in counts.items())
    lines = [
        "[[weights]]",
        f'name = "{name}"',
        'engine = "paired"',
        f'lesion = "{c.lesion}"',
        f"contrasts = {_toml_list(c.contrasts)}",
        "spatial_dims = 3",
        f"spacing = [{c.spacing}, {c.spacing}, {c.spacing}]",
        f"grid = [{', '.join(str(g) for g in c.grid)}]",
        f'file = "{weights.name}"',
        f'sha256 = "{sha}"',
        f"params = {params}",
        f'training_data = "{data.name}: {examples}; diffusion {cfg.diffusion.steps} steps"',
        f'command = "{command}"',
        f'licence = "{WEIGHTS_LICENCE}"',
    ]
    return "\n".join(lines) + "\n"


def entry_name(run: Path, sha256: str) -> str:
    """The weights.toml name of a run: its folder's name (`runs/stroke-atlas` → `stroke-atlas`),
    with the file's short hash added when another registered entry has that name (the embedded
    `paired-stroke-2mm` and `paired-wmh-2mm` among them), so the entry registers as it is."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(run).resolve().name).strip("-._") or "paired"
    return f"{base}-{sha256[:8]}" if base in _registered_names(Path(run)) else base


def _registered_names(run: Path) -> set[str]:
    """Names in the built-in and $SYNTHBRAIN_WEIGHTS registries, but for this run's own entry."""
    from synthbrain.weights import WeightsError, load_registry_file, registry, registry_path

    own = (Path(run) / "weights-entry.toml").resolve()
    try:
        entries = list(registry().values())
    except WeightsError:  # a broken user registry: still avoid the built-in names
        entries = load_registry_file(registry_path()) if registry_path().is_file() else []
    return {e.name for e in entries if e.source is None or e.source.resolve() != own}


def _toml_list(values: list[str]) -> str:
    """A TOML list of strings."""
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"
