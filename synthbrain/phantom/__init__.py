"""Procedural phantom subjects on the MNI152 template: exact ground truth for tests and weights.

Draw, then apply: `draw_subject(generator, lesion=..., contrasts=..., spacing=...)` returns
JSON-able `SubjectParams`; `make_subject(params)` builds a `PhantomSubject` from them,
deterministically. `iter_subjects(n, seed=..., lesion=...)` yields a run's subjects, subject k
seeded with `synthbrain.rng.derive_seed(seed, k)`. See docs/phantom.md.
"""

from synthbrain.phantom.contrasts import CONTRASTS
from synthbrain.phantom.lesions import LESIONS, VOLUME_RANGES_ML
from synthbrain.phantom.subject import (
    PhantomSubject,
    SubjectParams,
    draw_subject,
    iter_subjects,
    make_subject,
)
from synthbrain.phantom.template import TemplateAnatomy, grid_affine, grid_shape, template

__all__ = [
    "CONTRASTS",
    "LESIONS",
    "VOLUME_RANGES_ML",
    "PhantomSubject",
    "SubjectParams",
    "TemplateAnatomy",
    "draw_subject",
    "grid_affine",
    "grid_shape",
    "iter_subjects",
    "make_subject",
    "template",
]
