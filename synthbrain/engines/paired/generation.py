"""`synthbrain generate` with the paired engine: batches of triplets written through RunWriter."""

from __future__ import annotations

import time
from collections.abc import Iterator
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
from synthbrain.engines.paired.mask_sources import MaskFor, mask_provider
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
from synthbrain.engines.paired.volume_control import MAX_JOINT_ATTEMPTS
from synthbrain.errors import InputError
from synthbrain.io.outputs import lesion_volume_ml
from synthbrain.io.samples import GenerateJob, Preview, RunFolder, Sample, sample_id
from synthbrain.io.volume_range import VolumeRange
from synthbrain.phantom.volume_draws import attempt_seed
from synthbrain.progress import Reporter
from synthbrain.rng import derive_seed, generator_for

IDENTITY_KEYS = (
    "command", "engine", "lesion", "weights", "weights_sha256", "steps", "sampler", "spacing",
    "seed", "layout", "masks", "precision", "substrate_t_start", "lesion_volume",
)  # fmt: skip


@dataclass
class Triplet:
    """One generated sample on the model grid: image [C, *grid], binary mask, healthy substrate."""

    image: np.ndarray
    mask: np.ndarray
    healthy: np.ndarray


@torch.no_grad()
def draw_lesioned(
    bundle: Bundle,
    generators: list[torch.Generator],
    run: SamplerSettings,
    brain: torch.Tensor,
    masks: list[np.ndarray] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(brain latents y0, binary masks [B, 1, *grid]): task (a) from noise, or (b) given masks."""
    model, dev = bundle.model, bundle.device
    if masks is None:
        x0, y0 = sample_joint(model, generators, run)
        return y0, soft_to_mask(model, x0, brain)
    mask = torch.from_numpy(np.stack(masks))[:, None].to(dev)
    return sample_given_mask(model, model.mask_to_x(mask.float()), generators, run), mask


@torch.no_grad()
def finish_triplets(
    bundle: Bundle,
    y0: torch.Tensor,
    mask: torch.Tensor,
    generators: list[torch.Generator],
    run: SamplerSettings,
    brain: torch.Tensor,
    substrate_steps: int | None = None,
) -> list[Triplet]:
    """Triplets of drawn samples: the healed substrate, decoded and composited with the image."""
    model, dev = bundle.model, bundle.device
    y_heal = healed_substrate(bundle, y0, mask, generators, run, steps=substrate_steps)
    with autocast_for(dev, run.precision):
        image = decode_images(model, y0, brain)
        healed = decode_images(model, y_heal, brain)
    healthy, _ = composite(image, healed, mask, SEAM_VOXELS)
    return [
        Triplet(image[i].cpu().numpy(), mask[i, 0].cpu().numpy(), healthy[i].cpu().numpy())
        for i in range(len(generators))
    ]


def make_triplets(
    bundle: Bundle,
    generators: list[torch.Generator],
    run: SamplerSettings,
    brain: torch.Tensor,
    masks: list[np.ndarray] | None = None,
    substrate_steps: int | None = None,
) -> list[Triplet]:
    """Sample one triplet per generator (tasks a or b, then the healed substrate)."""
    y0, mask = draw_lesioned(bundle, generators, run, brain, masks)
    return finish_triplets(bundle, y0, mask, generators, run, brain, substrate_steps)


def joint_in_range(
    bundle: Bundle, seeds: list[int], run: SamplerSettings, brain: torch.Tensor,
    volume: VolumeRange,
) -> tuple[dict[int, Triplet], list[list[int]]]:  # fmt: skip
    """Joint triplets whose lesion volume lies in `volume`, redrawn from attempt seeds.

    Returns ({position in `seeds`: triplet} for the samples that met the range within
    MAX_JOINT_ATTEMPTS, every attempt's seed per sample, in order).
    """
    affine = grid_affine(bundle)
    pending, tried = list(range(len(seeds))), [[] for _ in seeds]
    found: dict[int, Triplet] = {}
    for attempt in range(MAX_JOINT_ATTEMPTS):
        if not pending:
            break
        gens = []
        for i in pending:
            tried[i].append(attempt_seed(seeds[i], attempt))
            gens.append(generator_for(tried[i][-1]))
        y0, mask = draw_lesioned(bundle, gens, run, brain)
        volumes = [lesion_volume_ml(m[0].cpu().numpy(), affine) for m in mask]
        ok = [j for j, ml in enumerate(volumes) if ml in volume]
        if ok:
            kept = finish_triplets(bundle, y0[ok], mask[ok], [gens[j] for j in ok], run, brain)
            found.update({pending[j]: trip for j, trip in zip(ok, kept, strict=True)})
        pending = [i for j, i in enumerate(pending) if j not in ok]
    return found, tried


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
    volume: VolumeRange | None = None,
) -> GenerateJob:
    """This shard's samples as a job for the run layer (`synthbrain.runs.generate.run_job`)."""
    cfg = bundle.model.config
    mask_for, mask_source = mask_provider(masks, bundle, volume)
    config = run_config(
        bundle, run, seed=seed, layout=layout, masks=str(masks) if masks else None, n=n,
        batch_size=batch_size, shard=f"{shard[0]}/{shard[1]}", device=str(bundle.device),
        # only when given, so runs made before the option existed still resume
        **({} if volume is None else {"lesion_volume": str(volume)}),
    )  # fmt: skip
    folder = RunFolder(
        Path(out), layout, config, "synthbrain-paired", tuple(cfg.contrasts),
        {"background": 0, "lesion": 1}, overwrite, resume, IDENTITY_KEYS,
    )  # fmt: skip
    maker = _Maker(bundle, run, seed, mask_for, mask_source, volume)

    def summary(written: int, skipped: int, seconds: float) -> dict[str, Any]:
        control = {} if volume is None else {
            "lesion_volume": str(volume), "out_of_range": sorted(maker.out_of_range),
        }  # fmt: skip
        return {
            "out": str(out), "engine": "paired", "weights": bundle.name,
            "weights_sha256": bundle.sha256, "written": written, "skipped_finished": skipped,
            "shard": f"{shard[0]}/{shard[1]}", "seed": seed, "steps": run.steps,
            "sampler": run.sampler, "device": str(bundle.device), "seconds": round(seconds, 2),
            **control,
        }  # fmt: skip

    return GenerateJob(
        folder, "paired", n, shard, maker.make, f"generate {cfg.lesion}", summary,
        batch_size=batch_size, preview=preview, after=maker.after,
    )  # fmt: skip


class _Maker:
    """Makes batches of paired samples; counts the empty masks for one warning at the end."""

    def __init__(self, bundle: Bundle, run: SamplerSettings, seed: int, mask_for: MaskFor | None,
                 mask_source: str | None, volume: VolumeRange | None = None) -> None:  # fmt: skip
        self.bundle, self.run, self.seed = bundle, run, seed
        self.mask_for, self.mask_source, self.volume = mask_for, mask_source, volume
        self.brain, self.affine = brain_tensor(bundle), grid_affine(bundle)
        self.empty, self.out_of_range = 0, []

    def make(self, ks: list[int]) -> Iterator[Sample]:
        """Samples ks, drawn together; sample k from derive_seed(seed, k) alone."""
        t0 = time.perf_counter()
        seeds = [derive_seed(self.seed, k) for k in ks]
        tried: list[list[int]] | None = None
        if self.volume is not None and self.mask_for is None:
            found, tried = joint_in_range(self.bundle, seeds, self.run, self.brain, self.volume)
        else:
            gens = [generator_for(s) for s in seeds]
            given = None
            if self.mask_for is not None:
                given = [self.mask_for(k, s) for k, s in zip(ks, seeds, strict=True)]
            found = dict(enumerate(make_triplets(self.bundle, gens, self.run, self.brain, given)))
        seconds = (time.perf_counter() - t0) / len(ks)
        for i, (k, s) in enumerate(zip(ks, seeds, strict=True)):
            yield self._sample(k, s, found.get(i), seconds, None if tried is None else tried[i])

    def _sample(self, k: int, seed: int, trip: Triplet | None, seconds: float,
                attempts: list[int] | None) -> Sample:  # fmt: skip
        """Sample k for the writer; a sample that missed the volume range is not written."""
        sid = sample_id("paired", k)
        record = _record(self.bundle, self.run, k, seed, seconds, self.mask_source)
        if self.volume is not None:
            record["lesion_volume_range"] = str(self.volume)
        if attempts is not None:
            record["attempt_seeds"] = attempts
        if trip is None:
            self.out_of_range.append(k)
            return Sample(k, sid, None, record)
        self.empty += int(not trip.mask.any())
        vols = _volumes(trip, self.bundle.model.config.contrasts, self.affine)
        return Sample(k, sid, vols, record, Preview(trip.image[0], trip.mask, self.affine, sid))

    def after(self, reporter: Reporter) -> None:
        """The warnings of a finished run: empty masks, samples that missed the volume range."""
        if self.empty:
            reporter.warn(
                f"{self.empty} generated mask(s) came out empty (the model drew no lesion)"
            )
        if self.out_of_range:
            missed = ", ".join(map(str, self.out_of_range[:10]))
            more = ", …" if len(self.out_of_range) > 10 else ""
            reporter.warn(
                f"{len(self.out_of_range)} sample(s) drew no lesion in {self.volume} ml in "
                f"{MAX_JOINT_ATTEMPTS} attempts and were not written (indices {missed}{more})"
            )


def grid_affine(bundle: Bundle) -> np.ndarray:
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
    lesion_volume: str | None = None,
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
        lesion_volume: "MIN:MAX" in ml: keep only samples whose lesion volume is in range
            (joint: redrawn from attempt seeds; phantom masks: drawn in range; see
            `paired.volume_control`). A folder of masks is used as given.
    """
    if anatomy is not None:
        raise InputError("--anatomy is for the deviation engine; the paired engine draws anatomy")
    bundle = load_bundle(weights, lesion, device, precision)
    volume = _volume_control(bundle, lesion_volume, masks, seed)
    run = SamplerSettings(sampler, steps or DEFAULT_STEPS, spacing, 0.0, bundle.precision)
    return generate_job(
        bundle, Path(out), n=n, batch_size=batch_size, run=run, masks=masks, layout=layout,
        preview=preview, shard=tuple(shard or (0, 1)), seed=seed, overwrite=overwrite,
        resume=resume, volume=volume,
    )  # fmt: skip


def _volume_control(
    bundle: Bundle, text: str | None, masks: Path | str | None, seed: int
) -> VolumeRange | None:
    """The parsed --lesion-volume range, refused (exit 2) when this model cannot meet it (a
    folder of masks with a range is refused by `edit_inputs.check_generate`)."""
    from synthbrain.engines.paired.volume_control import check_feasible
    from synthbrain.io.volume_range import parse_volume_range

    if text is None:
        return None
    volume = parse_volume_range(text)
    cfg = bundle.model.config
    brain_ml = lesion_volume_ml(brain_tensor(bundle).cpu().numpy() > 0, grid_affine(bundle))
    check_feasible(volume, cfg.lesion, phantom_masks=masks is not None, seed=seed,
                   brain_ml=brain_ml)  # fmt: skip
    return volume
