"""Paired engine commands on a tiny random model: generate (shards, resume), heal, implant."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from niftis import AFFINE_LPS, AFFINE_OBLIQUE, AFFINE_PIR, centred, write_nifti

from synthbrain import api
from synthbrain.errors import EngineUnavailable, InputError
from synthbrain.io.geometry import resample_array
from tests.tiny_models import tiny_paired_bundle

GRID, SPACING = (16, 16, 16), 12.0


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return tiny_paired_bundle(tmp_path_factory.mktemp("w"), jitter=0.05)


def _gen(out: Path, weights: Path, **kw):
    options = dict(n=3, steps=2, weights=str(weights), seed=7)
    options.update(kw)
    return api.generate(out=out, **options)


def _hashes(folder: Path) -> dict[str, dict]:
    records = {}
    for manifest in folder.glob("manifest*.jsonl"):
        for line in manifest.read_text().splitlines():
            rec = json.loads(line)
            records[rec["id"]] = rec["sha256"]
    return records


def test_generate_writes_triplets(tmp_path, weights):
    summary = _gen(tmp_path / "a", weights, preview=True)
    assert summary["written"] == 3
    files = sorted(p.name for p in (tmp_path / "a").glob("synth00000_*"))
    assert files == [f"synth00000_{k}.nii.gz" for k in ("healthy", "image", "mask")]
    img = nib.load(tmp_path / "a" / "synth00000_image.nii.gz")
    assert img.shape == GRID and np.allclose(np.diag(img.affine)[:3], SPACING)
    mask = np.asarray(nib.load(tmp_path / "a" / "synth00000_mask.nii.gz").dataobj)
    healthy = nib.load(tmp_path / "a" / "synth00000_healthy.nii.gz").get_fdata()
    band = np.ones(GRID, bool) if mask.any() else np.zeros(GRID, bool)
    if mask.any():
        from synthbrain.engines.paired.edit import dilate

        band = dilate(mask > 0, 2)
    assert np.array_equal(healthy[~band], img.get_fdata()[~band])  # equal outside the seam band
    assert (tmp_path / "a" / "previews" / "synth00000.png").exists()


def test_shards_and_batches_reproduce_the_unsharded_run(tmp_path, weights):
    whole = _hashes(_run(tmp_path / "whole", weights, batch_size=2))
    parts = {}
    for i in range(2):
        parts.update(_hashes(_run(tmp_path / f"s{i}", weights, shard=f"{i}/2")))
    assert parts == whole and len(whole) == 3


def _run(out: Path, weights: Path, **kw) -> Path:
    _gen(out, weights, **kw)
    return out


def test_resume_skips_finished_and_redoes_broken(tmp_path, weights):
    out = tmp_path / "r"
    _gen(out, weights, n=2)
    before = _hashes(out)
    (out / "synth00001_image.nii.gz").unlink()
    summary = _gen(out, weights, n=2, resume=True)
    assert summary["written"] == 1 and summary["skipped_finished"] == 1
    assert _hashes(out) == before


def test_generate_from_given_masks(tmp_path, weights):
    from synthbrain.spatial.template import template_arrays

    _, brain, affine = template_arrays(SPACING, GRID)
    masks = tmp_path / "masks"
    mask = np.zeros(GRID, np.uint8)
    mask[6:9, 6:9, 6:9] = 1
    write_nifti(masks / "m.nii.gz", mask * (brain > 0), affine)
    _gen(tmp_path / "c", weights, n=1, masks=masks)
    written = np.asarray(nib.load(tmp_path / "c" / "synth00000_mask.nii.gz").dataobj)
    assert np.array_equal(written, mask * (brain > 0))


def test_generate_with_phantom_masks(tmp_path, weights, monkeypatch):
    """--masks phantom: each sample gets its own phantom lesion, inside the brain, replayable."""
    from synthbrain.spatial.template import template_arrays

    monkeypatch.chdir(tmp_path)  # no folder named "phantom" here
    _, brain, _ = template_arrays(SPACING, GRID)
    for run in ("p", "q"):
        _gen(tmp_path / run, weights, n=2, masks=Path("phantom"))
    files = [tmp_path / "p" / f"synth0000{k}_mask.nii.gz" for k in (0, 1)]
    masks = [np.asarray(nib.load(f).dataobj) for f in files]
    for mask in masks:
        assert mask.any() and set(np.unique(mask)) <= {0, 1} and not (mask & (brain == 0)).any()
    assert not np.array_equal(masks[0], masks[1])
    assert _hashes(tmp_path / "p") == _hashes(tmp_path / "q")
    record = json.loads((tmp_path / "p" / "manifest.jsonl").read_text().splitlines()[0])
    assert record["task"] == "conditional" and record["mask_source"] == "phantom"


def test_masks_must_be_a_folder_or_phantom(tmp_path, weights):
    with pytest.raises(InputError, match="'phantom'"):
        _gen(tmp_path / "x", weights, masks=tmp_path / "missing")
    assert not (tmp_path / "x").exists()


def test_unknown_lesion_lists_the_available_weights(tmp_path):
    with pytest.raises(EngineUnavailable, match="no paired weights for lesion 'bogus'"):
        api.generate(out=tmp_path / "x", n=1, lesion="bogus", engine="paired")


def _scan(tmp_path: Path, affine: np.ndarray, shape=(20, 22, 18)) -> tuple[Path, np.ndarray]:
    """The template (MNI space) seen through an odd grid, in scanner-like units."""
    from synthbrain.spatial.template import template_arrays

    t1, _, t_aff = template_arrays(SPACING, GRID)
    aff = centred(affine @ np.diag([10.0, 10.0, 10.0, 1.0]), shape, (0.0, -18.0, 18.0))
    data = resample_array(t1, t_aff, shape, aff, order=1) * 800 + 5
    return write_nifti(tmp_path / "scan.nii.gz", data.astype(np.float32), aff), aff


@pytest.mark.parametrize("affine", [AFFINE_LPS, AFFINE_PIR, AFFINE_OBLIQUE])
def test_implant_keeps_the_scan_outside_the_edit(tmp_path, weights, affine):
    scan, aff = _scan(tmp_path, affine)
    mask = np.zeros((20, 22, 18), np.uint8)
    mask[8:12, 9:13, 7:11] = 1
    mask_path = write_nifti(tmp_path / "mask.nii.gz", mask, aff)
    out = tmp_path / "imp.nii.gz"
    summary = api.implant(scan=scan, mask=mask_path, out=out, weights=str(weights), steps=2,
                          in_template_space=True)  # fmt: skip
    src, res = nib.load(scan), nib.load(out)
    edit = np.asarray(nib.load(tmp_path / "imp_editmask.nii.gz").dataobj) > 0
    assert res.shape == src.shape and np.array_equal(res.affine, src.affine)
    assert int(res.header["sform_code"]) == int(src.header["sform_code"])
    assert edit.any() and edit[mask > 0].all() and summary["edited_voxels"] == edit.sum()
    assert np.array_equal(res.get_fdata()[~edit], src.get_fdata()[~edit])


def test_heal_keeps_the_scan_outside_the_edit(tmp_path, weights):
    scan, _ = _scan(tmp_path, AFFINE_PIR)
    out = tmp_path / "healed.nii.gz"
    api.heal(scan=scan, out=out, weights=str(weights), steps=2, in_template_space=True,
             acg_target="renoised")  # fmt: skip
    src, res = nib.load(scan).get_fdata(), nib.load(out).get_fdata()
    edit = np.asarray(nib.load(tmp_path / "healed_editmask.nii.gz").dataobj) > 0
    assert np.array_equal(res[~edit], src[~edit])


def test_mask_outside_the_brain_is_refused(tmp_path, weights):
    scan, aff = _scan(tmp_path, AFFINE_LPS)
    mask = np.zeros((20, 22, 18), np.uint8)
    mask[0:2, 0:2, 0:2] = 1
    mask_path = write_nifti(tmp_path / "mask.nii.gz", mask, aff)
    with pytest.raises(InputError, match="% of the mask lies inside the brain"):
        api.implant(scan=scan, mask=mask_path, out=tmp_path / "o.nii.gz", weights=str(weights),
                    steps=2, in_template_space=True)  # fmt: skip
    assert not (tmp_path / "o.nii.gz").exists()


def test_scan_outside_template_space_is_refused(tmp_path, weights):
    data = np.zeros((10, 10, 10), np.float32)
    data[4:6, 4:6, 4:6] = 1.0
    scan = write_nifti(tmp_path / "far.nii.gz", data, np.diag([2.0, 2.0, 2.0, 1.0]) + np.array(
        [[0, 0, 0, 500.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))  # fmt: skip
    with pytest.raises(InputError, match="MNI152"):
        api.heal(scan=scan, out=tmp_path / "h.nii.gz", weights=str(weights), steps=2,
                 in_template_space=True)  # fmt: skip


def test_generate_nnunet_layout(tmp_path, weights):
    out = tmp_path / "nn"
    _gen(out, weights, n=1, layout="nnunet")
    assert (out / "imagesTr").is_dir() and (out / "labelsTr").is_dir()
    assert len(list((out / "imagesTr").glob("*_0000.nii.gz"))) == 1
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 1
