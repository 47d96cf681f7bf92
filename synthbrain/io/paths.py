"""Names of input and output files: NIfTI stems, output-file checks, BraTS contrast files.

These are file-system facts every layer needs (engines name their sidecars, the edit path checks
its output before work starts), so they live here rather than in the api-level input checks.
"""

from __future__ import annotations

from pathlib import Path

from synthbrain.errors import InputError
from synthbrain.io.atomic import check_writable

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PHANTOM_MASKS = "phantom"  # --masks phantom: lesion shapes drawn by the phantom corpus
BRATS_PATTERNS = {
    "t1": ("*_t1.nii*", "*-t1n.nii*"),
    "t2": ("*_t2.nii*", "*-t2w.nii*"),
    "flair": ("*_flair.nii*", "*-t2f.nii*"),
    "t1gd": ("*_t1ce.nii*", "*-t1c.nii*"),
}


def stem(path: Path) -> str:
    """File name without .nii / .nii.gz."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def check_output_file(out: Path, inputs: list[Path], overwrite: bool) -> Path:
    """An output NIfTI path that is not an input and does not clobber a file unless asked."""
    out = Path(out)
    if not out.name.endswith(NIFTI_SUFFIXES):
        raise InputError("output must end in .nii or .nii.gz", out)
    for given in inputs:
        if given is not None and out.resolve() == Path(given).resolve():
            raise InputError("output would overwrite an input file; choose another --out", out)
    check_writable(out, folder=False)
    if out.exists() and not overwrite:
        raise InputError("output exists already (use --overwrite to replace it)", out)
    if not out.parent.exists():
        raise InputError("output folder does not exist", out.parent)
    return out


def is_phantom_masks(masks: Path | str | None) -> bool:
    """Whether --masks asks for phantom lesion shapes (a folder of that name wins)."""
    return masks is not None and str(masks) == PHANTOM_MASKS and not Path(masks).is_dir()


def find_brats_contrast(folder: Path, contrast: str) -> Path | None:
    """The file of one contrast in a BraTS 2020/2023 subject folder, if present."""
    for pattern in BRATS_PATTERNS[contrast]:
        found = sorted(Path(folder).glob(pattern))
        if len(found) > 1:
            raise InputError(f"several {contrast} files match {pattern}", folder)
        if found:
            return found[0]
    return None
