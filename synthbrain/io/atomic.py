"""Atomic file replacement: write to a temporary name in the target folder, then rename."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


def temp_name(path: Path) -> Path:
    """A unique hidden temporary name beside `path`, keeping its suffixes (.nii.gz stays)."""
    # Writers such as nibabel pick the format from the suffix: the temp name must end the same.
    suffixes = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
    stem = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    return path.with_name(f".{stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffixes}")


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
