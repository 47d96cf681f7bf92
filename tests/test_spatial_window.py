"""The one intensity window: percentiles inside a region, the kept collapse rules, the inverse."""

from __future__ import annotations

import numpy as np
import pytest

from synthbrain.spatial.window import (
    from_unit,
    intensity_range,
    percentile_window,
    scale_intensity,
    to_unit,
    unscale_intensity,
)


def test_window_is_the_half_percentiles_inside_the_region():
    values = np.arange(1000, dtype=np.float64).reshape(10, 10, 10)
    region = np.zeros(values.shape, np.uint8)
    region[:5] = 1
    lo, hi = percentile_window(values, region)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(np.arange(500.0), (0.5, 99.5))))
    assert percentile_window(values, np.zeros_like(region)) is None


@pytest.mark.parametrize(
    ("collapse", "expect"),
    [("none", (3.0, 3.0)), ("epsilon", (3.0, 3.0 + 1e-6)), ("unit", (3.0, 4.0))],
)
def test_collapsed_range_keeps_each_engines_old_rule(collapse, expect):
    flat = np.full((4, 4, 4), 3.0)
    assert percentile_window(flat, np.ones(flat.shape), collapse=collapse) == expect


def test_unit_and_back_are_inverse_inside_the_window():
    data = np.linspace(-5.0, 20.0, 64, dtype=np.float32)
    unit = to_unit(data, 0.0, 10.0)
    assert unit.dtype == np.float32 and unit.min() == 0.0 and unit.max() == 1.0
    inside = (data >= 0) & (data <= 10)
    assert np.allclose(from_unit(unit, 0.0, 10.0)[inside], data[inside], atol=1e-5)
    assert np.allclose(unscale_intensity(scale_intensity(data, 0.0, 10.0), 0.0, 10.0)[inside],
                       data[inside], atol=1e-5)  # fmt: skip


def test_intensity_range_refuses_an_empty_mask():
    with pytest.raises(ValueError, match="empty"):
        intensity_range(np.ones((2, 2, 2)), np.zeros((2, 2, 2)))
