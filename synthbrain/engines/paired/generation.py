"""`synthbrain generate` with the paired engine: batches of triplets written through RunWriter."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthbrain.engines.paired.guidance import (
    SamplerSettings,
    autocast_for,
    sample_given_mask,
    sample_joint,
)
from synthbrain.engines.paired.run import (
    DEFAULT_STEPS,
    SEAM_VOXELS,
    Bundle,
    brain_tensor,
    composite,
    decode_images,
    healed_substrate,
    load_bundle,
    soft_to_mask,
)
from synthbrain.errors import InputError
from synthbrain.io.samples import GenerateJob, Preview, RunFolder, Sample, sample_id
from synthbrain.progress import Reporter
from synthbrain.rng import derive_seed, generator_for

IDENTITY_KEYS = (
    "command", "engine", "lesion", "weights", "weights_sha256", "steps", "sampler", "spacing",
    "seed", "layout", "masks", "precision", "substrate_t_start",
)  # fmt: skip


@dataclass
class Triplet:
    """One generated sample on the model grid: image [C, *grid], binary mask, healthy substrate."""

    image: np.ndarray
    mask: np.ndarray
    healthy: np.ndarray


def load_mask_folder(folder: Path, bundle: Bundle) -> list[np.ndarray]:
    """Masks (MNI152 space, any grid) on the model grid, each checked against the brain."""
    from synthbrain.io.geometry import resample_array
    from synthbrain.io.nifti import load_volume
    from synthbrain.io.validate import mask_brain_overlap
    from synthbrain.spatial.template import MIN_MASK_OVERLAP, template_arrays

    files = sorted(p for p in Path(folder).iterdir() if p.name.endswith((".nii", ".nii.gz")))
    if not files:
        raise InputError("no NIfTI masks (.nii, .nii.gz) in the folder", folder)
    _, brain, affine = template_arrays(bundle.model.config.spacing, bundle.model.config.grid)
    masks = []
    for path in files:
        mask = load_volume(path, kind="mask")
        grid = resample_array(mask.data, mask.affine, brain.shape, affine, order=0) > 0
        overlap = mask_brain_overlap(grid, brain)
        if overlap < MIN_MASK_OVERLAP:
            raise InputError(
                f"only {100 * overlap:.0f}% of the mask lies inside the MNI152 brain (need "
                f"{100 * MIN_MASK_OVERLAP:.0f}%); --masks expects masks in MNI152 space",
                path,
            )
        masks.append(grid & (brain > 0))
    return masks


MaskFor = Callable[[int, int], np.ndarray]  # (sample index k, sample seed) -> mask on the grid


def mask_provider(masks: Path | None, bundle: Bundle) -> tuple[MaskFor | None, str | None]:
    """How sample k gets its mask (None: the joint sampler draws it) and its manifest name."""
    from synthbrain.io.paths import is_phantom_masks

    if masks is None:
        return None, None
    if is_phantom_masks(masks):
        return (lambda k, seed: phantom_mask(bundle, derive_seed(seed, 1))), "phantom"
    folder = load_mask_folder(masks, bundle)
    return (lambda k, seed: folder[k % len(folder)]), "folder"


def phantom_mask(bundle: Bundle, seed: int) -> np.ndarray:
    """A lesion of the model's type drawn by the phantom corpus, on the model grid, in the brain.

    The phantom subject's lesion sits in its own (warped MNI152) anatomy, so it lands near the
    same structures of the template; a draw that leaves the template brain is redrawn.
    """
    from synthbrain.io.geometry import resample_array
    from synthbrain.phantom import draw_subject, make_subject
    from synthbrain.phantom.lesions import LESION_KINDS
    from synthbrain.spatial.template import template_arrays

    cfg = bundle.model.config
    if cfg.lesion not in LESION_KINDS:
        raise InputError(
            f"--masks phantom: phantom lesions exist for {', '.join(LESION_KINDS)}, "
            f"not {cfg.lesion!r}; give a folder of masks"
        )
    _, brain, affine = template_arrays(cfg.spacing, cfg.grid)
    for attempt in range(8):
        gen = generator_for(derive_seed(seed, attempt))
        subject = make_subject(draw_subject(gen, lesion=cfg.lesion, contrasts=("t1",), spacing=2.0))
        labels = (subject.labels > 0).astype(np.float32)
        on_grid = resample_array(labels, subject.affine, brain.shape, affine, order=0) > 0.5
        mask = on_grid & (brain > 0)
        if mask.any():
            return mask
    raise RuntimeError(f"8 phantom lesion draws missed the template brain (seed {seed})")


@torch.no_grad()
def make_triplets(
    bundle: Bundle,
    generators: list[torch.Generator],
    run: SamplerSettings,
    brain: torch.Tensor,
    masks: list[np.ndarray] | None = None,
    substrate_steps: int | None = None,
) -> list[Triplet]:
    """Sample one triplet per generator (tasks a or b, then the healed substrate)."""
    model, dev = bundle.model, bundle.device
    if masks is None:
        x0, y0 = sample_joint(model, generators, run)
        mask = soft_to_mask(model, x0, brain)
    else:
        mask = torch.from_numpy(np.stack(masks))[:, None].to(dev)
        y0 = sample_given_mask(model, model.mask_to_x(mask.float()), generators, run)
    y_heal = healed_substrate(bundle, y0, mask, generators, run, steps=substrate_steps)
    with autocast_for(dev, run.precision):
        image = decode_images(model, y0, brain)
        healed = decode_images(model, y_heal, brain)
    healthy, _ = composite(image, healed, mask, SEAM_VOXELS)
    return [
        Triplet(image[i].cpu().numpy(), mask[i, 0].cpu().numpy(), healthy[i].cpu().numpy())
        for i in range(len(generators))
    ]


def _volumes(t: Triplet, contrasts: list[str], affine: np.ndarray) -> dict[str, Any]:
    """RunWriter volumes of a triplet (image/healthy per contrast when there are several)."""
    from synthbrain.io.nifti import Volume

    several = len(contrasts) > 1
    volumes: dict[str, Any] = {}
    for c, contrast in enumerate(contrasts):
        key = f"_{contrast}" if several else ""
        volumes[f"image{key}"] = Volume(t.image[c].astype(np.float32), affine)
        volumes[f"healthy{key}"] = Volume(t.healthy[c].astype(np.float32), affine)
    volumes["mask"] = Volume(t.mask.astype(np.uint8), affine)
    return volumes


def run_config(bundle: Bundle, run: SamplerSettings, **fields: Any) -> dict[str, Any]:
    """The run's config.json."""
    return {
        "command": "generate",
        "engine": "paired",
        "lesion": bundle.model.config.lesion,
        "weights": bundle.name,
        "weights_sha256": bundle.sha256,
        "steps": run.steps,
        "sampler": run.sampler,
        "spacing": run.spacing,
        "precision": run.precision,
        "substrate_t_start": 300,
        **fields,
    }


def generate_job(
    bundle: Bundle,
    out: Path,
    *,
    n: int,
    batch_size: int,
    run: SamplerSettings,
    masks: Path | None,
    layout: str,
    preview: bool,
    shard: tuple[int, int],
    seed: int,
    overwrite: bool,
    resume: bool,
) -> GenerateJob:
    """This shard's samples as a job for the run layer (`synthbrain.runs.generate.run_job`)."""
    cfg = bundle.model.config
    mask_for, mask_source = mask_provider(masks, bundle)
    config = run_config(
        bundle, run, seed=seed, layout=layout, masks=str(masks) if masks else None, n=n,
        batch_size=batch_size, shard=f"{shard[0]}/{shard[1]}", device=str(bundle.device),
    )  # fmt: skip
    folder = RunFolder(
        Path(out), layout, config, "synthbrain-paired", tuple(cfg.contrasts),
        {"background": 0, "lesion": 1}, overwrite, resume, IDENTITY_KEYS,
    )  # fmt: skip
    maker = _Maker(bundle, run, seed, mask_for, mask_source)

    def summary(written: int, skipped: int, seconds: float) -> dict[str, Any]:
        return {
            "out": str(out), "engine": "paired", "weights": bundle.name,
            "weights_sha256": bundle.sha256, "written": written, "skipped_finished": skipped,
            "shard": f"{shard[0]}/{shard[1]}", "seed": seed, "steps": run.steps,
            "sampler": run.sampler, "device": str(bundle.device), "seconds": round(seconds, 2),
        }  # fmt: skip

    return GenerateJob(
        folder, "paired", n, shard, maker.make, f"generate {cfg.lesion}", summary,
        batch_size=batch_size, preview=preview, after=maker.warn_empty,
    )  # fmt: skip


class _Maker:
    """Makes batches of paired samples; counts the empty masks for one warning at the end."""

    def __init__(self, bundle: Bundle, run: SamplerSettings, seed: int, mask_for: MaskFor | None,
                 mask_source: str | None) -> None:  # fmt: skip
        self.bundle, self.run, self.seed = bundle, run, seed
        self.mask_for, self.mask_source = mask_for, mask_source
        self.brain, self.affine = brain_tensor(bundle), _grid_affine(bundle)
        self.empty = 0

    def make(self, ks: list[int]) -> Iterator[Sample]:
        """Samples ks, drawn together; sample k from derive_seed(seed, k) alone."""
        t0 = time.perf_counter()
        seeds = [derive_seed(self.seed, k) for k in ks]
        gens = [generator_for(s) for s in seeds]
        given = (
            [self.mask_for(k, s) for k, s in zip(ks, seeds, strict=True)] if self.mask_for else None
        )
        triplets = make_triplets(self.bundle, gens, self.run, self.brain, given)
        seconds = (time.perf_counter() - t0) / len(ks)
        for k, s, trip in zip(ks, seeds, triplets, strict=True):
            self.empty += int(not trip.mask.any())
            sid = sample_id("paired", k)
            record = _record(self.bundle, self.run, k, s, seconds, self.mask_source)
            vols = _volumes(trip, self.bundle.model.config.contrasts, self.affine)
            yield Sample(k, sid, vols, record, Preview(trip.image[0], trip.mask, self.affine, sid))

    def warn_empty(self, reporter: Reporter) -> None:
        if self.empty:
            reporter.warn(
                f"{self.empty} generated mask(s) came out empty (the model drew no lesion)"
            )


def _grid_affine(bundle: Bundle) -> np.ndarray:
    """The model grid's affine (MNI152 space)."""
    from synthbrain.spatial.template import template_arrays

    return template_arrays(bundle.model.config.spacing, bundle.model.config.grid)[2]


def _record(
    bundle: Bundle, run: SamplerSettings, k: int, seed: int, seconds: float, masks: str | None
) -> dict[str, Any]:
    """The manifest fields of sample k (`masks`: where given masks came from, or None)."""
    given = masks is not None
    return {
        "seed": seed,
        "engine": "paired",
        "weights": bundle.name,
        "weights_sha256": bundle.sha256,
        "lesion": bundle.model.config.lesion,
        "task": "conditional" if given else "unconditional",
        **({"mask_source": masks} if given else {}),
        "steps": run.steps,
        "sampler": run.sampler,
        "seconds": round(seconds, 3),
    }


def generate(
    *,
    out: Path,
    n: int = 10,
    lesion: str = "stroke",
    weights: str | None = None,
    batch_size: int = 1,
    steps: int | None = None,
    sampler: str = "ddim",
    anatomy: Path | None = None,
    masks: Path | None = None,
    layout: str = "flat",
    preview: bool = False,
    shard: tuple[int, int] | None = None,
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
    resume: bool = False,
    spacing: str = "linspace",
    precision: str | None = None,
    **_: Any,
) -> GenerateJob:
    """`n` triplets (image, mask, healthy substrate) and a manifest in `out`, as a run job.

    Args:
        out: the run folder (`layout`: flat, bids or nnunet).
        n, lesion, weights: how many, of which lesion type, with which weights (default: the
            registered paired weights for `lesion`).
        batch_size: samples drawn together (sample k's files do not depend on it).
        steps, sampler, spacing: the reverse process (default 50 DDIM steps, linspace).
        masks: a folder of lesion masks in MNI152 space: conditional generation (task b), sample
            k uses mask k mod count; or "phantom": sample k's mask is a phantom lesion of the
            model's type drawn from derive_seed(derive_seed(seed, k), 1).
        preview: a tri-planar PNG per sample under previews/.
        shard: (i, N) (the run layer resolves --shard and Slurm's array variables): only samples
            k with k % N == i.
        seed: the run seed; sample k uses derive_seed(seed, k) alone.
        overwrite, resume: what to do with a folder holding a previous run.
        precision: "fp32" or "bf16" (default bf16 on CUDA).
    """
    if anatomy is not None:
        raise InputError("--anatomy is for the deviation engine; the paired engine draws anatomy")
    bundle = load_bundle(weights, lesion, device, precision)
    run = SamplerSettings(sampler, steps or DEFAULT_STEPS, spacing, 0.0, bundle.precision)
    return generate_job(
        bundle, Path(out), n=n, batch_size=batch_size, run=run, masks=masks, layout=layout,
        preview=preview, shard=tuple(shard or (0, 1)), seed=seed, overwrite=overwrite,
        resume=resume,
    )  # fmt: skip
