"""End to end through the CLI with the embedded D3M weights: `synthbrain enhance`.

Skipped until the embedded weights `deformation-glioma-2mm` are committed.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from cli_runner import exit_code

from synthbrain.io.nifti import load_volume
from tests.niftis import AFFINE_LPS, ball, centred, smooth_pattern, write_nifti

SHAPE = (30, 34, 10)  # a 2 mm slab: few slices, so the test stays fast


def embedded(name: str) -> bool:
    """Whether the named weights are registered and their file verifies."""
    try:
        from synthbrain import weights

        return weights.verify(weights.lookup(name))[0]
    except Exception:  # noqa: BLE001 - any failure means "not available here"
        return False


@pytest.mark.skipif(not embedded("deformation-glioma-2mm"), reason="no embedded weights")
def test_cli_enhance_with_embedded_weights(tmp_path, capsys):
    aff = centred(AFFINE_LPS, SHAPE)
    aff[:3, :3] *= 2.0
    brain = ball(SHAPE, aff, 26.0)
    base = smooth_pattern(SHAPE, aff, wavelength=80.0) * brain
    paths = {}
    for i, name in enumerate(("t1", "t2", "flair")):
        paths[name] = write_nifti(tmp_path / f"{name}.nii.gz", base * (200 + 50 * i), aff)
    out, mask_out = tmp_path / "t1gd.nii.gz", tmp_path / "et.nii.gz"
    args = ["enhance", "--t1", str(paths["t1"]), "--t2", str(paths["t2"]), "--flair",
            str(paths["flair"]), "--out", str(out), "--mask-out", str(mask_out), "--steps", "4",
            "--json", "--device", "cpu"]  # fmt: skip
    assert exit_code(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["weights"] == "deformation-glioma-2mm" and summary["steps"] == 4
    t1, t1gd = load_volume(paths["t1"]), load_volume(out)
    mask = np.asarray(nib.load(mask_out).dataobj)
    assert t1gd.shape == t1.shape and np.allclose(t1gd.affine, t1.affine)
    assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) <= {0, 3}
    assert np.array_equal(t1gd.data[brain == 0], t1.data[brain == 0])
    sidecar = json.loads((tmp_path / "t1gd.json").read_text())
    assert sidecar["label_convention"] == "brats2023"
