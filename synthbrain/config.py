"""Validated run configurations: one resolve(file, overrides); saved beside every output."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from synthbrain.errors import InputError

Layout = Literal["flat", "bids", "nnunet"]
Lesion = Literal["stroke", "wmh", "tumor", "none"]
CONTRASTS = ("t1", "t2", "flair", "t1gd")

Model = TypeVar("Model", bound=BaseModel)


class RunConfig(BaseModel):
    """Settings every command shares."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"


class PhantomConfig(RunConfig):
    """`synthbrain phantom`: procedural subjects with exact ground truth."""

    command: Literal["phantom"] = "phantom"
    n: int = Field(default=10, ge=1)
    lesion: Lesion = "stroke"
    contrasts: tuple[str, ...] = ("t1",)
    spacing: Literal[1.0, 2.0] = 2.0
    layout: Layout = "flat"
    mass_effect: bool = False
    preview: bool = False

    @field_validator("contrasts")
    @classmethod
    def _known_contrasts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [c for c in value if c not in CONTRASTS]
        if unknown or not value:
            raise ValueError(f"unknown contrast(s) {unknown}; choose from {', '.join(CONTRASTS)}")
        if len(set(value)) != len(value):
            raise ValueError("a contrast is listed twice")
        return value


class PreprocessConfig(RunConfig):
    """`synthbrain preprocess`: NIfTI cohorts into one HDF5 training set."""

    command: Literal["preprocess"] = "preprocess"
    layout: Literal["auto", "brats", "atlas", "healthy", "csv"] = "auto"
    spacing: float = Field(default=1.0, gt=0)
    grid: tuple[int, int, int] | None = None
    space: Literal["native", "template"] = "native"
    n4: bool = False
    contrasts: tuple[str, ...] | None = None
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    slices: bool = False
    workers: int = Field(default=1, ge=1)
    strict: bool = False

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(v < 0 for v in value) or abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be non-negative and sum to 1, got {value}")
        return value


def load_file(path: Path) -> dict[str, Any]:
    """Read a TOML or JSON config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise InputError("config file not found", path)
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text())
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"not a valid TOML/JSON config ({err})", path) from None


def resolve(
    model: type[Model],
    file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    partial_tables: tuple[str, ...] = (),
) -> Model:
    """Merge a config file and command-line overrides (None = not given) into a validated model.

    The one config loader of every command and engine. Override keys may be dotted
    ("train.steps" sets key steps of table [train]). A table named in `partial_tables` may set
    only some of its keys in the file: the rest keep the model's default for that table (the
    engines' [train] tables, whose TrainConfig has required fields).
    """
    values: dict[str, Any] = load_file(file) if file is not None else {}
    for table in partial_tables:
        defaults = model.model_fields[table].default.model_dump()
        values[table] = {**defaults, **values.get(table, {})}
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(values, key, value)
    return validated(model, values, file)


def validated(model: type[Model], values: dict[str, Any], file: Path | None = None) -> Model:
    """`model` from `values`; the first problem as a one-line InputError naming `file`."""
    try:
        return model.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise InputError(f"invalid setting {where}: {first['msg']}", file) from None


def _set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    """values["a"]["b"] = value for key "a.b" (tables created as needed)."""
    *parents, leaf = key.split(".")
    target = values
    for parent in parents:
        target = target.setdefault(parent, {})
    target[leaf] = value


def to_json_dict(config: BaseModel) -> dict[str, Any]:
    """The JSON-ready form saved as config.json."""
    return json.loads(config.model_dump_json())
