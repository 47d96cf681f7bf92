"""Smooth random fields anchored in world millimetres, and draws from a torch.Generator.

A field is white noise on a coarse lattice of nodes `node_mm` apart (seeded by an integer, so
it replays from SubjectParams), smoothed over one node and scaled to unit standard deviation,
then interpolated linearly wherever it is needed. Because the lattice is anchored at the model
grid's origin in millimetres, the same seed gives the same field at 1 mm and at 2 mm.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

# Extent of the model grids in mm (192 x 224 x 192 at either spacing).
FIELD_OF_VIEW_MM = (192.0, 224.0, 192.0)
_SEED_HIGH = 2**31 - 1


def draw_uniform(generator: torch.Generator, low: float, high: float) -> float:
    """One float drawn uniformly from [low, high)."""
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    return low + (high - low) * u


def draw_log_uniform(generator: torch.Generator, low: float, high: float) -> float:
    """One float whose logarithm is uniform on [log low, log high)."""
    return float(np.exp(draw_uniform(generator, np.log(low), np.log(high))))


def draw_int(generator: torch.Generator, low: int, high: int) -> int:
    """One integer drawn uniformly from low..high inclusive."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def draw_seed(generator: torch.Generator) -> int:
    """An integer seed for a numpy noise field."""
    return draw_int(generator, 0, _SEED_HIGH)


def draw_unit_vector(generator: torch.Generator) -> np.ndarray:
    """A direction drawn uniformly on the sphere."""
    v = torch.randn(3, generator=generator, dtype=torch.float64).numpy()
    return v / max(float(np.linalg.norm(v)), 1e-12)


def coarse_noise(seed: int, node_mm: float, channels: int = 1) -> np.ndarray:
    """Unit-variance smooth noise on the coarse lattice: float32 (channels, nx, ny, nz)."""
    shape = tuple(int(np.ceil(f / node_mm)) + 2 for f in FIELD_OF_VIEW_MM)
    rng = np.random.default_rng(int(seed))
    noise = rng.standard_normal((channels, *shape), dtype=np.float32)
    for c in range(channels):
        noise[c] = ndimage.gaussian_filter(noise[c], 1.0, mode="wrap")
    noise /= max(float(noise.std()), 1e-6)
    return noise


def _axis_weights(n: int, spacing: float, node_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower node index and linear weight of each grid position along one axis."""
    pos = np.arange(n, dtype=np.float64) * spacing / node_mm
    lower = np.floor(pos).astype(np.intp)
    return lower, (pos - lower).astype(np.float32)


def upsample(coarse: np.ndarray, node_mm: float, shape: tuple[int, ...], spacing: float):
    """Coarse lattice (C, ...) -> float32 (C, *shape) on the grid, by separable linear steps."""
    out = coarse
    for axis in range(3):
        lower, w = _axis_weights(shape[axis], spacing, node_mm)
        bshape = [1] * 4
        bshape[axis + 1] = -1
        w = w.reshape(bshape)
        a = np.take(out, lower, axis=axis + 1)
        b = np.take(out, lower + 1, axis=axis + 1)
        out = a + w * (b - a)
    return np.ascontiguousarray(out, dtype=np.float32)


def smooth_field(seed: int, node_mm: float, shape: tuple[int, ...], spacing: float) -> np.ndarray:
    """A unit-variance smooth random field on the grid: float32 `shape`."""
    return upsample(coarse_noise(seed, node_mm), node_mm, shape, spacing)[0]


def field_at(coarse: np.ndarray, node_mm: float, points_mm: np.ndarray) -> np.ndarray:
    """Sample channel 0 of a coarse lattice at points (3, N) given in mm from the grid origin."""
    coords = np.asarray(points_mm, dtype=np.float32) / np.float32(node_mm)
    return ndimage.map_coordinates(coarse[0], coords, order=1, mode="nearest").astype(np.float32)
