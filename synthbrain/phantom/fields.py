"""Smooth random fields anchored in world millimetres, and draws from a torch.Generator.

A field is white noise on a coarse lattice of nodes `node_mm` apart (seeded by an integer, so
it replays from SubjectParams), smoothed over one node and scaled to unit standard deviation,
then interpolated linearly wherever it is needed. The lattice is stretched corner to corner over
the model grid, whose origin and extent agree at 1 mm and 2 mm (to 1 mm), so one seed gives the
same field at both spacings.
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


def lattice_shape(node_mm: float) -> tuple[int, int, int]:
    """Nodes per axis of a lattice about `node_mm` apart spanning the field of view."""
    return tuple(int(round(f / node_mm)) + 1 for f in FIELD_OF_VIEW_MM)  # type: ignore[return-value]


def coarse_noise(seed: int, node_mm: float, channels: int = 1) -> np.ndarray:
    """Unit-variance smooth noise on the coarse lattice: float32 (channels, nx, ny, nz)."""
    rng = np.random.default_rng(int(seed))
    noise = rng.standard_normal((channels, *lattice_shape(node_mm)), dtype=np.float32)
    for c in range(channels):
        noise[c] = ndimage.gaussian_filter(noise[c], 1.0, mode="nearest")
    noise /= max(float(noise.std()), 1e-6)
    return noise


def upsample(coarse: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A lattice (C, ...) whose corner nodes sit on the grid's corner voxels -> (C, *shape)."""
    out = torch.nn.functional.interpolate(
        torch.from_numpy(np.ascontiguousarray(coarse, dtype=np.float32))[None],
        size=tuple(int(n) for n in shape),
        mode="trilinear",
        align_corners=True,
    )
    return out[0].numpy()


def smooth_field(seed: int, node_mm: float, shape: tuple[int, ...]) -> np.ndarray:
    """A unit-variance smooth random field on the grid: float32 `shape`."""
    return upsample(coarse_noise(seed, node_mm), shape)[0]


def lattice_affine(lattice: tuple[int, ...], shape: tuple[int, ...], affine: np.ndarray):
    """The affine of a lattice stretched corner to corner over the grid of `affine`."""
    out = np.array(affine, dtype=np.float64, copy=True)
    for a in range(3):
        out[a, a] = affine[a, a] * (shape[a] - 1) / (lattice[a] - 1)
    return out


def sample(
    maps: np.ndarray, points_mm: np.ndarray, affine: np.ndarray, padding: str = "zeros"
) -> np.ndarray:
    """Trilinear samples of maps (C, X, Y, Z) on an axis-aligned grid at world mm (3, ...).

    Returns (C, ...); points outside the maps read 0 (padding "zeros") or the edge ("border").
    """
    shape = maps.shape[1:]
    origin, step = affine[:3, 3], np.diag(affine)[:3]
    # grid_sample wants coordinates in [-1, 1], last one indexing the first array axis.
    norm = [
        (points_mm[a] - np.float32(origin[a])) * np.float32(2.0 / (step[a] * (shape[a] - 1)))
        - np.float32(1.0)
        for a in range(3)
    ]
    grid = torch.from_numpy(np.stack(norm[::-1], axis=-1)).reshape(1, 1, 1, -1, 3)
    values = np.ascontiguousarray(maps, dtype=np.float32)
    if not values.flags.writeable:  # cached template arrays are read-only; torch wants writable
        values = values.copy()
    out = torch.nn.functional.grid_sample(
        torch.from_numpy(values)[None],
        grid,
        mode="bilinear",
        padding_mode=padding,
        align_corners=True,
    )
    return out.reshape(maps.shape[0], *points_mm.shape[1:]).numpy()


def field_at(coarse: np.ndarray, points_mm: np.ndarray, grid_affine, shape) -> np.ndarray:
    """Channel 0 of a coarse lattice (stretched over the grid) at world mm points (3, N)."""
    affine = lattice_affine(coarse.shape[1:], shape, grid_affine)
    return sample(coarse[:1], points_mm, affine, padding="border")[0]
