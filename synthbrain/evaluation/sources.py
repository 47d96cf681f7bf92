"""Open what `evaluate` compares: a run folder (through its manifest), a reference folder of
image/mask pairs (flat, BIDS or nnU-Net layout), a `preprocess` HDF5 set, or `phantom:N`.

Every opener checks what it can without reading voxels (manifest and sha256, masks present,
at least two cases) and raises InputError naming the folder, so a bad input writes nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from synthbrain.errors import InputError
from synthbrain.evaluation.cases import Case, CaseSet

# First seed of the held-out phantoms: the weights are trained on seeds < 1000 (docs/phantom.md).
HELD_OUT_SEED = 1000
_BIDS_SUFFIX = {"T1w": "t1", "T2w": "t2", "FLAIR": "flair", "PDw": "pd"}


def _load_files(case_id: str, root: Path, files: dict[str, str], contrasts: tuple) -> Case:
    """A Case from a record's {key: relative path}: image[_c], healthy[_c], mask or labels."""
    from synthbrain.io.nifti import load_volume

    images: dict[str, np.ndarray] = {}
    healthy: dict[str, np.ndarray] = {}
    geometry = {}
    mask_vol = None
    for key, rel in files.items():
        base, _, contrast = key.partition("_")
        if base not in ("image", "healthy", "mask", "labels"):
            continue
        kind = "image" if base in ("image", "healthy") else "label"
        if base == "mask" and "labels" in files:
            continue
        vol = load_volume(root / rel, kind=kind)
        geometry[key] = (tuple(vol.data.shape), vol.affine)
        if kind == "label":
            mask_vol = vol
            continue
        name = contrast or (contrasts[0] if contrasts else "image")
        (images if base == "image" else healthy)[name] = vol.data.astype(np.float32)
    if mask_vol is None or not images:
        raise InputError(f"case {case_id} has no image or no mask/labels file", root)
    values = tuple(float(v) for v in np.unique(mask_vol.data)[:8])
    return Case(case_id, images, mask_vol.data > 0, mask_vol.affine, healthy or None,
                geometry, values)  # fmt: skip


def _run_contrasts(records: list[dict], config: dict) -> tuple[str, ...]:
    """Contrast names of a run: from the records, the config, or the weights' entry."""
    named = records[0].get("contrasts") or config.get("contrasts")
    if named:
        return tuple(named)
    weights = config.get("weights") or records[0].get("weights")
    if weights:
        from synthbrain.weights import registry

        entry = registry().get(str(weights))
        if entry is not None:
            return tuple(entry.contrasts)
    keys = [k.partition("_")[2] for k in records[0]["files"] if k.startswith("image_")]
    return tuple(keys) or ("image",)


def open_run(folder: Path, name: str = "synthetic") -> CaseSet:
    """A generate (or phantom) run folder, every sample verified against its manifest sha256."""
    from synthbrain.io.outputs import collect_records, validate_manifest

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("no such folder", folder)
    report = validate_manifest(folder)  # InputError when there is no manifest
    if report.problems:
        sid, why = report.problems[0]
        raise InputError(f"not a valid run: {len(report.problems)} problem(s), first {sid}: {why}",
                         folder)  # fmt: skip
    records = collect_records(report.manifests, [])
    records = [records[i] for i in report.ok]
    if not records:
        raise InputError("the run's manifest lists no samples", folder)
    if not any(k in ("mask", "labels") for k in records[0]["files"]):
        raise InputError("the run's samples have no mask or labels file", folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    contrasts = _run_contrasts(records, config)
    by_id = {r["id"]: r for r in records}

    def load(case_id: str) -> Case:
        return _load_files(case_id, folder, by_id[case_id]["files"], contrasts)

    lesion = records[0].get("lesion") or config.get("lesion")
    info = {"engine": records[0].get("engine"), "weights": records[0].get("weights")}
    return CaseSet(name, "run", list(by_id), contrasts, load, lesion, folder, info)


def _nnunet_pairs(folder: Path) -> tuple[dict[str, dict[str, str]], tuple[str, ...]]:
    """{case: {key: path}} and contrasts of an nnU-Net raw dataset (imagesTr/ + labelsTr/)."""
    from synthbrain.io.layouts import NNUNET_CHANNELS

    names = {v.lower(): k for k, v in NNUNET_CHANNELS.items()}
    dataset = folder / "dataset.json"
    channels = json.loads(dataset.read_text()).get("channel_names", {}) if dataset.is_file() else {}
    contrasts = tuple(names.get(str(channels[k]).lower(), str(channels[k]).lower())
                      for k in sorted(channels, key=int)) or ("image",)  # fmt: skip
    pairs: dict[str, dict[str, str]] = {}
    for label in sorted((folder / "labelsTr").glob("*.nii.gz")):
        case = label.name[: -len(".nii.gz")]
        files = {"labels": f"labelsTr/{label.name}"}
        for i, contrast in enumerate(contrasts):
            image = folder / "imagesTr" / f"{case}_{i:04d}.nii.gz"
            if image.is_file():
                files["image" if len(contrasts) == 1 else f"image_{contrast}"] = \
                    f"imagesTr/{image.name}"  # fmt: skip
        pairs[case] = files
    return pairs, contrasts


def _bids_pairs(folder: Path) -> tuple[dict[str, dict[str, str]], tuple[str, ...]]:
    """{subject: {key: path}} of BIDS anat folders: *_mask / *_dseg as labels, the rest images."""
    pairs: dict[str, dict[str, str]] = {}
    seen: list[str] = []
    for anat in sorted(folder.glob("sub-*/**/anat")):
        files: dict[str, str] = {}
        for path in sorted(anat.glob("*.nii.gz")):
            stem = path.name[: -len(".nii.gz")]
            rel = path.relative_to(folder).as_posix()
            if stem.endswith(("_mask", "_dseg")):
                if "desc-edit" not in stem:
                    files.setdefault("labels", rel)
                continue
            if "desc-healthy" in stem:
                continue
            suffix = stem.rsplit("_", 1)[-1]
            contrast = _BIDS_SUFFIX.get(suffix, suffix.lower())
            contrast = "t1gd" if contrast == "t1" and "ce-" in stem else contrast
            files[f"image_{contrast}"] = rel
            seen.append(contrast)
        pairs[anat.parent.name if anat.parent.name.startswith("sub-") else anat.parts[-3]] = files
    return pairs, tuple(dict.fromkeys(seen))


_FLAT = re.compile(r"^(?P<id>.+?)_(?P<key>image(-[A-Za-z0-9]+)?|mask|labels|seg)\.nii\.gz$")


def _flat_pairs(folder: Path) -> tuple[dict[str, dict[str, str]], tuple[str, ...]]:
    """{id: {key: path}} of `<id>_image[-<c>].nii.gz` beside `<id>_mask|labels|seg.nii.gz`."""
    pairs: dict[str, dict[str, str]] = {}
    seen: list[str] = []
    for path in sorted(folder.glob("*.nii.gz")):
        match = _FLAT.match(path.name)
        if not match:
            continue
        key = match["key"]
        if key.startswith("image-"):
            seen.append(key[6:].lower())
            key = f"image_{key[6:].lower()}"
        elif key in ("mask", "seg"):
            key = "labels" if key == "seg" else "mask"
        pairs.setdefault(match["id"], {})[key] = path.name
    return pairs, tuple(dict.fromkeys(seen))


def open_folder(folder: Path, name: str = "reference") -> CaseSet:
    """A reference folder: a run (manifest), an nnU-Net dataset, BIDS, or flat pairs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("no such folder", folder)
    if any(folder.glob("manifest*.jsonl")):
        return open_run(folder, name)
    if (folder / "labelsTr").is_dir() or (folder / "imagesTr").is_dir():
        kind, (pairs, contrasts) = "nnunet", _nnunet_pairs(folder)
    elif any(folder.glob("sub-*")):
        kind, (pairs, contrasts) = "bids", _bids_pairs(folder)
    else:
        kind, (pairs, contrasts) = "flat", _flat_pairs(folder)
    with_mask = {k: v for k, v in pairs.items() if ("mask" in v or "labels" in v)}
    if not pairs:
        raise InputError(f"no image/mask pairs found ({kind} layout looked for)", folder)
    if not with_mask:
        raise InputError(f"the reference has no lesion masks ({len(pairs)} images, 0 masks)",
                         folder)  # fmt: skip
    contrasts = contrasts or ("image",)

    def load(case_id: str) -> Case:
        return _load_files(case_id, folder, with_mask[case_id], contrasts)

    info = {"without_mask": len(pairs) - len(with_mask)}
    return CaseSet(name, kind, sorted(with_mask), contrasts, load, None, folder, info)


def open_hdf5(path: Path, name: str = "reference") -> CaseSet:
    """A `preprocess` / `phantom --hdf5` training set: every subject with labels."""
    from synthbrain.io.h5format import read_info, read_subject, split_ids

    info = read_info(path)
    ids = split_ids(path, "all")
    contrasts = tuple(info.get("contrasts") or info.get("channels") or ("image",))
    affine_default = np.asarray(info.get("affine", np.eye(4)), np.float64)

    def load(case_id: str) -> Case:
        data = read_subject(path, case_id)
        if "labels" not in data:
            raise InputError(f"subject {case_id} has no labels", path)
        images = {c: data["images"][i].astype(np.float32) for i, c in enumerate(contrasts)}
        affine = np.asarray(data["attrs"].get("affine", affine_default), np.float64)
        healthy = None
        if "healthy" in data:
            healthy = {c: data["healthy"][i].astype(np.float32) for i, c in enumerate(contrasts)}
        return Case(case_id, images, data["labels"] > 0, affine, healthy,
                    brain=data["brain_mask"] > 0)  # fmt: skip

    if not ids:
        raise InputError("the HDF5 set holds no subjects", path)
    if "labels" not in read_subject(path, ids[0]):
        raise InputError("the reference has no lesion masks (no labels in the HDF5 set)", path)
    return CaseSet(name, "hdf5", ids, contrasts, load, info.get("lesion"), Path(path), {})


def open_phantoms(n: int, lesion: str, contrasts: tuple[str, ...], seed: int = HELD_OUT_SEED
                  ) -> CaseSet:  # fmt: skip
    """N held-out phantom subjects (seeds from `seed` >= 1000, never the training seeds)."""
    from synthbrain.phantom import LESIONS

    if lesion not in LESIONS or lesion == "none":
        raise InputError(f"phantom reference needs a lesion type, the run has {lesion!r}")
    known = ("t1", "t2", "flair", "t1gd", "pd")
    wanted = tuple(c for c in contrasts if c in known) or ("t1",)

    def load(case_id: str) -> Case:
        from synthbrain.phantom import iter_subjects

        k = int(case_id.rsplit("-", 1)[1])
        _, _, subject = next(iter_subjects(1, seed=seed, lesion=lesion, contrasts=wanted,
                                           indices=[k]))  # fmt: skip
        return Case(case_id, subject.images, subject.labels > 0, subject.affine,
                    subject.healthy, brain=subject.brain_mask > 0)  # fmt: skip

    ids = [f"phantom-{k:05d}" for k in range(n)]
    return CaseSet(f"phantom:{n}", "phantom", ids, wanted, load, lesion, None, {"seed": seed})


def open_reference(spec: str, run: CaseSet) -> CaseSet:
    """--reference: a folder, an .h5 file, or 'phantom:N' (the run's lesion and contrasts)."""
    if spec.startswith("phantom:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            raise InputError(
                f"--reference {spec!r}: expected phantom:N with an integer N"
            ) from None
        if n < 2:
            raise InputError(f"--reference {spec!r}: need at least 2 phantom subjects")
        return open_phantoms(n, run.lesion or "stroke", run.contrasts)
    path = Path(spec)
    if path.is_file() and path.suffix in (".h5", ".hdf5"):
        return open_hdf5(path)
    return open_folder(path)
