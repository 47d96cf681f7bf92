"""`generate --lesion-volume MIN:MAX` for the paired engine: keep only lesions in a size range.

Joint generation (task a) cannot ask the model for a size, so a sample whose lesion falls
outside the range is redrawn from the next derived seed: attempt 0 uses the sample's own seed
derive_seed(run seed, k) (so a sample in range is the file an unfiltered run writes), attempt
j > 0 uses derive_seed(sample seed, ATTEMPT_SALT + j). Every attempt's seed goes into the
manifest, so shards and resumed runs write the same files. After MAX_JOINT_ATTEMPTS misses the
sample is not written and the run's summary lists it.

With `--masks phantom` the phantom draws lesion parameters (about 3 ms each) until one is in
range, so the size is met without sampling the model more than once.

Before any work, a range the model cannot meet is refused (exit 2): for phantom masks, one that
1,000 phantom draws never hit; for joint generation, one outside twice the support of the
phantom corpus's volumes for the lesion type (1,000 joint draws would cost ~3 h of this CPU, so
the training distribution stands in for them, widened because the joint sampler overshoots the
training volumes, docs/paired.md).
"""

from __future__ import annotations

from synthbrain.errors import InputError
from synthbrain.io.volume_range import VolumeRange
from synthbrain.phantom.volume_draws import check_phantom_hits

MAX_JOINT_ATTEMPTS = 12  # joint draws per sample (~10 s each on 2 CPU threads)
JOINT_SUPPORT_WIDENING = 2.0


def check_feasible(volume: VolumeRange, lesion: str, *, phantom_masks: bool, seed: int,
                   brain_ml: float) -> None:  # fmt: skip
    """InputError (exit 2) for a range this model and mask source cannot meet."""
    from synthbrain.phantom.lesions import VOLUME_RANGES_ML

    if volume.low > brain_ml:
        raise InputError(
            f"--lesion-volume '{volume}': larger than the model's whole brain ({brain_ml:.0f} ml)"
        )
    if phantom_masks:
        check_phantom_hits(volume, lesion, seed)
        return
    support = VOLUME_RANGES_ML.get(lesion)
    if support is None:
        return  # no known volume distribution for this lesion type: only the brain bounds it
    low, high = support[0] / JOINT_SUPPORT_WIDENING, support[1] * JOINT_SUPPORT_WIDENING
    if not volume.overlaps(low, high):
        raise InputError(
            f"--lesion-volume '{volume}': outside what the {lesion} model draws (its training "
            f"lesions span {support[0]:g}-{support[1]:g} ml; ranges within {low:g}-{high:g} ml "
            "are tried)"
        )
