"""The intensity window: 0.5 / 99.5 percentiles inside a region, onto [0, 1] and back.

One function, three old behaviours on a collapsed range (a region whose percentiles coincide),
kept so that outputs do not change byte for byte (issue 11): `collapse="epsilon"` widens the
range to at least 1e-6 (the paired engine's scans), `"unit"` makes a zero-width range one unit
wide (the deviation engine), `"none"` keeps it (preprocess and enhance refuse constant images
before they get here). The phantom keeps its own float32 reciprocal form in
`synthbrain.phantom.contrasts` (the phantom is a layer below this one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

PERCENTILES = (0.5, 99.5)
Collapse = Literal["none", "epsilon", "unit"]


def percentile_window(
    values: np.ndarray,
    region: np.ndarray,
    *,
    collapse: Collapse = "none",
    percentiles: Sequence[float] = PERCENTILES,
) -> tuple[float, float] | None:
    """(lo, hi): the percentiles of `values` where `region` > 0; None if the region is empty."""
    inside = values[region > 0]
    if inside.size == 0:
        return None
    lo, hi = (float(v) for v in np.percentile(inside, percentiles))
    if collapse == "epsilon":
        hi = max(hi, lo + 1e-6)
    elif collapse == "unit" and hi <= lo:
        hi = lo + 1.0
    return lo, hi


def to_unit(data: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clip to [lo, hi] and map linearly onto [0, 1], in the dtype of `data`."""
    return np.clip((data - lo) / (hi - lo), 0.0, 1.0)


def from_unit(data: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The inverse of `to_unit` on [0, 1]: back to the scan's intensities."""
    return data * (hi - lo) + lo


def intensity_range(
    data: np.ndarray, mask: np.ndarray, percentiles: Sequence[float] = PERCENTILES
) -> tuple[float, float]:
    """The (lo, hi) window inside a non-empty mask, as preprocess and enhance use it."""
    found = percentile_window(data, mask, percentiles=percentiles)
    if found is None:
        raise ValueError("intensity_range: the mask is empty")
    return found


def scale_intensity(data: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """`to_unit` computed in float32 (the training sets' and enhance's precision)."""
    return to_unit(data.astype(np.float32), lo, hi).astype(np.float32)


def unscale_intensity(data: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Inverse of `scale_intensity` on [0, 1], in float32."""
    return from_unit(np.asarray(data, dtype=np.float32), lo, hi).astype(np.float32)
