"""Every committed example config loads in its engine (a typo or an unknown key fails here,
not an hour into someone's training run)."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = sorted((Path(__file__).parents[1] / "examples" / "configs").glob("*.toml"))


def load(path: Path):  # noqa: ANN201
    """The engine named by the file's prefix loads it."""
    engine = path.name.split("-", 1)[0]
    if engine == "paired":
        from synthbrain.engines.paired.training import load_train_config

        return load_train_config(path)
    if engine == "deviation":
        from synthbrain.engines.deviation.config import load_config

        return load_config(path)
    if engine == "deformation":
        from synthbrain.engines.deformation.config import load_config

        return load_config(path)
    raise AssertionError(f"{path.name}: no engine prefix (paired-, deviation-, deformation-)")


def test_there_are_example_configs():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_loads(path):
    assert load(path) is not None
