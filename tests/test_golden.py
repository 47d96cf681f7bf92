"""Golden outputs: the sha256 of every volume each command writes on fixed seeds and tiny models.

Pins behaviour while code moves between modules (issue 11): the same seed must keep giving the
same bytes. The tiny models are built from `torch.manual_seed`, so no weights file is checked in.
Floating-point results depend on the torch build and the CPU's instruction set, so the hashes are
kept per platform in tests/golden/hashes.json; on a platform not recorded there the test skips.
Record (only when a change is meant to alter outputs, and say so in the commit):
`SYNTHBRAIN_GOLDEN_RECORD=1 python -m pytest tests/test_golden.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from niftis import AFFINE_OBLIQUE, AFFINE_PIR, ball, centred, smooth_pattern, write_nifti

from synthbrain import api

HASHES = Path(__file__).parent / "golden" / "hashes.json"
RECORD = os.environ.get("SYNTHBRAIN_GOLDEN_RECORD") == "1"
PAIRED_GRID, PAIRED_SPACING = (16, 16, 16), 12.0
DEVIATION_TINY = {
    "contrasts": ["t1", "flair"],
    "crop": 16,
    "min_size": 16,
    "margin_mm": 4.0,
    "denoiser": {"base_channels": 8, "channel_mults": [1, 2], "attention_levels": [-1]},
    "substrate": {"base_channels": 4, "channel_mults": [1, 2, 2, 2, 2], "attention_levels": []},
}
DEFORMATION_TINY = {
    "crop": 8,
    "denoiser.base_channels": 4,
    "denoiser.channel_mults": [1, 2],
    "denoiser.groups": 2,
    "warp_net.base_channels": 2,
    "warp_net.channel_mults": [1, 2],
    "warp_net.groups": 1,
    "sampling.steps": 3,
    "sampling.chunk": 3,
}


def platform_key() -> str:
    """What the bytes of a float computation depend on: torch build and CPU instruction set."""
    return f"torch {torch.__version__} / {torch.backends.cpu.get_cpu_capability()}"


def volume_hashes(root: Path) -> dict[str, str]:
    """sha256 of every NIfTI under root, by path relative to root (sidecars hold tmp paths)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.nii.gz"))
    }


def _perturbed(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """A random model whose zero-initialised output layers are not zero, so edits show."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def paired_weights(folder: Path) -> Path:
    from synthbrain.engines.paired.model import PairedConfig, PairedModel
    from synthbrain.engines.paired.training import export_bundle

    torch.manual_seed(0)
    cfg = PairedConfig(
        grid=PAIRED_GRID, spacing=PAIRED_SPACING, ae_base_channels=4, ae_channel_mults=(1, 2, 2),
        denoiser_base_channels=8, denoiser_channel_mults=(1,), denoiser_attention_levels=(),
    )  # fmt: skip
    return export_bundle(_perturbed(PairedModel(cfg)), folder / "paired.safetensors", {})


def deviation_weights(folder: Path) -> Path:
    from synthbrain.engines.deviation.config import load_config
    from synthbrain.engines.deviation.run import save_weights
    from synthbrain.engines.deviation.tensors import DeviationModel

    torch.manual_seed(0)
    model = DeviationModel(load_config(None, DEVIATION_TINY))
    _perturbed(model.denoiser.heads)
    return save_weights(model, folder / "deviation.safetensors")


def deformation_weights(folder: Path) -> Path:
    from synthbrain.engines.deformation.config import load_config
    from synthbrain.engines.deformation.model import DeformationModel
    from synthbrain.weights import save_state

    torch.manual_seed(0)
    config = load_config(None, DEFORMATION_TINY)
    model = _perturbed(DeformationModel(config, 3))
    meta = {"engine": "deformation", "config": config.model_dict(), "enhancing_label": 3,
            "label_convention": "brats2023"}  # fmt: skip
    return save_state(model.state_dict(), folder / "deformation.safetensors",
                      dtype=torch.float16, metadata=meta)  # fmt: skip


def paired_scan(folder: Path) -> tuple[Path, Path]:
    """The template seen through an odd oblique grid, and a box mask on that grid."""
    from synthbrain.io.geometry import resample_array
    from synthbrain.spatial.template import template_arrays

    shape = (20, 22, 18)
    t1, _, t_aff = template_arrays(PAIRED_SPACING, PAIRED_GRID)
    aff = centred(AFFINE_OBLIQUE @ np.diag([10.0, 10.0, 10.0, 1.0]), shape, (0.0, -18.0, 18.0))
    data = resample_array(t1, t_aff, shape, aff, order=1) * 800 + 5
    mask = np.zeros(shape, np.uint8)
    mask[8:12, 9:13, 7:11] = 1
    return (write_nifti(folder / "paired_scan.nii.gz", data.astype(np.float32), aff),
            write_nifti(folder / "paired_mask.nii.gz", mask, aff))  # fmt: skip


def deviation_scan(folder: Path) -> tuple[Path, Path, Path]:
    shape = (20, 22, 18)
    aff = centred(AFFINE_PIR, shape)
    image = smooth_pattern(shape, aff) * 200
    t1 = write_nifti(folder / "t1.nii.gz", image / 0.5, aff, dtype=np.int16, slope=0.5)
    flair = write_nifti(folder / "flair.nii.gz", image * 1.5 + 3, aff)
    return t1, flair, write_nifti(folder / "mask.nii.gz", ball(shape, aff, 5.0), aff)


def deformation_scans(folder: Path) -> dict[str, Path]:
    shape = (20, 22, 14)
    aff = centred(AFFINE_OBLIQUE, shape)
    brain = ball(shape, aff, 9.0)
    return {
        name: write_nifti(
            folder / f"{name}.nii.gz",
            (smooth_pattern(shape, aff) * 300 * (i + 1) + 40) * brain,
            aff,
            dtype=np.int16,
        )  # fmt: skip
        for i, name in enumerate(("t1", "t2", "flair"))
    }


def run_all(root: Path) -> dict[str, dict[str, str]]:
    """Every command once on fixed seeds; {command: {file: sha256}}."""
    w, s = root / "weights", root / "scans"
    w.mkdir()
    s.mkdir()
    pw, dw, fw = paired_weights(w), deviation_weights(w), deformation_weights(w)
    scan, mask = paired_scan(s)
    t1, flair, dmask = deviation_scan(s)
    out = {name: root / name for name in ("phantom", "gen_paired", "gen_deviation", "heal_paired",
                                          "implant_paired", "heal_deviation", "implant_deviation",
                                          "enhance")}  # fmt: skip
    for name in ("heal_paired", "implant_paired", "heal_deviation", "implant_deviation", "enhance"):
        out[name].mkdir()
    api.phantom(out=out["phantom"], n=2, lesion="stroke", contrasts=("t1", "flair"), seed=7)
    api.generate(out=out["gen_paired"], n=2, steps=2, weights=str(pw), seed=7)
    api.generate(out=out["gen_deviation"], n=2, engine="deviation", weights=str(dw),
                 anatomy=out["phantom"], steps=2, device="cpu", seed=4)  # fmt: skip
    paired = dict(weights=str(pw), steps=2, in_template_space=True, seed=3)
    api.heal(scan=scan, out=out["heal_paired"] / "h.nii.gz", **paired)
    api.implant(scan=scan, mask=mask, out=out["implant_paired"] / "i.nii.gz", **paired)
    deviation = dict(engine="deviation", weights=str(dw), device="cpu", seed=3)
    api.heal(scan=t1, mask=dmask, out=out["heal_deviation"] / "h.nii.gz",
             images={"flair": flair}, **deviation)  # fmt: skip
    api.implant(scan=t1, mask=dmask, out=out["implant_deviation"] / "i.nii.gz", **deviation)
    api.enhance(**deformation_scans(out["enhance"]), out=out["enhance"] / "t1gd.nii.gz",
                mask_out=out["enhance"] / "et.nii.gz", weights=str(fw), steps=2, seed=1,
                device="cpu")  # fmt: skip
    return {name: volume_hashes(folder) for name, folder in out.items()}


def test_every_command_reproduces_its_golden_hashes(tmp_path):
    recorded = json.loads(HASHES.read_text()) if HASHES.exists() else {}
    key = platform_key()
    if key not in recorded and not RECORD:
        pytest.skip(f"no golden hashes for {key} (record with SYNTHBRAIN_GOLDEN_RECORD=1)")
    got = run_all(tmp_path)
    assert all(got.values()), {k: len(v) for k, v in got.items()}  # every command wrote volumes
    if RECORD:
        recorded[key] = got
        HASHES.parent.mkdir(exist_ok=True)
        HASHES.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    assert got == recorded[key]
