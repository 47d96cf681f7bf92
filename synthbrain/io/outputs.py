"""Run folders: atomic writes, layouts, `manifest.jsonl`, `config.json` and manifest checks.

A run folder holds the volumes (named by `synthbrain.io.layouts`), `config.json` (the resolved
config, written first) and one manifest: `manifest.jsonl`, or `manifest.shard-<i>-of-<N>.jsonl`
for shard i of N so that job-array tasks sharing one folder never append to the same file
(appends from several hosts are not atomic on NFS/Lustre). `merge_manifests` joins them.

Each manifest line is appended only after all of its sample's files were written atomically,
in a single `write` followed by fsync, so a killed process leaves at most a truncated last
line; readers ignore it, and a resuming writer cuts it off before appending.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthbrain.errors import InputError
from synthbrain.io.atomic import atomic_target

CONFIG_NAME = "config.json"
MANIFEST_NAME = "manifest.jsonl"
# Manifest keys that may differ between two honest writes of the same sample.
VOLATILE_RECORD_KEYS = frozenset({"seconds", "files", "host", "hostname", "timestamp"})


# ---------------------------------------------------------------- atomic writes and hashes


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and a rename."""
    with atomic_target(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def _json_default(value: Any) -> Any:
    """JSON for numpy scalars and arrays, tensors and paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json(obj: Any, *, indent: int | None = 2) -> str:
    """`obj` as JSON text (numpy, tensors and paths converted)."""
    return json.dumps(obj, indent=indent, default=_json_default, allow_nan=False)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    atomic_write_bytes(path, (to_json(obj) + "\n").encode())


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def lesion_volume_ml(mask: np.ndarray, affine: np.ndarray) -> float:
    """Volume of the voxels where `mask` > 0, in millilitres (voxel volume from the affine)."""
    voxel_mm3 = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))
    return float(np.count_nonzero(np.asarray(mask) > 0) * voxel_mm3 / 1000.0)


# ---------------------------------------------------------------- manifest files


def manifest_name(shard: tuple[int, int] | None) -> str:
    """`manifest.jsonl`, or `manifest.shard-<i>-of-<N>.jsonl` for shard i of N > 1."""
    if shard is None or int(shard[1]) <= 1:
        return MANIFEST_NAME
    return f"manifest.shard-{int(shard[0])}-of-{int(shard[1])}.jsonl"


def manifest_paths(folder: str | os.PathLike[str]) -> list[Path]:
    """Every manifest of a run folder (the unsharded one and the shards'), sorted."""
    return sorted(p for p in Path(folder).glob("manifest*.jsonl") if p.is_file())


def append_line(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Append one JSON line in a single write, then fsync (a kill leaves at most a torn tail)."""
    data = (to_json(record, indent=None) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"{path}: short write ({written} of {len(data)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)


def repair_tail(path: str | os.PathLike[str]) -> bool:
    """Cut a truncated last line (no final newline) off a manifest; True when something was cut."""
    path = Path(path)
    if not path.is_file():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    with open(path, "r+b") as handle:
        handle.truncate(data.rfind(b"\n") + 1)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def parse_manifest(path: str | os.PathLike[str]) -> tuple[list[dict], bool]:
    """(records, truncated): the complete lines of a manifest and whether a torn tail was left.

    Raises:
        InputError: the file is missing, or a complete line is not a JSON object with an "id".
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read manifest ({exc.strerror or exc})", path) from None
    *complete, tail = data.split(b"\n")
    records = []
    for number, raw in enumerate(complete, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(f"line {number} is not valid JSON", path) from None
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            raise InputError(f"line {number} is not a manifest record (no 'id')", path)
        records.append(record)
    return records, bool(tail.strip())


def read_manifest(path: str | os.PathLike[str]) -> list[dict]:
    """The records of a manifest file, in file order; a truncated last line is ignored."""
    return parse_manifest(path)[0]


def latest_by_id(records: Iterable[dict]) -> dict[str, dict]:
    """Records keyed by id; a later line for the same id (a re-written sample) wins."""
    return {record["id"]: record for record in records}


def _same_sample(a: dict, b: dict) -> bool:
    """Whether two manifest records describe the same sample (timings and paths aside)."""

    def strip(record: dict) -> dict:
        return {k: v for k, v in record.items() if k not in VOLATILE_RECORD_KEYS}

    return to_json(strip(a)) == to_json(strip(b))


def _sort_key(record: dict) -> tuple:
    """Sample index first (records without one last), then id."""
    index = record.get("index")
    return (index is None, index if isinstance(index, int) else 0, record["id"])


# ---------------------------------------------------------------- checking files


def inside(root: Path, rel: str) -> Path | None:
    """`root/rel` when it stays inside `root`, else None."""
    target = (root / rel).resolve()
    return target if target.is_relative_to(root.resolve()) else None


def check_record(root: Path, record: dict) -> str | None:
    """None when every file of a record exists with its sha256; else the first problem."""
    files, hashes = record.get("files"), record.get("sha256")
    if not isinstance(files, dict) or not isinstance(hashes, dict) or not files:
        return "record lists no files"
    for key, rel in files.items():
        target = inside(root, str(rel))
        if target is None:
            return f"file {rel} lies outside the run folder"
        if not target.is_file():
            return f"missing file {rel}"
        if hashes.get(key) != sha256_file(target):
            return f"sha256 mismatch for {rel} (changed since it was written)"
    return None


@dataclass
class ManifestReport:
    """What `validate_manifest` found: verified ids, problems as (id, reason), orphan files."""

    ok: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    manifests: list[Path] = field(default_factory=list)

    @property
    def ok_ids(self) -> list[str]:
        """The ids whose files all verified (same list as `ok`)."""
        return self.ok

    @property
    def valid(self) -> bool:
        """True when no problem was found (orphan files alone do not fail a run)."""
        return not self.problems


def collect_records(manifests: Sequence[Path], problems: list[tuple[str, str]]) -> dict[str, dict]:
    """Latest record per id over several manifests; torn tails and conflicts go to problems."""
    merged: dict[str, tuple[dict, Path]] = {}
    for path in manifests:
        records, truncated = parse_manifest(path)
        if truncated:
            problems.append((path.name, "truncated last line (an interrupted write; ignored)"))
        for sample_id, record in latest_by_id(records).items():
            if sample_id in merged and not _same_sample(merged[sample_id][0], record):
                other = merged[sample_id][1].name
                problems.append((sample_id, f"conflicting records in {other} and {path.name}"))
                continue
            merged.setdefault(sample_id, (record, path))
    return {sample_id: record for sample_id, (record, _) in merged.items()}


def validate_manifest(out_dir: str | os.PathLike[str]) -> ManifestReport:
    """Check every manifest line of a run folder (or one manifest file) against the disk.

    Each sample's files must exist inside the folder with the recorded sha256; a truncated
    last line and samples recorded differently by two shard manifests are problems. Volumes
    on disk that no line names are listed as orphans (e.g. left by a killed sample).

    Raises:
        InputError: no manifest found, or a manifest line in the middle is corrupt.
    """
    target = Path(out_dir)
    root, manifests = (target.parent, [target]) if target.is_file() else (target, [])
    manifests = manifests or manifest_paths(root)
    if not manifests:
        raise InputError("no manifest*.jsonl found (not a synthbrain run folder?)", target)
    report = ManifestReport(manifests=manifests)
    records = collect_records(manifests, report.problems)
    referenced = set()
    for sample_id, record in sorted(records.items(), key=lambda item: _sort_key(item[1])):
        problem = check_record(root, record)
        referenced.update(str(rel) for rel in (record.get("files") or {}).values())
        if problem is None:
            report.ok.append(sample_id)
        else:
            report.problems.append((sample_id, problem))
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*.nii.gz") if p.is_file()}
    report.orphans = sorted(on_disk - referenced)
    return report


def merge_manifests(paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> Path:
    """Join shard manifests (files or run folders) into one manifest at `out`.

    Records are de-duplicated by id (within one manifest the last line wins), sorted by sample
    index, and their file paths are rewritten relative to `out`'s folder, so shards written to
    separate folders stay valid. `out` may be a folder (→ `out/manifest.jsonl`).

    Raises:
        InputError: a source is missing or has no manifest, or one id has conflicting records.
    """
    out = Path(out)
    out = out / MANIFEST_NAME if out.is_dir() else out
    merged: dict[str, tuple[dict, Path]] = {}
    for manifest in _manifest_sources(paths):
        for record in latest_by_id(read_manifest(manifest)).values():
            record = _rebase(record, manifest.parent, out.parent)
            previous = merged.get(record["id"])
            if previous is not None and not _same_sample(previous[0], record):
                raise InputError(
                    f"sample {record['id']} differs between {previous[1]} and {manifest}", out
                )
            merged.setdefault(record["id"], (record, manifest))
    lines = [to_json(r, indent=None) + "\n" for r, _ in sorted(merged.values(), key=_merge_key)]
    atomic_write_bytes(out, "".join(lines).encode())
    return out


def _merge_key(item: tuple[dict, Path]) -> tuple:
    """Sort key of a (record, source) pair."""
    return _sort_key(item[0])


def _manifest_sources(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Manifest files named directly or found in run folders."""
    found: list[Path] = []
    for source in map(Path, paths):
        if source.is_dir():
            in_folder = manifest_paths(source)
            if not in_folder:
                raise InputError("no manifest*.jsonl in this folder", source)
            found.extend(in_folder)
        elif source.is_file():
            found.append(source)
        else:
            raise InputError("no such manifest file or folder", source)
    return found


def _rebase(record: dict, src_dir: Path, dst_dir: Path) -> dict:
    """A record whose relative file paths point from `dst_dir` to the same files."""
    if src_dir.resolve() == dst_dir.resolve() or not isinstance(record.get("files"), dict):
        return record
    files = {
        key: Path(os.path.relpath((src_dir / rel).resolve(), dst_dir.resolve())).as_posix()
        for key, rel in record["files"].items()
    }
    return {**record, "files": files}


__all__ = [
    "ManifestReport",
    "append_line",
    "atomic_write_bytes",
    "atomic_write_json",
    "lesion_volume_ml",
    "manifest_paths",
    "merge_manifests",
    "read_manifest",
    "sha256_file",
    "validate_manifest",
]
