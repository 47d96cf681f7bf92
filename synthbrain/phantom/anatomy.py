"""Subject anatomy: a smooth diffeomorphic warp, a small affine, ventricle enlargement, atrophy.

Each subject voxel x (world mm on the model grid) samples the template at
`phi(x) = V(A(x + u(x)))`, where u is the scaling-and-squaring integral of a smooth random
velocity field (a diffeomorphism), A a small rotation/scale/translation about the brain centre
and V a radial warp that enlarges the ventricles. phi is evaluated on a ~4 mm lattice and
interpolated; T1, GM, WM, brain mask and the helper maps are sampled together in one
`grid_sample` call, only at voxels that can land in the brain. Atrophy then moves GM
probability into CSF where the template has CSF nearby (sulcal widening), and darkens T1 to
match.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import ndimage

from synthbrain.phantom import fields
from synthbrain.phantom.template import TemplateAnatomy, template

VELOCITY_NODE_MM = 24.0
PHI_NODE_MM = 4.0
ACTIVE_MARGIN_MM = 8.0
ATROPHY_NODE_MM = 32.0
_SQUARINGS = 6


@dataclass
class AnatomyParams:
    """How one subject's anatomy differs from the template (plain numbers, JSON-able).

    Attributes:
        velocity_seed: seed of the random velocity field.
        velocity_std_mm: standard deviation of the velocity field (mm).
        rotation_deg: rotations about x, y, z (degrees).
        scale: scale factors along x, y, z.
        translation_mm: translation (mm).
        ventricle_enlargement: amplitude a of the radial ventricle warp (0 = none).
        ventricle_sigma_mm: extent of the radial warp along x, y, z (mm).
        atrophy: fraction of GM turned into CSF where CSF is near (0 = none).
        atrophy_seed: seed of the field that makes atrophy vary across the brain.
    """

    velocity_seed: int
    velocity_std_mm: float
    rotation_deg: list[float]
    scale: list[float]
    translation_mm: list[float]
    ventricle_enlargement: float
    ventricle_sigma_mm: list[float]
    atrophy: float
    atrophy_seed: int

    @classmethod
    def from_dict(cls, d: dict) -> AnatomyParams:
        """Rebuild from `asdict` output."""
        return cls(**d)

    def to_dict(self) -> dict:
        """Plain-dict form."""
        return asdict(self)


@dataclass
class WarpedAnatomy:
    """One subject's anatomy on the model grid (float32 arrays, x/y/z).

    Attributes:
        t1: T1 intensities in template units (0 outside the brain).
        gm, wm, csf: tissue probabilities summing to 1 inside the brain, 0 outside.
        brain: boolean brain mask.
        ventricle_distance: distance to the (enlarged) ventricles in template mm.
        t1_means: T1 tissue means (template units) used to paint lesions and atrophy.
        affine: the grid's affine.
        phi: (3, ...) template mm sampled by the nodes of a ~4 mm lattice over the grid;
            `template_points` interpolates it, so lesion shapes defined in template space
            follow the subject's anatomy.
        phi_affine: the lattice's affine.
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    ventricle_distance: np.ndarray
    t1_means: dict[str, float]
    affine: np.ndarray
    phi: np.ndarray
    phi_affine: np.ndarray

    def template_points(self, flat_index: np.ndarray) -> np.ndarray:
        """Template world mm (3, N) that grid voxels (flat indices) sample."""
        return fields.sample(
            self.phi,
            voxel_world(flat_index, self.brain.shape, self.affine),
            self.phi_affine,
            padding="border",
        )


def voxel_world(flat_index: np.ndarray, shape, affine: np.ndarray) -> np.ndarray:
    """World mm (3, N) float32 of grid voxels given by flat indices (axis-aligned grid)."""
    idx = np.unravel_index(flat_index, shape)
    return np.stack(
        [
            np.float32(affine[a, 3]) + np.float32(affine[a, a]) * idx[a].astype(np.float32)
            for a in range(3)
        ]
    )


def draw_anatomy(generator: torch.Generator) -> AnatomyParams:
    """Draw one subject's anatomy parameters (ranges in docs/phantom.md)."""
    u = fields.draw_uniform
    return AnatomyParams(
        velocity_seed=fields.draw_seed(generator),
        velocity_std_mm=u(generator, 1.0, 4.0),
        rotation_deg=[u(generator, -5.0, 5.0) for _ in range(3)],
        scale=[u(generator, 0.93, 1.07) for _ in range(3)],
        translation_mm=[u(generator, -3.0, 3.0) for _ in range(3)],
        ventricle_enlargement=u(generator, 0.0, 0.45),
        ventricle_sigma_mm=[u(generator, 14.0, 20.0), u(generator, 24.0, 34.0), 18.0],
        atrophy=u(generator, 0.0, 0.5),
        atrophy_seed=fields.draw_seed(generator),
    )


def integrate_velocity(velocity: np.ndarray, squarings: int = _SQUARINGS) -> np.ndarray:
    """Scaling and squaring: the displacement of exp(v) for a stationary velocity (3, ...).

    Units are lattice nodes; u <- u + u(x + u) applied `squarings` times to v / 2**squarings.
    """
    disp = velocity / np.float32(2**squarings)
    grid = np.indices(velocity.shape[1:], dtype=np.float32)
    for _ in range(squarings):
        coords = grid + disp
        disp = disp + np.stack(
            [ndimage.map_coordinates(d, coords, order=1, mode="nearest") for d in disp]
        )
    return disp.astype(np.float32)


def _rotation(deg: list[float]) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx for angles in degrees."""
    ax, ay, az = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def radial_warp(
    points: np.ndarray, centre, amplitude: float, sigma_mm, reach: float | None = None
) -> np.ndarray:
    """Sample positions c + (p - c)(1 - a g(p)), g a Gaussian bump: enlarges what is near c.

    With `reach` (in sigmas) the bump is tapered by (1 - (r / reach)^2)^2 so it is exactly 0
    beyond `reach`. Invertible for a < 1: along r the derivative is 1 - a (g + r g') >= 1 - a
    and across it 1 - a g > 0.
    """
    if amplitude <= 0:
        return points
    c = np.asarray(centre, dtype=np.float32).reshape(3, *([1] * (points.ndim - 1)))
    s = np.asarray(sigma_mm, dtype=np.float32).reshape(c.shape)
    rel = points - c
    r2 = ((rel / s) ** 2).sum(axis=0)
    g = np.exp(-0.5 * r2)
    if reach is not None:
        g *= np.clip(1.0 - r2 / np.float32(reach**2), 0.0, None) ** 2
    return c + rel * (1.0 - np.float32(amplitude) * g)


def phi_lattice(tpl: TemplateAnatomy, p: AnatomyParams) -> tuple[np.ndarray, np.ndarray]:
    """phi at the nodes of a ~4 mm lattice over the grid: (3, ...) template mm, and its affine.

    phi is smooth, so trilinear interpolation from this lattice is accurate to well under a
    voxel and saves evaluating the warp at every voxel.
    """
    lattice = tuple(int(round((n - 1) * tpl.spacing / PHI_NODE_MM)) + 1 for n in tpl.shape)
    phi_affine = fields.lattice_affine(lattice, tpl.shape, tpl.affine)
    axes = [
        (phi_affine[a, 3] + phi_affine[a, a] * np.arange(lattice[a])).astype(np.float32)
        for a in range(3)
    ]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"))
    pts += _velocity_displacement(tpl, p, pts)
    centre = np.asarray(tpl.ventricle_center, dtype=np.float32)
    matrix = (_rotation(p.rotation_deg) @ np.diag(p.scale)).astype(np.float32)
    rel = (pts - centre[:, None, None, None]).reshape(3, -1)
    offset = centre + np.asarray(p.translation_mm, dtype=np.float32)
    pts = (matrix @ rel + offset[:, None]).reshape(3, *lattice)
    return radial_warp(pts, centre, p.ventricle_enlargement, p.ventricle_sigma_mm), phi_affine


def _velocity_displacement(tpl: TemplateAnatomy, p: AnatomyParams, pts: np.ndarray):
    """The diffeomorphic displacement (mm) at world points, from the integrated velocity."""
    coarse = fields.coarse_noise(p.velocity_seed, VELOCITY_NODE_MM, channels=3)
    node_affine = fields.lattice_affine(coarse.shape[1:], tpl.shape, tpl.affine)
    step = np.diag(node_affine)[:3].astype(np.float32).reshape(3, 1, 1, 1)
    disp = integrate_velocity(coarse * np.float32(p.velocity_std_mm) / step)
    return fields.sample(disp, pts, node_affine, padding="border") * step


@functools.lru_cache(maxsize=2)
def _reachable(spacing: float) -> np.ndarray:
    """The template brain mask dilated by ACTIVE_MARGIN_MM, as float32 (1, X, Y, Z)."""
    tpl = template(spacing)
    radius = int(np.ceil(ACTIVE_MARGIN_MM / spacing))
    dilated = ndimage.binary_dilation(tpl.brain_mask > 0, iterations=radius)
    return dilated.astype(np.float32)[None]


def _active_voxels(tpl: TemplateAnatomy, phi: np.ndarray) -> np.ndarray:
    """Flat indices of grid voxels that may land in the brain (a superset, never fewer)."""
    node_in = fields.sample(_reachable(tpl.spacing), phi, tpl.affine)[0] > 0
    near = fields.upsample(node_in.astype(np.float32)[None], tpl.shape)[0] > 0
    return np.flatnonzero(near)


def sample_maps(maps: np.ndarray, template_mm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Trilinear samples of stacked maps (C, X, Y, Z) at world mm points (3, ...): (C, ...)."""
    return fields.sample(maps, template_mm, affine)


def warp_anatomy(tpl: TemplateAnatomy, p: AnatomyParams) -> WarpedAnatomy:
    """Apply AnatomyParams to the template (deterministic): the subject's healthy anatomy."""
    phi, phi_affine = phi_lattice(tpl, p)
    active = _active_voxels(tpl, phi)
    world = voxel_world(active, tpl.shape, tpl.affine)
    template_mm = fields.sample(phi, world, phi_affine, padding="border")
    stack = _template_stack(tpl)
    maps = np.zeros((stack.shape[0], int(np.prod(tpl.shape))), dtype=np.float32)
    maps[:, active] = fields.sample(stack, template_mm, tpl.affine)
    t1, gm, wm, mask, csf_smooth, vdist = maps.reshape(stack.shape)
    brain = mask > 0.5
    gm = np.clip(gm, 0.0, 1.0) * brain
    wm = np.clip(wm, 0.0, 1.0) * brain
    csf = np.clip(mask - gm - wm, 0.0, 1.0) * brain
    gm, wm, csf = _normalise_tissues(gm, wm, csf, brain)
    t1 = t1 * brain
    loss = _atrophy(p, gm, csf_smooth, tpl)
    gm -= loss
    csf += loss
    # Atrophied cortex becomes CSF, so T1 moves from the GM level to the CSF level there.
    t1 += loss * np.float32(tpl.t1_means["csf"] - tpl.t1_means["gm"])
    return WarpedAnatomy(
        t1=np.clip(t1, 0.0, None).astype(np.float32),
        gm=gm,
        wm=wm,
        csf=csf,
        brain=brain,
        ventricle_distance=vdist,
        t1_means=dict(tpl.t1_means),
        affine=tpl.affine.copy(),
        phi=phi,
        phi_affine=phi_affine,
    )


@functools.lru_cache(maxsize=2)
def _stacked(spacing: float) -> np.ndarray:
    """The template maps warped together, stacked once per spacing."""
    tpl = template(spacing)
    return np.stack(
        [tpl.t1, tpl.gm, tpl.wm, tpl.brain_mask, tpl.csf_smooth, tpl.ventricle_distance]
    )


def _template_stack(tpl: TemplateAnatomy) -> np.ndarray:
    """T1, GM, WM, brain mask, smoothed CSF and ventricle distance as (6, X, Y, Z)."""
    return _stacked(tpl.spacing)


def _normalise_tissues(gm, wm, csf, brain):
    """Scale GM/WM/CSF to sum to 1 inside the brain (voxels with no tissue become CSF)."""
    total = gm + wm + csf
    empty = brain & (total < 1e-3)
    csf[empty] = 1.0
    total[empty] = 1.0
    total[~brain] = 1.0
    inv = (1.0 / total).astype(np.float32)
    return gm * inv, wm * inv, csf * inv


def _atrophy(p: AnatomyParams, gm, csf_smooth, tpl: TemplateAnatomy) -> np.ndarray:
    """GM probability lost to CSF: strongest next to sulcal CSF, varying smoothly in space."""
    if p.atrophy <= 0:
        return np.zeros_like(gm)
    vary = fields.smooth_field(p.atrophy_seed, ATROPHY_NODE_MM, tpl.shape)
    local = np.clip(1.0 + 0.5 * vary, 0.0, 2.0)
    near_csf = np.clip(2.0 * csf_smooth, 0.0, 1.0)
    return np.clip(np.float32(p.atrophy) * local * near_csf, 0.0, 1.0) * gm
