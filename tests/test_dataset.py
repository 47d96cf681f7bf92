"""The HDF5 training-set format: writer, split, slice index, and the torch Datasets over it."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from synthbrain.errors import InputError
from synthbrain.io.dataset import (
    H5Writer,
    SliceDataset,
    VolumeDataset,
    lesion_mask_from_labels,
    make_split,
    read_info,
    read_subject,
    split_ids,
)

GRID = (8, 9, 10)


def _subject(rng: np.random.Generator, lesion: bool) -> dict:
    """A tiny subject with a box brain mask on z in 3..7 and an optional 2-label lesion."""
    mask = np.zeros(GRID, np.uint8)
    mask[1:7, 2:8, 3:8] = 1
    images = (rng.random((2, *GRID)) * mask).astype(np.float32)
    labels = None
    if lesion:
        labels = np.zeros(GRID, np.uint8)
        labels[2:4, 3:5, 4:6] = 2
        labels[4:5, 3:5, 4:6] = 4
    return {"images": images, "brain_mask": mask, "labels": labels}


def _write(path, n=6, seed=0, slices=True, order=None, **kw) -> dict:
    """Write n subjects (odd ones with lesions); return the arrays by id."""
    rng = np.random.default_rng(0)
    subjects = {f"sub{i:02d}": _subject(rng, i % 2 == 1) for i in range(n)}
    writer = H5Writer(
        path,
        contrasts=["t1", "flair"],
        spacing=2.0,
        grid=GRID,
        label_names={"necrosis": 1, "edema": 2, "enhancing": 4},
        label_convention="brats2020",
        **kw,
    )
    for sid in order or sorted(subjects):
        s = subjects[sid]
        attrs = {"affine": np.eye(4), "intensity": {"t1": {"lo": 1.0, "hi": 9.0}}}
        writer.add_subject(sid, s["images"], s["brain_mask"], s["labels"], attrs=attrs)
    writer.finish(split_fractions=(0.5, 0.25, 0.25), seed=seed, slices=slices)
    return subjects


def test_writer_layout_attrs_chunks(tmp_path):
    path = tmp_path / "d.h5"
    subjects = _write(path)
    assert path.exists() and not (tmp_path / "d.h5.tmp").exists()
    info = read_info(path)
    assert info["format"] == "synthbrain-hdf5" and info["version"] == 1
    assert info["contrasts"] == ["t1", "flair"] and info["grid"] == list(GRID)
    assert info["spacing"] == [2.0, 2.0, 2.0] and info["label_convention"] == "brats2020"
    assert info["label_names"]["enhancing"] == 4 and info["n_subjects"] == 6
    assert info["split_sizes"] == {"train": 3, "val": 2, "test": 1} and info["slices"]
    with h5py.File(path) as h5:
        group = h5["subjects/sub01"]
        assert group["images"].dtype == np.float32 and group["images"].shape == (2, *GRID)
        assert group["images"].chunks == (2, *GRID[:2], 1)
        assert group["brain_mask"].dtype == np.uint8 and group["labels"].chunks == (*GRID[:2], 1)
        assert "labels" not in h5["subjects/sub00"]
    got = read_subject(path, "sub01")
    np.testing.assert_array_equal(got["images"], subjects["sub01"]["images"])
    np.testing.assert_array_equal(got["labels"], subjects["sub01"]["labels"])
    assert got["attrs"]["intensity"] == {"t1": {"lo": 1.0, "hi": 9.0}}
    assert got["attrs"]["healthy"] is False and read_subject(path, "sub00")["attrs"]["healthy"]


def test_split_reproducible_and_order_independent(tmp_path):
    _write(tmp_path / "a.h5", seed=3)
    _write(tmp_path / "b.h5", seed=3, order=[f"sub{i:02d}" for i in (5, 2, 0, 4, 1, 3)])
    for split in ("train", "val", "test"):
        assert split_ids(tmp_path / "a.h5", split) == split_ids(tmp_path / "b.h5", split)
    everything = sum((split_ids(tmp_path / "a.h5", s) for s in ("train", "val", "test")), [])
    assert sorted(everything) == split_ids(tmp_path / "a.h5", "all")
    ids = [f"s{i}" for i in range(20)]
    splits = {seed: make_split(ids, (0.8, 0.1, 0.1), seed)["train"] for seed in range(4)}
    assert len({tuple(v) for v in splits.values()}) > 1
    with pytest.raises(InputError, match="unknown split"):
        split_ids(tmp_path / "a.h5", "training")


def test_slice_index_meets_brain(tmp_path):
    path = tmp_path / "d.h5"
    _write(path)
    train = split_ids(path, "train")
    with h5py.File(path) as h5:
        rows = h5["slices/train"][()]
    assert rows.dtype == np.int32 and rows.shape == (len(train) * 5, 2)
    assert set(rows[:, 1].tolist()) == {3, 4, 5, 6, 7}
    assert set(rows[:, 0].tolist()) == set(range(len(train)))


def test_killed_writer_leaves_no_final_file(tmp_path):
    path = tmp_path / "d.h5"
    rng = np.random.default_rng(0)
    with (
        pytest.raises(RuntimeError, match="boom"),
        H5Writer(
            path, contrasts=["t1"], spacing=1, grid=GRID, label_names={}, label_convention="none"
        ) as writer,
    ):
        s = _subject(rng, False)
        writer.add_subject("a", s["images"][:1], s["brain_mask"])
        assert (tmp_path / "d.h5.tmp").exists() and not path.exists()
        raise RuntimeError("boom")
    assert not path.exists() and not (tmp_path / "d.h5.tmp").exists()


def test_writer_rejects_bad_input(tmp_path):
    path = tmp_path / "d.h5"
    _write(path)
    with pytest.raises(InputError, match="exists"):
        H5Writer(
            path, contrasts=["t1"], spacing=1, grid=GRID, label_names={}, label_convention="none"
        )
    writer = H5Writer(
        tmp_path / "e.h5", contrasts=["t1"], spacing=1, grid=GRID, label_names={},
        label_convention="none",
    )  # fmt: skip
    good = np.zeros((1, *GRID), np.float32)
    with pytest.raises(ValueError, match="shape"):
        writer.add_subject("x", np.zeros((2, *GRID)), np.ones(GRID))
    with pytest.raises(ValueError, match="NaN"):
        writer.add_subject("x", good + np.nan, np.ones(GRID))
    writer.add_subject("x", good, np.ones(GRID))
    with pytest.raises(ValueError, match="already"):
        writer.add_subject("x", good, np.ones(GRID))
    writer.abort()
    with pytest.raises(InputError, match="not a readable HDF5"):
        read_info(tmp_path / "missing.h5")


def test_volume_dataset_full_and_crops(tmp_path):
    path = tmp_path / "d.h5"
    subjects = _write(path)
    ids = split_ids(path, "train")
    full = VolumeDataset(path, "train")
    item = full[0]
    assert item["images"].shape == (2, *GRID) and item["images"].dtype == torch.float32
    assert item["brain_mask"].shape == (1, *GRID) and item["labels"].shape == (1, *GRID)
    np.testing.assert_array_equal(item["images"].numpy(), subjects[ids[0]]["images"])
    cropped = VolumeDataset(path, "train", crop=(4, 5, 6), generator_seed=7)
    a = cropped[1]
    assert a["images"].shape == (2, 4, 5, 6) and a["labels"].shape == (1, 4, 5, 6)
    b = VolumeDataset(path, "train", crop=(4, 5, 6), generator_seed=7)[1]
    assert torch.equal(a["images"], b["images"])  # same seed, epoch and index: same crop
    regions = set()
    for epoch in range(6):
        cropped.set_epoch(epoch)
        regions.add(tuple((r.start, r.stop) for r in cropped.crop_region(1)))
    assert len(regions) > 1
    region = cropped.crop_region(1)
    whole = subjects[ids[1]]["images"]
    np.testing.assert_array_equal(cropped[1]["images"].numpy(), whole[(slice(None), *region)])
    with pytest.raises(ValueError, match="crop"):
        VolumeDataset(path, "train", crop=11)


def test_slice_dataset_context(tmp_path):
    path = tmp_path / "d.h5"
    subjects = _write(path)
    ids = split_ids(path, "train")
    keys = ("images", "brain_mask", "labels", "healthy")
    flat = SliceDataset(path, "train", keys=("images", "brain_mask", "labels"))
    assert len(flat) == len(ids) * 5
    item = flat[0]
    assert item["images"].shape == (2, 8, 9) and item["brain_mask"].shape == (1, 8, 9)
    ctx = SliceDataset(path, "train", keys=keys, context=2)
    first = ctx[0]  # z = 3: neighbours z = 1..5
    assert first["images"].shape == (10, 8, 9) and first["labels"].shape == (1, 8, 9)
    vol = subjects[ids[0]]["images"]
    for offset, z in enumerate(range(1, 6)):
        np.testing.assert_array_equal(
            first["images"][2 * offset : 2 * offset + 2].numpy(), vol[..., z]
        )
    assert torch.equal(first["images"][ctx.center_channels()], flat[0]["images"])
    # clamped at the top edge: the grid ends at z = 9, the last brain slice is 7 and context 3
    top = SliceDataset(path, "train", context=3)[4]
    np.testing.assert_array_equal(top["images"][-2:].numpy(), vol[..., 9])
    np.testing.assert_array_equal(top["images"][-4:-2].numpy(), vol[..., 9])


def test_slice_dataset_without_index(tmp_path):
    path = tmp_path / "d.h5"
    _write(path, slices=False)
    assert not read_info(path)["slices"]
    assert len(SliceDataset(path, "train")) == len(split_ids(path, "train")) * 5


def test_dataloader_two_workers(tmp_path):
    path = tmp_path / "d.h5"
    _write(path)
    ds = SliceDataset(path, "train", context=1)
    ds[0]  # open a handle in the parent first: workers must not reuse it
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    assert sum(b["images"].shape[0] for b in batches) == len(ds)
    assert batches[0]["images"].shape == (4, 6, 8, 9)
    assert torch.equal(batches[0]["images"][1], ds[1]["images"])


def test_lesion_mask_from_labels():
    labels = torch.tensor([0.0, 1.0, 2.0, 4.0, 2.0])
    names = {"necrosis": 1, "edema": 2, "enhancing": 4}
    assert lesion_mask_from_labels(labels).tolist() == [0, 1, 1, 1, 1]
    assert lesion_mask_from_labels(labels, 2).tolist() == [0, 0, 1, 0, 1]
    assert lesion_mask_from_labels(labels, [1, "enhancing"], names).tolist() == [0, 1, 0, 1, 0]
    out = lesion_mask_from_labels(np.array([0, 4, 3], np.uint8), "any")
    assert out.dtype == np.float32 and out.tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="unknown label name"):
        lesion_mask_from_labels(labels, "tumour", names)
