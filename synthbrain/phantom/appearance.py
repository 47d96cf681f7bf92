"""Lesion appearance: compartment intensities, texture, partial volume, and tumour mass effect.

Painting works on the noiseless image inside a small box around the lesion. A compartment's
target is a mixture of the contrast's CSF / GM / WM means plus an offset in units of the tissue
span (`lesions.APPEARANCE` + per-subject `levels`), times a smooth texture; targets are blended
across compartment borders and into the healthy image by a partial-volume weight that is zero
outside the lesion mask, so voxels outside the mask keep their healthy values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from synthbrain.phantom import fields
from synthbrain.phantom.anatomy import WarpedAnatomy, radial_warp, sample_maps
from synthbrain.phantom.contrasts import TISSUES
from synthbrain.phantom.lesion_shapes import LesionGeometry, expand
from synthbrain.phantom.lesions import APPEARANCE, COMPARTMENTS, LesionParams

TEXTURE_NODE_MM = 6.0
PARTIAL_VOLUME_MM = 1.0  # Gaussian sigma of the lesion's partial-volume edge
COMPARTMENT_BLEND_MM = 1.5  # Gaussian sigma of the blend between compartments
MASS_EFFECT_REACH = 2.5  # the push tapers to exactly 0 at this many sigmas (sigma = radius)


@dataclass
class LesionLayer:
    """Contrast-independent lesion maps on a box of the grid.

    Attributes:
        box: the slices (lesion bounding box plus margin) the maps cover.
        compartments: uint8 compartment index per voxel (0 outside the lesion).
        weight: partial-volume weight in [0, 1], 0 outside the lesion mask.
        texture: multiplicative texture (1 outside the lesion).
        changed: voxels whose value may differ from the healthy image (lesion, and with mass
            effect the displaced neighbourhood).
        displaced_mm: world mm each box voxel samples under mass effect, or None.
    """

    box: tuple[slice, slice, slice]
    compartments: np.ndarray
    weight: np.ndarray
    texture: np.ndarray
    changed: np.ndarray
    displaced_mm: np.ndarray | None


def lesion_layer(
    geo: LesionGeometry, lp: LesionParams, anat: WarpedAnatomy, spacing: float, margin: int
) -> LesionLayer | None:
    """Build the lesion's maps on its box grown by `margin` (and by the mass-effect reach)."""
    if geo.region is None:
        return None
    brain, affine = anat.brain, anat.affine
    box = expand(geo.region, margin, geo.labels.shape)
    displaced, moved = None, np.zeros(1, dtype=bool)
    if lp.mass_effect > 0:
        centre, sigma = _mass_centre(geo, lp, affine)
        reach = int(np.ceil(MASS_EFFECT_REACH * sigma / spacing)) + 1
        centre_vox = np.rint(np.linalg.solve(affine[:3, :3], centre - affine[:3, 3])).astype(int)
        push = tuple(slice(int(c) - reach, int(c) + reach + 1) for c in centre_vox)
        box = _union(box, expand(push, margin, geo.labels.shape))
        world = _box_world(box, affine)
        displaced = radial_warp(world, centre, lp.mass_effect, [sigma] * 3, reach=MASS_EFFECT_REACH)
        # Only voxels that actually moved leave the healthy image; the rest stay exact.
        moved = np.any(displaced != world, axis=0) & brain[box]
    lesion = geo.labels[box] > 0
    changed = lesion | moved
    pv = ndimage.gaussian_filter(
        lesion.astype(np.float32), PARTIAL_VOLUME_MM / spacing, mode="constant", truncate=3.0
    )
    weight = np.where(lesion, np.clip(pv, 0.0, 1.0), 0.0).astype(np.float32)
    return LesionLayer(
        box=box,
        compartments=geo.compartments[box],
        weight=weight,
        texture=_texture(lp, lesion, box, anat),
        changed=changed,
        displaced_mm=displaced,
    )


def _union(a, b) -> tuple[slice, slice, slice]:
    """The smallest box holding boxes a and b."""
    return tuple(  # type: ignore[return-value]
        slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True)
    )


def _box_world(box, affine: np.ndarray) -> np.ndarray:
    """World mm (3, ...) of the voxel centres of a box of an axis-aligned grid."""
    axes = [
        (affine[a, 3] + affine[a, a] * np.arange(box[a].start, box[a].stop)).astype(np.float32)
        for a in range(3)
    ]
    return np.stack(np.meshgrid(*axes, indexing="ij"))


def _mass_centre(geo: LesionGeometry, lp: LesionParams, affine: np.ndarray):
    """World mm of the tumour's centre of mass and the push's extent (mm)."""
    com = np.array(ndimage.center_of_mass(geo.labels > 0))
    centre = affine[:3, :3] @ com + affine[:3, 3]
    return centre, float((3.0 * lp.total_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0))


def _texture(lp: LesionParams, lesion: np.ndarray, box, anat: WarpedAnatomy) -> np.ndarray:
    """1 + amp * smooth noise at the lesion voxels' template positions, 1 elsewhere."""
    out = np.ones(lesion.shape, dtype=np.float32)
    local = np.nonzero(lesion)
    flat = np.ravel_multi_index(
        tuple(i + s.start for i, s in zip(local, box, strict=True)), anat.brain.shape
    )
    pts = anat.template_points(flat)
    coarse = fields.coarse_noise(lp.texture_seed, TEXTURE_NODE_MM)
    value = fields.field_at(coarse, pts, anat.affine, anat.brain.shape)
    out[local] = 1.0 + np.float32(lp.texture_amp) * value
    return out


def displace(cleans: np.ndarray, layer: LesionLayer, affine: np.ndarray) -> np.ndarray:
    """Mass effect: the clean images (C, X, Y, Z) resampled at the pushed positions of the box."""
    assert layer.displaced_mm is not None
    return sample_maps(cleans, layer.displaced_mm, affine)


def compartment_targets(
    kind: str, contrast: str, means: dict[str, float], levels: dict[str, float]
) -> list[float]:
    """Target intensity of each compartment (index order) on one clean contrast."""
    mu = np.array([means[t] for t in TISSUES])
    span = float(mu.max() - mu.min())
    out = []
    for name in COMPARTMENTS[kind]:
        mix, _ = APPEARANCE[kind][name][contrast]
        out.append(float(np.dot(mix, mu) + levels[name] * span))
    return out


def paint(
    clean_box: np.ndarray,
    layer: LesionLayer,
    kind: str,
    contrast: str,
    means: dict[str, float],
    levels: dict[str, float],
    spacing: float,
) -> np.ndarray:
    """The clean image of the box with the lesion painted in (changes only lesion voxels)."""
    targets = np.zeros(clean_box.shape, dtype=np.float32)
    for i, value in enumerate(compartment_targets(kind, contrast, means, levels), start=1):
        targets[layer.compartments == i] = value
    inside = layer.compartments > 0
    if len(COMPARTMENTS[kind]) > 1:
        targets = _blend_inside(targets, inside, COMPARTMENT_BLEND_MM / spacing)
    targets *= layer.texture
    return clean_box + layer.weight * (targets - clean_box)


def _blend_inside(values: np.ndarray, inside: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing restricted to `inside` (normalised convolution); 0 outside."""
    w = inside.astype(np.float32)
    num = ndimage.gaussian_filter(values * w, sigma, mode="constant", truncate=3.0)
    den = ndimage.gaussian_filter(w, sigma, mode="constant", truncate=3.0)
    return np.where(inside, num / np.maximum(den, 1e-6), 0.0).astype(np.float32)
