"""Run folders: atomic writes, layouts, manifest lines, validation, resume, overwrite, merging."""

import json

import nibabel as nib
import numpy as np
import pytest

from synthbrain.errors import InputError
from synthbrain.io import outputs
from synthbrain.io.nifti import Volume
from synthbrain.io.outputs import (
    atomic_write_bytes,
    atomic_write_json,
    lesion_volume_ml,
    merge_manifests,
    read_manifest,
    sha256_file,
    validate_manifest,
)
from synthbrain.io.runwriter import RunWriter
from synthbrain.rng import Shard, derive_seed, shard_indices

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
CONFIG = {"engine": "paired", "lesion": "stroke", "seed": 5, "n": 4, "shard": None}


def sample(k: int, contrasts=("t1",)) -> dict:
    """Tiny deterministic volumes for sample k of run seed 5."""
    rng = np.random.default_rng(derive_seed(5, k))
    mask = np.zeros((8, 8, 8), dtype=np.uint8)
    mask[2:4, 2:5, 3:5] = 1
    vols = {"mask": Volume(mask, AFFINE), "healthy": Volume(rng.random((8, 8, 8)), AFFINE)}
    if len(contrasts) == 1:
        vols["image"] = Volume(rng.random((8, 8, 8)).astype(np.float32), AFFINE)
    else:
        for c in contrasts:
            vols[f"image_{c}"] = Volume(rng.random((8, 8, 8)).astype(np.float32), AFFINE)
    return vols


def record(k: int) -> dict:
    return {"seed": derive_seed(5, k), "engine": "paired", "weights": "w", "lesion": "stroke",
            "seconds": 0.5}  # fmt: skip


def write_run(out, indices, **kwargs) -> RunWriter:
    """A run of the given sample indices written the way `generate` would."""
    writer = RunWriter(out, config=CONFIG, **kwargs)
    with writer:
        for k in indices:
            writer.write_sample(f"synth_{k:03d}", sample(k), record=record(k), index=k)
    return writer


# ---------------------------------------------------------------- atomic writes


class _Exploding:
    """A file object that writes half of what it is given, then fails (a crash mid-write)."""

    def __init__(self, path, mode):
        self.handle = open(path, mode)  # noqa: SIM115 - closed in __exit__

    def write(self, data):
        self.handle.write(data[: len(data) // 2])
        raise OSError("disk died mid-write")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def test_atomic_write_crash_leaves_no_final_file(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    monkeypatch.setattr(outputs, "open", _Exploding, raising=False)
    with pytest.raises(OSError, match="mid-write"):
        atomic_write_bytes(target, b"0123456789")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_crash_keeps_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    atomic_write_json(target, {"a": 1})
    monkeypatch.setattr(outputs, "open", _Exploding, raising=False)
    with pytest.raises(OSError):
        atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_volume_write_crash_leaves_no_file_and_no_line(tmp_path, monkeypatch):
    def torn_save(img, path):
        with open(path, "wb") as handle:
            handle.write(b"\x1f\x8b partial")
        raise OSError("killed")

    writer = RunWriter(tmp_path, config=CONFIG)
    monkeypatch.setattr(nib, "save", torn_save)
    with pytest.raises(OSError, match="killed"):
        writer.write_sample("synth_000", sample(0), record=record(0), index=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    assert writer.finished_ids() == set()


def test_sha256_and_lesion_volume(tmp_path):
    (tmp_path / "x").write_bytes(b"abc")
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_file(tmp_path / "x") == expected
    mask = np.zeros((8, 8, 8), bool)
    mask[:5, :4, :2] = True  # 40 voxels of 8 mm³
    assert lesion_volume_ml(mask, AFFINE) == pytest.approx(0.32)


# ---------------------------------------------------------------- manifest and validation


def test_manifest_line_per_sample(tmp_path):
    write_run(tmp_path, range(3))
    lines = read_manifest(tmp_path / "manifest.jsonl")
    assert [line["id"] for line in lines] == ["synth_000", "synth_001", "synth_002"]
    first = lines[0]
    assert first["seed"] == derive_seed(5, 0) and first["index"] == 0
    assert first["lesion_volume_ml"] == pytest.approx(12 * 8 / 1000)
    assert first["files"]["image"] == "synth_000_image.nii.gz"
    for key, rel in first["files"].items():
        assert first["sha256"][key] == sha256_file(tmp_path / rel)
    assert json.loads((tmp_path / "config.json").read_text()) == CONFIG
    report = validate_manifest(tmp_path)
    assert report.valid and report.ok_ids == ["synth_000", "synth_001", "synth_002"]


def test_validate_catches_missing_changed_and_truncated(tmp_path):
    write_run(tmp_path, range(3))
    (tmp_path / "synth_000_mask.nii.gz").unlink()
    changed = tmp_path / "synth_001_image.nii.gz"
    data = bytearray(changed.read_bytes())
    data[-1] ^= 0xFF
    changed.write_bytes(bytes(data))
    with open(tmp_path / "manifest.jsonl", "ab") as handle:
        handle.write(b'{"id": "synth_003", "files": {"im')
    report = validate_manifest(tmp_path)
    reasons = dict(report.problems)
    assert "missing file synth_000_mask.nii.gz" in reasons["synth_000"]
    assert "sha256 mismatch" in reasons["synth_001"]
    assert "truncated" in reasons["manifest.jsonl"]
    assert report.ok_ids == ["synth_002"] and not report.valid
    assert [r["id"] for r in read_manifest(tmp_path / "manifest.jsonl")][-1] == "synth_002"


def test_corrupt_middle_line_is_an_input_error(tmp_path):
    write_run(tmp_path, range(2))
    path = tmp_path / "manifest.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("{broken\n" + "".join(lines))
    with pytest.raises(InputError, match="line 1"):
        read_manifest(path)


def test_validate_lists_orphans(tmp_path):
    write_run(tmp_path, range(1))
    (tmp_path / "synth_009_image.nii.gz").write_bytes(b"left by a killed sample")
    report = validate_manifest(tmp_path)
    assert report.valid and report.orphans == ["synth_009_image.nii.gz"]


def test_finished_ids_and_resume_repairs_tail(tmp_path):
    write_run(tmp_path, range(3))
    (tmp_path / "synth_001_healthy.nii.gz").unlink()
    with open(tmp_path / "manifest.jsonl", "ab") as handle:
        handle.write(b'{"id": "synth_00')  # killed while appending
    writer = RunWriter(tmp_path, config=CONFIG, resume=True)
    assert writer.state == "resume"
    assert writer.finished_ids() == {"synth_000", "synth_002"}
    assert writer.finished_ids(verify=False) == {"synth_000", "synth_002"}
    writer.write_sample("synth_001", sample(1), record=record(1), index=1)
    report = validate_manifest(tmp_path)
    assert report.valid and report.ok_ids == ["synth_000", "synth_001", "synth_002"]
    assert writer.finished_ids() == {"synth_000", "synth_001", "synth_002"}


# ---------------------------------------------------------------- folder rules


def test_refuses_a_different_run(tmp_path):
    write_run(tmp_path, range(1))
    with pytest.raises(InputError, match="different run.*lesion"):
        RunWriter(tmp_path, config={**CONFIG, "lesion": "glioma"})
    # keys that do not define the run (shard, n, ...) do not make it different
    same = RunWriter(tmp_path, config={**CONFIG, "shard": "0/2", "n": 9})
    assert same.state == "same"


def test_identity_keys_narrow_the_comparison(tmp_path):
    write_run(tmp_path, range(1))
    writer = RunWriter(tmp_path, config={**CONFIG, "engine": "deviation"}, identity_keys=["seed"])
    assert writer.state == "same"
    with pytest.raises(InputError, match="seed"):
        RunWriter(tmp_path, config={**CONFIG, "seed": 6}, identity_keys=["seed"])


def test_overwrite_clears_only_our_files(tmp_path):
    write_run(tmp_path, range(2))
    (tmp_path / "notes.txt").write_text("mine")
    writer = RunWriter(tmp_path, config={**CONFIG, "lesion": "glioma"}, overwrite=True)
    assert writer.state == "overwrite"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "notes.txt"]
    assert json.loads((tmp_path / "config.json").read_text())["lesion"] == "glioma"


def test_resume_refuses_a_run_with_other_settings(tmp_path):
    write_run(tmp_path, range(2))
    with pytest.raises(InputError, match="lesion"):
        RunWriter(tmp_path, config={**CONFIG, "lesion": "glioma"}, resume=True)
    writer = RunWriter(tmp_path, config=CONFIG, resume=True)
    assert writer.finished_ids() == {"synth_000", "synth_001"}


def test_overwrite_and_resume_together_refused(tmp_path):
    with pytest.raises(InputError):
        RunWriter(tmp_path, config=CONFIG, overwrite=True, resume=True)


def test_foreign_nnunet_folder_refused_even_with_overwrite(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "imagesTr" / "case_0000.nii.gz").write_bytes(b"someone's data")
    with pytest.raises(InputError, match="did not write"):
        RunWriter(tmp_path, layout="nnunet", config=CONFIG, overwrite=True)
    assert (tmp_path / "imagesTr" / "case_0000.nii.gz").exists()


def test_nnunet_overwrite_clears_layout_folders(tmp_path):
    write_run(tmp_path, range(2), layout="nnunet")
    (tmp_path / "imagesTr" / "synth_099_0000.nii.gz").write_bytes(b"orphan of a killed sample")
    RunWriter(tmp_path, layout="nnunet", config={**CONFIG, "seed": 1}, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_bad_sample_id_and_clashing_labels(tmp_path):
    writer = RunWriter(tmp_path, layout="bids", config=CONFIG)
    with pytest.raises(InputError):
        writer.write_sample("../escape", sample(0), record=record(0))
    writer.write_sample("a_1", sample(0), record=record(0))
    with pytest.raises(InputError, match="same bids name"):
        writer.write_sample("a-1", sample(1), record=record(1))


# ---------------------------------------------------------------- layouts


def names(root) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_flat_layout_names(tmp_path):
    writer = RunWriter(tmp_path, config=CONFIG, channel_names=("t1", "flair"))
    vols = sample(0, ("t1", "flair"))
    vols["editmask"] = vols["mask"]
    writer.write_sample("s0", vols, record=record(0))
    assert names(tmp_path) == [
        "config.json", "manifest.jsonl", "s0_editmask.nii.gz", "s0_healthy.nii.gz",
        "s0_image-flair.nii.gz", "s0_image-t1.nii.gz", "s0_mask.nii.gz",
    ]  # fmt: skip


def test_bids_layout_names(tmp_path):
    writer = RunWriter(tmp_path, layout="bids", config=CONFIG, channel_names=("t1", "t1gd"))
    vols = sample(0, ("t1", "t1gd"))
    vols["healthy_t1gd"] = vols.pop("healthy")
    with writer:
        writer.write_sample("synth_007", vols, record=record(0))
    anat = "sub-synth007/anat/sub-synth007_"
    assert names(tmp_path) == [
        ".bidsignore", "config.json", "dataset_description.json", "manifest.jsonl",
        anat + "ce-gadolinium_desc-healthy_T1w.nii.gz",
        anat + "ce-gadolinium_desc-synthetic_T1w.nii.gz",
        anat + "desc-synthetic_T1w.nii.gz",
        anat + "label-lesion_mask.nii.gz",
    ]  # fmt: skip
    description = json.loads((tmp_path / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "synthbrain"
    assert "BIDSVersion" in description


def test_nnunet_layout_and_dataset_json(tmp_path):
    labels = {"background": 0, "lesion": 1}
    writer = write_run(
        tmp_path, range(2), layout="nnunet", channel_names=("t1",), labels=labels,
        dataset_name="Dataset501_Synth",
    )  # fmt: skip
    assert writer.layout.name == "nnunet"
    assert names(tmp_path) == [
        "config.json", "dataset.json", "healthyTr/synth_000_0000.nii.gz",
        "healthyTr/synth_001_0000.nii.gz", "imagesTr/synth_000_0000.nii.gz",
        "imagesTr/synth_001_0000.nii.gz", "labelsTr/synth_000.nii.gz",
        "labelsTr/synth_001.nii.gz", "manifest.jsonl",
    ]  # fmt: skip
    dataset = json.loads((tmp_path / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "T1"}
    assert dataset["labels"] == {"background": 0, "lesion": 1}
    assert dataset["numTraining"] == 2 == len(list((tmp_path / "labelsTr").iterdir()))
    assert dataset["file_ending"] == ".nii.gz"
    label = nib.load(tmp_path / "labelsTr" / "synth_000.nii.gz")
    assert set(np.unique(np.asarray(label.dataobj))) == {0, 1}


def test_nnunet_channels_numbered_in_order(tmp_path):
    writer = RunWriter(
        tmp_path, layout="nnunet", config=CONFIG, channel_names=("t1", "t2", "flair")
    )
    with writer:
        line = writer.write_sample("c1", sample(0, ("t1", "t2", "flair")), record=record(0))
        with pytest.raises(ValueError, match="missing"):
            writer.write_sample("c2", sample(1, ("t1", "t2")), record=record(1))
    assert line["files"]["image_flair"] == "imagesTr/c1_0002.nii.gz"
    dataset = json.loads((tmp_path / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "T1", "1": "T2", "2": "FLAIR"}
    assert dataset["numTraining"] == 1


def test_nnunet_labels_need_background_zero(tmp_path):
    with pytest.raises(InputError, match="background"):
        RunWriter(tmp_path, layout="nnunet", config=CONFIG, labels={"lesion": 1})


def test_unknown_layout(tmp_path):
    with pytest.raises(InputError, match="layout"):
        RunWriter(tmp_path, layout="zip", config=CONFIG)


# ---------------------------------------------------------------- merging shards


def without(lines: list[dict], *keys: str) -> list[dict]:
    return [{k: v for k, v in line.items() if k not in keys} for line in lines]


def test_merge_of_shards_equals_unsharded_run(tmp_path):
    whole = tmp_path / "whole"
    write_run(whole, range(5))
    shared = tmp_path / "shared"
    for i in range(2):
        shard = Shard(i, 2)
        write_run(shared, shard_indices(5, shard), shard=shard)
    assert sorted(p.name for p in shared.glob("manifest*")) == [
        "manifest.shard-0-of-2.jsonl",
        "manifest.shard-1-of-2.jsonl",
    ]
    merged = merge_manifests([shared], shared / "manifest.jsonl")
    assert read_manifest(merged) == read_manifest(whole / "manifest.jsonl")
    assert validate_manifest(merged).valid


def test_merge_of_separate_shard_folders_rebases_paths(tmp_path):
    whole = tmp_path / "whole"
    write_run(whole, range(4))
    for i in range(2):
        write_run(tmp_path / f"s{i}", shard_indices(4, (i, 2)), shard=(i, 2))
    merged = merge_manifests([tmp_path / "s1", tmp_path / "s0", tmp_path / "s1"], tmp_path)
    lines = read_manifest(merged)
    assert lines[0]["files"]["image"] == "s0/synth_000_image.nii.gz"
    assert without(lines, "files") == without(read_manifest(whole / "manifest.jsonl"), "files")
    report = validate_manifest(merged)
    assert report.valid and len(report.ok_ids) == 4


def test_merge_conflicting_duplicates_is_an_error(tmp_path):
    write_run(tmp_path / "a", [0])
    b = tmp_path / "b"
    writer = RunWriter(b, config=CONFIG)
    writer.write_sample("synth_000", sample(1), record=record(1), index=0)
    with pytest.raises(InputError, match="synth_000 differs"):
        merge_manifests([tmp_path / "a", b], tmp_path / "merged.jsonl")
    assert not (tmp_path / "merged.jsonl").exists()


def test_merge_missing_source(tmp_path):
    with pytest.raises(InputError, match="no such"):
        merge_manifests([tmp_path / "nope"], tmp_path / "m.jsonl")
