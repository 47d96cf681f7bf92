"""Deviation engine on files: implant / heal on awkward grids, generate, train (tiny models)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from synthbrain import api
from synthbrain.engines.deviation.config import load_config
from synthbrain.engines.deviation.run import save_weights
from synthbrain.engines.deviation.tensors import DeviationModel
from synthbrain.errors import InputError
from synthbrain.io.nifti import load_volume
from synthbrain.training.request import TrainRequest
from tests.niftis import (
    AFFINE_LPS,
    AFFINE_OBLIQUE,
    AFFINE_PIR,
    ball,
    centred,
    smooth_pattern,
    write_nifti,
)

TINY = {
    "contrasts": ["t1", "flair"],
    "crop": 16,
    "min_size": 16,
    "margin_mm": 4.0,
    "denoiser": {"base_channels": 8, "channel_mults": [1, 2], "attention_levels": [-1]},
    "substrate": {"base_channels": 4, "channel_mults": [1, 2, 2, 2, 2], "attention_levels": []},
}
SHAPE = (20, 22, 18)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny random deviation model saved as a weights file (fp16, config in metadata)."""
    torch.manual_seed(0)
    model = DeviationModel(load_config(None, TINY))
    with torch.no_grad():
        for p in model.denoiser.heads.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return save_weights(model, tmp_path_factory.mktemp("w") / "tiny.safetensors")


def scan_files(folder, affine, *, spacing_scale=1.0):
    """A T1 (int16 with slope), a FLAIR and a ball mask on one (odd) grid."""
    aff = centred(affine, SHAPE)
    aff[:3, :3] *= spacing_scale
    image = smooth_pattern(SHAPE, aff) * 200
    t1 = write_nifti(folder / "t1.nii.gz", image / 0.5, aff, dtype=np.int16, slope=0.5)
    flair = write_nifti(folder / "flair.nii.gz", image * 1.5 + 3, aff)
    mask = write_nifti(folder / "mask.nii.gz", ball(SHAPE, aff, 5.0), aff)
    return t1, flair, mask


def implant(scan, mask, out, weights, **kw):
    """api.implant with the tiny model and few steps."""
    return api.implant(scan=scan, mask=mask, out=out, engine="deviation", weights=str(weights),
                       steps=3, device="cpu", **kw)  # fmt: skip


@pytest.mark.parametrize(
    "affine", [AFFINE_LPS, AFFINE_PIR, AFFINE_OBLIQUE], ids=["lps", "pir", "oblique"]
)
def test_implant_outside_mask_bit_identical_on_odd_grids(tmp_path, weights, affine):
    t1, _, mask = scan_files(tmp_path, affine, spacing_scale=1.7)
    out = tmp_path / "out.nii.gz"
    summary = implant(t1, mask, out, weights, variants=2, seed=5)
    src, res = load_volume(t1), load_volume(out)
    m = load_volume(mask).data > 0
    assert res.shape == src.shape and np.array_equal(res.affine, src.affine)
    assert np.array_equal(res.data[~m], src.data[~m])
    assert np.abs(res.data[m] - src.data[m]).max() > 0
    var1 = load_volume(tmp_path / "out_variant-1.nii.gz")
    assert np.array_equal(var1.data[~m], src.data[~m])
    assert np.abs(var1.data[m] - res.data[m]).max() > 0  # variants differ
    edit = load_volume(tmp_path / "out_editmask.nii.gz", kind="mask")
    assert np.array_equal(edit.data > 0, m & (src.data != 0))
    assert summary["weights_sha256"] and len(summary["variant_seeds"]) == 2


def test_implant_same_seed_same_file_and_severity_zero(tmp_path, weights):
    t1, _, mask = scan_files(tmp_path, AFFINE_OBLIQUE)
    implant(t1, mask, tmp_path / "a.nii.gz", weights, seed=3)
    implant(t1, mask, tmp_path / "b.nii.gz", weights, seed=3)
    implant(t1, mask, tmp_path / "c.nii.gz", weights, seed=3, severity=0.0)
    api.heal(scan=t1, mask=mask, out=tmp_path / "h.nii.gz", engine="deviation",
             weights=str(weights), device="cpu")  # fmt: skip
    a, b = load_volume(tmp_path / "a.nii.gz").data, load_volume(tmp_path / "b.nii.gz").data
    assert np.array_equal(a, b)
    healed = load_volume(tmp_path / "h.nii.gz").data
    assert np.allclose(load_volume(tmp_path / "c.nii.gz").data, healed)  # s = 0: the substrate


def test_implant_several_contrasts_share_one_lesion(tmp_path, weights):
    t1, flair, mask = scan_files(tmp_path, AFFINE_LPS)
    out = tmp_path / "o.nii.gz"
    summary = implant(t1, mask, out, weights, images={"flair": flair})
    assert summary["contrasts"] == ["flair", "t1"]
    m = load_volume(mask).data > 0
    f_in, f_out = load_volume(flair).data, load_volume(tmp_path / "o_flair.nii.gz").data
    assert np.array_equal(f_out[~m], f_in[~m]) and np.abs(f_out - f_in)[m].max() > 0


def test_implant_reads_each_file_once(tmp_path, weights, monkeypatch):
    import synthbrain.io.nifti as nifti

    t1, flair, mask = scan_files(tmp_path, AFFINE_LPS)
    read, original = [], nifti.load_volume
    monkeypatch.setattr(
        nifti, "load_volume", lambda path, **kw: read.append(path) or original(path, **kw)
    )
    implant(t1, mask, tmp_path / "o.nii.gz", weights, images={"flair": flair})
    assert sorted(map(str, read)) == sorted(map(str, (t1, mask, flair)))


def test_implant_contrast_grids(tmp_path, weights):
    t1, _, mask = scan_files(tmp_path, AFFINE_LPS)
    other = centred(AFFINE_OBLIQUE, SHAPE)
    flair = write_nifti(tmp_path / "f2.nii.gz", smooth_pattern(SHAPE, other) + 1, other)
    with pytest.raises(InputError, match="flair"):
        implant(t1, mask, tmp_path / "x.nii.gz", weights, images={"flair": flair})
    assert not (tmp_path / "x.nii.gz").exists()
    implant(t1, mask, tmp_path / "y.nii.gz", weights, images={"flair": flair}, resample=True)
    assert load_volume(tmp_path / "y_flair.nii.gz").shape == SHAPE


def test_implant_rejects_bad_inputs(tmp_path, weights):
    t1, _, _ = scan_files(tmp_path, AFFINE_LPS)
    aff = centred(AFFINE_LPS, SHAPE)
    data = load_volume(t1).data
    corner = np.zeros(SHAPE, np.uint8)
    corner[:2, :2, :2] = 1
    empty_brain = write_nifti(tmp_path / "t1bg.nii.gz", np.where(corner > 0, 0, data + 1), aff)
    outside = write_nifti(tmp_path / "corner.nii.gz", corner, aff)
    with pytest.raises(InputError, match="no brain"):
        implant(empty_brain, outside, tmp_path / "z.nii.gz", weights)
    with pytest.raises(InputError, match="t2"):
        implant(t1, outside, tmp_path / "z.nii.gz", weights, images={"t2": t1})
    assert not list(tmp_path.glob("z*"))


def test_heal_changes_only_the_mask(tmp_path, weights):
    t1, flair, mask = scan_files(tmp_path, AFFINE_PIR)
    out = tmp_path / "healed.nii.gz"
    summary = api.heal(scan=t1, mask=mask, out=out, engine="deviation", weights=str(weights),
                       device="cpu", images={"flair": flair})  # fmt: skip
    m = load_volume(mask).data > 0
    src, res = load_volume(t1).data, load_volume(out).data
    assert np.array_equal(res[~m], src[~m]) and np.abs(res - src)[m].max() > 0
    assert summary["editmask"].endswith("healed_editmask.nii.gz")
    with pytest.raises(InputError, match="--mask"):
        api.heal(scan=t1, out=tmp_path / "h2.nii.gz", engine="deviation",
                 weights=str(weights), device="cpu")  # fmt: skip


def _folders(tmp_path):
    """Two healthy anatomies and two masks in folders (world-aligned)."""
    anat, masks = tmp_path / "anat", tmp_path / "masks"
    for i, affine in enumerate((AFFINE_LPS, AFFINE_RAS_2)):
        aff = centred(affine, SHAPE)
        write_nifti(anat / f"a{i}.nii.gz", smooth_pattern(SHAPE, aff) + 0.1, aff)
        write_nifti(masks / f"m{i}.nii.gz", ball(SHAPE, aff, 4.0 + i, (1.0, 0, 0)) * (i + 1), aff)
    return anat, masks


AFFINE_RAS_2 = np.diag([2.0, 2.0, 2.0, 1.0])


def test_generate_with_folders_manifest_resume_and_shards(tmp_path, weights):
    anat, masks = _folders(tmp_path)
    opts = {"n": 3, "engine": "deviation", "weights": str(weights), "anatomy": anat,
            "masks": masks, "steps": 2, "device": "cpu", "seed": 4}  # fmt: skip
    full = api.generate(out=tmp_path / "full", **opts)
    assert full["written"] == 3
    lines = [json.loads(x) for x in (tmp_path / "full" / "manifest.jsonl").read_text().splitlines()]
    assert {
        "engine",
        "weights",
        "weights_sha256",
        "seed",
        "severity",
        "variant",
        "lesion_ml",
    } <= set(lines[0])
    for line in lines:
        image = load_volume(tmp_path / "full" / line["files"]["image"]).data
        healthy = load_volume(tmp_path / "full" / line["files"]["healthy"]).data
        mask = load_volume(tmp_path / "full" / line["files"]["mask"], kind="mask").data > 0
        assert np.array_equal(image[~mask], healthy[~mask]) and mask.any()
    again = api.generate(out=tmp_path / "full", resume=True, **opts)
    assert again["written"] == 0 and again["skipped_finished"] == 3
    for i in range(2):
        api.generate(out=tmp_path / "sharded", shard=f"{i}/2", **opts)
    sharded = {}
    for path in (tmp_path / "sharded").glob("manifest*.jsonl"):
        sharded.update(
            {r["id"]: r["sha256"] for r in map(json.loads, path.read_text().splitlines())}
        )
    assert sharded == {r["id"]: r["sha256"] for r in lines}


def test_train_tiny_set_then_implant(tmp_path):
    from synthbrain.io.dataset import H5Writer

    rng, grid = np.random.default_rng(0), (24, 24, 6)
    writer = H5Writer(tmp_path / "set.h5", contrasts=["t1", "flair"], spacing=[2.0] * 3,
                      grid=list(grid), label_names={"background": 0, "lesion": 1},
                      label_convention="binary")  # fmt: skip
    for i in range(4):
        images = rng.random((2, *grid)).astype(np.float32) * 0.5
        labels = np.zeros(grid, np.uint8)
        labels[8:14, 9:15, 2:4] = 1
        images[:, labels > 0] += 0.4
        writer.add_subject(f"s{i}", images=images, brain_mask=np.ones(grid, np.uint8),
                           labels=labels, attrs={"spacing": [2.0] * 3})  # fmt: skip
    writer.finish(split_fractions=(0.5, 0.5, 0.0), seed=0, slices=True)
    overrides = {**TINY, "train.num_workers": 0, "train.val_batches": 1, "train.warmup": 1}
    from synthbrain.engines.deviation.training import train

    summary = train(TrainRequest(data=tmp_path / "set.h5", out=tmp_path / "run", steps=2,
                                 batch_size=2, device="cpu", overrides=overrides))  # fmt: skip
    assert summary["step"] == 2 and (tmp_path / "run" / "main.safetensors").is_file()
    t1, _, mask = scan_files(tmp_path, AFFINE_LPS)
    implant(t1, mask, tmp_path / "o.nii.gz", tmp_path / "run" / "main.safetensors")
    with pytest.raises(InputError, match="lacks contrast.*t1gd"):
        train(TrainRequest(data=tmp_path / "set.h5", out=tmp_path / "run2", steps=1, batch_size=1,
                           device="cpu", overrides={**overrides, "contrasts": ["t1", "t1gd"]}))
