"""`synthbrain generate` with the paired engine: batches of triplets written through RunWriter."""

from __future__ import annotations

import time
from collections.abc import Callable
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


def sample_id(k: int) -> str:
    """The id of sample k (also its file-name stem in the flat layout)."""
    return f"synth{k:05d}"


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


def run_generate(
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
    reporter: Reporter,
) -> dict[str, Any]:
    """Write this shard's samples; returns the JSON-ready summary."""
    from synthbrain.io.runwriter import RunWriter
    from synthbrain.rng import shard_indices

    started = time.perf_counter()
    cfg = bundle.model.config
    mask_for, mask_source = mask_provider(masks, bundle)
    config = run_config(
        bundle, run, seed=seed, layout=layout, masks=str(masks) if masks else None, n=n,
        batch_size=batch_size, shard=f"{shard[0]}/{shard[1]}", device=str(bundle.device),
    )  # fmt: skip
    writer = RunWriter(
        out, layout=layout, config=config, overwrite=overwrite, resume=resume,
        dataset_name="synthbrain-paired", channel_names=tuple(cfg.contrasts),
        labels={"background": 0, "lesion": 1}, shard=shard, identity_keys=IDENTITY_KEYS,
    )  # fmt: skip
    done = writer.finished_ids() if resume else set()
    todo = [k for k in shard_indices(n, shard) if sample_id(k) not in done]
    written = _write_all(
        bundle, writer, todo, batch_size, run, (mask_for, mask_source), seed, preview, reporter
    )
    writer.close()
    return {
        "out": str(out),
        "engine": "paired",
        "weights": bundle.name,
        "weights_sha256": bundle.sha256,
        "written": written,
        "skipped_finished": len(shard_indices(n, shard)) - len(todo),
        "shard": f"{shard[0]}/{shard[1]}",
        "seed": seed,
        "steps": run.steps,
        "sampler": run.sampler,
        "device": str(bundle.device),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _write_all(bundle, writer, todo, batch_size, run, masks, seed, preview, reporter) -> int:  # noqa: ANN001
    """Sample and write the todo indices in batches; returns the number written."""
    mask_for, mask_source = masks
    brain = brain_tensor(bundle)
    affine = _grid_affine(bundle)
    empty = 0
    with reporter.task(f"generate {bundle.model.config.lesion}", total=len(todo)) as advance:
        for start in range(0, len(todo), batch_size):
            ks = todo[start : start + batch_size]
            t0 = time.perf_counter()
            gens = [generator_for(derive_seed(seed, k)) for k in ks]
            given = [mask_for(k, derive_seed(seed, k)) for k in ks] if mask_for else None
            triplets = make_triplets(bundle, gens, run, brain, given)
            seconds = (time.perf_counter() - t0) / len(ks)
            for k, trip in zip(ks, triplets, strict=True):
                empty += int(not trip.mask.any())
                record = _record(bundle, run, k, derive_seed(seed, k), seconds, mask_source)
                vols = _volumes(trip, bundle.model.config.contrasts, affine)
                writer.write_sample(sample_id(k), vols, record=record, index=k)
                if preview:
                    _preview(writer, sample_id(k), trip, affine)
            advance(len(ks))
    if empty:
        reporter.warn(f"{empty} generated mask(s) came out empty (the model drew no lesion)")
    return len(todo)


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


def _preview(writer: Any, sid: str, trip: Triplet, affine: np.ndarray) -> None:
    """A tri-planar PNG of the image with the mask overlaid."""
    from synthbrain.io.preview import save_preview

    folder = Path(writer.out_dir) / "previews"
    folder.mkdir(parents=True, exist_ok=True)
    save_preview(folder / f"{sid}.png", trip.image[0], trip.mask, affine=affine, title=sid)


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
    shard: str | tuple[int, int] | None = None,
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
    resume: bool = False,
    reporter: Reporter | None = None,
    spacing: str = "linspace",
    precision: str | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Generate `n` triplets (image, mask, healthy substrate) and a manifest in `out`.

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
        shard: "i/N" (or Slurm's array variables): only samples k with k % N == i.
        seed: the run seed; sample k uses derive_seed(seed, k) alone.
        overwrite, resume: what to do with a folder holding a previous run.
        precision: "fp32" or "bf16" (default bf16 on CUDA).
    """
    if anatomy is not None:
        raise InputError("--anatomy is for the deviation engine; the paired engine draws anatomy")
    reporter = reporter or Reporter(quiet=True)
    bundle = load_bundle(weights, lesion, device, precision)
    run = SamplerSettings(sampler, steps or DEFAULT_STEPS, spacing, 0.0, bundle.precision)
    return run_generate(
        bundle, Path(out), n=n, batch_size=batch_size, run=run, masks=masks, layout=layout,
        preview=preview, shard=_shard(shard), seed=seed, overwrite=overwrite, resume=resume,
        reporter=reporter,
    )  # fmt: skip


def _shard(shard: str | tuple[int, int] | None) -> tuple[int, int]:
    """(index, count) from --shard or the Slurm array variables; (0, 1) without either."""
    from synthbrain.rng import parse_shard, shard_from_env

    if isinstance(shard, tuple):
        return shard
    if shard is not None:
        return tuple(parse_shard(shard))  # type: ignore[return-value]
    return tuple(shard_from_env() or (0, 1))  # type: ignore[return-value]
