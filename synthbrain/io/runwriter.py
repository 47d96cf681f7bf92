"""RunWriter: one output folder per run (layout naming, config.json, manifest lines).

The folder rules (see `RunWriter`) protect two things: a folder holding a different run is never
silently mixed with a new one, and overwrite deletes only files this package wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from synthbrain.errors import InputError
from synthbrain.io import outputs as out_io
from synthbrain.io.atomic import check_writable, remove_stale_temps
from synthbrain.io.layouts import Layout, make_layout
from synthbrain.io.outputs import (
    CONFIG_NAME,
    atomic_write_bytes,
    atomic_write_json,
    read_manifest,
    to_json,
)

# Config keys that change how a run is executed, not what it produces ("n": sample k does not
# depend on how many samples the run makes, so a run may be extended with --resume).
VOLATILE_CONFIG_KEYS = frozenset(
    {"shard", "resume", "overwrite", "quiet", "progress", "json", "verbose", "debug", "device",
     "num_workers", "workers", "out", "out_dir", "n"}
)  # fmt: skip
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {"a.b": value}, after a JSON round trip (tuples == lists)."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.loads(to_json(obj, indent=None))}


def config_differences(
    old: Mapping[str, Any], new: Mapping[str, Any], identity_keys: Sequence[str] | None = None
) -> list[str]:
    """Dotted config keys whose values differ between two runs' configs.

    With `identity_keys` only those (dotted) keys and what lies under them are compared;
    otherwise every key except those named in VOLATILE_CONFIG_KEYS (at any depth).
    """
    a, b = _flatten(dict(old)), _flatten(dict(new))

    def counts(key: str) -> bool:
        if identity_keys is not None:
            return any(key == k or key.startswith(k + ".") for k in identity_keys)
        return not VOLATILE_CONFIG_KEYS.intersection(key.split("."))

    keys = {k for k in a.keys() | b.keys() if counts(k)}
    return sorted(k for k in keys if a.get(k, None) != b.get(k, None) or (k in a) != (k in b))


def _valid_id(sample_id: str) -> None:
    """InputError unless a sample id is safe in a file name."""
    if not isinstance(sample_id, str) or not _ID_RE.match(sample_id):
        raise InputError(
            f"sample id {sample_id!r} must start with a letter or digit and hold only "
            "letters, digits, '.', '_' and '-'"
        )


def _write_metadata(root: Path, files: Mapping[str, Any]) -> None:
    """Write layout metadata files: JSON objects as JSON, strings as text."""
    for name, content in files.items():
        if isinstance(content, str):
            atomic_write_bytes(root / name, content.encode())
        else:
            atomic_write_json(root / name, content)


def _remove_empty_dirs(root: Path, folders: Iterable[Path]) -> None:
    """Remove the given folders and their emptied parents, never `root` itself."""
    for folder in sorted(set(folders), key=lambda p: len(p.parts), reverse=True):
        while folder != root and folder.is_relative_to(root):
            with contextlib.suppress(OSError):
                folder.rmdir()
            if folder.exists():
                break
            folder = folder.parent


def _clear_listed(root: Path, manifests: Sequence[Path]) -> set[Path]:
    """Delete the files that manifests list (inside `root` only), then the manifests."""
    folders: set[Path] = set()
    for manifest in manifests:
        for record in read_manifest(manifest):
            for rel in (record.get("files") or {}).values():
                target = out_io.inside(root, str(rel))
                if target is not None and target.is_file():
                    target.unlink()
                    folders.add(target.parent)
        manifest.unlink(missing_ok=True)
    _remove_empty_dirs(root, folders)
    return folders


def clear_run(root: Path, layout: Layout, manifests: Sequence[Path]) -> None:
    """Delete a previous run's own files: listed volumes, manifests, config, layout metadata.

    The layout's own folders (nnunet imagesTr/labelsTr/healthyTr) lose every volume and
    temporary file, which also removes volumes of samples killed before their manifest line.
    """
    _clear_listed(root, manifests)
    folders = []
    for name in layout.owned_folders():
        for item in (root / name).glob("*"):
            if item.is_file() and (item.name.endswith(".nii.gz") or ".tmp-" in item.name):
                item.unlink()
        folders.append(root / name)
    for name in (CONFIG_NAME, *layout.metadata_names()):
        (root / name).unlink(missing_ok=True)
    for tmp in root.glob(".*.tmp-*"):
        tmp.unlink(missing_ok=True)
    _remove_empty_dirs(root, folders)


DEFAULT_LABELS = {"background": 0, "lesion": 1}


class RunWriter:
    """Writes one run folder: volumes in a layout, `config.json`, and the manifest.

    Folder rules, checked before anything is written:
      * a missing or empty folder starts a new run;
      * a folder holding this run (config.json equal in the keys that define the run) is
        continued: samples written again replace their files and append a newer line;
      * a folder holding a different run is refused (InputError naming the differing keys)
        unless `overwrite` (its files are deleted first); `resume` continues only a run with
        the same settings, since mixing two runs' samples in one manifest would corrupt it;
      * `overwrite` on a folder holding this same run clears only this writer's manifest and
        the files it lists, so shards started with --overwrite never delete each other's work;
      * layout files (e.g. an nnU-Net `imagesTr/`) in a folder without our config.json or
        manifest are not ours: refused even with `overwrite`.
    Overwrite deletes only our own files: manifest-listed volumes, manifests, config.json,
    layout metadata and the layout's own folders (nnunet imagesTr/labelsTr/healthyTr).

    Args:
        out_dir: the run folder (created when missing).
        layout: "flat", "bids" or "nnunet" (see `synthbrain.io.layouts`).
        config: the resolved config, saved as config.json (JSON-able; paths become strings).
        overwrite: replace a previous run in the folder.
        resume: continue a previous run (use `finished_ids()` to skip verified samples).
        dataset_name: name written to dataset_description.json / dataset.json.
        channel_names: contrast names in channel order (nnU-Net `_0000`, `_0001`, …).
        labels: label name → value (background must be 0 for nnunet).
        shard: (index, count) of this writer; shards of N > 1 get their own manifest file.
        identity_keys: config keys (dotted) that define the run; default all but
            VOLATILE_CONFIG_KEYS.

    Raises:
        InputError: the folder may not be used (see the rules), or bad layout arguments.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        layout: str = "flat",
        config: Mapping[str, Any],
        overwrite: bool = False,
        resume: bool = False,
        dataset_name: str = "synthbrain",
        channel_names: Sequence[str] = ("t1",),
        labels: Mapping[str, int] | None = None,
        shard: tuple[int, int] | None = None,
        identity_keys: Sequence[str] | None = None,
    ) -> None:
        if overwrite and resume:
            raise InputError("choose either --overwrite or --resume, not both")
        self.out_dir = Path(out_dir)
        self.config = json.loads(to_json(dict(config), indent=None))
        self.layout: Layout = make_layout(
            layout, channel_names, dict(labels or DEFAULT_LABELS), dataset_name
        )
        self.manifest_path = self.out_dir / out_io.manifest_name(shard)
        self.state = self._prepare(overwrite, resume, identity_keys)
        if self.state != "new":
            remove_stale_temps(self.out_dir, any_age=self._alone(shard))
        self._labels = self._known_labels()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out_dir / CONFIG_NAME, self.config)
        _write_metadata(self.out_dir, self.layout.start_files())

    # -------------------------------------------------------------- folder checks

    def _prepare(self, overwrite: bool, resume: bool, identity_keys: Sequence[str] | None) -> str:
        """Decide what the folder holds and clear it where asked; returns the folder state."""
        root = self.out_dir
        if root.exists() and not root.is_dir():
            raise InputError("output path exists and is not a folder", root)
        check_writable(root, folder=True, what="run folder")
        if not root.exists():
            return "new"
        manifests = out_io.manifest_paths(root)
        saved = _saved_config(root, unreadable_ok=overwrite)
        if saved is None and not manifests:
            self._refuse_foreign_layout_files()
            return "new"
        diffs = ["config.json"] if saved is None else config_differences(
            saved, self.config, identity_keys
        )  # fmt: skip
        if diffs and overwrite:
            clear_run(root, self.layout, manifests)
            return "overwrite"
        if diffs:
            # Resuming with other settings would mix two runs' samples in one manifest.
            action = "--resume continues a run only with the same settings; " if resume else ""
            raise InputError(
                f"output folder holds a different run (config differs in: {', '.join(diffs)}); "
                f"{action}pass --overwrite to replace it, or choose another folder",
                root,
            )
        if overwrite:
            own = [self.manifest_path] if self.manifest_path.exists() else []
            _clear_listed(root, own)
            return "overwrite"
        out_io.repair_tail(self.manifest_path)
        return "resume" if resume else "same"

    def _alone(self, shard: tuple[int, int] | None) -> bool:
        """Whether no other writer can be using the folder: unsharded, no other manifest."""
        unsharded = shard is None or int(shard[1]) <= 1
        others = [p for p in out_io.manifest_paths(self.out_dir) if p != self.manifest_path]
        return unsharded and not others

    def _refuse_foreign_layout_files(self) -> None:
        """InputError when layout folders or metadata exist in a folder that holds no run."""
        names = (*self.layout.owned_folders(), *self.layout.metadata_names())
        present = [n for n in names if (self.out_dir / n).exists() and n != ".bidsignore"]
        if present:
            raise InputError(
                f"output folder holds {', '.join(present)} that synthbrain did not write "
                "(no config.json); choose another folder",
                self.out_dir,
            )

    def _known_labels(self) -> dict[str, str]:
        """File-name label → sample id over the folder's manifests (to catch clashing ids)."""
        known: dict[str, str] = {}
        for manifest in out_io.manifest_paths(self.out_dir):
            for record in read_manifest(manifest):
                with contextlib.suppress(InputError):
                    known[self.layout.label(record["id"])] = record["id"]
        return known

    # -------------------------------------------------------------- writing

    def write_sample(
        self,
        sample_id: str,
        volumes: Mapping[str, Any],
        *,
        record: Mapping[str, Any] | None = None,
        index: int | None = None,
    ) -> dict:
        """Write one sample's volumes atomically, then append its manifest line.

        Args:
            sample_id: the sample's id (letters, digits, '.', '_', '-'; e.g. "synth_00042").
            volumes: volume key → `Volume` ("image" or "image_<contrast>", "mask", "healthy",
                "editmask", "labels", or any other key; see `synthbrain.io.layouts`).
            record: what the line should also hold: seed, engine, weights, weights_sha256,
                lesion, seconds, ... ("lesion_volume_ml" is computed from "mask" when absent;
                "seconds" defaults to the time spent writing).
            index: the sample's index k in the run (used to sort merged manifests).

        Returns:
            The manifest record that was appended.
        """
        start = time.perf_counter()
        from synthbrain.io.nifti import save_volume  # nibabel only when a run writes

        record = dict(record or {})
        reserved = {"id", "files", "sha256"} & record.keys()
        if reserved:
            raise ValueError(f"record may not set {sorted(reserved)}")
        files = self._relpaths(sample_id, list(volumes))
        hashes = {}
        for key, volume in volumes.items():
            path = save_volume(volume, self.out_dir / files[key])
            hashes[key] = out_io.sha256_file(path)
        line: dict[str, Any] = {"id": sample_id}
        if index is not None:
            line["index"] = int(index)
        line.update(record)
        if "lesion_volume_ml" not in line and "mask" in volumes:
            mask = volumes["mask"]
            line["lesion_volume_ml"] = out_io.lesion_volume_ml(mask.data, mask.affine)
        line["files"], line["sha256"] = files, hashes
        line.setdefault("seconds", round(time.perf_counter() - start, 3))
        out_io.append_line(self.manifest_path, line)
        return line

    def _relpaths(self, sample_id: str, keys: list[str]) -> dict[str, str]:
        """Validated relative paths of a sample's files; InputError on clashing ids."""
        _valid_id(sample_id)
        if not keys:
            raise ValueError(f"sample {sample_id}: no volumes to write")
        self.layout.check(keys)
        label = self.layout.label(sample_id)
        owner = self._labels.setdefault(label, sample_id)
        if owner != sample_id:
            raise InputError(
                f"sample ids {owner!r} and {sample_id!r} give the same {self.layout.name} "
                f"name {label!r}",
                self.out_dir,
            )
        return self.layout.relpaths(label, keys)

    def finished_ids(self, *, verify: bool = True) -> set[str]:
        """Ids whose manifest line exists (in any manifest of the folder) and whose files verify.

        With `verify` (default) every file's sha256 is recomputed; without it, existence only.
        """
        records = out_io.collect_records(out_io.manifest_paths(self.out_dir), [])
        done = set()
        for sample_id, rec in records.items():
            if verify:
                ok = out_io.check_record(self.out_dir, rec) is None
            else:
                files = rec.get("files") or {}
                ok = bool(files) and all((self.out_dir / r).is_file() for r in files.values())
            if ok:
                done.add(sample_id)
        return done

    def close(self) -> None:
        """Write the layout's metadata (nnunet dataset.json with numTraining over all shards)."""
        records = out_io.collect_records(out_io.manifest_paths(self.out_dir), [])
        _write_metadata(self.out_dir, self.layout.close_files(len(records)))

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _saved_config(root: Path, *, unreadable_ok: bool) -> dict | None:
    """The config.json of a run folder; None when absent (or unreadable and `unreadable_ok`)."""
    path = root / CONFIG_NAME
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        saved = None
    if isinstance(saved, dict):
        return saved
    if unreadable_ok:
        return {"config.json": "unreadable"}
    raise InputError("config.json is unreadable; pass --overwrite to replace the run", path)
