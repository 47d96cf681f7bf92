"""Phantom lesions of a size range (`generate --lesion-volume`), shared by the engines.

A sample's lesion is redrawn from attempt seeds: attempt 0 is the sample's own seed (so a draw
in range is what an unfiltered run makes), attempt j > 0 uses derive_seed(seed, ATTEMPT_SALT + j).
Lesion parameters are cheap to draw (about 3 ms) and carry their target volume, which the apply
step meets to the voxel, so a size is found before any image is made.
"""

from __future__ import annotations

from synthbrain.errors import InputError
from synthbrain.io.volume_range import VolumeRange
from synthbrain.rng import derive_seed, generator_for

ATTEMPT_SALT = 1_000_000  # keeps attempt seeds apart from the other seeds derived from a sample
MAX_PHANTOM_ATTEMPTS = 1000  # phantom lesion draws per sample


def attempt_seed(sample_seed: int, attempt: int) -> int:
    """The seed of attempt `attempt` of a sample (attempt 0: the sample's own seed)."""
    return sample_seed if attempt == 0 else derive_seed(sample_seed, ATTEMPT_SALT + attempt)


def phantom_lesion_ml(lesion: str, seed: int, contrasts: tuple[str, ...] = ("t1",)) -> float:
    """The target lesion volume (ml) of the phantom subject drawn from `seed` (no images)."""
    from synthbrain.phantom.subject import draw_subject

    params = draw_subject(generator_for(seed), lesion=lesion, contrasts=contrasts)
    return params.lesion.total_ml


def check_phantom_hits(volume: VolumeRange, lesion: str, seed: int) -> None:
    """InputError (exit 2) for a range that MAX_PHANTOM_ATTEMPTS phantom draws never hit."""
    for attempt in range(MAX_PHANTOM_ATTEMPTS):
        if phantom_lesion_ml(lesion, attempt_seed(seed, attempt + 1)) in volume:
            return
    raise InputError(
        f"--lesion-volume '{volume}': the phantom drew no {lesion} lesion in that range in "
        f"{MAX_PHANTOM_ATTEMPTS} attempts"
    )
