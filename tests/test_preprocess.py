"""preprocess: cohort discovery, label conventions, the subject pipeline and the HDF5 it writes."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from niftis import AFFINE_ANISO, AFFINE_LPS, AFFINE_PIR, AFFINE_RAS, ball, centred, write_nifti

from synthbrain.errors import InputError
from synthbrain.io.dataset import SliceDataset, VolumeDataset, make_split, read_info, split_ids
from synthbrain.preprocessing.cohorts import detect_label_convention, discover
from synthbrain.preprocessing.prepare import n4_correct
from synthbrain.preprocessing.run import preprocess
from synthbrain.spatial.window import scale_intensity, unscale_intensity

SHAPE = (21, 21, 21)  # odd: voxel centres on whole mm, so 2 mm grid points meet no NN ties
BRATS = {
    "2020": {"t1": "_t1", "t1gd": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    "2023": {"t1": "-t1n", "t1gd": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
}
BRIGHTNESS = {"t1": 300.0, "t1gd": 500.0, "t2": 800.0, "flair": 150.0}
FAST = {"spacing": 2.0, "grid_multiple": 8}


def _scan(affine: np.ndarray, shape=SHAPE) -> dict[str, np.ndarray]:
    """World-defined content (so every orientation samples the same anatomy): brain + tumour."""
    aff = centred(affine, shape)
    brain = ball(shape, aff, 8.5)
    edema = ball(shape, aff, 5.0, (1.0, 1.0, 0.0))
    enhancing = ball(shape, aff, 3.5, (1.0, 1.0, 0.0))
    necrosis = ball(shape, aff, 2.0, (1.0, 1.0, 0.0))
    world = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).reshape(3, -1)
    wx = (aff[:3, :3] @ world + aff[:3, 3:4])[0].reshape(shape)
    texture = (1.0 + 0.3 * np.sin(wx / 3.0)) * brain
    return {
        "aff": aff,
        "brain": brain,
        "edema": edema,
        "enh": enhancing,
        "nec": necrosis,
        "texture": texture.astype(np.float32),
    }


def write_brats(folder: Path, sid: str, affine, year="2020", enhancing=4, shape=SHAPE) -> Path:
    """One BraTS subject folder with all four contrasts and a segmentation."""
    s = _scan(affine, shape)
    sub = folder / sid
    names = BRATS[year]
    labels = np.where(s["edema"] > 0, 2, 0)
    labels = np.where(s["enh"] > 0, enhancing, labels)
    labels = np.where(s["nec"] > 0, 1, labels).astype(np.uint8) * s["brain"]
    for c, level in BRIGHTNESS.items():
        image = s["texture"] * level * (1.0 + 0.5 * (labels > 0))
        write_nifti(sub / f"{sid}{names[c]}.nii.gz", image.astype(np.float32), s["aff"])
    write_nifti(sub / f"{sid}{names['seg']}.nii.gz", labels, s["aff"])
    return sub


def write_bids(folder: Path, sub: str, affine, ses: str | None = "1") -> Path:
    """One ATLAS-style subject: T1w and a binary lesion mask (0/255 in one case)."""
    s = _scan(affine)
    anat = folder / sub / (f"ses-{ses}" if ses else "") / "anat"
    prefix = f"{sub}_ses-{ses}" if ses else sub
    write_nifti(anat / f"{prefix}_T1w.nii.gz", (s["texture"] * 100).astype(np.float32), s["aff"])
    mask = s["enh"] * (255 if ses is None else 1)
    write_nifti(
        anat / f"{prefix}_label-L_desc-T1lesion_mask.nii.gz", mask.astype(np.uint8), s["aff"]
    )
    return anat


@pytest.fixture(scope="module")
def brats2020(tmp_path_factory) -> Path:
    """Four BraTS 2020 subjects in RAS, LPS, anisotropic and PIR orientations."""
    root = tmp_path_factory.mktemp("brats2020")
    for sid, aff in [
        ("BraTS20_001", AFFINE_RAS),
        ("BraTS20_002", AFFINE_LPS),
        ("BraTS20_003", AFFINE_ANISO),
        ("BraTS20_004", AFFINE_PIR),
    ]:
        write_brats(root, sid, aff)
    return root


@pytest.fixture(scope="module")
def brats_h5(brats2020, tmp_path_factory) -> tuple[Path, object]:
    """The BraTS 2020 cohort preprocessed once at 2 mm, with the slice index."""
    out = tmp_path_factory.mktemp("out") / "brats.h5"
    return out, preprocess([brats2020], out, slices=True, seed=3, **FAST)


def test_brats2020_layout_attrs_and_intensities(brats_h5):
    out, report = brats_h5
    assert report.n_subjects == 4 and report.skipped == []
    assert report.label_convention == "brats2020"
    assert report.label_names == {"necrosis": 1, "edema": 2, "enhancing": 4}
    assert report.contrasts == ["t1", "t2", "flair", "t1gd"]
    # the grid covers the largest brain half-extents in 2 mm voxels, in multiples of 8
    half = np.max([f["brain_half_extent_mm"] for f in _fingerprint(report)["subjects"].values()], 0)
    need = 2 * half / 2.0
    assert all(g % 8 == 0 and need[i] <= g < need[i] + 8 for i, g in enumerate(report.grid))
    info = read_info(out)
    assert info["contrasts"] == report.contrasts and info["grid"] == report.grid
    assert info["spacing"] == [2.0, 2.0, 2.0] and info["label_convention"] == "brats2020"
    with h5py.File(out) as h5:
        for sid in report.subjects:
            group = h5["subjects"][sid]
            images, mask = group["images"][()], group["brain_mask"][()]
            assert images.shape == (4, *report.grid) and images.dtype == np.float32
            assert images.min() >= 0.0 and images.max() <= 1.0 and images.max() > 0.9
            assert not images[:, mask == 0].any()
            assert set(np.unique(group["labels"][()])) == {0, 1, 2, 4}
            assert np.allclose(np.diag(group.attrs["affine"]), [2, 2, 2, 1])
            intensity = json.loads(group.attrs["intensity"])
            assert set(intensity) == set(report.contrasts)
            assert all(v["lo"] < v["hi"] for v in intensity.values())
            assert group.attrs["lesion_type"] == "tumor" and not group.attrs["healthy"]
            paths = json.loads(group.attrs["source_paths"])
            assert paths["t1"].endswith(f"{sid}_t1.nii.gz") and paths["labels"].endswith(
                "_seg.nii.gz"
            )
        assert tuple(h5["subjects/BraTS20_003"].attrs["source_shape"]) == SHAPE


def _fingerprint(report) -> dict:
    return json.loads(report.fingerprint.read_text())


def test_orientations_give_the_same_grid_content(brats_h5):
    # The same world anatomy stored RAS, LPS and PIR must land identically on the RAS grid.
    out, _ = brats_h5
    with h5py.File(out) as h5:
        ras = h5["subjects/BraTS20_001/images"][()]
        for sid in ("BraTS20_002", "BraTS20_004"):
            np.testing.assert_allclose(h5[f"subjects/{sid}/images"][()], ras, atol=1e-4)
            np.testing.assert_array_equal(
                h5[f"subjects/{sid}/labels"][()], h5["subjects/BraTS20_001/labels"][()]
            )


def test_split_fingerprint_and_cache(brats_h5, brats2020):
    out, report = brats_h5
    everything = [split_ids(out, s) for s in ("train", "val", "test")]
    assert dict(zip(("train", "val", "test"), everything, strict=True)) == make_split(
        report.subjects, (0.8, 0.1, 0.1), 3
    )
    assert sum(report.splits.values()) == 4
    fp = json.loads(report.fingerprint.read_text())
    assert report.fingerprint == out.with_name("brats.fingerprint.json")
    assert fp["summary"]["n_subjects"] == 4 and fp["n_subjects"] == 4
    lesion = fp["summary"]["lesion_ml"]
    assert 0 < lesion["min"] <= lesion["q1"] <= lesion["median"] <= lesion["q3"] <= lesion["max"]
    assert set(fp["summary"]["intensity_percentiles"]) == {"t1", "t2", "flair", "t1gd"}
    assert np.allclose(fp["summary"]["spacing_mm"]["max"], [1.0, 1.3, 3.0])
    assert fp["label_convention"] == "brats2020" and fp["skipped"] == []
    with pytest.raises(InputError, match="exists"):
        preprocess([brats2020], out, **FAST)
    copy = out.with_name("again.h5")
    report.fingerprint.replace(copy.with_name("again.fingerprint.json"))
    try:
        again = preprocess([brats2020], copy, seed=3, **FAST)
        assert again.fingerprint_reused and again.subjects == report.subjects
        assert split_ids(copy, "train") == split_ids(out, "train")
        fresh = preprocess([brats2020], copy, seed=3, overwrite=True, **FAST)
        assert not fresh.fingerprint_reused
    finally:
        copy.with_name("again.fingerprint.json").replace(report.fingerprint)


def test_brats2023_naming_and_convention(tmp_path):
    for i, aff in enumerate([AFFINE_RAS, AFFINE_LPS, AFFINE_ANISO]):
        write_brats(tmp_path / "in", f"BraTS-GLI-0000{i}-000", aff, year="2023", enhancing=3)
    subjects = discover([tmp_path / "in"])
    assert {s.source for s in subjects} == {"brats2023"}
    assert set(subjects[0].images) == {"t1", "t1gd", "t2", "flair"}
    report = preprocess([tmp_path / "in"], tmp_path / "b.h5", grid=(12, 12, 10), **FAST)
    assert report.label_convention == "brats2023" and report.label_names["enhancing"] == 3
    with h5py.File(tmp_path / "b.h5") as h5:
        labels = h5["subjects/BraTS-GLI-00000-000/labels"][()]
        assert labels.shape == (12, 12, 10) and set(np.unique(labels)) == {0, 1, 2, 3}


def _facts(source: str, values: list[int], healthy=False) -> dict:
    return {"source": source, "label_values": [0, *values], "healthy": healthy}


def test_label_convention_detection():
    assert detect_label_convention([_facts("brats2020", [1, 2, 4])])[:2] == (
        "brats2020",
        {"necrosis": 1, "edema": 2, "enhancing": 4},
    )
    assert detect_label_convention([_facts("brats2023", [1, 2]), _facts("brats2023", [3])])[0] == (
        "brats2023"
    )
    convention, names, warnings = detect_label_convention([_facts("brats2020", [1, 2])])
    assert convention == "unknown" and names == {"label1": 1, "label2": 2}
    assert "no label 3 or 4" in warnings[0]
    assert detect_label_convention([_facts("brats2020", [1, 3, 4])])[0] == "unknown"
    assert detect_label_convention([_facts("bids", [1])])[:2] == ("binary", {"lesion": 1})
    assert detect_label_convention([_facts("healthy", [], healthy=True)])[0] == "none"
    # 2020 file names but 2023 values: the values win, with a warning
    convention, _, warnings = detect_label_convention([_facts("brats2020", [1, 2, 3])])
    assert convention == "brats2023" and "file names" in warnings[0]


def test_unknown_convention_is_warned(tmp_path):
    for i in range(2):
        write_brats(tmp_path / "in", f"S{i}", AFFINE_RAS, enhancing=2)
    report = preprocess([tmp_path / "in"], tmp_path / "u.h5", **FAST)
    assert report.label_convention == "unknown"
    assert any("label convention unknown" in message for message in report.warnings)


def test_atlas_bids_cohort(tmp_path):
    root = tmp_path / "ATLAS" / "R001"
    write_bids(root, "sub-r001s001", AFFINE_RAS)
    write_bids(root, "sub-r001s002", AFFINE_LPS)
    write_bids(root, "sub-r001s003", AFFINE_ANISO, ses=None)
    subjects = discover([tmp_path / "ATLAS"])
    assert sorted(s.id for s in subjects) == [
        "sub-r001s001_ses-1",
        "sub-r001s002_ses-1",
        "sub-r001s003",
    ]
    report = preprocess(
        [tmp_path / "ATLAS"],
        tmp_path / "atlas.h5",
        slices=True,
        n4=True,
        n4_iterations=(10,),
        **FAST,
    )
    assert report.n_subjects == 3 and report.label_convention == "binary"
    assert report.label_names == {"lesion": 1} and report.contrasts == ["t1"]
    with h5py.File(tmp_path / "atlas.h5") as h5:
        for sid in report.subjects:
            group = h5["subjects"][sid]
            assert set(np.unique(group["labels"][()])) == {0, 1}
            assert group["images"].shape == (1, *report.grid)
            assert group.attrs["lesion_type"] == "stroke" and group.attrs["n4"]
            images = group["images"][()]
            assert images.min() >= 0.0 and images.max() <= 1.0


def test_bad_subjects_skipped_or_strict(tmp_path):
    root = tmp_path / "in"
    for i in range(5):
        write_brats(root, f"S{i}", AFFINE_RAS)
    truncated = root / "S1" / "S1_t2.nii.gz"
    raw = truncated.read_bytes()
    truncated.write_bytes(raw[: len(raw) * 2 // 3])
    s = _scan(AFFINE_RAS)
    nan = (s["texture"] * 100).astype(np.float32)
    nan[10, 10, 10] = np.nan
    write_nifti(root / "S2" / "S2_flair.nii.gz", nan, s["aff"])
    write_nifti(root / "S3" / "S3_t1.nii.gz", np.ones((21, 21, 18), np.float32), s["aff"])
    (root / "S4" / "S4_t1ce.nii.gz").unlink()

    report = preprocess([root], tmp_path / "ok.h5", **FAST)
    assert report.subjects == ["S0"]
    reasons = dict(report.skipped)
    assert set(reasons) == {"S1", "S2", "S3", "S4"}
    assert "S1_t2.nii.gz" in reasons["S1"] and "truncated" in reasons["S1"]
    assert "S2_flair.nii.gz" in reasons["S2"] and "NaN" in reasons["S2"]
    assert "same grid" in reasons["S3"] and "no t1gd image" in reasons["S4"]
    fp = json.loads(report.fingerprint.read_text())
    assert {sid for sid, _ in fp["skipped"]} == {"S1", "S2", "S3", "S4"}

    strict_out = tmp_path / "strict.h5"
    with pytest.raises(InputError, match="S1_t2.nii.gz") as err:
        preprocess([root], strict_out, strict=True, **FAST)
    assert "truncated" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("strict")) == []


def test_csv_cohort_with_healthy_subject(tmp_path):
    rows = ["subject,t1,flair,mask,healthy"]
    for i, aff in enumerate([AFFINE_RAS, AFFINE_LPS, AFFINE_ANISO]):
        s = _scan(aff)
        write_nifti(tmp_path / "d" / f"p{i}_t1.nii.gz", s["texture"] * 90, s["aff"])
        write_nifti(tmp_path / "d" / f"p{i}_flair.nii.gz", s["texture"] * 40, s["aff"])
        mask = ""
        if i < 2:
            write_nifti(tmp_path / "d" / f"p{i}_mask.nii.gz", s["enh"], s["aff"])
            mask = f"d/p{i}_mask.nii.gz"
        rows.append(f"p{i},d/p{i}_t1.nii.gz,d/p{i}_flair.nii.gz,{mask},{'true' if i == 2 else ''}")
    (tmp_path / "cohort.csv").write_text("\n".join(rows) + "\n")
    report = preprocess([tmp_path / "cohort.csv"], tmp_path / "c.h5", **FAST)
    assert report.n_subjects == 3 and report.contrasts == ["t1", "flair"]
    assert report.label_convention == "binary"
    with h5py.File(tmp_path / "c.h5") as h5:
        assert "labels" not in h5["subjects/p2"] and h5["subjects/p2"].attrs["healthy"]
        assert set(np.unique(h5["subjects/p0/labels"][()])) == {0, 1}
    bad = tmp_path / "bad.csv"
    bad.write_text("subject,t1,healthy\np0,d/p0_t1.nii.gz,maybe\n")
    with pytest.raises(InputError, match="healthy must be true or false"):
        preprocess([bad], tmp_path / "x.h5", **FAST)


def test_healthy_folder_parallel_matches_serial(tmp_path):
    for i, aff in enumerate([AFFINE_RAS, AFFINE_LPS, AFFINE_PIR]):
        s = _scan(aff)
        write_nifti(tmp_path / "healthy" / f"h{i}.nii.gz", s["texture"] * 50, s["aff"])
    write_nifti(
        tmp_path / "healthy" / "h0_brainmask.nii.gz",
        _scan(AFFINE_RAS)["brain"],
        _scan(AFFINE_RAS)["aff"],
    )
    subjects = discover([tmp_path / "healthy"])
    assert [s.id for s in subjects] == ["h0", "h1", "h2"] and subjects[0].brain_mask is not None
    serial = preprocess([tmp_path / "healthy"], tmp_path / "s.h5", **FAST)
    parallel = preprocess([tmp_path / "healthy"], tmp_path / "p.h5", workers=2, **FAST)
    assert serial.label_convention == parallel.label_convention == "none"
    with h5py.File(tmp_path / "s.h5") as a, h5py.File(tmp_path / "p.h5") as b:
        for sid in serial.subjects:
            np.testing.assert_array_equal(
                a[f"subjects/{sid}/images"][()], b[f"subjects/{sid}/images"][()]
            )
            assert "labels" not in a[f"subjects/{sid}"]


def test_datasets_over_preprocessed_file(brats_h5):
    out, report = brats_h5
    slices = SliceDataset(out, "train", context=2)
    item = slices[0]
    assert item["images"].shape == (20, *report.grid[:2])
    assert item["labels"].shape == (1, *report.grid[:2])
    crops = VolumeDataset(out, "train", crop=8)
    assert crops[0]["images"].shape == (4, 8, 8, 8)
    loader = torch.utils.data.DataLoader(slices, batch_size=3, num_workers=2)
    batch = next(iter(loader))
    assert (
        batch["images"].shape == (3, 20, *report.grid[:2])
        and batch["brain_mask"].dtype == torch.float32
    )


def test_intensity_mapping_inverts():
    data = np.linspace(-5, 300, 64, dtype=np.float32)
    scaled = scale_intensity(data, 10.0, 250.0)
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    inside = (data >= 10) & (data <= 250)
    np.testing.assert_allclose(
        unscale_intensity(scaled, 10.0, 250.0)[inside], data[inside], rtol=1e-5, atol=1e-3
    )


def test_n4_reduces_a_smooth_bias():
    shape = (16, 16, 16)
    mask = np.zeros(shape, np.uint8)
    mask[2:14, 2:14, 2:14] = 1
    x = np.linspace(-1, 1, 16)[:, None, None]
    biased = (100.0 * np.exp(0.4 * x) * np.ones(shape)).astype(np.float32) * mask
    corrected = n4_correct(biased, mask, (1.0, 1.0, 1.0), shrink=1, iterations=(20, 20))
    inside = mask > 0

    def cv(a):
        return a[inside].std() / a[inside].mean()

    assert cv(corrected) < 0.5 * cv(biased)
