"""`--lesion-volume MIN:MAX`: a range of lesion volumes in ml, parsed and checked once.

Researchers balance segmentation training sets by lesion size, so `generate` can keep only
samples whose lesion volume lies in a range. Either end may be left out ("5:" is at least 5 ml,
":20" at most 20 ml); the range is closed, [MIN, MAX].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from synthbrain.errors import InputError

# Far above any brain (an adult brain is about 1.2-1.6 l): a larger bound is a typo, not a wish.
MAX_LESION_ML = 2000.0


@dataclass(frozen=True)
class VolumeRange:
    """Closed range [low, high] of lesion volumes in ml (high = inf: no upper bound)."""

    low: float = 0.0
    high: float = math.inf

    def __contains__(self, ml: float) -> bool:
        return self.low <= ml <= self.high

    def overlaps(self, low: float, high: float) -> bool:
        """Whether [low, high] and this range share a volume."""
        return self.low <= high and low <= self.high

    def __str__(self) -> str:
        high = "" if math.isinf(self.high) else f"{self.high:g}"
        return f"{self.low:g}:{high}"


def _number(text: str, whole: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--lesion-volume {whole!r}: {text!r} is not a number of ml") from None
    if not math.isfinite(value):
        raise InputError(f"--lesion-volume {whole!r}: bounds must be finite numbers of ml")
    return value


def parse_volume_range(text: str) -> VolumeRange:
    """VolumeRange from "MIN:MAX" (ml); InputError for a malformed, negative or empty range."""
    whole = str(text).strip()
    if whole.count(":") != 1:
        raise InputError(f"--lesion-volume {whole!r}: expected MIN:MAX in ml, e.g. 5:50")
    low_text, high_text = (part.strip() for part in whole.split(":"))
    if not low_text and not high_text:
        raise InputError(f"--lesion-volume {whole!r}: give at least one bound, e.g. 5:50")
    low = _number(low_text, whole) if low_text else 0.0
    high = _number(high_text, whole) if high_text else math.inf
    if low < 0 or high < 0:
        raise InputError(f"--lesion-volume {whole!r}: volumes cannot be negative")
    if high <= low or high == 0:
        raise InputError(f"--lesion-volume {whole!r}: the range is empty (MIN must be < MAX)")
    if low > MAX_LESION_ML:
        raise InputError(
            f"--lesion-volume {whole!r}: {low:g} ml is larger than any brain "
            f"(at most {MAX_LESION_ML:g} ml)"
        )
    return VolumeRange(low, high)
