"""heal and implant of the embedded paired weights on the real MNI152 T1 (issue 13, item 5).

nilearn's MNI152 2009 T1 (never a training subject: the phantoms are built from its tissue maps,
not from its image) is resampled onto an oblique, flipped, anisotropic grid in scanner-like units,
and stroke-like lesions (T1 darker, soft edges) are painted into white and grey matter. Then,
through the public api as a user runs it:

- heal without a mask and with the lesion mask: shape and affine kept, the share of voxels more
  than 12 mm from the lesion left exactly unchanged, and the in-lesion L1 against the clean
  resampled T1 as a fraction of the input's;
- implant of the same mask into the clean scan: the voxels outside the edit mask unchanged
  (exact), and the sign of the change inside the lesion (stroke: darker).

    OMP_NUM_THREADS=2 python scripts/eval_paired_mni.py --json runs/eval-paired-mni.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from synthbrain import api

# lesion centres in MNI mm: white matter (corona radiata) and grey matter (insular cortex)
SITES = {"white matter": (26.0, -10.0, 26.0), "grey matter": (-38.0, -4.0, 6.0)}
RADIUS_MM = 9.0


def oblique_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """An oblique (15° about x, 10° about z), x-flipped, anisotropic grid centred on MNI (0,0,0)."""
    ax, az = np.deg2rad(15.0), np.deg2rad(10.0)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    linear = rz @ rx @ np.diag([-spacing[0], spacing[1], spacing[2]])
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = -linear @ (np.array(shape) - 1) / 2.0 + np.array([0.0, -18.0, 8.0])
    return affine


def scanner_t1(affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The MNI152 T1 on the target grid in scanner-like units (×900 + 40), and its brain mask."""
    from nibabel.processing import resample_from_to
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1)
    brain = datasets.load_mni152_brain_mask(resolution=1)
    target = (shape, affine)
    image = resample_from_to(t1, target, order=1).get_fdata()
    mask = resample_from_to(brain, target, order=0).get_fdata() > 0
    image = image / max(float(image.max()), 1e-6)
    return (image * 900.0 + 40.0).astype(np.float32), mask


def lesion_mask(affine: np.ndarray, shape: tuple[int, int, int], centre: tuple) -> np.ndarray:
    """A ball of RADIUS_MM around an MNI coordinate, on the target grid."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    return np.linalg.norm(xyz - np.array(centre), axis=-1) <= RADIUS_MM


def with_lesion(image: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Stroke-like: the lesion at 45 % of its intensity, edges blended over ~2 mm."""
    sigma = 2.0 / np.abs(np.linalg.svd(affine[:3, :3], compute_uv=False))
    soft = np.clip(ndimage.gaussian_filter(mask.astype(np.float32), sigma), 0, 1)
    return (image * (1.0 - 0.55 * soft)).astype(np.float32)


def far_from(mask: np.ndarray, affine: np.ndarray, mm: float) -> np.ndarray:
    """Voxels more than `mm` from the mask (distance in world units of the grid)."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return ndimage.distance_transform_edt(~mask, sampling=spacing) > mm


def save(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def evaluate_site(folder: Path, clean, brain, affine, centre) -> dict:
    """heal (no mask / mask) of the lesioned scan and implant into the clean one."""
    shape = clean.shape
    mask = lesion_mask(affine, shape, centre) & brain
    lesioned = with_lesion(clean, mask, affine)
    scan = save(lesioned, affine, folder / "scan.nii.gz")
    clean_path = save(clean, affine, folder / "clean.nii.gz")
    mask_path = save(mask.astype(np.uint8), affine, folder / "mask.nii.gz")
    far = far_from(mask, affine, 12.0) & brain
    input_l1 = float(np.abs(lesioned - clean)[mask].mean())
    row: dict = {"lesion_ml": float(mask.sum() * abs(np.linalg.det(affine[:3, :3])) / 1000.0)}
    for name, given in (("heal", None), ("heal_mask", mask_path)):
        t0 = time.perf_counter()
        api.heal(scan=scan, out=folder / f"{name}.nii.gz", mask=given, engine="paired", seed=0)
        out = nib.load(str(folder / f"{name}.nii.gz"))
        data = out.get_fdata().astype(np.float32)
        row[name] = {
            "geometry_kept": bool(out.shape == shape and np.allclose(out.affine, affine)),
            "unchanged_far": float((data[far] == lesioned[far]).mean()),
            "l1_ratio": float(np.abs(data - clean)[mask].mean()) / input_l1,
            "seconds": round(time.perf_counter() - t0, 1),
        }
    t0 = time.perf_counter()
    summary = api.implant(scan=clean_path, mask=mask_path, out=folder / "implant.nii.gz",
                          engine="paired", seed=0)  # fmt: skip
    data = nib.load(str(folder / "implant.nii.gz")).get_fdata().astype(np.float32)
    edit = np.asarray(nib.load(summary["editmask"]).dataobj) > 0
    row["implant"] = {
        "unchanged_outside_editmask": float((data[~edit] == clean[~edit]).mean()),
        "darker_in_lesion": bool((data - clean)[mask].mean() < 0),
        "mean_change_in_lesion": float((data - clean)[mask].mean()),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    shape, spacing = (150, 170, 110), (1.2, 1.1, 1.6)
    affine = oblique_affine(shape, spacing)
    clean, brain = scanner_t1(affine, shape)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for site, centre in SITES.items():
            folder = Path(tmp) / site.replace(" ", "-")
            folder.mkdir()
            results[site] = evaluate_site(folder, clean, brain, affine, centre)
    text = json.dumps({"grid": {"shape": shape, "spacing": spacing}, "sites": results}, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)


if __name__ == "__main__":
    main()
