"""Cohort discovery: which NIfTI files make up each subject (BraTS, ATLAS/BIDS, healthy, CSV).

Discovery only looks at names; it opens no image. Files are checked when the subject is loaded,
so a damaged file makes that one subject bad (reported and skipped) rather than the whole run.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthbrain.config import CONTRASTS
from synthbrain.errors import InputError

LAYOUTS = ("auto", "brats", "atlas", "bids", "healthy", "csv")
NII = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
# File-name endings of each BraTS release: contrast (or "seg" / "brainmask") -> suffix.
BRATS_NAMING = {
    "brats2020": {"t1": "_t1", "t1gd": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    "brats2023": {"t1": "-t1n", "t1gd": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
}
BRATS_NAMES = {"necrosis": 1, "edema": 2}
BRAINMASK_SUFFIXES = ("_brainmask", "-brainmask")
BIDS_LESION = ("_label-L_desc-T1lesion_mask",)
BIDS_ENTITIES = ("sub", "ses", "run")
TRUE = {"1", "true", "yes", "y", "t"}
FALSE = {"0", "false", "no", "n", "f", ""}


@dataclass
class SubjectFiles:
    """One subject's files, found by name.

    Attributes:
        id: unique subject id (folder name, BIDS entities, file stem or CSV `subject`).
        images: contrast name -> file.
        labels: the lesion label map or mask (None for healthy subjects).
        brain_mask: a given brain mask (else derived from nonzero voxels).
        healthy: a subject without lesion.
        source: "brats2020", "brats2023", "bids", "healthy" or "csv" (how it was found).
        label_kind: "label" (multi-label map) or "mask" (binary lesion mask).
        lesion_type: "tumor", "stroke", "none" or the CSV's `lesion_type`.
        problem: a problem found by discovery (e.g. a BraTS subject without segmentation).
    """

    id: str
    images: dict[str, Path]
    labels: Path | None = None
    brain_mask: Path | None = None
    healthy: bool = False
    source: str = ""
    label_kind: str = "label"
    lesion_type: str = "none"
    problem: str | None = None
    problem_path: Path | None = field(default=None, repr=False)

    def files(self) -> dict[str, Path]:
        """Every file by role (contrast names, "labels", "brain_mask")."""
        out = dict(self.images)
        if self.labels is not None:
            out["labels"] = self.labels
        if self.brain_mask is not None:
            out["brain_mask"] = self.brain_mask
        return out


def stem(path: Path) -> str:
    """A NIfTI file name without .nii / .nii.gz."""
    return NII.sub("", path.name)


def _nifti_files(folder: Path) -> list[Path]:
    """Every .nii / .nii.gz file under `folder`, sorted, skipping hidden names (temp files)."""
    hits = [p for p in folder.rglob("*") if NII.search(p.name) and p.is_file()]
    rel = [p for p in hits if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(rel)


def _brats_role(name: str) -> tuple[str, str] | None:
    """(naming year, role) of a BraTS file stem, or None."""
    for year, suffixes in BRATS_NAMING.items():
        for role, suffix in suffixes.items():
            if name.lower().endswith(suffix):
                return year, role
    if name.lower().endswith(BRAINMASK_SUFFIXES):
        return "", "brainmask"
    return None


def discover_brats(folder: Path) -> list[SubjectFiles]:
    """BraTS: a folder per subject with <id>_t1/_t1ce/_t2/_flair/_seg (2020) or -t1n/... (2023)."""
    by_folder: dict[Path, dict[str, Path]] = defaultdict(dict)
    years: dict[Path, set[str]] = defaultdict(set)
    for path in _nifti_files(folder):
        hit = _brats_role(stem(path))
        if hit is not None and hit[1] not in by_folder[path.parent]:
            by_folder[path.parent][hit[1]] = path
            years[path.parent].add(hit[0])
    subjects = []
    for parent, roles in sorted(by_folder.items()):
        year = "brats2023" if "brats2023" in years[parent] else "brats2020"
        images = {c: p for c, p in roles.items() if c in CONTRASTS}
        if not images:
            continue
        subject = SubjectFiles(
            parent.name,
            images,
            roles.get("seg"),
            roles.get("brainmask"),
            source=year,
            lesion_type="tumor",
        )
        if subject.labels is None:
            subject.problem = f"no segmentation (*{BRATS_NAMING[year]['seg']}.nii.gz) found"
            subject.problem_path = parent
        subjects.append(subject)
    return subjects


def _bids_id(path: Path) -> str:
    """sub-X[_ses-Y][_run-Z] from a BIDS file name."""
    parts = stem(path).split("_")
    keep = [p for p in parts if p.split("-", 1)[0] in BIDS_ENTITIES and "-" in p]
    return "_".join(keep) or stem(path)


def _bids_lesion(t1w: Path) -> Path | None:
    """The lesion mask beside a T1w file: same prefix first, else the only lesion mask there."""
    prefix = stem(t1w)[: -len("_T1w")]
    for suffix in BIDS_LESION:
        for ext in (".nii.gz", ".nii"):
            candidate = t1w.with_name(prefix + suffix + ext)
            if candidate.is_file():
                return candidate
    others = [p for p in t1w.parent.iterdir() if NII.search(p.name) and "lesion_mask" in p.name]
    return others[0] if len(others) == 1 else None


def discover_bids(folder: Path) -> list[SubjectFiles]:
    """ATLAS/BIDS: sub-*/[ses-*/]anat/*_T1w.nii.gz, with *_label-L_desc-T1lesion_mask beside it.

    When any subject has a lesion mask the cohort is a lesion cohort and subjects without one are
    bad; when none has, every subject is healthy.
    """
    t1ws = [p for p in _nifti_files(folder) if stem(p).endswith("_T1w")]
    subjects = []
    for t1w in t1ws:
        lesion = _bids_lesion(t1w)
        subjects.append(
            SubjectFiles(
                _bids_id(t1w),
                {"t1": t1w},
                lesion,
                source="bids",
                label_kind="mask",
                lesion_type="stroke",
                healthy=lesion is None,
            )
        )
    if any(s.labels is not None for s in subjects):
        for s in subjects:
            if s.labels is None:
                s.healthy, s.problem, s.problem_path = False, "no lesion mask found", s.images["t1"]
    else:
        for s in subjects:
            s.lesion_type = "none"
    return subjects


def discover_healthy(folder: Path, contrast: str = "t1") -> list[SubjectFiles]:
    """A folder of healthy scans (one contrast), <id>.nii.gz, optionally <id>_brainmask.nii.gz."""
    files = sorted(p for p in folder.iterdir() if NII.search(p.name) and p.is_file())
    masks = {
        stem(p)[: -len(s)]: p for p in files for s in BRAINMASK_SUFFIXES if stem(p).endswith(s)
    }
    scans = [p for p in files if p not in masks.values() and not p.name.startswith(".")]
    return [
        SubjectFiles(
            stem(p), {contrast: p}, None, masks.get(stem(p)), healthy=True, source="healthy"
        )
        for p in scans
    ]


def _csv_path(value: str, base: Path) -> Path | None:
    """A CSV cell as a path (relative to the CSV's folder), None when empty."""
    value = value.strip()
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def discover_csv(path: Path) -> list[SubjectFiles]:
    """A CSV: subject, t1/t2/flair/t1gd (any subset), mask or seg, brainmask, healthy, lesion_type.

    Paths are relative to the CSV's folder. `healthy` (true/false) defaults to "no mask given".
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"not a readable CSV file ({err})", path) from None
    if not rows:
        raise InputError("the CSV has no rows", path)
    columns = {c.strip().lower(): c for c in rows[0] if c is not None}
    if "subject" not in columns or not set(columns) & set(CONTRASTS):
        raise InputError(f"the CSV needs a 'subject' column and one of {CONTRASTS}", path)
    label_col = columns.get("mask", columns.get("seg"))
    subjects = []
    for number, row in enumerate(rows, start=2):
        cell = {key: (row.get(col) or "").strip() for key, col in columns.items()}
        images = {c: _csv_path(cell[c], path.parent) for c in CONTRASTS if cell.get(c)}
        labels = _csv_path(row.get(label_col) or "", path.parent) if label_col else None
        flag = cell.get("healthy", "").lower()
        if flag not in TRUE | FALSE:
            raise InputError(f"row {number}: healthy must be true or false, got {flag!r}", path)
        healthy = flag in TRUE if flag else labels is None
        if healthy and labels is not None:
            raise InputError(f"row {number}: healthy is true but a mask is given", path)
        subject = SubjectFiles(
            cell["subject"],
            images,
            labels,
            _csv_path(cell.get("brainmask") or cell.get("brain_mask", ""), path.parent),
            healthy=healthy,
            source="csv",
            lesion_type="none" if healthy else cell.get("lesion_type") or "lesion",
        )
        if not subject.id:
            raise InputError(f"row {number}: empty subject id", path)
        if not healthy and labels is None:
            subject.problem, subject.problem_path = "not healthy but no mask given", path
        subjects.append(subject)
    return subjects


def detect_layout(path: Path) -> str:
    """The layout of one input: "csv", "atlas" (BIDS), "brats" or "healthy"; InputError if none."""
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        raise InputError("an input must be a cohort folder or a CSV file", path)
    if not path.is_dir():
        raise InputError("input not found", path)
    files = _nifti_files(path)
    if any(stem(p).endswith("_T1w") and any(q.startswith("sub-") for q in p.parts) for p in files):
        return "atlas"
    if any(_brats_role(stem(p)) not in (None, ("", "brainmask")) for p in files):
        return "brats"
    if any(p.parent == path for p in files):
        return "healthy"
    raise InputError("no BraTS, ATLAS/BIDS or NIfTI files found in the folder", path)


def discover(
    inputs: Sequence[Path], layout: str = "auto", contrasts: Sequence[str] | None = None
) -> list[SubjectFiles]:
    """Every subject of every input, ids checked unique.

    Args:
        inputs: cohort folders or CSV files.
        layout: "auto" (detected per input) or one of "brats", "atlas" / "bids", "healthy", "csv".
        contrasts: the contrasts wanted; a healthy folder's scans take the first name ("t1").
    """
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    healthy_contrast = contrasts[0] if contrasts else "t1"
    found: list[SubjectFiles] = []
    for path in map(Path, inputs):
        kind = detect_layout(path) if layout == "auto" else layout
        if kind == "csv":
            subjects = discover_csv(path)
        elif not path.is_dir():
            raise InputError(f"a {kind} input must be a folder", path)
        elif kind == "brats":
            subjects = discover_brats(path)
        elif kind in ("atlas", "bids"):
            subjects = discover_bids(path)
        else:
            subjects = discover_healthy(path, healthy_contrast)
        if not subjects:
            raise InputError(f"no subjects found (layout {kind})", path)
        found.extend(subjects)
    _check_unique(found)
    return found


def _check_unique(subjects: list[SubjectFiles]) -> None:
    """Refuse two subjects with the same id (they would overwrite each other in the HDF5)."""
    seen: dict[str, SubjectFiles] = {}
    for s in subjects:
        if s.id in seen:
            first = next(iter(seen[s.id].files().values()), None)
            here = next(iter(s.files().values()), None)
            raise InputError(f"subject id {s.id!r} found twice (also {first})", here)
        if "/" in s.id:
            raise InputError(f"subject id {s.id!r} must not contain '/'")
        seen[s.id] = s


def detect_label_convention(
    facts: Sequence[dict[str, Any]],
) -> tuple[str, dict[str, int], list[str]]:
    """(convention, label_names, warnings) from the label values present across the cohort.

    BraTS 2020/2021 label enhancing tumour 4, BraTS 2023 labels it 3: the values decide, never the
    file names alone. Binary lesion masks (ATLAS, CSV) give "binary". Anything ambiguous gives
    "unknown" with a warning and names "label<k>".
    """
    labelled = [f for f in facts if not f["healthy"]]
    if not labelled:
        return "none", {}, []
    sources = {"brats" if f["source"].startswith("brats") else "other" for f in labelled}
    values = sorted({v for f in labelled for v in f["label_values"]} - {0})
    has3, has4 = 3 in values, 4 in values
    if has4 and not has3 and set(values) <= {1, 2, 4}:
        convention, names = "brats2020", {**BRATS_NAMES, "enhancing": 4}
    elif has3 and not has4 and set(values) <= {1, 2, 3}:
        convention, names = "brats2023", {**BRATS_NAMES, "enhancing": 3}
    elif sources == {"other"} and set(values) <= {1}:
        return "binary", {"lesion": 1}, []
    else:
        names = {f"label{v}": v for v in values}
        return "unknown", names, [_ambiguous(values, sources)]
    warnings = []
    named = {f["source"] for f in labelled if f["source"].startswith("brats")}
    if named and named != {convention}:
        warnings.append(f"label values {values} say {convention} but the file names say {named}")
    return convention, names, warnings


def _ambiguous(values: list[int], sources: set[str]) -> str:
    """The warning for a cohort whose label convention cannot be told."""
    why = "no label 3 or 4 anywhere" if not {3, 4} & set(values) else "unexpected label values"
    mixed = " (BraTS and other lesion cohorts mixed)" if len(sources) > 1 else ""
    return f"label convention unknown: {why}, values {values}{mixed}; labels stored as found"
