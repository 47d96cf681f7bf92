"""Where `generate` gets anatomies and masks: the user's folders, or phantom subjects.

Pair p of a run (an anatomy and a mask) is drawn from its own seed, so any sample of a run can
be made alone (a shard, a resumed run) and comes out the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synthbrain.engines.deviation.io import Subject, brain_of, subject_from_volumes
from synthbrain.errors import InputError
from synthbrain.io.nifti import Volume
from synthbrain.phantom.lesions import LESION_KINDS

PHANTOM_LESIONS = LESION_KINDS  # the phantom's own list
MAX_TRIES = 20


@dataclass
class Pair:
    """One anatomy with the mask to implant, and where each came from (for the manifest)."""

    subject: Subject
    anatomy: str
    mask: str


def nifti_files(folder: Path) -> list[Path]:
    """The .nii / .nii.gz files directly in `folder`, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.name.endswith((".nii", ".nii.gz")))


def anatomy_entries(folder: Path, contrasts: tuple[str, ...]) -> list[dict[str, Path]]:
    """Anatomies of a folder: NIfTI files (the model's first contrast) or BraTS-style subject
    folders (each contrast found by its file name). All must offer the same contrasts."""
    from synthbrain.io.paths import find_brats_contrast

    entries: list[dict[str, Path]] = [{contrasts[0]: p} for p in nifti_files(folder)]
    for sub in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        found = {c: find_brats_contrast(sub, c) for c in contrasts}
        found = {c: p for c, p in found.items() if p is not None}
        if found:
            entries.append(found)
    if not entries:
        raise InputError("no NIfTI scans or subject folders found for --anatomy", folder)
    kinds = {tuple(sorted(e)) for e in entries}
    if len(kinds) > 1:
        listed = "; ".join(", ".join(k) for k in sorted(kinds))
        raise InputError(f"--anatomy entries differ in their contrasts ({listed})", folder)
    return entries


def mask_files(folder: Path) -> list[Path]:
    """The lesion masks of --masks (label maps count: any non-zero voxel is lesion)."""
    files = nifti_files(folder)
    if not files:
        raise InputError("no NIfTI masks found for --masks", folder)
    return files


class Sources:
    """Draws pair p: anatomy from a folder (in turn) or a phantom; mask from a folder (at
    random) or the phantom's lesion shape.

    Args:
        contrasts: the model's contrasts (phantoms are drawn with all of them).
        lesion: the phantom lesion kind for masks (and phantom anatomies).
        spacing: phantom grid spacing, mm.
        anatomy, masks: user folders, or None for phantoms.
        labels: which mask labels make the lesion ("any" or values), as in the model config.
    """

    def __init__(self, *, contrasts, lesion, spacing, anatomy=None, masks=None, labels="any",  # noqa: ANN001
                 volume=None):  # fmt: skip
        if (anatomy is None or masks is None) and lesion not in PHANTOM_LESIONS:
            raise InputError(
                f"phantom masks exist for {', '.join(PHANTOM_LESIONS)}, not {lesion!r}; "
                "give --masks and --anatomy folders"
            )
        self.contrasts, self.lesion, self.spacing = tuple(contrasts), lesion, float(spacing)
        self.labels, self.volume = labels, volume  # volume: a VolumeRange for phantom masks
        self.anatomies = anatomy_entries(anatomy, self.contrasts) if anatomy else None
        self.masks = mask_files(masks) if masks else None

    @property
    def written_contrasts(self) -> tuple[str, ...]:
        """The contrasts every sample of this run has."""
        if self.anatomies is None:
            return self.contrasts
        return tuple(c for c in self.contrasts if c in self.anatomies[0])

    def pair(self, p: int, seed: int) -> Pair:
        """Pair p, drawn from a generator seeded with `seed` (derive_seed(run seed, p))."""
        from synthbrain.rng import generator_for

        generator = generator_for(seed)
        phantom = None
        if self.anatomies is None or self.masks is None:
            seed, generator = self._phantom_seed(seed, generator)
            phantom = self._phantom(generator)
        if self.anatomies is None:
            volumes = {c: Volume(phantom.healthy[c], phantom.affine) for c in self.contrasts}
            anatomy = f"phantom:{seed}"
        else:
            volumes, anatomy = self._load_anatomy(p)
        for _ in range(MAX_TRIES):
            mask, mask_name = self._mask_for(volumes, generator, phantom, seed)
            if (mask & brain_of(volumes)).any():
                primary = next(iter(volumes))
                return Pair(subject_from_volumes(volumes, mask, primary), anatomy, mask_name)
        raise InputError(f"no mask of --masks reaches the brain of anatomy {anatomy}")

    def _phantom_seed(self, seed: int, generator: torch.Generator) -> tuple[int, torch.Generator]:
        """The pair's phantom seed and generator: its own, or with --lesion-volume the first
        attempt seed whose lesion volume is in range (`phantom.volume_draws`)."""
        from synthbrain.phantom.volume_draws import (
            MAX_PHANTOM_ATTEMPTS,
            attempt_seed,
            phantom_lesion_ml,
        )
        from synthbrain.rng import generator_for

        if self.volume is None:
            return seed, generator
        for attempt in range(MAX_PHANTOM_ATTEMPTS):
            tried = attempt_seed(seed, attempt)
            if phantom_lesion_ml(self.lesion, tried, self.contrasts) in self.volume:
                return tried, generator_for(tried)
        raise InputError(f"--lesion-volume '{self.volume}': no phantom {self.lesion} lesion in "
                         f"range in {MAX_PHANTOM_ATTEMPTS} draws (seed {seed})")  # fmt: skip

    def _phantom(self, generator: torch.Generator):  # noqa: ANN202
        """A phantom subject with a lesion of our kind (its healthy image is the anatomy)."""
        from synthbrain.phantom import draw_subject, make_subject

        params = draw_subject(generator, lesion=self.lesion, contrasts=self.contrasts,
                              spacing=self.spacing)  # fmt: skip
        return make_subject(params)

    def _load_anatomy(self, p: int) -> tuple[dict[str, Volume], str]:
        """Anatomy p % count of the folder, its contrasts checked on one grid."""
        from synthbrain.io.nifti import load_volume
        from synthbrain.io.validate import check_same_grid

        entry = self.anatomies[p % len(self.anatomies)]
        volumes = {c: load_volume(path, kind="image") for c, path in entry.items()}
        first = next(iter(volumes.values()))
        for name, vol in volumes.items():
            check_same_grid(first, vol, what=name)
        return volumes, str(next(iter(entry.values())))

    def _mask_for(self, volumes, generator, phantom, seed):  # noqa: ANN001, ANN202
        """A mask on the anatomy's grid (world coordinates), from the folder or the phantom."""
        from synthbrain.io.nifti import load_volume, resample_to

        ref = next(iter(volumes.values()))
        if self.masks is not None:
            path = self.masks[int(torch.randint(len(self.masks), (1,), generator=generator))]
            source, name = load_volume(path, kind="label", label=True), str(path)
        else:
            source = Volume(phantom.labels, phantom.affine)
            name = f"phantom:{seed}"
        lesion = self._lesion(source.data)
        placed = resample_to(Volume(lesion, source.affine), ref.shape, ref.affine, order=0)
        return placed.data > 0, name

    def _lesion(self, labels: np.ndarray) -> np.ndarray:
        """The chosen labels of a label map as uint8 {0, 1}."""
        from synthbrain.io.dataset import lesion_mask_from_labels
        from synthbrain.phantom.lesions import label_names

        names = label_names(self.lesion)
        return lesion_mask_from_labels(labels, self.labels, names).astype(np.uint8)
