"""CLI options of the deviation engine: --lesion, --severity, --variants, --eta, and the options
that other engines do not read (refused with exit 2). Embedded 2-D weights, 2-3 steps, tiny scans.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_runner import invoke_json

from synthbrain.io.nifti import load_volume
from tests.test_engine_deviation_cli import needs_stroke, needs_tumor, scans

run = invoke_json  # (exit code, summary, stderr)


def folders(tmp_path):
    """anat/t1.nii.gz, masks/m.nii.gz (on the same grid) and the original file paths."""
    t1, _, mask = scans(tmp_path / "anat")
    (tmp_path / "anat" / "flair.nii.gz").unlink()
    (tmp_path / "masks").mkdir()
    moved = mask.rename(tmp_path / "masks" / "m.nii.gz")
    return t1, moved


def manifest(folder) -> list[dict]:
    """The run's manifest lines."""
    return [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]


@needs_stroke
def test_lesion_picks_the_stroke_weights_for_implant_and_heal(tmp_path, capsys):
    t1, _, mask = scans(tmp_path)
    code, summary, _ = run(["implant", str(t1), "--mask", str(mask), "--engine", "deviation",
                            "--lesion", "stroke", "--steps", "2", "--eta", "0",
                            "--out", str(tmp_path / "i.nii.gz")], capsys)  # fmt: skip
    assert code == 0 and summary["weights"] == "deviation-stroke-2mm" and summary["eta"] == 0.0
    heal = ["heal", str(t1), "--mask", str(mask), "--engine", "deviation", "--lesion", "stroke"]
    code, summary, _ = run([*heal, "--out", str(tmp_path / "h.nii.gz")], capsys)
    assert code == 0 and summary["weights"] == "deviation-stroke-2mm"


@needs_tumor
def test_without_lesion_the_default_stays_tumor(tmp_path, capsys):
    t1, _, mask = scans(tmp_path)
    args = ["implant", str(t1), "--mask", str(mask), "--engine", "deviation", "--steps", "2"]
    code, summary, _ = run([*args, "--out", str(tmp_path / "i.nii.gz")], capsys)
    assert code == 0 and summary["weights"] == "deviation-tumor-2mm" and summary["eta"] == 1.0
    assert summary["spacing"] in ("trailing", "logsnr")  # the weights' own timestep spacing


@needs_stroke
def test_lesion_unknown_or_contradicting_weights_exit_2(tmp_path, capsys):
    t1, _, mask = scans(tmp_path)
    base = ["implant", str(t1), "--mask", str(mask), "--engine", "deviation", "--steps", "2",
            "--out", str(tmp_path / "i.nii.gz")]  # fmt: skip
    code, _, err = run([*base, "--lesion", "glioma"], capsys)
    assert code == 2 and "glioma" in err and "stroke" in err and "tumor" in err
    code, _, err = run([*base, "--lesion", "tumor", "--weights", "deviation-stroke-2mm"], capsys)
    assert code == 2 and "give one of the two" in err
    assert not list(tmp_path.glob("i*"))
    code, summary, _ = run([*base, "--lesion", "stroke", "--weights", "deviation-stroke-2mm"],
                           capsys)  # fmt: skip
    assert code == 0 and summary["weights"] == "deviation-stroke-2mm"


@needs_stroke
def test_eta_reaches_the_sampler(tmp_path, capsys):
    t1, _, mask = scans(tmp_path)
    outs = []
    for eta in ("0", "1"):
        out = tmp_path / f"e{eta}.nii.gz"
        args = ["implant", str(t1), "--mask", str(mask), "--engine", "deviation", "--lesion",
                "stroke", "--steps", "3", "--eta", eta, "--seed", "2"]  # fmt: skip
        args += ["--out", str(out)]
        assert run(args, capsys)[0] == 0
        outs.append(load_volume(out).data)
    assert not np.array_equal(outs[0], outs[1])


@needs_stroke
def test_generate_severity_zero_is_the_substrate(tmp_path, capsys):
    t1, mask = folders(tmp_path)
    code, _, _ = run(["generate", "--out", str(tmp_path / "run"), "--n", "1", "--engine",
                      "deviation", "--lesion", "stroke", "--steps", "2", "--severity", "0",
                      "--anatomy", str(tmp_path / "anat"), "--masks", str(tmp_path / "masks")],
                     capsys)  # fmt: skip
    assert code == 0
    line = manifest(tmp_path / "run")[0]
    assert line["severity"] == 0.0 and line["variant"] == 0
    healed = tmp_path / "healed.nii.gz"
    code, _, _ = run(["heal", str(t1), "--mask", str(mask), "--engine", "deviation", "--lesion",
                      "stroke", "--out", str(healed)], capsys)  # fmt: skip
    assert code == 0
    image = load_volume(tmp_path / "run" / line["files"]["image"]).data
    substrate = load_volume(healed).data
    m = load_volume(mask).data > 0
    assert np.allclose(image, substrate, atol=1e-4) and not np.allclose(
        image[m], load_volume(t1).data[m]
    )


@needs_stroke
def test_generate_variants_differ_inside_the_mask_only(tmp_path, capsys):
    folders(tmp_path)
    code, summary, _ = run(["generate", "--out", str(tmp_path / "run"), "--n", "2", "--engine",
                            "deviation", "--lesion", "stroke", "--steps", "2", "--variants", "2",
                            "--severity", "1.5", "--anatomy", str(tmp_path / "anat"),
                            "--masks", str(tmp_path / "masks")], capsys)  # fmt: skip
    assert code == 0 and summary["written"] == 2
    lines = manifest(tmp_path / "run")
    assert [(x["variant"], x["pair"], x["severity"]) for x in lines] == [(0, 0, 1.5), (1, 0, 1.5)]
    assert lines[0]["seed"] != lines[1]["seed"]
    a, b = (load_volume(tmp_path / "run" / x["files"]["image"]).data for x in lines)
    m = load_volume(tmp_path / "run" / lines[0]["files"]["mask"], kind="mask").data > 0
    assert np.array_equal(a[~m], b[~m]) and not np.array_equal(a[m], b[m])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["variants"] == 2 and config["severity"] == 1.5


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["generate", "--engine", "deviation", "--severity", "3"], ["--severity", "[0, 2]"]),
        (["generate", "--engine", "deviation", "--variants", "0"], ["--variants"]),
        (["generate", "--engine", "deviation", "--variants", "65"], ["--variants", "64"]),
        (["generate", "--engine", "deviation", "--eta", "-1"], ["--eta"]),
        (["generate", "--engine", "paired", "--severity", "0.5"], ["--severity", "paired"]),
        (["generate", "--engine", "paired", "--variants", "2"], ["--variants", "paired"]),
        (["generate", "--engine", "paired", "--eta", "0"], ["--eta", "paired"]),
    ],
)
def test_generate_bad_or_foreign_options_exit_2(tmp_path, capsys, args, words):
    code, _, err = run([*args, "--out", str(tmp_path / "run"), "--n", "1"], capsys)
    assert code == 2 and all(w in err for w in words), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--variants", "0"], ["--variants", "[1, 64]"]),
        (["--variants", "65"], ["--variants", "[1, 64]"]),
        (["--severity", "2.5"], ["--severity", "[0, 2]"]),
        (["--severity", "-0.1"], ["--severity", "[0, 2]"]),
    ],
)
def test_implant_bad_variants_or_severity_exit_2(tmp_path, capsys, extra, words):
    t1, _, mask = scans(tmp_path)
    out = tmp_path / "o.nii.gz"
    args = ["implant", str(t1), "--mask", str(mask), "--engine", "deviation", "--out", str(out)]
    code, _, err = run([*args, *extra], capsys)
    assert code == 2 and all(w in err for w in words) and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not (tmp_path / "o_editmask.nii.gz").exists()


@pytest.mark.parametrize(
    ("command", "engine", "extra", "flag"),
    [
        ("implant", "paired", ["--severity", "0.5"], "--severity"),
        ("implant", "paired", ["--eta", "0"], "--eta"),
        ("heal", "deviation", ["--alpha0", "5"], "--alpha0"),
        ("heal", "deviation", ["--steps", "5"], "--steps"),
        ("heal", "deviation", ["--in-template-space"], "--in-template-space"),
        ("implant", "deviation", ["--in-template-space"], "--in-template-space"),
    ],
)
def test_edit_options_of_another_engine_exit_2(tmp_path, capsys, command, engine, extra, flag):
    t1, _, mask = scans(tmp_path)
    out = tmp_path / "o.nii.gz"
    args = [command, str(t1), "--mask", str(mask), "--engine", engine, "--out", str(out), *extra]
    code, _, err = run(args, capsys)
    assert code == 2 and flag in err and "does not apply" in err, err
    assert not out.exists()
