"""Subject anatomy: a smooth diffeomorphic warp, a small affine, ventricle enlargement, atrophy.

Each subject voxel x (world mm on the model grid) samples the template at
`phi(x) = V(A(x + u(x)))`, where u is the scaling-and-squaring integral of a smooth random
velocity field (a diffeomorphism), A a small rotation/scale/translation about the brain centre
and V a radial warp that enlarges the ventricles. T1, GM, WM, brain mask and the helper maps
are sampled together in one `grid_sample` call. Atrophy then moves GM probability into CSF
where the template has CSF nearby (sulcal widening), and darkens T1 to match.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import ndimage

from synthbrain.phantom import fields
from synthbrain.phantom.template import TemplateAnatomy

VELOCITY_NODE_MM = 24.0
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
        template_mm: (3, X, Y, Z) template-space world mm that each voxel samples: lesion
            shapes are defined there, so they follow the subject's anatomy.
        ventricle_distance: distance to the (enlarged) ventricles in template mm.
        t1_means: T1 tissue means (template units) used to paint lesions and atrophy.
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    template_mm: np.ndarray
    ventricle_distance: np.ndarray
    t1_means: dict[str, float]


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


def radial_warp(points: np.ndarray, centre, amplitude: float, sigma_mm) -> np.ndarray:
    """Sample positions c + (p - c)(1 - a g(p)), g a Gaussian bump: enlarges what is near c.

    Invertible for a < 1 (the Jacobian's eigenvalues are 1 - a g and 1 - a g + a g r^2).
    """
    if amplitude <= 0:
        return points
    c = np.asarray(centre, dtype=np.float32).reshape(3, *([1] * (points.ndim - 1)))
    s = np.asarray(sigma_mm, dtype=np.float32).reshape(c.shape)
    rel = points - c
    g = np.exp(-0.5 * ((rel / s) ** 2).sum(axis=0))
    return c + rel * (1.0 - np.float32(amplitude) * g)


def template_coordinates(tpl: TemplateAnatomy, p: AnatomyParams) -> np.ndarray:
    """phi(x): template world mm sampled by each grid voxel, float32 (3, X, Y, Z)."""
    shape, spacing = tpl.shape, tpl.spacing
    coarse = fields.coarse_noise(p.velocity_seed, VELOCITY_NODE_MM, channels=3)
    velocity = coarse * np.float32(p.velocity_std_mm / VELOCITY_NODE_MM)
    disp = fields.upsample(integrate_velocity(velocity), VELOCITY_NODE_MM, shape, spacing)
    disp *= np.float32(VELOCITY_NODE_MM)
    axes = [a.astype(np.float32) for a in _world_axes(tpl)]
    pts = disp
    for a in range(3):
        pts[a] += axes[a].reshape([-1 if i == a else 1 for i in range(3)])
    centre = np.asarray(tpl.ventricle_center, dtype=np.float32)
    matrix = (_rotation(p.rotation_deg) @ np.diag(p.scale)).astype(np.float32)
    rel = (pts - centre[:, None, None, None]).reshape(3, -1)
    offset = centre + np.asarray(p.translation_mm, dtype=np.float32)
    pts = (matrix @ rel + offset[:, None]).reshape(3, *shape)
    return radial_warp(pts, centre, p.ventricle_enlargement, p.ventricle_sigma_mm)


def _world_axes(tpl: TemplateAnatomy) -> list[np.ndarray]:
    """World mm of the grid's voxel centres along x, y, z."""
    return [tpl.affine[a, 3] + tpl.affine[a, a] * np.arange(tpl.shape[a]) for a in range(3)]


def sample_maps(maps: np.ndarray, template_mm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Trilinear samples of stacked maps (C, X, Y, Z) at world mm points (3, ...): (C, ...)."""
    shape = maps.shape[1:]
    origin, step = affine[:3, 3], np.diag(affine)[:3]
    # grid_sample wants (z, y, x)-ordered coordinates in [-1, 1] over the (D, H, W) = (X, Y, Z)
    # array, i.e. last coordinate = first array axis.
    norm = [
        (template_mm[a] - np.float32(origin[a])) * np.float32(2.0 / (step[a] * (shape[a] - 1)))
        - np.float32(1.0)
        for a in range(3)
    ]
    grid = torch.from_numpy(np.stack(norm[::-1], axis=-1)).reshape(1, 1, 1, -1, 3)
    out = torch.nn.functional.grid_sample(
        torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[None],
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )
    return out.reshape(maps.shape[0], *template_mm.shape[1:]).numpy()


def warp_anatomy(tpl: TemplateAnatomy, p: AnatomyParams) -> WarpedAnatomy:
    """Apply AnatomyParams to the template (deterministic): the subject's healthy anatomy."""
    phi = template_coordinates(tpl, p)
    stack = np.stack(
        [tpl.t1, tpl.gm, tpl.wm, tpl.brain_mask, tpl.csf_smooth, tpl.ventricle_distance]
    )
    t1, gm, wm, mask, csf_smooth, vdist = sample_maps(stack, phi, tpl.affine)
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
        template_mm=phi,
        ventricle_distance=vdist,
        t1_means=dict(tpl.t1_means),
    )


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
    vary = fields.smooth_field(p.atrophy_seed, ATROPHY_NODE_MM, tpl.shape, tpl.spacing)
    local = np.clip(1.0 + 0.5 * vary, 0.0, 2.0)
    near_csf = np.clip(2.0 * csf_smooth, 0.0, 1.0)
    return np.clip(np.float32(p.atrophy) * local * near_csf, 0.0, 1.0) * gm
