"""Atomic file replacement: write to a temporary name in the target folder, then rename."""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from synthbrain.errors import InputError

# What `temp_name` makes: .<stem>.tmp-<pid>-<8 hex><suffixes>.
_TEMP_RE = re.compile(r"^\..+\.tmp-\d+-[0-9a-f]{8}(\.[A-Za-z0-9]+){0,2}$")
# No write of one file keeps its temp name this long (it is renamed right after fsync), so an
# older one was left by a killed writer, whichever host or shard it ran on.
STALE_TEMP_SECONDS = 600.0


def temp_name(path: Path) -> Path:
    """A unique hidden temporary name beside `path`, keeping its suffixes (.nii.gz stays)."""
    # Writers such as nibabel pick the format from the suffix: the temp name must end the same.
    suffixes = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
    stem = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    return path.with_name(f".{stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffixes}")


def is_temp_name(name: str) -> bool:
    """Whether a file name is one that `temp_name` makes."""
    return bool(_TEMP_RE.match(name))


def remove_stale_temps(root: Path, *, any_age: bool) -> list[Path]:
    """Delete the temp files a killed writer left under `root`; returns what was deleted.

    With `any_age` every one of ours goes (no other writer can be using the folder); otherwise
    only those older than STALE_TEMP_SECONDS, so a live writer's file is never taken.
    """
    now, removed = time.time(), []
    for path in sorted(p for p in Path(root).rglob(".*.tmp-*") if is_temp_name(p.name)):
        with contextlib.suppress(OSError):
            if path.is_file() and (any_age or now - path.stat().st_mtime > STALE_TEMP_SECONDS):
                path.unlink()
                removed.append(path)
    return removed


def check_writable(target: str | os.PathLike[str], *, folder: bool, what: str = "output") -> Path:
    """Refuse (InputError, exit 2) an output that cannot be written where it is asked for.

    `target` is a file (written into its parent) or, with `folder`, a folder written into. The
    nearest existing folder on the way must be a folder, not a plain file, and a file must be
    creatable in it: this is tried for real (a probe file made and deleted), since permission
    bits say nothing for root, ACLs or read-only mounts. Commands call it before any work.
    """
    target = Path(target)
    start = target.absolute() if folder else target.absolute().parent
    ancestor = next(p for p in (start, *start.parents) if os.path.lexists(p))
    if not ancestor.is_dir():
        raise InputError(f"is a file, not a folder; cannot write {what} {target}", ancestor)
    probe = ancestor / f".synthbrain-write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as exc:
        problem = f"folder is not writable ({exc.strerror or exc}); cannot write {what} {target}"
        raise InputError(problem, ancestor) from None
    return target


def fsync_file(path: Path) -> None:
    """Flush a written file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries so a rename survives a crash (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it onto `path`.

    The caller writes the complete file to the yielded path. If the block raises, the temporary
    file is removed and `path` is left untouched, so a killed or failed write never leaves a
    half-written file under the final name. The parent folder is created when missing.

    Example:
        with atomic_target(out / "image.nii.gz") as tmp:
            nib.save(img, tmp)
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic_target: nothing was written to {tmp}")
        fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(final.parent)
