"""End to end through the CLI with the embedded paired weights (skipped until registered)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from cli_runner import invoke
from niftis import AFFINE_LPS, centred, write_nifti


def _embedded(lesion: str) -> bool:
    """Whether the package ships paired weights for `lesion`."""
    from synthbrain import weights

    try:
        weights.resolve_entry(weights.entry_for_lesion("paired", lesion), download=False)
    except Exception:  # noqa: BLE001 - not registered or not embedded yet
        return False
    return True


needs_weights = pytest.mark.skipif(
    not _embedded("stroke"), reason="embedded paired-stroke-2mm weights not registered yet"
)


def run(args: list[str], capsys) -> tuple[int, str]:  # noqa: ANN001
    """Call the CLI in-process; return (exit code, stdout)."""
    return invoke(args, capsys)[:2]


@needs_weights
def test_generate_with_embedded_weights(tmp_path, capsys):
    out = tmp_path / "synth"
    code, stdout = run(["generate", "--engine", "paired", "--n", "1", "--lesion", "stroke",
                        "--out", str(out), "--steps", "3", "--json"], capsys)  # fmt: skip
    assert code == 0, stdout
    summary = json.loads(stdout)
    assert summary["weights"] == "paired-stroke-2mm" and summary["written"] == 1
    image = nib.load(out / "synth00000_image.nii.gz")
    assert image.shape == (96, 112, 96)


@needs_weights
def test_heal_with_embedded_weights_keeps_the_scan(tmp_path, capsys):
    from synthbrain.io.geometry import resample_array
    from synthbrain.spatial.template import template_arrays

    t1, _, t_aff = template_arrays(2.0)
    shape = (70, 80, 64)
    aff = centred(AFFINE_LPS @ np.diag([2.5, 2.5, 2.5, 1.0]), shape, (0.0, -18.0, 18.0))
    data = resample_array(t1, t_aff, shape, aff, order=1) * 600
    scan = write_nifti(tmp_path / "scan.nii.gz", data.astype(np.float32), aff)
    out = tmp_path / "healed.nii.gz"
    code, stdout = run(["heal", str(scan), "--out", str(out), "--in-template-space",
                        "--steps", "3", "--json"], capsys)  # fmt: skip
    assert code == 0, stdout
    edit = np.asarray(nib.load(tmp_path / "healed_editmask.nii.gz").dataobj) > 0
    src, res = nib.load(scan).get_fdata(), nib.load(out).get_fdata()
    assert res.shape == shape and np.array_equal(res[~edit], src[~edit])


def test_unknown_lesion_names_the_available_weights(tmp_path, capsys):
    code, _ = run(["generate", "--n", "1", "--lesion", "glioma", "--engine", "paired",
                   "--out", str(tmp_path / "x")], capsys)  # fmt: skip
    assert code == 2
    assert not (tmp_path / "x").exists()
