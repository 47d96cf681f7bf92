"""End to end through the CLI with the embedded deviation weights (one test per command).

Skipped until the embedded weights `deviation-tumor-2mm` / `deviation-stroke-2mm` are committed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_runner import invoke_json

from synthbrain.io.nifti import load_volume
from tests.niftis import AFFINE_LPS, ball, centred, smooth_pattern, write_nifti

SHAPE = (30, 34, 28)


def embedded(name: str) -> bool:
    """Whether the named weights are registered and their file verifies."""
    try:
        from synthbrain import weights

        return weights.verify(weights.lookup(name))[0]
    except Exception:  # noqa: BLE001 - any failure means "not available here"
        return False


needs_tumor = pytest.mark.skipif(not embedded("deviation-tumor-2mm"), reason="no embedded weights")
needs_stroke = pytest.mark.skipif(
    not embedded("deviation-stroke-2mm"), reason="no embedded weights"
)


def run(args: list[str], capsys) -> tuple[int, dict]:  # noqa: ANN001
    """The CLI in-process with --json; (exit code, summary)."""
    return invoke_json(args, capsys)[:2]


def scans(folder):
    """A 2 mm LPS T1 and FLAIR with a 3 ml ball mask."""
    aff = centred(AFFINE_LPS, SHAPE)
    aff[:3, :3] *= 2.0
    base = smooth_pattern(SHAPE, aff, wavelength=80.0) * 300
    t1 = write_nifti(folder / "t1.nii.gz", base, aff)
    flair = write_nifti(folder / "flair.nii.gz", base * 0.7 + 5, aff)
    mask = write_nifti(folder / "mask.nii.gz", ball(SHAPE, aff, 9.0), aff)
    return t1, flair, mask


@needs_stroke
def test_cli_implant_with_embedded_weights(tmp_path, capsys):
    t1, flair, mask = scans(tmp_path)
    out = tmp_path / "o.nii.gz"
    args = ["implant", str(t1), "--mask", str(mask), "--out", str(out), "--engine", "deviation",
            "--weights", "deviation-stroke-2mm", "--image", f"flair={flair}", "--variants", "2",
            "--steps", "5"]  # fmt: skip
    code, summary = run(args, capsys)
    assert code == 0 and summary["weights"] == "deviation-stroke-2mm"
    m = load_volume(mask).data > 0
    src, res = load_volume(t1).data, load_volume(out).data
    assert np.array_equal(res[~m], src[~m]) and not np.array_equal(res[m], src[m])
    assert (tmp_path / "o_variant-1_flair.nii.gz").is_file()


@needs_tumor
def test_cli_heal_with_embedded_weights(tmp_path, capsys):
    t1, _, mask = scans(tmp_path)
    out = tmp_path / "h.nii.gz"
    code, summary = run(["heal", str(t1), "--mask", str(mask), "--out", str(out),
                         "--engine", "deviation"], capsys)  # fmt: skip
    assert code == 0 and summary["weights"] == "deviation-tumor-2mm"
    m = load_volume(mask).data > 0
    assert np.array_equal(load_volume(out).data[~m], load_volume(t1).data[~m])


@needs_stroke
def test_cli_generate_with_embedded_weights(tmp_path, capsys):
    t1, _, mask = scans(tmp_path / "anat")
    (tmp_path / "masks").mkdir()
    mask.rename(tmp_path / "masks" / "m.nii.gz")
    code, summary = run(["generate", "--out", str(tmp_path / "run"), "--n", "1",
                         "--lesion", "stroke", "--engine", "deviation", "--steps", "5",
                         "--anatomy", str(tmp_path / "anat"), "--masks", str(tmp_path / "masks")],
                        capsys)  # fmt: skip
    assert code == 0 and summary["written"] == 1
    line = json.loads((tmp_path / "run" / "manifest.jsonl").read_text().splitlines()[0])
    assert line["weights"] == "deviation-stroke-2mm" and line["lesion_ml"] > 0
