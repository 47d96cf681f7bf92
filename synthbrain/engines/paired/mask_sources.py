"""Where the paired engine's given masks come from: a folder (MNI152 space) or the phantom."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from synthbrain.engines.paired.run import Bundle
from synthbrain.errors import InputError
from synthbrain.io.outputs import lesion_volume_ml
from synthbrain.io.volume_range import VolumeRange
from synthbrain.phantom.volume_draws import MAX_PHANTOM_ATTEMPTS
from synthbrain.rng import derive_seed, generator_for


def load_mask_folder(folder: Path, bundle: Bundle) -> list[np.ndarray]:
    """Masks (MNI152 space, any grid) on the model grid, each checked against the brain."""
    from synthbrain.io.geometry import resample_array
    from synthbrain.io.nifti import load_volume
    from synthbrain.io.validate import mask_brain_overlap
    from synthbrain.spatial.template import MIN_MASK_OVERLAP, template_arrays

    files = sorted(p for p in Path(folder).iterdir() if p.name.endswith((".nii", ".nii.gz")))
    if not files:
        raise InputError("no NIfTI masks (.nii, .nii.gz) in the folder", folder)
    _, brain, affine = template_arrays(bundle.model.config.spacing, bundle.model.config.grid)
    masks = []
    for path in files:
        mask = load_volume(path, kind="mask")
        grid = resample_array(mask.data, mask.affine, brain.shape, affine, order=0) > 0
        overlap = mask_brain_overlap(grid, brain)
        if overlap < MIN_MASK_OVERLAP:
            raise InputError(
                f"only {100 * overlap:.0f}% of the mask lies inside the MNI152 brain (need "
                f"{100 * MIN_MASK_OVERLAP:.0f}%); --masks expects masks in MNI152 space",
                path,
            )
        masks.append(grid & (brain > 0))
    return masks


MaskFor = Callable[[int, int], np.ndarray]  # (sample index k, sample seed) -> mask on the grid


def mask_provider(
    masks: Path | None, bundle: Bundle, volume: VolumeRange | None = None
) -> tuple[MaskFor | None, str | None]:
    """How sample k gets its mask (None: the joint sampler draws it) and its manifest name."""
    from synthbrain.io.paths import is_phantom_masks

    if masks is None:
        return None, None
    if is_phantom_masks(masks):
        return (lambda k, seed: phantom_mask(bundle, derive_seed(seed, 1), volume)), "phantom"
    folder = load_mask_folder(masks, bundle)
    return (lambda k, seed: folder[k % len(folder)]), "folder"


def phantom_mask(bundle: Bundle, seed: int, volume: VolumeRange | None = None) -> np.ndarray:
    """A lesion of the model's type drawn by the phantom corpus, on the model grid, in the brain.

    The phantom subject's lesion sits in its own (warped MNI152) anatomy, so it lands near the
    same structures of the template; a draw that leaves the template brain (or, with `volume`,
    whose volume on the grid is out of range) is redrawn. Parameters whose target volume is out
    of range are skipped before any image is made.
    """
    from synthbrain.io.geometry import resample_array
    from synthbrain.phantom import draw_subject, make_subject
    from synthbrain.phantom.lesions import LESION_KINDS
    from synthbrain.spatial.template import template_arrays

    cfg = bundle.model.config
    if cfg.lesion not in LESION_KINDS:
        raise InputError(
            f"--masks phantom: phantom lesions exist for {', '.join(LESION_KINDS)}, "
            f"not {cfg.lesion!r}; give a folder of masks"
        )
    _, brain, affine = template_arrays(cfg.spacing, cfg.grid)
    attempts = 8 if volume is None else MAX_PHANTOM_ATTEMPTS
    for attempt in range(attempts):
        params = draw_subject(generator_for(derive_seed(seed, attempt)), lesion=cfg.lesion,
                              contrasts=("t1",), spacing=2.0)  # fmt: skip
        if volume is not None and params.lesion.total_ml not in volume:
            continue
        subject = make_subject(params)
        labels = (subject.labels > 0).astype(np.float32)
        on_grid = resample_array(labels, subject.affine, brain.shape, affine, order=0) > 0.5
        mask = on_grid & (brain > 0)
        if mask.any() and (volume is None or lesion_volume_ml(mask, affine) in volume):
            return mask
    within = "" if volume is None else f" with a volume in {volume} ml"
    raise RuntimeError(f"{attempts} phantom lesion draws found none in the template brain"
                       f"{within} (seed {seed})")  # fmt: skip
