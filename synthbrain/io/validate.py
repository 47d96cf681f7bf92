"""User-facing checks on inputs: mask values, mask vs image geometry, output folder state.

Each check raises `InputError(problem, path)` with one line that names the file, so a command
can validate every input before it writes anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from itertools import product
from pathlib import Path
from typing import Literal

import numpy as np

from synthbrain.errors import InputError
from synthbrain.io.geometry import Volume, resample_to
from synthbrain.io.nifti import as_mask_array

RUN_FILES = ("config.json", "manifest.jsonl")
FolderState = Literal["new", "same", "resume", "overwrite"]


def require_binary_mask(mask: Volume | np.ndarray, path: str | os.PathLike[str] | None = None):
    """Check that a mask holds {0, 1}, {0, 255} or booleans; return it as uint8 {0, 1}.

    A Volume comes back as a Volume (same geometry), an array as an array. `path` defaults to the
    volume's own path and is named in the error.

    Raises:
        InputError: NaN/Inf, non-integer, negative or more than two distinct values.
    """
    if isinstance(mask, Volume):
        data = as_mask_array(mask.data, path or mask.path, label=False)
        return Volume(data, mask.affine, mask.header, mask.path)
    return as_mask_array(np.asarray(mask), path, label=False)


def require_nonempty_mask(mask: Volume, path: str | os.PathLike[str] | None = None) -> None:
    """Raise InputError when a mask has no voxel set (nothing to implant or heal)."""
    if not np.any(mask.data):
        raise InputError("mask is empty (no voxel is set)", path or mask.path)


def grid_mismatch_mm(a: Volume, b: Volume) -> float:
    """How far (mm) the same voxel index lands under the two affines, at worst over a's FOV."""
    # The difference of two affines is affine, so its largest norm over the box is at a corner.
    corners = np.array(list(product(*[(0, n - 1) for n in a.shape])), dtype=np.float64)
    homog = np.c_[corners, np.ones(len(corners))].T
    return float(np.linalg.norm(((a.affine - b.affine) @ homog)[:3], axis=0).max())


def check_same_grid(
    image: Volume, mask: Volume, tol_mm: float = 1e-3, *, what: str = "mask"
) -> None:
    """Raise InputError (naming the mask) unless the mask lies on the image's voxel grid.

    Same shape, and no voxel centre of the image's FOV moves more than `tol_mm` between the two
    affines. `what` names the second volume in the message ("mask", "t2", ...); for masks the
    message suggests --resample-mask.
    """
    hint = "; pass --resample-mask to resample it onto the image" if what == "mask" else ""
    name = image.path.name if image.path is not None else "the image"
    if mask.shape != image.shape:
        problem = f"{what} shape {mask.shape} differs from {name} shape {image.shape}"
        raise InputError(problem + hint, mask.path)
    gap = grid_mismatch_mm(image, mask)
    if gap > tol_mm:
        problem = f"{what} affine differs from that of {name} (voxels up to {gap:.3g} mm apart)"
        raise InputError(problem + hint, mask.path)


def resample_mask_to(image: Volume, mask: Volume) -> Volume:
    """The mask resampled onto the image's grid by nearest neighbour (for --resample-mask).

    The result has the image's shape, affine and header and keeps the mask's path and dtype;
    parts of the image outside the mask's field of view are 0.
    """
    return resample_to(mask, image.shape, image.affine, order=0, fill=0, header=image.header)


def mask_brain_overlap(mask: Volume | np.ndarray, brain_mask: Volume | np.ndarray) -> float:
    """Fraction of the mask's voxels that lie inside the brain mask (0.0 for an empty mask)."""
    m = np.asarray(mask.data if isinstance(mask, Volume) else mask) > 0
    b = np.asarray(brain_mask.data if isinstance(brain_mask, Volume) else brain_mask) > 0
    if m.shape != b.shape:
        raise ValueError(f"mask shape {m.shape} differs from brain mask shape {b.shape}")
    total = int(m.sum())
    return float(np.logical_and(m, b).sum() / total) if total else 0.0


def check_output_dir(
    out_dir: str | os.PathLike[str],
    config: dict,
    overwrite: bool = False,
    resume: bool = False,
    *,
    ignore: Iterable[str] = (),
) -> FolderState:
    """Decide whether a run may write into `out_dir`; refuse (InputError) when it may not.

    Nothing is written or deleted here. Rules: a missing or empty folder (hidden files aside) is
    "new". Any other folder is "overwrite" when `overwrite` is set. A folder holding a run
    (config.json or manifest.jsonl) whose saved config equals `config` (top-level keys in
    `ignore` aside) is "same" ("resume" with `resume`). A different run or one without
    config.json is refused unless `resume` ("resume"); an unreadable config.json and unrelated
    files (no config.json / manifest.jsonl) are refused unless `overwrite`.

    Returns:
        "new", "same", "resume" or "overwrite": what the caller found and may do.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("output path exists and is not a folder", out)
    entries = [p for p in out.iterdir() if not p.name.startswith(".")] if out.exists() else []
    if not entries:
        return "new"
    if overwrite:
        return "overwrite"
    if not any((out / name).exists() for name in RUN_FILES):
        problem = "output folder is not empty and holds no synthbrain run; pass --overwrite"
        raise InputError(problem, out)
    saved, why = _saved_config(out)
    skip = set(ignore)
    if saved is not None and _normalise(saved, skip) == _normalise(config, skip):
        return "resume" if resume else "same"
    if resume and why != "unreadable":
        return "resume"
    problem = {
        "differs": "output folder holds a different run (its config.json differs)",
        "missing": "output folder holds a run (manifest.jsonl) without config.json",
        "unreadable": "output folder holds an unreadable config.json",
    }[why]
    options = "--overwrite" if why == "unreadable" else "--overwrite or --resume"
    raise InputError(f"{problem}; pass {options}", out)


def _saved_config(out: Path) -> tuple[dict | None, str]:
    """The config saved in a run folder and, when it cannot be compared, why not."""
    path = out / "config.json"
    if not path.exists():
        return None, "missing"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, "unreadable"
    return (saved, "differs") if isinstance(saved, dict) else (None, "unreadable")


def _normalise(config: dict, skip: set[str]) -> str:
    """A canonical JSON text of a config (tuples as lists, paths as strings, keys sorted)."""
    kept = {k: v for k, v in config.items() if k not in skip}
    return json.dumps(json.loads(json.dumps(kept, default=str)), sort_keys=True)
