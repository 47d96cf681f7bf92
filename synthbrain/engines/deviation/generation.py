"""`synthbrain generate --engine deviation`: triplets (image, mask, healthy) in a run folder.

Sample k: pair p = k // variants (an anatomy and a mask, drawn from derive_seed(seed, p)) and
variant k % variants of the lesion (noise from derive_seed(seed, k)). The triplet's healthy image
is the anatomy itself; the pathological image equals it outside the mask, voxel for voxel.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from synthbrain.engines.deviation.run import Bundle, edit_subject, load_bundle
from synthbrain.engines.deviation.sources import Pair, Sources
from synthbrain.errors import InputError
from synthbrain.io.samples import GenerateJob, Preview, RunFolder, Sample, sample_id


def run_config(bundle: Bundle, sources: Sources, options: dict[str, Any]) -> dict[str, Any]:
    """What defines the run (saved as config.json; a resumed run must match it)."""
    cfg = bundle.model.config
    return {
        "command": "generate", "engine": "deviation", "lesion": options["lesion"],
        "weights": bundle.name, "weights_sha256": bundle.sha256, "seed": options["seed"],
        "severity": options["severity"], "variants": options["variants"],
        "steps": options["steps"] or cfg.sampling.steps,
        "sampler": options["sampler"] or cfg.sampling.sampler, "eta": options["eta"],
        "anatomy": str(options["anatomy"]) if options["anatomy"] else "phantom",
        "masks": str(options["masks"]) if options["masks"] else "phantom",
        "contrasts": list(sources.written_contrasts), "layout": options["layout"],
        "n": options["n"],
        # only when given, so runs made before the option existed still resume
        **({} if options["lesion_volume"] is None else {"lesion_volume": options["lesion_volume"]}),
    }  # fmt: skip


def sample_volumes(pair: Pair, result: dict, contrasts: tuple[str, ...]) -> dict:
    """RunWriter volume keys of one triplet: image(s), mask, healthy(s)."""
    import numpy as np

    from synthbrain.io.nifti import Volume

    vols, several = {}, len(contrasts) > 1
    for name in contrasts:
        src = pair.subject.volumes[name]
        key = f"_{name}" if several else ""
        vols[f"image{key}"] = Volume(result[name], src.affine, src.header)
        vols[f"healthy{key}"] = Volume(np.asarray(src.data, np.float32), src.affine, src.header)
    ref = pair.subject.reference
    vols["mask"] = Volume(pair.subject.mask.astype(np.uint8), ref.affine, ref.header)
    return vols


def _preview(sample_id: str, vols: dict, contrast: str, several: bool) -> Preview:
    """A tri-planar PNG of the first contrast with the mask overlaid."""
    image = vols[f"image_{contrast}" if several else "image"]
    return Preview(image.data, vols["mask"].data, image.affine, f"{sample_id} {contrast}")


def _options(options: dict[str, Any]) -> dict[str, Any]:
    """generate's options with defaults, checked."""
    merged = {"lesion": "tumor", "weights": None, "steps": None, "sampler": None, "eta": None,
              "anatomy": None, "masks": None, "layout": "flat", "preview": False, "shard": None,
              "seed": 0, "device": "auto", "overwrite": False, "resume": False,
              "severity": 1.0, "variants": 1, "n": 1, "lesion_volume": None}  # fmt: skip
    merged.update({k: v for k, v in options.items() if v is not None})
    if not 0.0 <= float(merged["severity"]) <= 2.0:
        raise InputError(f"severity must lie in [0, 2], got {merged['severity']}")
    if int(merged["n"]) < 1 or not 1 <= int(merged["variants"]) <= 64:
        raise InputError("--n must be at least 1 and variants lie in [1, 64]")
    return merged


def _volume_range(opt: dict[str, Any]):  # noqa: ANN202
    """The parsed --lesion-volume (None without it), refused when the phantom cannot meet it (a
    folder of masks with a range is refused by `edit_inputs.check_generate`)."""
    from synthbrain.io.volume_range import parse_volume_range
    from synthbrain.phantom.volume_draws import check_phantom_hits

    if opt["lesion_volume"] is None:
        return None
    volume = parse_volume_range(opt["lesion_volume"])
    check_phantom_hits(volume, opt["lesion"], int(opt["seed"]))
    return volume


def make_sample(bundle: Bundle, sources: Sources, opt: dict, k: int) -> Sample:
    """Sample k of the run: pair k // variants, variant k % variants."""
    from synthbrain.io.outputs import lesion_volume_ml
    from synthbrain.rng import derive_seed

    t0, sid, variants = time.perf_counter(), sample_id("deviation", k), int(opt["variants"])
    p, seed_k = k // variants, derive_seed(opt["seed"], k)
    pair = sources.pair(p, derive_seed(opt["seed"], p))
    results, facts = edit_subject(
        bundle.model, pair.subject, severity=float(opt["severity"]), seed=seed_k,
        steps=opt["steps"], sampler=opt["sampler"], eta=opt["eta"],
    )  # fmt: skip
    contrasts = sources.written_contrasts
    vols = sample_volumes(pair, results[0], contrasts)
    ml = lesion_volume_ml(pair.subject.mask, pair.subject.reference.affine)
    record = {
        "seed": seed_k, "engine": "deviation", "weights": bundle.name,
        "weights_sha256": bundle.sha256, "lesion": opt["lesion"],
        "severity": float(opt["severity"]), "variant": k % variants, "pair": p,
        "anatomy": pair.anatomy, "mask_source": pair.mask, "lesion_ml": round(ml, 3),
        "contrasts": list(contrasts), "box": facts["box"],
        "seconds": round(time.perf_counter() - t0, 3),
    }  # fmt: skip
    if opt["lesion_volume"] is not None:
        record["lesion_volume_range"] = opt["lesion_volume"]
    return Sample(k, sid, vols, record, _preview(sid, vols, contrasts[0], len(contrasts) > 1))


def generate(*, out: Path, **options: Any) -> GenerateJob:
    """n triplets with the deviation engine (see the module docstring), as a run job.

    Options (as the CLI names them): n, lesion, weights, batch_size (each sample is already one
    batch of its lesion's slices; accepted and unused), steps, sampler, anatomy (folder of
    healthy scans or BraTS-style subject folders; default phantom anatomy), masks (folder of
    lesion masks or label maps, placed by world coordinates; default the phantom's lesion
    shapes), layout, preview, shard ((i, N), resolved by the run layer), seed, device,
    overwrite, resume; and severity, variants (lesions per anatomy and mask), eta;
    lesion_volume ("MIN:MAX" ml: each pair's phantom lesion is drawn in range, see
    `phantom.volume_draws`; refused with a folder of masks).
    """
    opt = _options(options)
    shard = tuple(opt["shard"] or (0, 1))
    volume = _volume_range(opt)
    bundle = load_bundle(opt["weights"], lesion=opt["lesion"], device=opt["device"])
    cfg = bundle.model.config
    sources = Sources(contrasts=cfg.contrasts, lesion=opt["lesion"], spacing=cfg.spacing,
                      anatomy=opt["anatomy"], masks=opt["masks"], labels=cfg.labels,
                      volume=volume)  # fmt: skip
    folder = RunFolder(
        Path(out), opt["layout"], run_config(bundle, sources, opt), "synthbrain-deviation",
        tuple(sources.written_contrasts), {"background": 0, "lesion": 1}, opt["overwrite"],
        opt["resume"],
    )  # fmt: skip

    def summary(written: int, skipped: int, seconds: float) -> dict[str, Any]:
        return {
            "engine": "deviation", "out": str(out), "written": written,
            "skipped_finished": skipped, "shard": f"{shard[0]}/{shard[1]}",
            "weights": bundle.name, "weights_sha256": bundle.sha256, "seed": opt["seed"],
            "seconds": round(seconds, 2),
        }  # fmt: skip

    def make(ks: list[int]) -> list[Sample]:
        return [make_sample(bundle, sources, opt, k) for k in ks]

    task = f"generate {opt['lesion']}"
    return GenerateJob(folder, "deviation", int(opt["n"]), shard, make, task, summary,
                       preview=bool(opt["preview"]))  # fmt: skip
