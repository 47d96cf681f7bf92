"""implant of the embedded deviation weights on the real MNI152 T1 (issue 14, item 5).

nilearn's MNI152 2009 T1 (never a training subject: the phantoms are built from its tissue maps,
not from its image) is resampled onto the oblique, x-flipped, anisotropic grid of
`eval_paired_mni.py` in scanner-like units. MNI152 has no FLAIR, so a FLAIR-like second contrast
is made from the template's own grey / white matter probability maps (grey brighter than white,
CSF dark), on the same grid. Lesion masks are taken from held-out phantom subjects (run seed
1000, the seeds `eval_deviation.py` scores), resampled onto the grid and kept inside the brain.
Then, through the public api as a user runs it, per mask:

- shape and affine of every output kept; every voxel outside the lesion mask bit for bit the
  input's (the engine projects its deviation to exactly 0 off the mask);
- the sign of the mean change inside the lesion (both: T1 darker; tumour: FLAIR brighter; a
  stroke's FLAIR is only reported, see EXPECTED_SIGN) and the seconds per implant.

A figure (T1 before / after, FLAIR after, mask outline) of the first mask per lesion type goes
to `--figure`.

    OMP_NUM_THREADS=2 python scripts/eval_deviation_mni.py --n 4 \
        --json runs/eval-deviation-mni.json --figure docs/images/deviation-mni-implant.png
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from eval_paired_mni import oblique_affine, save, scanner_t1

from synthbrain import api

# the expected sign of the mean change in the lesion, per lesion type and contrast: both are T1
# hypointense; a glioma's oedema makes it FLAIR-bright, while a chronic stroke's CSF-like core is
# FLAIR-dark inside a bright rim, so its FLAIR mean has no fixed sign and is only reported
EXPECTED_SIGN = {"stroke": {"t1": -1}, "tumor": {"t1": -1, "flair": +1}}


def flair_like(affine: np.ndarray, shape: tuple[int, int, int], brain: np.ndarray) -> np.ndarray:
    """A FLAIR-like contrast from MNI152's tissue maps on the target grid (scanner-like units)."""
    from nibabel.processing import resample_from_to
    from nilearn import datasets

    target = (shape, affine)
    gm = resample_from_to(datasets.load_mni152_gm_template(resolution=1), target, order=1)
    wm = resample_from_to(datasets.load_mni152_wm_template(resolution=1), target, order=1)
    gm, wm = (np.clip(v.get_fdata(), 0.0, 1.0) for v in (gm, wm))
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    flair = (0.80 * gm + 0.55 * wm + 0.12 * csf) * brain
    return (flair * 700.0).astype(np.float32)


def phantom_mask(k: int, lesion: str, affine: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Held-out phantom k's lesion (run seed 1000) on the target grid, inside the brain."""
    from nibabel.processing import resample_from_to

    from synthbrain.io.dataset import lesion_mask_from_labels
    from synthbrain.phantom import draw_subject, make_subject
    from synthbrain.phantom.lesions import label_names
    from synthbrain.rng import derive_seed, generator_for

    params = draw_subject(generator_for(derive_seed(1000, k)), lesion=lesion, contrasts=["t1"],
                          spacing=2.0)  # fmt: skip
    ph = make_subject(params)
    mask = lesion_mask_from_labels(ph.labels, "any", label_names(lesion)) > 0
    image = nib.Nifti1Image(mask.astype(np.uint8), ph.affine)
    resampled = resample_from_to(image, (brain.shape, affine), order=0).get_fdata() > 0
    return resampled & brain


def implant_one(folder: Path, inputs: dict, mask: np.ndarray, lesion: str, seed: int) -> dict:
    """One implant through the api; geometry, exactness off the mask, sign and time."""
    affine = inputs["affine"]
    mask_path = save(mask.astype(np.uint8), affine, folder / "mask.nii.gz")
    t0 = time.perf_counter()
    summary = api.implant(scan=inputs["t1_path"], mask=mask_path, out=folder / "implant.nii.gz",
                          engine="deviation", lesion=lesion, images={"flair": inputs["flair_path"]},
                          seed=seed)  # fmt: skip
    seconds = time.perf_counter() - t0
    ml = float(mask.sum() * abs(np.linalg.det(affine[:3, :3])) / 1000.0)
    row: dict = {"lesion_ml": round(ml, 2), "seconds": round(seconds, 1)}
    outputs = {"t1": folder / "implant.nii.gz", "flair": output_for(summary, "flair")}
    for contrast, path in outputs.items():
        out = nib.load(str(path))
        data = out.get_fdata(dtype=np.float32)
        source = inputs[contrast]
        change = float((data - source)[mask].mean())
        row[contrast] = {
            "geometry_kept": bool(out.shape == source.shape and np.allclose(out.affine, affine)),
            "unchanged_off_mask": float((data[~mask] == source[~mask]).mean()),
            "mean_change_in_lesion": change,
        }
        if contrast in EXPECTED_SIGN[lesion]:
            row[contrast]["right_sign"] = bool(np.sign(change) == EXPECTED_SIGN[lesion][contrast])
        row[contrast + "_image"] = data
    return row


def output_for(summary: dict, contrast: str) -> Path:
    """The written file of one extra contrast, from the run summary's `outputs` list."""
    for value in summary["outputs"]:
        if contrast in Path(value).name and "editmask" not in Path(value).name:
            return Path(value)
    raise SystemExit(f"implant wrote no {contrast} output: {summary['outputs']}")


def figure(examples: dict, path: Path) -> None:
    """Per lesion type: T1 before, T1 after, FLAIR after, with the mask outline, axial slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(examples), 3, figsize=(9, 3.2 * len(examples)), squeeze=False)
    for row, (lesion, ex) in zip(axes, examples.items(), strict=True):
        z = int(np.argmax(ex["mask"].sum(axis=(0, 1))))
        panels = (("T1 (MNI152)", ex["t1"]), ("T1, implanted", ex["t1_image"]),
                  ("FLAIR-like, implanted", ex["flair_image"]))  # fmt: skip
        for ax, (title, image) in zip(row, panels, strict=True):
            ax.imshow(np.rot90(image[..., z]), cmap="gray")
            ax.contour(np.rot90(ex["mask"][..., z]), levels=[0.5], colors="r", linewidths=0.6)
            ax.set_title(f"{lesion}: {title}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def run_lesion(tmp: Path, inputs: dict, lesion: str, n: int, examples: dict) -> list[dict]:
    """n held-out phantom masks of one lesion type implanted into the MNI152 scan."""
    rows = []
    for k in range(n):
        mask = phantom_mask(k, lesion, inputs["affine"], inputs["brain"])
        if mask.sum() < 20:
            continue  # the phantom's lesion fell outside MNI152's brain mask
        folder = tmp / f"{lesion}-{k}"
        folder.mkdir()
        row = implant_one(folder, inputs, mask, lesion, seed=k)
        if lesion not in examples:
            examples[lesion] = {"mask": mask, "t1": inputs["t1"], "t1_image": row["t1_image"],
                                "flair_image": row["flair_image"]}  # fmt: skip
        rows.append({"mask": k, **{key: v for key, v in row.items() if not key.endswith("_image")}})
        print(lesion, k, json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4, help="held-out phantom masks per lesion type")
    parser.add_argument("--lesions", default="stroke,tumor")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--figure", type=Path, default=None)
    args = parser.parse_args()
    shape, spacing = (150, 170, 110), (1.2, 1.1, 1.6)
    affine = oblique_affine(shape, spacing)
    t1, brain = scanner_t1(affine, shape)
    inputs = {"affine": affine, "brain": brain, "t1": t1, "flair": flair_like(affine, shape, brain)}
    results, examples = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        inputs["t1_path"] = save(t1, affine, Path(tmp) / "t1.nii.gz")
        inputs["flair_path"] = save(inputs["flair"], affine, Path(tmp) / "flair.nii.gz")
        for lesion in args.lesions.split(","):
            results[lesion] = run_lesion(Path(tmp), inputs, lesion, args.n, examples)
    text = json.dumps({"grid": {"shape": shape, "spacing": spacing}, "lesions": results}, indent=1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    if args.figure:
        figure(examples, args.figure)


if __name__ == "__main__":
    main()
