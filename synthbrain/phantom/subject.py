"""Phantom subjects: draw parameters from a generator, then build the subject deterministically.

`draw_subject` samples every random choice into a JSON-able `SubjectParams` (numbers, lists and
integer seeds of the noise fields); `make_subject` turns those parameters into images, the
healthy substrate, labels and the brain mask, byte for byte the same every time, so a subject
replays from the manifest line that stores its parameters.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from synthbrain.errors import InputError
from synthbrain.phantom.anatomy import AnatomyParams, draw_anatomy, warp_anatomy
from synthbrain.phantom.appearance import (
    COMPARTMENT_BLEND_MM,
    PARTIAL_VOLUME_MM,
    LesionLayer,
    displace,
    lesion_layer,
    paint,
)
from synthbrain.phantom.contrasts import (
    CONTRASTS,
    ContrastParams,
    acquire,
    blur_margin,
    clean_image,
    draw_contrast,
    intensity_window,
    normalise,
    prepare_acquisition,
    tissue_means,
)
from synthbrain.phantom.lesion_shapes import lesion_geometry
from synthbrain.phantom.lesions import LESIONS, LesionParams, draw_lesion
from synthbrain.phantom.template import check_spacing, template

PARAMS_VERSION = 1


@dataclass
class SubjectParams:
    """Everything that makes one phantom subject (plain numbers, lists and integer seeds).

    Attributes:
        spacing: grid spacing in mm (1.0 or 2.0).
        contrasts: the contrasts made, in order.
        anatomy: warp, affine, ventricle enlargement and atrophy.
        acquisition: contrast name -> tissue means, bias, blur and noise of that contrast.
        lesion: lesion type, geometry, volumes and appearance.
        version: parameter format version.
    """

    spacing: float
    contrasts: list[str]
    anatomy: AnatomyParams
    acquisition: dict[str, ContrastParams]
    lesion: LesionParams
    version: int = PARAMS_VERSION

    @property
    def lesion_type(self) -> str:
        """ "stroke", "wmh", "tumor" or "none"."""
        return self.lesion.kind

    def to_dict(self) -> dict:
        """A plain, JSON-ready dict."""
        return {
            "version": self.version,
            "spacing": self.spacing,
            "contrasts": list(self.contrasts),
            "anatomy": self.anatomy.to_dict(),
            "acquisition": {k: v.to_dict() for k, v in self.acquisition.items()},
            "lesion": self.lesion.to_dict(),
        }

    def to_json(self) -> str:
        """The parameters as one line of JSON (what the manifest stores)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict) -> SubjectParams:
        """Rebuild from `to_dict` output; InputError when it is not a phantom parameter set."""
        try:
            if int(d["version"]) != PARAMS_VERSION:
                raise InputError(f"phantom parameters version {d['version']} is not supported")
            params = cls(
                spacing=float(d["spacing"]),
                contrasts=[str(c) for c in d["contrasts"]],
                anatomy=AnatomyParams.from_dict(d["anatomy"]),
                acquisition={k: ContrastParams.from_dict(v) for k, v in d["acquisition"].items()},
                lesion=LesionParams.from_dict(d["lesion"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"not a phantom parameter set ({type(exc).__name__}: {exc})") from None
        check_params(params)
        return params

    @classmethod
    def from_json(cls, text: str) -> SubjectParams:
        """Rebuild from `to_json` output."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"phantom parameters are not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InputError("phantom parameters must be a JSON object")
        return cls.from_dict(data)


@dataclass
class PhantomSubject:
    """One phantom subject on the model grid.

    Attributes:
        images: contrast -> float32 image in [0, 1] inside the brain, 0 outside.
        healthy: contrast -> the same subject without the lesion (equal to `images` outside
            the lesion mask, voxel for voxel, unless the tumour has mass effect).
        labels: uint8 lesion labels (1 for stroke / WMH; BraTS 1 necrosis, 2 oedema,
            3 enhancing for tumours; all 0 for "none").
        brain_mask: uint8 0/1.
        affine: 4x4 RAS voxel -> world mm of the grid.
        params: the SubjectParams that made it.
        intensity: contrast -> {"lo", "hi"}: the raw values mapped to 0 and 1.
    """

    images: dict[str, np.ndarray]
    healthy: dict[str, np.ndarray]
    labels: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray
    params: SubjectParams
    intensity: dict[str, dict[str, float]]

    @property
    def lesion_ml(self) -> float:
        """Volume of the labelled voxels in millilitres."""
        return float((self.labels > 0).sum()) * abs(np.linalg.det(self.affine[:3, :3])) / 1000.0


def check_params(params: SubjectParams) -> None:
    """InputError unless the parameters name a known lesion, contrasts and spacing."""
    check_spacing(params.spacing)
    if params.lesion.kind not in LESIONS:
        raise InputError(f"unknown lesion type {params.lesion.kind!r}; choose from {LESIONS}")
    for contrast in params.contrasts:
        if contrast not in CONTRASTS or contrast not in params.acquisition:
            raise InputError(f"unknown or undescribed contrast {contrast!r}")
    if not params.contrasts or len(set(params.contrasts)) != len(params.contrasts):
        raise InputError("phantom contrasts must be a non-empty list without repeats")


def draw_subject(
    generator: torch.Generator,
    *,
    lesion: str,
    contrasts: Sequence[str] = ("t1",),
    spacing: float = 2.0,
    mass_effect: bool = False,
) -> SubjectParams:
    """Draw one subject's parameters (no images are made here).

    Draws happen in a fixed order — anatomy, then all four contrasts, then the lesion — so
    one generator state gives the same anatomy and acquisition whatever contrasts or lesion
    type are asked for, and the same subject at 1 mm and at 2 mm.

    Args:
        generator: the source of randomness (the CLI seeds it with derive_seed(seed, k)).
        lesion: "stroke", "wmh", "tumor" or "none".
        contrasts: any of "t1", "t2", "flair", "t1gd", in the order wanted.
        spacing: 2.0 (grid 96x112x96) or 1.0 (192x224x192) mm.
        mass_effect: tumours only: push the surrounding tissue away from the tumour.

    Returns:
        SubjectParams; `make_subject` builds the subject from it.

    Raises:
        InputError: unknown lesion type, contrast or spacing, or mass_effect without a tumour.
    """
    if lesion not in LESIONS:
        raise InputError(f"unknown lesion type {lesion!r}; choose from {', '.join(LESIONS)}")
    if mass_effect and lesion != "tumor":
        raise InputError(f"mass effect applies to tumours only, not to lesion {lesion!r}")
    anatomy = draw_anatomy(generator)
    acquisition = {name: draw_contrast(generator, name) for name in CONTRASTS}
    params = SubjectParams(
        spacing=check_spacing(spacing),
        contrasts=list(contrasts),
        anatomy=anatomy,
        acquisition={c: acquisition[c] for c in contrasts if c in acquisition},
        lesion=draw_lesion(generator, lesion, mass_effect=mass_effect),
    )
    check_params(params)
    return params


def _margin(params: SubjectParams) -> int:
    """Voxels of context around the lesion that blurring and blending need."""
    blend = 3.0 * max(PARTIAL_VOLUME_MM, COMPARTMENT_BLEND_MM) / params.spacing
    blur = max(
        int(np.ceil(3.0 * params.acquisition[c].blur_mm / params.spacing)) + 1
        for c in params.contrasts
    )
    return int(np.ceil(blend)) + blur + 1


def make_subject(params: SubjectParams) -> PhantomSubject:
    """Build the subject that `params` describe (deterministic: same params, same bytes).

    The healthy image of each contrast is made first (clean tissue image, bias field, blur,
    Rician noise, percentile window); the lesion is then painted into the clean image inside a
    box around it, the same bias / blur / noise / window are applied there, and only the lesion
    voxels (plus, with mass effect, the displaced neighbourhood) are replaced.

    Raises:
        InputError: the parameters name an unknown lesion type, contrast or spacing.
    """
    check_params(params)
    tpl = template(params.spacing)
    anat = warp_anatomy(tpl, params.anatomy)
    geo = lesion_geometry(anat, params.lesion, tpl.spacing)
    layer = lesion_layer(geo, params.lesion, anat, tpl.spacing, _margin(params))
    images, healthy, intensity = {}, {}, {}
    for name in params.contrasts:
        cp = params.acquisition[name]
        means = tissue_means(anat, cp)
        clean = clean_image(anat, cp)
        acq = prepare_acquisition(cp, anat.brain, tpl.spacing, means)
        raw = acquire(clean, acq, anat.brain)
        lo, hi = intensity_window(raw, anat.brain)
        healthy[name] = normalise(raw, anat.brain, lo, hi)
        images[name] = healthy[name].copy()
        intensity[name] = {"lo": lo, "hi": hi}
        if layer is not None:
            _apply_lesion(images[name], clean, layer, params, name, means, acq, anat.brain, lo, hi)
    return PhantomSubject(
        images=images,
        healthy=healthy,
        labels=geo.labels,
        brain_mask=anat.brain.astype(np.uint8),
        affine=tpl.affine.copy(),
        params=params,
        intensity=intensity,
    )


def _apply_lesion(image, clean, layer: LesionLayer, params, name, means, acq, brain, lo, hi):
    """Replace the changed voxels of `image` by the acquired, painted lesion box."""
    box = layer.box
    if layer.displaced_mm is not None:
        source = displace(clean[None], layer, template(params.spacing).affine)[0]
    else:
        source = clean[box]
    painted = paint(
        source, layer, params.lesion.kind, name, means, params.lesion.levels[name], params.spacing
    )
    assert blur_margin(acq) <= _margin(params)
    raw = acquire(painted, acq, brain, box)
    lesioned = normalise(raw, brain[box], lo, hi)
    view = image[box]
    view[layer.changed] = lesioned[layer.changed]


def iter_subjects(
    n: int,
    *,
    seed: int,
    lesion: str,
    contrasts: Sequence[str] = ("t1",),
    spacing: float = 2.0,
    mass_effect: bool = False,
    indices: Iterable[int] | None = None,
) -> Iterator[tuple[int, SubjectParams, PhantomSubject]]:
    """Yield (k, params, subject) for k in 0..n-1 (or `indices`), each from its own seed.

    Subject k draws from a generator seeded with `derive_seed(seed, k)`, so any subset of k
    (a shard, a resumed run) reproduces exactly the subjects of the full run.
    """
    from synthbrain.rng import derive_seed, generator_for

    for k in range(n) if indices is None else indices:
        generator = generator_for(derive_seed(seed, int(k)))
        params = draw_subject(
            generator,
            lesion=lesion,
            contrasts=contrasts,
            spacing=spacing,
            mass_effect=mass_effect,
        )
        yield int(k), params, make_subject(params)
