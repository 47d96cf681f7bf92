"""Which engine a command uses without --engine: the weights' own, else the measured default."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthbrain.engines.defaults import GENERATE_ENGINE, default_engine, engine_of
from tests.tiny_models import tiny_paired_bundle


@pytest.fixture(scope="module")
def paired_file(tmp_path_factory) -> Path:
    return tiny_paired_bundle(tmp_path_factory.mktemp("w"))


def test_the_engine_of_weights_comes_from_the_registry_or_the_file(paired_file, tmp_path):
    assert engine_of("paired-stroke-2mm") == "paired"
    assert engine_of("deviation-stroke-2mm") == "deviation"
    assert engine_of(paired_file) == "paired"
    assert engine_of(tmp_path / "missing.safetensors") is None
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    assert engine_of(tmp_path / "junk.safetensors") is None
    assert engine_of(None) is None


def test_weights_decide_the_engine_before_any_default(paired_file, tmp_path):
    assert default_engine("heal", None, str(paired_file), mask=tmp_path / "m.nii.gz") == "paired"
    assert default_engine("generate", "tumor", "paired-stroke-2mm") == "paired"
    assert default_engine("generate", "stroke", "deviation-stroke-2mm") == "deviation"


def test_defaults_without_weights():
    assert default_engine("generate", "tumor", None) == "deviation"
    assert default_engine("generate", "wmh", None) == "paired"  # the only WMH weights
    assert default_engine("generate", "stroke", None) == GENERATE_ENGINE["stroke"] == "deviation"
    assert default_engine("heal", "stroke", None, mask=Path("m.nii.gz")) == "deviation"
    assert default_engine("heal", "stroke", None) == "paired"
    assert default_engine("implant", "stroke", None) == "paired"
