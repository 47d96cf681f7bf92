"""The CLI shell: commands listed, exit codes, one-line errors, --json, lazy imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli_runner import invoke

COMMANDS = ("preprocess", "train", "generate", "heal", "implant", "enhance", "phantom", "weights")


run = invoke  # (exit code, stdout, stderr)


def write_scan(
    path: Path, data: np.ndarray | None = None, affine: np.ndarray | None = None
) -> Path:
    """A small float NIfTI with a blob in the middle."""
    if data is None:
        data = np.zeros((12, 14, 10), np.float32)
        data[3:9, 4:10, 3:7] = 1.0
    nib.save(
        nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine), path
    )
    return path


def test_help_lists_every_command(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for command in COMMANDS:
        assert command in out


def test_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.startswith("synthbrain ")


def test_help_does_not_import_torch():
    # A fresh interpreter: --help must not pay for torch (the < 1 s start-up goal).
    code = (
        "import sys; from synthbrain.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported by --help'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_usage_error_exits_2(capsys):
    code, _, err = run(["phantom", "--n", "notanumber"], capsys)
    assert code == 2
    assert "--n" in err


def test_unknown_command_exits_2(capsys):
    code, _, _ = run(["frobnicate"], capsys)
    assert code == 2


def test_not_a_nifti_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"this is not a nifti file")
    code, out, err = run(["heal", str(bad), "--out", str(tmp_path / "o.nii.gz")], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "scan.nii.gz" in lines[0] and lines[0].startswith("error:")
    assert not (tmp_path / "o.nii.gz").exists()


def test_engine_missing_says_so_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from synthbrain import engines

    monkeypatch.setitem(engines.ENGINES, "paired", "synthbrain.engines.not_built_yet")
    scan = write_scan(tmp_path / "scan.nii.gz")
    out = tmp_path / "healed.nii.gz"
    code, _, err = run(["heal", str(scan), "--out", str(out)], capsys)
    assert code == 2
    assert "needs the paired engine" in err
    assert not out.exists()


def test_implant_empty_mask_rejected(tmp_path, capsys):
    scan = write_scan(tmp_path / "scan.nii.gz")
    mask = write_scan(tmp_path / "mask.nii.gz", np.zeros((12, 14, 10), np.uint8))
    out = tmp_path / "o.nii.gz"
    code, _, err = run(["implant", str(scan), "--mask", str(mask), "--out", str(out)], capsys)
    assert code == 2 and "mask.nii.gz" in err
    assert not out.exists()


def test_mask_on_other_grid_rejected_unless_resampled(tmp_path, capsys):
    scan = write_scan(tmp_path / "scan.nii.gz")
    data = np.zeros((12, 14, 10), np.uint8)
    data[4:6, 4:6, 4:6] = 1
    shifted = np.diag([2.0, 2.0, 2.0, 1.0])
    shifted[0, 3] = 3.0
    mask = write_scan(tmp_path / "mask.nii.gz", data, shifted)
    code, _, err = run(
        ["implant", str(scan), "--mask", str(mask), "--out", str(tmp_path / "o.nii.gz")], capsys
    )
    assert code == 2 and "mask.nii.gz" in err


def test_severity_out_of_range(tmp_path, capsys):
    scan = write_scan(tmp_path / "scan.nii.gz")
    data = np.zeros((12, 14, 10), np.uint8)
    data[4:6, 4:6, 4:6] = 1
    mask = write_scan(tmp_path / "mask.nii.gz", data)
    code, _, err = run(
        ["implant", str(scan), "--mask", str(mask), "--severity", "3", "--engine", "deviation"],
        capsys,
    )
    assert code == 2 and "severity" in err


def test_output_may_not_overwrite_input(tmp_path, capsys):
    scan = write_scan(tmp_path / "scan.nii.gz")
    before = scan.read_bytes()
    code, _, err = run(["heal", str(scan), "--out", str(scan), "--overwrite"], capsys)
    assert code == 2 and "input" in err
    assert scan.read_bytes() == before


def test_enhance_names_the_missing_contrast(tmp_path, capsys):
    t1 = write_scan(tmp_path / "t1.nii.gz")
    t2 = write_scan(tmp_path / "t2.nii.gz")
    code, _, err = run(["enhance", "--t1", str(t1), "--t2", str(t2)], capsys)
    assert code == 2 and "flair" in err


def test_enhance_contrasts_on_different_grids(tmp_path, capsys):
    t1 = write_scan(tmp_path / "t1.nii.gz")
    t2 = write_scan(tmp_path / "t2.nii.gz")
    flair = write_scan(tmp_path / "flair.nii.gz", affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    args = ["enhance", "--t1", str(t1), "--t2", str(t2), "--flair", str(flair)]
    code, _, err = run(args + ["--out", str(tmp_path / "o.nii.gz")], capsys)
    assert code == 2 and "flair.nii.gz" in err


def test_unknown_engine(tmp_path, capsys):
    scan = write_scan(tmp_path / "scan.nii.gz")
    code, _, err = run(["heal", str(scan), "--engine", "magic"], capsys)
    assert code == 2 and "magic" in err


def test_internal_error_exit_1_with_hint(monkeypatch, capsys):
    from synthbrain import api

    def broken(**_):
        raise RuntimeError("boom")

    monkeypatch.setattr(api, "phantom", broken)
    code, _, err = run(["phantom", "--out", "x"], capsys)
    assert code == 1
    assert "boom" in err and "--debug" in err


def test_weights_list_json(capsys):
    code, out, _ = run(["weights", "list", "--json"], capsys)
    assert code == 0
    payload = json.loads(out.strip().splitlines()[-1])
    assert isinstance(payload["weights"], list)


@pytest.mark.parametrize("flag", ["--config"])
def test_bad_config_file(tmp_path, capsys, flag):
    bad = tmp_path / "c.toml"
    bad.write_text("spacing = [this is not toml")
    code, _, err = run(
        ["preprocess", str(tmp_path), "--out", str(tmp_path / "s.h5"), flag, str(bad)], capsys
    )
    assert code == 2 and "c.toml" in err


def test_preprocess_command_end_to_end(tmp_path, capsys):
    from niftis import AFFINE_LPS, AFFINE_RAS
    from test_preprocess import write_brats

    for i, affine in enumerate((AFFINE_RAS, AFFINE_LPS, AFFINE_RAS)):
        write_brats(tmp_path / "brats", f"S{i}", affine)
    out = tmp_path / "set.h5"
    args = ["preprocess", str(tmp_path / "brats"), "--out", str(out), "--spacing", "2"]
    code, stdout, _ = run([*args, "--slices", "--json"], capsys)
    assert code == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["config"]["spacing"] == 2.0
    assert out.is_file() and (tmp_path / "set.fingerprint.json").is_file()
    code, _, err = run(args, capsys)  # the set exists: refused without --overwrite
    assert code == 2 and "set.h5" in err
