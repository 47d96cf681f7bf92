"""`synthbrain phantom` end to end: files, manifest, shards, resume, HDF5, layouts."""

from __future__ import annotations

import json

import h5py
import nibabel as nib
import numpy as np
import pytest
from cli_runner import exit_code

from synthbrain.io.outputs import merge_manifests, read_manifest, validate_manifest

run = exit_code


@pytest.fixture(scope="module")
def flat_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ph") / "run"
    code = run(["phantom", "--n", "2", "--lesion", "stroke", "--contrasts", "t1,flair",
                "--seed", "7", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    return out


def test_flat_run_files_and_manifest(flat_run):
    records = read_manifest(flat_run / "manifest.jsonl")
    assert [r["id"] for r in records] == ["phantom00000", "phantom00001"]
    report = validate_manifest(flat_run)
    assert not report.problems and len(report.ok) == 2
    config = json.loads((flat_run / "config.json").read_text())
    assert config["lesion"] == "stroke" and config["contrasts"] == ["t1", "flair"]
    image = nib.load(flat_run / "phantom00000_image-t1.nii.gz")
    healthy = nib.load(flat_run / "phantom00000_healthy-t1.nii.gz")
    mask = nib.load(flat_run / "phantom00000_mask.nii.gz")
    assert image.shape == mask.shape == (96, 112, 96)
    assert mask.get_data_dtype() == np.uint8
    outside = np.asarray(mask.dataobj) == 0
    assert np.array_equal(image.get_fdata()[outside], healthy.get_fdata()[outside])
    assert records[0]["lesion_volume_ml"] > 0


def test_shards_reproduce_the_unsharded_run(flat_run, tmp_path):
    out = tmp_path / "sharded"
    for i in range(2):
        args = ["--seed", "7", "--out", str(out), "--shard", f"{i}/2", "--quiet"]
        assert run(["phantom", "--n", "2", "--contrasts", "t1,flair", *args]) == 0
    for name in ("phantom00000_image-t1.nii.gz", "phantom00001_mask.nii.gz"):
        assert (tmp_path / "sharded" / name).read_bytes() == (flat_run / name).read_bytes()
    merged = merge_manifests([tmp_path / "sharded"], tmp_path / "merged.jsonl")
    ids = [r["id"] for r in read_manifest(merged)]
    assert ids == ["phantom00000", "phantom00001"]


def test_resume_skips_finished_and_refuses_other_settings(flat_run, capsys):
    before = (flat_run / "manifest.jsonl").read_text()
    assert run(["phantom", "--n", "2", "--lesion", "stroke", "--contrasts", "t1,flair",
                "--seed", "7", "--out", str(flat_run), "--resume", "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["written"] == 0 and summary["skipped_finished"] == 2
    assert (flat_run / "manifest.jsonl").read_text() == before
    code = run(["phantom", "--n", "2", "--lesion", "wmh", "--out", str(flat_run), "--quiet"])
    assert code == 2


def test_hdf5_training_set(tmp_path):
    path = tmp_path / "set.h5"
    assert run(["phantom", "--n", "3", "--lesion", "tumor", "--contrasts", "t1,t1gd",
                "--hdf5", str(path), "--slices", "--quiet"]) == 0  # fmt: skip
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "synthbrain-hdf5"
        assert json.loads(f.attrs["contrasts"]) == ["t1", "t1gd"]
        ids = list(f["subjects"])
        assert len(ids) == 3
        labels = f["subjects"][ids[0]]["labels"][()]
        assert set(np.unique(labels)) <= {0, 1, 2, 3}
        assert f["subjects"][ids[0]]["images"].shape == (2, 96, 112, 96)
        split_total = sum(len(f["splits"][s]) for s in ("train", "val", "test"))
        assert split_total == 3


def test_nnunet_layout(tmp_path):
    out = tmp_path / "nn"
    assert run(["phantom", "--n", "1", "--lesion", "wmh", "--contrasts", "t1,flair",
                "--layout", "nnunet", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    dataset = json.loads((out / "dataset.json").read_text())
    assert (
        dataset["channel_names"] == {"0": "T1", "1": "FLAIR"} or len(dataset["channel_names"]) == 2
    )
    assert dataset["labels"]["background"] == 0 and dataset["numTraining"] == 1
    assert len(list((out / "imagesTr").glob("*_0000.nii.gz"))) == 1
    assert len(list((out / "imagesTr").glob("*_0001.nii.gz"))) == 1
    assert len(list((out / "labelsTr").glob("*.nii.gz"))) == 1


def test_needs_an_output(capsys):
    assert run(["phantom", "--n", "1"]) == 2
