"""Which options each engine reads, per command: pydantic models that refuse any other one.

An option given to an engine that does not read it is an error rather than silently ignored:
`check_options` validates the given options (None and a False flag count as not given) against
the (command, engine) model, whose `extra="forbid"` refuses the rest with the CLI's one-line
message and exit code 2. The models list every option the command passes on; the CLI drops an
engine-specific option left at its default (`engine_specific`), so each engine keeps its own.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from synthbrain.errors import InputError

NOT_OPTIONS = frozenset({"reporter"})  # passed along with the options, but not one of them


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    weights: str | Path | None = None
    lesion: str | None = None
    seed: int | None = None
    device: str | None = None
    overwrite: bool | None = None
    sampler: str | None = None


class _Generate(_Options):
    n: int | None = None
    batch_size: int | None = None
    steps: int | None = None
    masks: str | Path | None = None
    layout: str | None = None
    preview: bool | None = None
    shard: Any = None
    resume: bool | None = None
    lesion_volume: str | None = None


class PairedGenerate(_Generate):
    spacing: str | None = None
    precision: str | None = None


class DeviationGenerate(_Generate):
    eta: float | None = None
    severity: float | None = None
    variants: int | None = None
    anatomy: str | Path | None = None


class _Edit(_Options):
    out: str | Path | None = None
    resample_mask: bool | None = None
    label: bool | None = None
    images: dict[str, Path] | None = None
    contrast: str | None = None
    resample: bool | None = None


class PairedHeal(_Edit):
    alpha0: float | None = None
    k: float | None = None
    t_start: int | None = None
    steps: int | None = None  # the deviation engine heals in one pass (f_sub)
    acg_target: str | None = None
    in_template_space: bool | None = None
    precision: str | None = None


class DeviationHeal(_Edit):
    pass


class _Implant(_Edit):
    variants: int | None = None
    steps: int | None = None


class PairedImplant(_Implant):
    in_template_space: bool | None = None
    precision: str | None = None


class DeviationImplant(_Implant):
    severity: float | None = None
    eta: float | None = None


MODELS: dict[str, dict[str, type[_Options]]] = {
    "generate": {"paired": PairedGenerate, "deviation": DeviationGenerate},
    "heal": {"paired": PairedHeal, "deviation": DeviationHeal},
    "implant": {"paired": PairedImplant, "deviation": DeviationImplant},
}


def readers(command: str, key: str) -> tuple[str, ...]:
    """The engines whose `command` reads option `key`."""
    return tuple(e for e, m in MODELS.get(command, {}).items() if key in m.model_fields)


@cache
def engine_specific() -> frozenset[str]:
    """Options that some engine of a command does not read (the CLI passes them only when given)."""
    keys = set()
    for models in MODELS.values():
        every = set.intersection(*(set(m.model_fields) for m in models.values()))
        keys |= {k for m in models.values() for k in m.model_fields if k not in every}
    return frozenset(keys)


def check_options(engine: str, command: str, options: dict[str, Any]) -> BaseModel | None:
    """The options `engine`'s `command` reads, validated; InputError for one it does not read.

    Given means: not None and not a False flag. Commands without a model (enhance, one engine)
    are not checked here.
    """
    model = MODELS.get(command, {}).get(engine)
    if model is None:
        return None
    given = {k: v for k, v in options.items()
             if k not in NOT_OPTIONS and v is not None and v is not False}  # fmt: skip
    try:
        return model.model_validate(given)
    except ValidationError as err:
        raise _refusal(err, engine, command) from None


def _refusal(err: ValidationError, engine: str, command: str) -> InputError:
    """The one-line message of the first refused option."""
    first = err.errors()[0]
    key = str(first["loc"][0]) if first["loc"] else "options"
    flag = "--" + key.replace("_", "-")
    if first["type"] != "extra_forbidden":
        return InputError(f"{flag}: {first['msg']}")
    engines = readers(command, key)
    if not engines:
        return InputError(f"{flag} is not an option of `{command}`")
    return InputError(
        f"{flag} does not apply to `{command} --engine {engine}` "
        f"(only to --engine {' or '.join(engines)}); drop it or change the engine"
    )
