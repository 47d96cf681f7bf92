"""Apply lesion parameters: label maps from scores over candidate voxels (deterministic).

Each component scores every candidate voxel (distance-like shape term in template mm plus a
smooth roughness field) and takes the best-scoring voxels until its target volume is met, so
volumes are exact to the voxel and the boundary is irregular. Candidates are brain voxels of the
right tissue (parenchyma for strokes, WM > 0.5 for WMH, anything but the ventricles for
tumours), so every lesion voxel lies inside the brain mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from synthbrain.phantom import fields
from synthbrain.phantom.anatomy import WarpedAnatomy
from synthbrain.phantom.lesions import LesionParams

# Edge roughness mixes a fine and a coarse smooth field (node spacing mm, weight).
ROUGHNESS_SCALES = ((6.0, 0.6), (14.0, 0.8))
PERIVENTRICULAR_SCALE_MM = 10.0
TUMOUR_VENTRICLE_GAP_MM = 1.0


@dataclass
class LesionGeometry:
    """Where the lesion is on the grid.

    Attributes:
        labels: uint8 label map (binary 1 for stroke / WMH; BraTS 1 / 2 / 3 for tumours).
        compartments: uint8 map of appearance compartments (index into COMPARTMENTS[kind]).
        region: bounding box (slices) of the labelled voxels, None when there are none.
    """

    labels: np.ndarray
    compartments: np.ndarray
    region: tuple[slice, slice, slice] | None


def voxel_counts(lp: LesionParams, voxel_ml: float) -> list[int]:
    """Voxels per component: total = ceil(total_ml / voxel), split by largest remainders."""
    total = int(np.ceil(lp.total_ml / voxel_ml - 1e-6))
    ml = np.array([c["ml"] for c in lp.components], dtype=float)
    exact = total * ml / ml.sum()
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return [int(c) for c in counts]


def _candidates(anat: WarpedAnatomy, kind: str) -> np.ndarray:
    """Flat indices of the voxels a lesion of `kind` may occupy."""
    if kind == "wmh":
        allowed = anat.brain & (anat.wm > 0.5)
    elif kind == "tumor":
        # A glioma effaces the sulci it grows over but does not fill the ventricles.
        allowed = anat.brain & (anat.ventricle_distance > TUMOUR_VENTRICLE_GAP_MM)
    else:
        allowed = anat.brain & ((anat.gm + anat.wm) >= 0.4)
    return np.flatnonzero(allowed)


def _roughness(seed: int, pts: np.ndarray, amplitude: float, anat: WarpedAnatomy) -> np.ndarray:
    """A two-scale smooth field at template points (3, N), std about `amplitude`."""
    out = np.zeros(pts.shape[1], dtype=np.float32)
    for k, (node, weight) in enumerate(ROUGHNESS_SCALES):
        coarse = fields.coarse_noise(seed + k, node)
        value = fields.field_at(coarse, pts, anat.affine, anat.brain.shape)
        out += np.float32(weight * amplitude) * value
    return out


def _top(score: np.ndarray, n: int, excluded: np.ndarray) -> np.ndarray:
    """Indices of the `n` best scores among the non-excluded entries."""
    score = np.where(excluded, -np.inf, score)
    n = int(min(n, score.size - int(excluded.sum())))
    if n <= 0:
        return np.zeros(0, dtype=np.intp)
    return np.argpartition(score, score.size - n)[score.size - n :]


def _wedge_score(pts: np.ndarray, c: dict) -> np.ndarray:
    """Cone from the apex along the axis, widest and preferred at the cortical end."""
    apex = np.asarray(c["apex_mm"], dtype=np.float32)[:, None]
    axis = np.asarray(c["axis"], dtype=np.float32)[:, None]
    v = pts - apex
    h = (v * axis).sum(axis=0)
    rho = np.sqrt(np.maximum((v * v).sum(axis=0) - h * h, 0.0))
    tan = np.float32(np.tan(np.deg2rad(c["half_angle_deg"])))
    a = rho / (tan * np.maximum(h, 2.0))
    b = (np.float32(c["depth_mm"]) - h) / np.float32(c["depth_mm"])
    # A distance-like score (about 1 at the lesion edge), so roughness means the same everywhere.
    return -np.sqrt(a * a + np.float32(c["outer_weight"]) * b * b)


def _radius_mm(ml: float) -> float:
    """Radius (mm) of a ball of `ml` millilitres."""
    return float((3.0 * ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0))


def _ellipsoid_distance(pts: np.ndarray, c: dict) -> np.ndarray:
    """Scaled distance to the component's centre, 1 at the radius of a ball of its volume."""
    centre = np.asarray(c["center_mm"], dtype=np.float32)[:, None]
    radii = np.asarray(c["radii"], dtype=np.float32)[:, None] * np.float32(_radius_mm(c["ml"]))
    return np.sqrt((((pts - centre) / radii) ** 2).sum(axis=0))


def lesion_geometry(anat: WarpedAnatomy, lp: LesionParams, spacing: float) -> LesionGeometry:
    """Label and compartment maps of the subject's lesions (deterministic)."""
    shape = anat.brain.shape
    labels = np.zeros(shape, dtype=np.uint8)
    compartments = np.zeros(shape, dtype=np.uint8)
    if lp.kind == "none" or not lp.components:
        return LesionGeometry(labels, compartments, None)
    cand = _candidates(anat, lp.kind)
    pts = anat.template_points(cand)
    fields_needed = 2 if lp.kind == "tumor" else 1
    rough = [
        _roughness(lp.roughness_seed + 7919 * i, pts, lp.roughness, anat)
        for i in range(fields_needed)
    ]
    counts = voxel_counts(lp, spacing**3 / 1000.0)
    if lp.kind == "tumor":
        wm = anat.wm.ravel()[cand]
        lab = _tumour_labels(pts, wm, cand, shape, lp.components[0], counts[0], rough)
    else:
        vdist = anat.ventricle_distance.ravel()[cand]
        lab = _union_labels(pts, vdist, lp.components, counts, rough[0])
    labels.ravel()[cand] = lab
    region = _bbox(labels > 0)
    if lp.kind == "tumor":
        compartments[...] = labels
    elif lp.kind == "stroke":
        _stroke_compartments(labels, compartments, region, spacing, lp.rim_mm)
    else:
        compartments[...] = labels
    return LesionGeometry(labels, compartments, region)


def _union_labels(pts, vdist, components, counts, rough) -> np.ndarray:
    """Strokes and WMH: components fill disjoint voxel sets, each meeting its count."""
    lab = np.zeros(pts.shape[1], dtype=np.uint8)
    taken = np.zeros(pts.shape[1], dtype=bool)
    for c, n in zip(components, counts, strict=True):
        if c["shape"] == "wedge":
            score = _wedge_score(pts, c)
        elif c["shape"] == "periventricular":
            score = -vdist / np.float32(PERIVENTRICULAR_SCALE_MM)
        else:
            score = -_ellipsoid_distance(pts, c)
        sel = _top(score + rough, n, taken)
        taken[sel] = True
        lab[sel] = 1
    return lab


def _tumour_labels(pts, wm, cand, shape, c: dict, n_total: int, rough) -> np.ndarray:
    """BraTS labels: oedema (2) around a core whose centre is necrotic (1), shell enhancing (3).

    The core is taken from the interior of the whole tumour and the necrosis from the interior
    of the core (when they are large enough), so oedema wraps the core and the enhancing shell
    wraps the necrosis.
    """
    d = _ellipsoid_distance(pts, c)
    n_core = int(np.clip(round(c["core_fraction"] * n_total), 2, n_total))
    n_nec = int(np.clip(round(c["necrosis_fraction"] * n_core), 1, n_core - 1))
    lab = np.zeros(pts.shape[1], dtype=np.uint8)
    # Oedema spreads preferentially along white matter.
    oedema_score = -d + np.float32(c["wm_preference"]) * wm + rough[0]
    whole = _top(oedema_score, n_total, np.zeros(pts.shape[1], dtype=bool))
    lab[whole] = 2
    core_score = -d + np.float32(0.5) * rough[1]
    core = _top(core_score, n_core, ~_inner(lab == 2, whole, cand, shape, n_core))
    lab[core] = 3
    # A different field for the necrosis edge makes the enhancing shell vary in thickness.
    necrosis_score = -d + np.float32(0.7) * rough[0]
    necrosis = _top(necrosis_score, n_nec, ~_inner(lab == 3, core, cand, shape, n_nec))
    lab[necrosis] = 1
    return lab


def _inner(member: np.ndarray, chosen: np.ndarray, cand, shape, need: int) -> np.ndarray:
    """Candidates in the interior of a chosen set (all six face neighbours in it), or the
    whole set when its interior holds fewer than `need` voxels."""
    idx = np.array(np.unravel_index(cand[chosen], shape))
    lo = idx.min(axis=1)
    local = tuple(idx - lo[:, None] + 1)
    box = np.zeros(idx.max(axis=1) - lo + 3, dtype=bool)
    box[local] = True
    inner = np.zeros_like(member)
    inner[chosen] = ndimage.binary_erosion(box)[local]
    return inner if int(inner.sum()) >= need else member


def _bbox(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """The bounding box of a boolean map, None when it is empty."""
    if not mask.any():
        return None
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        out.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(out)  # type: ignore[return-value]


def expand(region, margin: int, shape) -> tuple[slice, slice, slice]:
    """A bounding box grown by `margin` voxels on every side, clipped to the grid."""
    return tuple(  # type: ignore[return-value]
        slice(max(0, s.start - margin), min(n, s.stop + margin))
        for s, n in zip(region, shape, strict=True)
    )


def _stroke_compartments(labels, compartments, region, spacing: float, rim_mm: float) -> None:
    """Stroke: a gliotic rim (within rim_mm of the edge, 2) around a cavitated core (1)."""
    box = expand(region, 1, labels.shape)
    lesion = labels[box] > 0
    depth = ndimage.distance_transform_edt(lesion, sampling=spacing)
    comp = np.where(lesion, np.where(depth <= rim_mm, 2, 1), 0).astype(np.uint8)
    compartments[box] = comp
