"""Per-engine option models: an option the engine does not read is refused, in one line."""

from __future__ import annotations

import pytest

from synthbrain.engines.options import MODELS, check_options, engine_specific, readers
from synthbrain.errors import InputError


def test_an_option_of_another_engine_names_the_engines_that_read_it():
    with pytest.raises(InputError) as err:
        check_options("paired", "generate", {"n": 3, "anatomy": "folder"})
    assert str(err.value) == (
        "--anatomy does not apply to `generate --engine paired` (only to --engine deviation); "
        "drop it or change the engine"
    )
    with pytest.raises(InputError, match="--t-start does not apply to `heal --engine deviation`"):
        check_options("deviation", "heal", {"t_start": 200})


def test_not_given_means_none_or_a_false_flag():
    check_options("deviation", "implant", {"in_template_space": False, "eta": None, "seed": 1})
    with pytest.raises(InputError, match="--in-template-space"):
        check_options("deviation", "implant", {"in_template_space": True})


def test_values_are_typed_and_unknown_options_are_named():
    with pytest.raises(InputError, match="^--steps: "):
        check_options("paired", "implant", {"steps": "many"})
    with pytest.raises(InputError, match="--colour is not an option of `heal`"):
        check_options("paired", "heal", {"colour": "red"})
    assert check_options("deformation", "enhance", {"anything": 1}) is None


def test_engine_specific_options_are_those_some_engine_does_not_read():
    assert readers("heal", "steps") == ("paired",) and readers("implant", "steps") == (
        "paired", "deviation")  # fmt: skip
    assert {"severity", "eta", "alpha0", "k", "t_start", "in_template_space"} <= engine_specific()
    assert "seed" not in engine_specific() and set(MODELS) == {"generate", "heal", "implant"}
