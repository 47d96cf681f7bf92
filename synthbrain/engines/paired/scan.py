"""heal and implant on a user's scan: register, edit on the model grid, blend back, write.

The written image equals the input voxel for voxel outside the edit region, which is written too
(`<out stem>_editmask.nii.gz`): for heal, the given mask or else the one compact blob where the
heal's change stands out (`anomaly_core`; possibly none), plus a seam band; for implant, the given
mask plus a seam band. Inside, model and input are blended across the band.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthbrain.engines.paired.edit import anomaly_core, back_to_scan, blend_weight
from synthbrain.engines.paired.guidance import ACGSettings, SamplerSettings, autocast_for, edit
from synthbrain.engines.paired.run import (
    DEFAULT_STEPS,
    SEAM_VOXELS,
    Bundle,
    avg_pool_gate,
    load_bundle,
)
from synthbrain.errors import InputError
from synthbrain.io.geometry import Volume
from synthbrain.io.samples import EditJob
from synthbrain.progress import Reporter
from synthbrain.spatial.template import ScanOnGrid, mask_to_grid, scan_to_grid

T_START = {"heal": 300, "implant": 500}
# A heal without a mask edits one blob whose change stands out by this robust z (anomaly_core);
# swept on 10 held-out stroke phantoms in docs/paired.md (z 3 … 6: lower z edits more tissue
# away from the lesion without finding it more often, with the embedded weights).
HEAL_Z = 6.0


def _stem(path: Path) -> str:
    """File name without .nii / .nii.gz."""
    name = path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(name).stem


def output_paths(out: Path, variants: int, overwrite: bool) -> tuple[list[Path], Path]:
    """The image files (one per variant) and the edit-mask file; refuses to clobber them."""
    suffix = ".nii.gz" if out.name.endswith(".nii.gz") else ".nii"
    stem = _stem(out)
    images = [out]
    if variants > 1:
        images = [out.with_name(f"{stem}_v{i}{suffix}") for i in range(variants)]
    editmask = out.with_name(f"{stem}_editmask{suffix}")
    # `out` itself was checked with the other inputs; the extra files are checked here.
    for path in [*(images if variants > 1 else []), editmask]:
        if path.exists() and not overwrite:
            raise InputError("output exists already (use --overwrite to replace it)", path)
    return images, editmask


def _contrast_volumes(inputs: Any, bundle: Bundle, contrast: str) -> list:
    """The scan's volumes in the model's contrast order; InputError for missing or extra ones."""
    have = dict(inputs.images or {contrast: inputs.scan})
    want = bundle.model.config.contrasts
    missing = [c for c in want if c not in have]
    extra = [c for c in have if c not in want]
    if missing or extra:
        raise InputError(
            f"weights {bundle.name} take contrast(s) {', '.join(want)}; got {', '.join(have)} "
            "(name the scan's contrast with --contrast)",
            inputs.scan.path,
        )
    return [have[c] for c in want]


def run_edit(
    kind: str,
    inputs: Any,
    *,
    weights: str | None = None,
    lesion: str = "stroke",
    alpha0: float = 20.0,
    k: float = 0.5,
    eta: float = 1.0,
    acg_target: str = "clean",
    t_start: int | None = None,
    steps: int | None = None,
    sampler: str = "ddim",
    in_template_space: bool = False,
    variants: int = 1,
    contrast: str = "t1",
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
    precision: str | None = None,
    reporter: Reporter | None = None,
    **_: Any,
) -> EditJob:
    """Heal (mask optional) or implant (mask required) a scan; every input is checked first.

    Args:
        kind: "heal" or "implant".
        inputs: validated EditInputs (scan, mask, out, images).
        weights, lesion: the paired weights (default: those registered for `lesion`).
        alpha0, k, eta, acg_target: ACG strength, decay, LCG strength, pull target.
        t_start: edit start step of T (default 300 heal, 500 implant); steps over it (50).
        in_template_space: skip registration (the scan is in MNI152 space).
        variants: implant only: different lesions for the same mask (one file each).
    """
    started = time.perf_counter()
    reporter = reporter or Reporter(quiet=True)
    if kind == "implant" and inputs.mask is None:
        raise InputError("implant needs --mask")
    if acg_target not in ("clean", "renoised"):
        raise InputError(f"acg_target must be clean or renoised, got {acg_target!r}")
    n = variants if kind == "implant" else 1
    images, editmask_path = output_paths(Path(inputs.out), n, overwrite)
    bundle = load_bundle(weights, lesion, device, precision)
    t_start = T_START[kind] if t_start is None else int(t_start)
    if not 1 <= t_start < bundle.model.schedule.T:
        top = bundle.model.schedule.T - 1
        raise InputError(f"--t-start must lie in [1, {top}], got {t_start}")
    volumes, sg, mask = _onto_grid(inputs, bundle, contrast, in_template_space, seed, reporter)
    cfg = bundle.model.config
    run = SamplerSettings(sampler, steps or DEFAULT_STEPS, "linspace", 0.0, bundle.precision)
    acg = ACGSettings(alpha0, k, t_start, acg_target, eta)  # type: ignore[arg-type]
    results, recon = edit_images(bundle, sg.image, sg.brain, mask, kind, n, run, acg, t_start, seed)
    weight = edit_weight(results[0], recon, sg.brain, mask, cfg.lesion_sign)
    outputs, region = _outputs(results, weight, sg, volumes[0], images)
    source = volumes[0]
    editmask = Volume(region.astype(np.uint8), source.affine.copy(), source.header, None)
    summary = {
        "engine": "paired", "task": kind, "out": [str(p) for p in images],
        "editmask": str(editmask_path), "edited_voxels": int(region.sum()),
        "weights": bundle.name, "weights_sha256": bundle.sha256, "registration": _registration(sg),
        "t_start": t_start, "steps": run.steps, "sampler": sampler, "alpha0": alpha0, "k": k,
        "acg_target": acg_target, "seed": seed, "device": str(bundle.device),
    }  # fmt: skip
    return EditJob(outputs, (editmask, editmask_path), lambda _: _timed(summary, started))


def _timed(summary: dict[str, Any], started: float) -> dict[str, Any]:
    """The summary with the seconds the whole edit took, writing included."""
    return {**summary, "seconds": round(time.perf_counter() - started, 2)}


def _onto_grid(
    inputs: Any, bundle: Bundle, contrast: str, in_template_space: bool, seed: int,
    reporter: Reporter,
) -> tuple[list, ScanOnGrid, np.ndarray | None]:
    """The scan's contrasts, the scan on the model grid, and the mask there (None without)."""
    volumes = _contrast_volumes(inputs, bundle, contrast)
    reporter.info("registering to MNI152" if not in_template_space else "scan in MNI152 space")
    cfg = bundle.model.config
    sg = scan_to_grid(
        volumes, cfg.spacing, cfg.grid, in_template_space=in_template_space, seed=seed,
        t1_weighted=cfg.contrasts[0] in ("t1", "t1gd"),
    )  # fmt: skip
    mask = mask_to_grid(inputs.mask, sg) if inputs.mask is not None else None
    return volumes, sg, mask


def edit_weight(
    result: np.ndarray,
    reference: np.ndarray | None,
    brain: np.ndarray,
    mask: np.ndarray | None,
    sign: float = -1.0,
) -> np.ndarray:
    """The blend weight on the grid: the mask, or the one lesion a heal found, + seam band.

    `reference` is the autoencoder's reconstruction of the input: comparing the healed image with
    it (not with the input) compares two decodes, so the autoencoder's blur is not an edit.
    `sign` is the model's lesion contrast sign (anomaly_core); the region may be empty.
    """
    core = mask
    if core is None:
        if reference is None:
            raise ValueError("a heal without a mask needs the input's reconstruction")
        core = anomaly_core(result, reference, brain, sign=sign, z=HEAL_Z)
    return blend_weight(core, SEAM_VOXELS)


@torch.no_grad()
def edit_images(
    bundle: Bundle,
    image_grid: np.ndarray,
    brain_grid: np.ndarray,
    mask: np.ndarray | None,
    kind: str,
    n: int,
    run: SamplerSettings,
    acg: ACGSettings,
    t_start: int,
    seed: int,
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Edited images [C, *grid] in [0, 1] on the model grid (not yet blended), one per variant.

    `image_grid` is [C, *grid] in [0, 1]; `mask` the lesion on the grid (required to implant,
    optional to heal, where it becomes the LCG gate); variant v uses derive_seed(seed, v).
    Returns the results and, for a heal without a mask, the autoencoder's reconstruction of the
    input (what `edit_weight` compares the result with); None otherwise.
    """
    from synthbrain.rng import derive_seed, generator_for

    model, dev = bundle.model, bundle.device
    image = torch.from_numpy(np.ascontiguousarray(image_grid, np.float32))[None].to(dev)
    brain = torch.from_numpy(np.asarray(brain_grid, np.float32))[None, None].to(dev)
    with autocast_for(dev, run.precision):
        y_in = model.encode(image).float()
    gate = None
    if mask is not None:
        m = torch.from_numpy(mask.astype(np.float32))[None, None].to(dev)
        gate = avg_pool_gate(m)
        x_cond = model.mask_to_x(m) if kind == "implant" else model.empty_x(1, y_in)
    else:
        x_cond = model.empty_x(1, y_in)
    results = []
    for v in range(n):
        gens = [generator_for(derive_seed(seed, v))]
        y = edit(model, y_in, x_cond, gens, run, t_start=t_start, acg=acg, x_soft=gate)
        with autocast_for(dev, run.precision):
            out = model.decode(y).float().clamp(0.0, 1.0) * brain
        results.append(out[0].cpu().numpy())
    recon = None
    if mask is None:
        with autocast_for(dev, run.precision):
            recon = (model.decode(y_in).float().clamp(0.0, 1.0) * brain)[0].cpu().numpy()
    return results, recon


def _outputs(
    results: list[np.ndarray], weight: np.ndarray, sg: ScanOnGrid, source: Any, images: list[Path]
) -> tuple[list[tuple[Any, Path, Any]], np.ndarray]:
    """Each result blended into the scan (float32, to write), and the edited region."""
    region = None
    outputs = []
    for result, path in zip(results, images, strict=True):
        data, w = back_to_scan(result[0], weight, sg, source)
        outputs.append((Volume(data, source.affine.copy(), source.header, None), path, np.float32))
        region = w > 0
    assert region is not None
    return outputs, region


def _registration(sg: ScanOnGrid) -> dict[str, Any] | str:
    """A JSON-able description of how the scan reached the model grid."""
    r = sg.registration
    if r is None:
        return "in template space"
    return {
        "metric": round(r.metric, 4),
        "overlap": round(r.overlap, 3),
        "t1_correlation": round(sg.t1_correlation, 3),
        "iters": r.iterations,
    }
