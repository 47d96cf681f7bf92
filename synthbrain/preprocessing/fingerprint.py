"""The dataset fingerprint: per-subject facts and cohort statistics, cached as readable JSON.

`preprocess` writes ``<name>.fingerprint.json`` beside ``<name>.h5``: subject count, source shapes
and spacings, intensity percentiles per contrast, lesion volumes in ml (median, IQR, min, max),
the label convention and the skipped subjects with their reasons. Its `key` hashes the input
files (paths, sizes, mtimes) and the options that shape the facts (layout, contrasts), so an
unchanged cohort reuses the facts instead of loading every scan again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synthbrain.io.atomic import atomic_target
from synthbrain.preprocessing.cohorts import SubjectFiles

FINGERPRINT_VERSION = 1


def fingerprint_path(out: Path) -> Path:
    """<name>.fingerprint.json beside <name>.h5."""
    return out.with_name(out.stem + ".fingerprint.json")


def _file_stats(subjects: Iterable[SubjectFiles]) -> dict[str, dict[str, Any]]:
    """Path, size and mtime of every input file: the fingerprint's cache key."""
    out: dict[str, dict[str, Any]] = {}
    for s in subjects:
        entry = {}
        for role, path in s.files().items():
            try:
                st = path.stat()
                entry[role] = [str(path.resolve()), st.st_size, st.st_mtime_ns]
            except OSError:
                entry[role] = [str(path), None, None]
        out[s.id] = entry
    return out


def fingerprint_key(subjects: Sequence[SubjectFiles], layout: str, contrasts: list[str]) -> str:
    """sha256 of the input file list (paths, sizes, mtimes) and the options that shape pass 1."""
    blob = {
        "files": _file_stats(subjects),
        "layout": layout,
        "contrasts": contrasts,
        "problems": {s.id: s.problem for s in subjects if s.problem},
        "version": FINGERPRINT_VERSION,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def cached(path: Path, key: str) -> dict[str, Any] | None:
    """The cached fingerprint when it matches `key`, else None."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("key") == key else None


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temporary name, rename)."""
    with atomic_target(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _stats(values: Sequence[float]) -> dict[str, float] | None:
    """median, IQR (q1, q3), min and max of a list (None when empty)."""
    if not len(values):
        return None
    v = np.asarray(values, dtype=np.float64)
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {
        "median": float(med),
        "q1": float(q1),
        "q3": float(q3),
        "min": float(v.min()),
        "max": float(v.max()),
        "n": int(v.size),
    }


def summarize(facts: Sequence[dict[str, Any]], contrasts: Sequence[str]) -> dict[str, Any]:
    """Cohort-level statistics of the per-subject facts."""
    shapes = np.array([f["source_shape"] for f in facts], dtype=np.float64)
    spacings = np.array([f["source_spacing"] for f in facts], dtype=np.float64)

    def per_axis(a: np.ndarray) -> dict[str, list[float]]:
        return {k: getattr(np, k)(a, axis=0).tolist() for k in ("median", "min", "max")}

    intensity = {
        c: {
            p: float(np.median([f["intensity"][c][p] for f in facts]))
            for p in ("p0.5", "p50", "p99.5")
        }
        for c in contrasts
    }
    lesions = [f["lesion_ml"] for f in facts if f["lesion_ml"] is not None]
    return {
        "n_subjects": len(facts),
        "shape": per_axis(shapes),
        "spacing_mm": per_axis(spacings),
        "intensity_percentiles": intensity,
        "lesion_ml": _stats(lesions),
    }


def mask_warnings(facts: dict[str, dict]) -> list[str]:
    """A warning for brain masks taken from nonzero voxels that fill most of the scan."""
    loose = sorted(
        sid for sid, f in facts.items() if f["mask_from_nonzero"] and f["brain_fraction"] > 0.9
    )
    if not loose:
        return []
    shown = ", ".join(loose[:5]) + (" …" if len(loose) > 5 else "")
    return [
        f"{len(loose)} subject(s) ({shown}): the brain mask taken from nonzero voxels covers over "
        "90% of the scan; the scans may not be skull-stripped (give brain masks)"
    ]


def make_record(
    key: str,
    inputs: Sequence[Path],
    options: dict[str, Any],
    facts: dict[str, dict],
    skipped: dict[str, str],
    hdf5_name: str,
) -> dict[str, Any]:
    """The fingerprint JSON (before the HDF5 is written: `written` is filled in afterwards)."""
    ordered = [facts[k] for k in sorted(facts)]
    return {
        "version": FINGERPRINT_VERSION,
        "key": key,
        "inputs": [str(p) for p in inputs],
        "options": options,
        "summary": summarize(ordered, options["contrasts"]),
        "label_values": sorted({v for f in ordered for v in f["label_values"]}),
        "fingerprint_skipped": sorted(skipped.items()),
        "skipped": sorted(skipped.items()),
        "subjects": facts,
        "hdf5": hdf5_name,
        "written": [],
        "n_subjects": 0,
    }
