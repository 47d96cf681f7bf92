"""Lesion parameters and their draws: stroke wedges, white-matter hyperintensities, gliomas.

Draws happen in template space (world mm of the MNI152 template), so the same parameters make
the same lesion at 1 mm and at 2 mm and the lesion follows each subject's warped anatomy.
Volumes are targets that the deterministic apply step (`lesion_shapes.py`) meets to the voxel.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy import ndimage

from synthbrain.phantom import fields
from synthbrain.phantom.template import TemplateAnatomy, template, world_axes

LESIONS = ("stroke", "wmh", "tumor", "none")
LESION_KINDS = tuple(kind for kind in LESIONS if kind != "none")  # the ones with a lesion
# Label values a phantom subject of each kind is written with (BraTS 2023 naming for tumours).
BRATS_LABELS = {"background": 0, "necrosis": 1, "edema": 2, "enhancing": 3}
BINARY_LABELS = {"background": 0, "lesion": 1}


def label_names(lesion: str) -> dict[str, int]:
    """Label values written for a lesion type (BraTS 2023 naming for tumours)."""
    return BRATS_LABELS if lesion == "tumor" else BINARY_LABELS


VOLUME_RANGES_ML = {"stroke": (1.0, 150.0), "wmh": (0.5, 40.0), "tumor": (5.0, 200.0)}
# Contrast compartments of each lesion type, in compartment-index order (1, 2, ...).
COMPARTMENTS = {
    "stroke": ("core", "rim"),
    "wmh": ("lesion",),
    "tumor": ("necrosis", "oedema", "enhancing"),
    "none": (),
}
# Mixtures of CSF / GM / WM means plus an offset in units of the contrast's tissue span, per
# lesion compartment and contrast; `draw_levels` adds a per-subject deviation to the offsets.
APPEARANCE: dict[str, dict[str, dict[str, tuple[tuple[float, float, float], float]]]] = {
    "stroke": {
        "core": {c: ((0.85, 0.15, 0.0), 0.0) for c in ("t1", "t1gd", "t2", "flair")},
        "rim": {
            "t1": ((0.45, 0.55, 0.0), 0.0),
            "t1gd": ((0.45, 0.55, 0.0), 0.0),
            "t2": ((0.6, 0.4, 0.0), 0.0),
            "flair": ((0.0, 1.0, 0.0), 0.3),
        },
    },
    "wmh": {
        "lesion": {
            "t1": ((0.0, 0.6, 0.4), 0.0),
            "t1gd": ((0.0, 0.6, 0.4), 0.0),
            "t2": ((0.5, 0.5, 0.0), 0.0),
            "flair": ((0.0, 1.0, 0.0), 0.25),
        }
    },
    "tumor": {
        "necrosis": {
            "t1": ((0.8, 0.2, 0.0), 0.0),
            "t1gd": ((0.8, 0.2, 0.0), 0.0),
            "t2": ((0.9, 0.1, 0.0), 0.0),
            "flair": ((0.5, 0.5, 0.0), 0.0),
        },
        "oedema": {
            "t1": ((0.3, 0.7, 0.0), 0.0),
            "t1gd": ((0.3, 0.7, 0.0), 0.0),
            "t2": ((0.6, 0.4, 0.0), 0.0),
            "flair": ((0.0, 1.0, 0.0), 0.25),
        },
        "enhancing": {
            "t1": ((0.2, 0.8, 0.0), 0.0),
            "t1gd": ((0.0, 0.0, 1.0), 0.5),
            "t2": ((0.4, 0.6, 0.0), 0.0),
            "flair": ((0.0, 1.0, 0.0), 0.2),
        },
    },
}
LEVEL_JITTER = 0.08  # per-subject deviation of each offset, in tissue-span units
_DRAW_SPACING = 2.0


@dataclass
class LesionParams:
    """One subject's lesions (plain numbers, JSON-able); kind "none" has no components.

    Attributes:
        kind: "stroke", "wmh", "tumor" or "none".
        total_ml: target total lesion volume (ml); the apply step meets it to the voxel.
        components: one dict per lesion part (shape, volume and geometry in template mm).
        roughness, roughness_seed: amplitude and seed of the smooth field that roughens edges.
        texture_amp, texture_seed: multiplicative intensity texture inside the lesion.
        rim_mm: width of the stroke's gliotic rim.
        levels: contrast -> compartment -> offset in tissue-span units (see APPEARANCE).
        mass_effect: amplitude of the radial push around a tumour (0 = none).
    """

    kind: str = "none"
    total_ml: float = 0.0
    components: list[dict] = field(default_factory=list)
    roughness: float = 0.0
    roughness_seed: int = 0
    texture_amp: float = 0.0
    texture_seed: int = 0
    rim_mm: float = 0.0
    levels: dict[str, dict[str, float]] = field(default_factory=dict)
    mass_effect: float = 0.0

    @classmethod
    def from_dict(cls, d: dict) -> LesionParams:
        """Rebuild from `asdict` output."""
        return cls(**d)

    def to_dict(self) -> dict:
        """Plain-dict form."""
        return asdict(self)


def draw_lesion(
    generator: torch.Generator, kind: str, *, mass_effect: bool = False
) -> LesionParams:
    """Draw a lesion of `kind` (ranges in docs/phantom.md); "none" draws nothing."""
    if kind == "none":
        return LesionParams()
    tpl = template(_DRAW_SPACING)
    u = fields.draw_uniform
    total = fields.draw_log_uniform(generator, *VOLUME_RANGES_ML[kind])
    drawers = {"stroke": _draw_stroke, "wmh": _draw_wmh, "tumor": _draw_tumor}
    components = drawers[kind](generator, tpl, total)
    return LesionParams(
        kind=kind,
        total_ml=total,
        components=components,
        roughness=u(generator, 0.15, 0.45),
        roughness_seed=fields.draw_seed(generator),
        texture_amp=u(generator, 0.03, 0.10),
        texture_seed=fields.draw_seed(generator),
        rim_mm=u(generator, 2.0, 4.0) if kind == "stroke" else 0.0,
        levels=draw_levels(generator, kind),
        mass_effect=u(generator, 0.2, 0.5) if (mass_effect and kind == "tumor") else 0.0,
    )


def draw_levels(generator: torch.Generator, kind: str) -> dict[str, dict[str, float]]:
    """Per-subject intensity offsets of every compartment on every contrast (fixed order)."""
    table = APPEARANCE[kind]
    levels: dict[str, dict[str, float]] = {}
    for contrast in ("t1", "t2", "flair", "t1gd"):
        levels[contrast] = {
            comp: table[comp][contrast][1] + fields.draw_uniform(generator, -1, 1) * LEVEL_JITTER
            for comp in COMPARTMENTS[kind]
        }
    return levels


def _split(generator: torch.Generator, total: float, parts: int) -> list[float]:
    """Split `total` into `parts` random shares (flat Dirichlet, each at least 10%)."""
    e = -torch.log(torch.rand(parts, generator=generator, dtype=torch.float64)).numpy()
    share = 0.1 + (1.0 - 0.1 * parts) * e / e.sum()
    return [float(total * s) for s in share]


def _pick(generator: torch.Generator, candidates: np.ndarray, tpl: TemplateAnatomy) -> list:
    """World mm of one voxel drawn uniformly from a boolean candidate map."""
    idx = np.flatnonzero(candidates)
    flat = int(idx[fields.draw_int(generator, 0, idx.size - 1)])
    voxel = np.array(np.unravel_index(flat, candidates.shape), dtype=float)
    return [float(v) for v in tpl.affine[:3, :3] @ voxel + tpl.affine[:3, 3]]


def _tissue(tpl: TemplateAnatomy) -> np.ndarray:
    """Brain parenchyma of the template (GM + WM >= 0.4)."""
    return (tpl.gm + tpl.wm) >= 0.4


def _depth_along(tpl: TemplateAnatomy, start: np.ndarray, axis: np.ndarray) -> float:
    """Distance (mm) from `start` along `axis` to the last parenchyma voxel inside the brain."""
    tissue = _tissue(tpl)
    inside = tpl.brain_mask > 0
    inv = np.linalg.inv(tpl.affine)
    depth = 0.0
    for step in np.arange(1.0, 120.0, 1.0):
        p = inv[:3, :3] @ (start + step * axis) + inv[:3, 3]
        v = np.rint(p).astype(int)
        if np.any(v < 0) or np.any(v >= np.array(tissue.shape)) or not inside[tuple(v)]:
            break
        if tissue[tuple(v)]:
            depth = step
    return max(depth, 10.0)


def _draw_stroke(generator: torch.Generator, tpl: TemplateAnatomy, total: float) -> list[dict]:
    """1-3 wedge infarcts, each a cone from near the ventricles out to the cortex."""
    u = fields.draw_uniform
    r = u(generator, 0.0, 1.0)
    parts = 1 if r < 0.6 else (2 if r < 0.9 else 3)
    out = []
    for ml in _split(generator, total, parts):
        side = 1.0 if u(generator, 0.0, 1.0) < 0.5 else -1.0
        centre = np.asarray(tpl.ventricle_center)
        apex = centre + np.array(
            [side * u(generator, 8.0, 16.0), u(generator, -25.0, 20.0), u(generator, -5.0, 15.0)]
        )
        axis = np.array(
            [side * u(generator, 0.5, 1.0), u(generator, -0.8, 0.8), u(generator, -0.3, 0.9)]
        )
        axis /= np.linalg.norm(axis)
        out.append(
            {
                "shape": "wedge",
                "ml": ml,
                "apex_mm": [float(v) for v in apex],
                "axis": [float(v) for v in axis],
                "half_angle_deg": u(generator, 15.0, 35.0),
                "depth_mm": _depth_along(tpl, apex, axis),
                "outer_weight": u(generator, 0.5, 2.0),
            }
        )
    return out


def _draw_wmh(generator: torch.Generator, tpl: TemplateAnatomy, total: float) -> list[dict]:
    """Periventricular caps and bands plus 0-8 deep white-matter foci."""
    u = fields.draw_uniform
    n_deep = fields.draw_int(generator, 0, 8)
    deep_share = u(generator, 0.1, 0.5) if n_deep else 0.0
    out = [{"shape": "periventricular", "ml": total * (1.0 - deep_share)}]
    if n_deep:
        candidates = _deep_white_matter()
        for ml in _split(generator, total * deep_share, n_deep):
            out.append(
                {
                    "shape": "blob",
                    "ml": ml,
                    "center_mm": _pick(generator, candidates, tpl),
                    "radii": [u(generator, 0.7, 1.4) for _ in range(3)],
                }
            )
    return out


def _draw_tumor(generator: torch.Generator, tpl: TemplateAnatomy, total: float) -> list[dict]:
    """One glioma: oedema around a core whose centre is necrotic and whose shell enhances."""
    u = fields.draw_uniform
    return [
        {
            "shape": "tumor",
            "ml": total,
            "center_mm": _pick(generator, _tumour_sites(), tpl),
            "radii": [u(generator, 0.75, 1.3) for _ in range(3)],
            "core_fraction": u(generator, 0.15, 0.5),
            "necrosis_fraction": u(generator, 0.2, 0.6),
            "wm_preference": u(generator, 0.0, 0.6),
        }
    ]


@functools.lru_cache(maxsize=1)
def _deep_white_matter() -> np.ndarray:
    """Template voxels for deep WMH foci: WM > 0.9, 8+ mm from the ventricles, supratentorial."""
    tpl = template(_DRAW_SPACING)
    z = world_axes(tpl.affine, tpl.shape)[2]
    above = (z > tpl.ventricle_center[2] - 10.0)[None, None, :]
    return (tpl.wm > 0.9) & (tpl.ventricle_distance > 8.0) & above


@functools.lru_cache(maxsize=1)
def _tumour_sites() -> np.ndarray:
    """Template voxels where a glioma may centre: WM > 0.7, 15+ mm inside, supratentorial."""
    tpl = template(_DRAW_SPACING)
    inner = ndimage.distance_transform_edt(tpl.brain_mask > 0, sampling=tpl.spacing) > 15.0
    z = world_axes(tpl.affine, tpl.shape)[2]
    above = (z > tpl.ventricle_center[2] - 15.0)[None, None, :]
    return (tpl.wm > 0.7) & inner & above
