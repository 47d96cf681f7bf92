"""`synthbrain evaluate`: every report section on tiny folders written here, and the bad inputs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from cli_runner import invoke
from evalfolders import AFFINE, write_pairs, write_run

pytest.importorskip("sklearn")


run = invoke  # (exit code, stdout, stderr)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Synthetic run: bigger, brighter lesions than the reference; one triplet broken."""
    root = tmp_path_factory.mktemp("eval")
    synth = write_run(root / "synth", 8, radius=4.0, lesion_value=0.45, seed=1)
    ref = write_pairs(root / "ref", 8, "flat", radius=2.0, lesion_value=0.1, seed=2)
    return root, synth, ref


@pytest.fixture(scope="module")
def report(folders):
    """The report of the synthetic run against the flat reference (CLI, --json)."""
    root, synth, ref = folders
    from synthbrain.evaluation import evaluate

    out = root / "report"
    summary = evaluate(synth, str(ref), out, bootstrap=200)
    return out, summary


def test_report_files_and_self_contained_html(report):
    out, summary = report
    names = {"index.html", "summary.json", "volume.png", "location.png", "intensity.png",
             "realism.png", "gallery.png"}  # fmt: skip
    assert names <= {p.name for p in out.iterdir()}
    html = (out / "index.html").read_text()
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 5
    # Self-contained: no file, http or script references.
    assert not re.search(r'(src|href)="(?!data:)', html) and "<script" not in html
    assert json.loads((out / "summary.json").read_text())["volume"] == summary["volume"]


def test_volume_section_sees_the_size_difference(report):
    v = report[1]["volume"]
    # radius 4 balls vs radius 2 balls (2 mm voxels): ~2.1 ml vs ~0.27 ml, disjoint ranges.
    assert v["synthetic"]["median"] > 4 * v["reference"]["median"]
    assert v["ks_statistic"] == 1.0 and v["ks_pvalue"] < 0.01


def test_intensity_and_realism_see_the_brighter_lesions(report):
    t1 = report[1]["intensity"]["t1"]
    assert t1["mean"]["ratio"] > 2.0  # 0.45 vs 0.1 of ~0.6 tissue
    patch = report[1]["realism"]["lesion_patches"]
    assert patch["auc"] > 0.9 and patch["ci"][0] <= patch["auc"] <= patch["ci"][1]


def test_same_set_against_itself_is_identical(folders, tmp_path):
    from synthbrain.evaluation import evaluate

    _, synth, _ = folders
    s = evaluate(synth, str(synth), tmp_path / "r", bootstrap=50)
    assert s["location"]["correlation"] == pytest.approx(1.0)
    assert s["volume"]["ks_statistic"] == 0.0
    assert s["intensity"]["t1"]["contrast"]["ratio"] == pytest.approx(1.0)


def _edit_volume(run, index: int, key: str, voxel: tuple, value: float) -> None:
    """Change one voxel of a sample's file and re-hash it, so the manifest stays valid and
    only the consistency checks can notice."""
    import nibabel as nib

    from synthbrain.io.outputs import read_manifest, sha256_file

    record = read_manifest(run / "manifest.jsonl")[index]
    path = run / record["files"][key]
    img = nib.load(path)
    data = np.asarray(img.dataobj).copy()
    data[voxel] = value
    nib.save(nib.Nifti1Image(data, img.affine, img.header), path)
    text = (run / "manifest.jsonl").read_text()
    (run / "manifest.jsonl").write_text(text.replace(record["sha256"][key], sha256_file(path)))


def test_consistency_catches_broken_triplets(tmp_path):
    from synthbrain.evaluation import evaluate

    synth = write_run(tmp_path / "synth", 4, seed=3)
    _edit_volume(synth, 1, "image", (0, 0, 0), 0.9)  # image != healthy far from the lesion
    _edit_volume(synth, 2, "mask", (0, 0, 23), 1)  # a lesion voxel in a corner, off the brain
    c = evaluate(synth, str(synth), tmp_path / "r", bootstrap=20)["consistency"]
    assert c["n"] == 4 and c["all_ok"] == 2
    assert c["healthy_outside_seam_exact"] == 3 and c["mask_inside_brain"] == 3
    fails = {f["id"]: f for f in c["failures"]}
    assert fails["case001"]["changed_voxels_outside_seam"] == 1
    assert fails["case002"]["mask_voxels_outside_brain"] == 1
    assert "1 mask voxels outside the brain" in (tmp_path / "r" / "index.html").read_text()


def test_gallery_picks_best_median_worst(report):
    gallery = report[1]["gallery"]
    scores = [gallery[k]["score"] for k in ("best", "median", "worst")]
    assert scores == sorted(scores) and len({gallery[k]["id"] for k in gallery}) == 3


@pytest.mark.parametrize("layout", ["bids", "nnunet"])
def test_reference_layouts(tmp_path, layout):
    from synthbrain.evaluation.sources import open_folder

    ref = open_folder(write_pairs(tmp_path / layout, 3, layout, seed=4))
    assert ref.kind == layout and len(ref) == 3 and ref.contrasts == ("t1",)
    case = ref.load(ref.ids[0])
    assert case.mask.any() and case.images["t1"].shape == case.mask.shape


def test_reference_on_a_finer_grid_is_resampled(folders, tmp_path):
    from synthbrain.evaluation.cases import Case
    from synthbrain.evaluation.grid import align, grid_of
    from synthbrain.evaluation.sources import open_run

    _, synth, _ = folders
    target = open_run(synth).load("case000")
    fine = np.diag([1.0, 1.0, 1.0, 1.0])
    fine[:3, 3] = AFFINE[:3, 3] - 0.5  # same world box, 1 mm voxels
    world = np.indices((48, 48, 48)).reshape(3, -1)
    src = ((world.T + 0.5) // 2).astype(int).clip(0, 23)  # nearest 2 mm voxel of each 1 mm one
    mask = target.mask[src[:, 0], src[:, 1], src[:, 2]].reshape(48, 48, 48)
    image = target.images["t1"][src[:, 0], src[:, 1], src[:, 2]].reshape(48, 48, 48)
    moved = align(Case("fine", {"t1": image}, mask, fine), grid_of(target), "test")
    assert moved.shape == target.shape
    assert (moved.mask == target.mask).mean() > 0.97


def _bad(capsys, args: list[str], out) -> str:  # noqa: ANN001
    code, _, err = run(["evaluate", *args, "--out", str(out), "--bootstrap", "10"], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    return err


def test_bad_inputs_exit_2_and_write_nothing(folders, tmp_path, capsys):
    _, synth, ref = folders
    out = tmp_path / "out"
    err = _bad(capsys, [str(ref), "--reference", str(ref)], out)
    assert str(ref) in err and "manifest" in err
    masks_only = tmp_path / "nomask"
    masks_only.mkdir()
    for p in ref.glob("*_image.nii.gz"):
        (masks_only / p.name).write_bytes(p.read_bytes())
    err = _bad(capsys, [str(synth), "--reference", str(masks_only)], out)
    assert "no lesion masks" in err and str(masks_only) in err
    err = _bad(capsys, [str(synth), "--reference", str(ref), "--downstream"], out)
    assert "at least 10 reference" in err
    far = AFFINE.copy()
    far[:3, 3] += 500.0
    far_ref = write_pairs(tmp_path / "far", 3, "flat", affine=far)
    err = _bad(capsys, [str(synth), "--reference", str(far_ref)], out)
    assert "grids cannot be brought together" in err


def test_tampered_run_is_refused(tmp_path, capsys):
    synth = write_run(tmp_path / "synth", 3)
    victim = next(synth.glob("case001_mask.nii.gz"))
    victim.write_bytes(victim.read_bytes() + b"tampered")
    err = _bad(capsys, [str(synth), "--reference", str(synth)], tmp_path / "out")
    assert "sha256" in err and str(synth) in err


def test_nnunet_segmenter_needs_nnunetv2(folders, tmp_path, capsys, monkeypatch):
    import importlib.util

    root, synth, _ = folders
    ref = write_pairs(tmp_path / "ref10", 10, "flat", seed=5)
    real_find = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "nnunetv2" else real_find(name, *a),
    )
    err = _bad(capsys, [str(synth), "--reference", str(ref), "--downstream", "--segmenter",
                        "nnunet"], tmp_path / "out")  # fmt: skip
    assert "nnunetv2" in err
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "nnunetv2" else real_find(name, *a),
    )
    out = tmp_path / "nn"
    code, stdout, err = run(["evaluate", str(synth), "--reference", str(ref), "--out", str(out),
                             "--downstream", "--segmenter", "nnunet", "--json",
                             "--bootstrap", "10"], capsys)  # fmt: skip
    assert code == 0, err
    nn = json.loads(stdout)["downstream"]["nnunet"]
    assert set(nn["datasets"]) == {"reference", "synthetic", "reference+synthetic"}
    both = json.loads((out / "nnunet" / "Dataset903_synthbrainBoth" / "dataset.json").read_text())
    assert both["numTraining"] == 6 + 8  # 10 reference minus 4 held out, plus 8 synthetic
    assert len(list((out / "nnunet" / "test" / "labelsTs").glob("*.nii.gz"))) == 4
    assert "nnUNetv2_train 903 3d_fullres all" in (out / "nnunet" / "commands.sh").read_text()


def test_run_contrasts_come_from_the_weights_entry(tmp_path):
    from synthbrain.evaluation.sources import open_run

    synth = write_run(tmp_path / "s", 2)
    config = json.loads((synth / "config.json").read_text())
    del config["contrasts"]
    config["weights"] = "deviation-stroke-2mm"  # registry: contrasts t1, flair
    (synth / "config.json").write_text(json.dumps(config))
    assert open_run(synth).contrasts == ("t1", "flair")


def test_hdf5_reference(folders, tmp_path):
    from evalfolders import triplet

    from synthbrain.evaluation import evaluate
    from synthbrain.io.h5format import H5Writer

    _, synth, _ = folders
    path = tmp_path / "ref.h5"
    with H5Writer(path, contrasts=["t1"], spacing=2.0, grid=(24, 24, 24),
                  label_names={"lesion": 1}, label_convention="binary") as writer:  # fmt: skip
        for k in range(4):
            t = triplet(50 + k, 2.5, 0.15)
            labels = t["mask"].astype(np.uint8)
            writer.add_subject(f"s{k}", t["image"][None], t["image"] > 0, labels=labels,
                               attrs={"affine": AFFINE})  # fmt: skip
        writer.finish()
    s = evaluate(synth, str(path), tmp_path / "r", bootstrap=20)
    assert s["inputs"]["n_reference"] == 4 and s["volume"]["reference"]["n"] == 4
    assert s["volume"]["reference"]["median"] > 0


@pytest.mark.slow
def test_generate_run_against_held_out_phantoms(tmp_path, capsys):
    """A real (tiny) generate run of the embedded paired weights against phantom:3."""
    gen, out = tmp_path / "gen", tmp_path / "report"
    code, _, err = run(["generate", "--n", "2", "--engine", "paired", "--lesion", "stroke",
                        "--masks", "phantom", "--steps", "2", "--out", str(gen), "-q"],
                       capsys)  # fmt: skip
    assert code == 0, err
    code, stdout, err = run(["evaluate", str(gen), "--reference", "phantom:3", "--out", str(out),
                             "--json", "--bootstrap", "50"], capsys)  # fmt: skip
    assert code == 0, err
    s = json.loads(stdout)
    assert s["inputs"]["contrasts"] == [["t1", "t1"]] and s["inputs"]["grid_shape"] == [96, 112, 96]
    c = s["consistency"]
    assert c["n"] == 2 and c["geometry_identical"] == 2 and c["healthy_outside_seam_exact"] == 2
    assert s["volume"]["reference"]["n"] == 3 and (out / "index.html").is_file()
