"""The weights registry: which trained models exist, where their files are, and safe loading.

`weights.toml` (canonical copy at the top of the repository, `synthbrain/weights.toml` inside
the package: `registry_path()` takes the top-level file in a source checkout and the package copy
in an installed wheel; tests/test_weights.py checks that the two are identical) lists entries as
`[[weights]]` tables. Users add their own registry files through `$SYNTHBRAIN_WEIGHTS` (one path,
or several joined by os.pathsep) or the `extra` argument; their relative `file` paths are relative
to their own file's folder, and their entries win over built-in ones for `entry_for_lesion`.

Files are found in this order: an explicit path, then the package's embedded `weights/` folder
(or a user registry's folder), then the cache (`$SYNTHBRAIN_HOME/weights/<name>/` or
`~/.cache/synthbrain/weights/<name>/`), then a download from the entry's URL. Every file found
is checked against its sha256; a download with the wrong hash is deleted, never kept. Loading
never unpickles code: safetensors, or `torch.load(weights_only=True)` for .pt files (see
`synthbrain.io.statedict`, re-exported here). torch is imported only when a file is loaded.
"""

from __future__ import annotations

import os
import sys
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from synthbrain.errors import EngineUnavailable
from synthbrain.io.atomic import atomic_target
from synthbrain.io.outputs import sha256_file
from synthbrain.io.statedict import (
    STATE_SUFFIXES,
    WeightsError,
    load_state,
    read_metadata,
    save_state,
)

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE_WEIGHTS_DIR = PACKAGE_DIR / "weights"
_CHUNK = 1 << 20


class WeightsEntry(BaseModel):
    """One `[[weights]]` table of a registry file (see the schema comment in weights.toml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    engine: Literal["paired", "deviation", "deformation"]
    lesion: str = Field(min_length=1)
    contrasts: list[str] = Field(min_length=1)
    spatial_dims: Literal[2, 3]
    spacing: tuple[float, float, float]
    grid: tuple[int, int, int]
    file: str | None = None
    url: str | None = None
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    params: int = Field(ge=0)
    training_data: str
    command: str
    licence: str
    config: dict[str, Any] = Field(default_factory=dict)
    description: str = ""
    _base: Path = PrivateAttr(default=PACKAGE_WEIGHTS_DIR)
    _source: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _where(self) -> WeightsEntry:
        """A file or a URL, positive spacing and grid, and a scheme urllib can fetch."""
        if not self.file and not self.url:
            raise ValueError("needs a file or a url")
        if self.url and urllib.parse.urlparse(self.url).scheme not in {"http", "https", "file"}:
            raise ValueError(f"url must be http(s):// or file://, got {self.url!r}")
        if min(self.spacing) <= 0 or min(self.grid) <= 0:
            raise ValueError("spacing and grid must be positive")
        return self

    @property
    def filename(self) -> str:
        """The file's own name (from `file`, else from the URL path)."""
        if self.file:
            return Path(self.file).name
        return Path(urllib.parse.urlparse(self.url or "").path).name or f"{self.name}.safetensors"

    @property
    def source(self) -> Path | None:
        """The registry file this entry came from."""
        return self._source


# ---------------------------------------------------------------- registry files


def registry_path() -> Path:
    """The built-in weights.toml: the repository's top-level file in a source checkout
    (the canonical copy), else the copy shipped inside the installed package."""
    top = PACKAGE_DIR.parent / "weights.toml"
    if top.is_file() and (PACKAGE_DIR.parent / "pyproject.toml").is_file():
        return top
    return PACKAGE_DIR / "weights.toml"


def cache_dir() -> Path:
    """`$SYNTHBRAIN_HOME/weights`, or `~/.cache/synthbrain/weights`."""
    home = os.environ.get("SYNTHBRAIN_HOME") or Path.home() / ".cache" / "synthbrain"
    return Path(home).expanduser() / "weights"


def _user_files(extra: str | os.PathLike[str] | None) -> list[Path]:
    """Registry files named by $SYNTHBRAIN_WEIGHTS (os.pathsep-separated) and `extra`."""
    named = [p for p in os.environ.get("SYNTHBRAIN_WEIGHTS", "").split(os.pathsep) if p.strip()]
    if extra is not None:
        named.append(str(extra))
    return [Path(p).expanduser() for p in named]


def load_registry_file(path: Path, *, base: Path | None = None) -> list[WeightsEntry]:
    """The entries of one registry file, schema-checked; WeightsError names file and entry."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError("weights registry file not found", path) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise WeightsError(f"not a readable TOML weights registry ({exc})", path) from None
    unknown = set(data) - {"weights"}
    if unknown:
        raise WeightsError(f"unknown top-level keys {sorted(unknown)} (expected [[weights]])", path)
    tables = data.get("weights", [])
    if not isinstance(tables, list):
        raise WeightsError("'weights' must be an array of tables ([[weights]])", path)
    entries = []
    for number, table in enumerate(tables, start=1):
        try:
            entry = WeightsEntry.model_validate(table)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "entry"
            label = table.get("name", f"#{number}") if isinstance(table, dict) else f"#{number}"
            problem = f"weights entry {label}: {where}: {first['msg']}"
            raise WeightsError(problem, path) from None
        entry._base = base if base is not None else path.resolve().parent
        entry._source = path
        entries.append(entry)
    return entries


def registry(extra: str | os.PathLike[str] | None = None) -> dict[str, WeightsEntry]:
    """Every registered weights entry by name: built-in first, then the user's files.

    Args:
        extra: one more registry file (besides those in $SYNTHBRAIN_WEIGHTS).

    Raises:
        WeightsError: a file is missing or unreadable, an entry breaks the schema, or two
            entries share a name.
    """
    builtin = registry_path()
    files = [(builtin, PACKAGE_WEIGHTS_DIR)] if builtin.is_file() else []
    files += [(path, None) for path in _user_files(extra)]
    found: dict[str, WeightsEntry] = {}
    for path, base in files:
        for entry in load_registry_file(path, base=base):
            if entry.name in found:
                other = found[entry.name].source
                raise WeightsError(f"weights name {entry.name!r} is also defined in {other}", path)
            found[entry.name] = entry
    return found


def lookup(name: str, extra: str | os.PathLike[str] | None = None) -> WeightsEntry:
    """The entry called `name`; WeightsError listing the known names otherwise."""
    entries = registry(extra)
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none registered"
        raise WeightsError(f"unknown weights {name!r} (known: {known}) and no such file")
    return entries[name]


def entry_for_lesion(
    engine: str, lesion: str, *, extra: str | os.PathLike[str] | None = None
) -> WeightsEntry:
    """The weights of `engine` trained for `lesion` (a user's own entry wins over built-in).

    Raises:
        EngineUnavailable: no entry provides that lesion; the message lists what exists.
    """
    entries = list(registry(extra).values())
    for entry in reversed(entries):
        if entry.engine == engine and entry.lesion == lesion:
            return entry
    have = sorted({f"{e.engine}/{e.lesion}" for e in entries})
    mine = sorted({e.lesion for e in entries if e.engine == engine})
    raise EngineUnavailable(
        f"no {engine} weights for lesion {lesion!r}; {engine} has "
        f"{', '.join(mine) or 'none'} (all: {', '.join(have) or 'none registered'}); "
        "train your own with `synthbrain train` and pass --weights PATH"
    )


# ---------------------------------------------------------------- finding files


def _local_candidates(entry: WeightsEntry) -> list[tuple[Path, bool]]:
    """(path, is_cache) where the entry's file may already be: embedded, then the cache."""
    found = []
    if entry.file:
        file = Path(entry.file).expanduser()
        found.append((file if file.is_absolute() else entry._base / file, False))
    found.append((cache_dir() / entry.name / entry.filename, True))
    return found


def _looks_like_path(text: str) -> bool:
    """Whether a --weights value names a file rather than a registry entry."""
    return "/" in text or os.sep in text or text.endswith(STATE_SUFFIXES)


def resolve(
    name_or_path: str | os.PathLike[str],
    *,
    extra: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool | None = None,
) -> Path:
    """The local file of a weights name or path (downloaded and verified when needed).

    Order: an existing path as given → the file embedded in the package (`synthbrain/weights/`)
    or beside a user registry → the cache → a download from the entry's URL into the cache.

    Args:
        name_or_path: a registry name or a weights file path.
        extra: one more registry file.
        download: allow the URL step.
        progress: show a download bar (default: when stderr is a terminal).

    Raises:
        WeightsError: unknown name, missing file, wrong sha256, failed download.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if _looks_like_path(text):
        raise WeightsError("weights file not found", path)
    return resolve_entry(lookup(text, extra), download=download, progress=progress)


def resolve_entry(
    entry: WeightsEntry, *, download: bool = True, progress: bool | None = None
) -> Path:
    """The verified local file of a registry entry (see `resolve`)."""
    for path, is_cache in _local_candidates(entry):
        if not path.is_file():
            continue
        actual = sha256_file(path)
        if actual == entry.sha256:
            return path
        if not is_cache:
            raise WeightsError(
                f"sha256 mismatch for weights {entry.name!r}: expected {entry.sha256}, "
                f"got {actual}",
                path,
            )
        path.unlink()  # a corrupt cached copy: fetch it again below
    if entry.url and download:
        return download_entry(entry, progress=progress)
    where = "no url to download from" if not entry.url else "downloads disabled"
    raise WeightsError(
        f"weights {entry.name!r} not found: not embedded, not in {cache_dir()}, {where}"
    )


def download_entry(entry: WeightsEntry, *, progress: bool | None = None) -> Path:
    """Download an entry's URL into the cache, checking sha256; a bad file is deleted."""
    target = cache_dir() / entry.name / entry.filename
    show = sys.stderr.isatty() if progress is None else progress
    try:
        with urllib.request.urlopen(entry.url, timeout=60) as response, atomic_target(
            target
        ) as tmp:  # fmt: skip
            total = int(response.headers.get("Content-Length") or 0) or None
            actual = _copy_hashing(response, tmp, total, show, entry.name)
            if actual != entry.sha256:
                raise WeightsError(
                    f"downloaded weights {entry.name!r} have sha256 {actual}, expected "
                    f"{entry.sha256}; the file was deleted",
                    entry.url,
                )
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise WeightsError(f"could not download weights {entry.name!r}: {exc}", entry.url) from None
    return target


def _copy_hashing(response: Any, tmp: Path, total: int | None, show: bool, label: str) -> str:
    """Stream a response into `tmp` and return its sha256 (with a rich bar when `show`)."""
    import hashlib

    digest = hashlib.sha256()
    bar = None
    if show:
        from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

        bar = Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn())
        bar.start()
        task = bar.add_task(f"downloading {label}", total=total)
    try:
        with open(tmp, "wb") as handle:
            while block := response.read(_CHUNK):
                handle.write(block)
                digest.update(block)
                if bar is not None:
                    bar.advance(task, len(block))
    finally:
        if bar is not None:
            bar.stop()
    return digest.hexdigest()


def verify(entry: WeightsEntry, *, download: bool = False) -> tuple[bool, str]:
    """Check an entry's local file against its sha256 without deleting anything.

    Returns:
        (ok, message): the file and its state, or why it could not be checked.
    """
    for path, _ in _local_candidates(entry):
        if path.is_file():
            actual = sha256_file(path)
            if actual == entry.sha256:
                return True, f"ok: {path}"
            return False, f"sha256 mismatch: {path} has {actual}, expected {entry.sha256}"
    if download and entry.url:
        try:
            return True, f"ok: {download_entry(entry)}"
        except WeightsError as exc:
            return False, str(exc)
    hint = f"; `synthbrain weights path {entry.name}` downloads it" if entry.url else ""
    return False, f"not available locally{hint}"


@dataclass(frozen=True)
class EngineWeights:
    """One engine's weights file, read: its name, file, sha256, config and float32 tensors.

    `registered` says whether `name` is a registry entry (else it is the file's stem).
    """

    engine: str
    name: str
    path: Path
    sha256: str
    registered: bool
    config: dict[str, Any]
    metadata: dict[str, Any]
    state: dict[str, Any]


def load_engine_weights(
    engine: str, weights: str | os.PathLike[str] | None = None, *, lesion: str | None = None
) -> EngineWeights:
    """The one weights loader of the engines: `weights` (a registry name or a file), else the
    registered weights of `engine` for `lesion`, checked to be `engine`'s and to carry its config.

    Raises:
        WeightsError: unknown name, missing or corrupt file, wrong sha256, another engine's file;
        EngineUnavailable: no registered weights of `engine` for `lesion`.
    """
    if weights is None:
        entry: WeightsEntry | None = entry_for_lesion(engine, str(lesion))
        path = resolve_entry(entry)
    else:
        path = resolve(weights)
        entry = registry().get(os.fspath(weights))
    meta = read_metadata(path) if path.suffix == ".safetensors" else {}
    config = meta.get("config")
    if meta.get("engine") != engine or not isinstance(config, dict):
        raise WeightsError(f"not {engine}-engine weights (no {engine} config in the file)", path)
    return EngineWeights(
        engine, entry.name if entry else path.stem, path,
        entry.sha256 if entry else sha256_file(path), entry is not None, config, meta,
        {k: v.float() for k, v in load_state(path).items()},
    )  # fmt: skip


__all__ = [
    "EngineWeights",
    "WeightsEntry",
    "WeightsError",
    "cache_dir",
    "entry_for_lesion",
    "load_engine_weights",
    "load_registry_file",
    "load_state",
    "lookup",
    "read_metadata",
    "registry",
    "registry_path",
    "resolve",
    "save_state",
    "verify",
]
