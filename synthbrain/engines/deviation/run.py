"""File-level work of the deviation engine: weights, `implant` and `heal` on the user's scans.

Outputs keep each input's exact shape, affine and header; voxels outside the edit mask (the
user's mask ∧ brain) are copied from the input bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthbrain.engines.deviation.config import DeviationConfig
from synthbrain.engines.deviation.io import (
    Subject,
    from_box,
    lesion_grid,
    subject_from_inputs,
    to_box,
)
from synthbrain.engines.deviation.model import DeviationModel
from synthbrain.engines.deviation.tensors import (
    availability,
    box_batch,
    element_generators,
    heal_tensors,
    implant_tensors,
    unbatch,
)
from synthbrain.errors import InputError
from synthbrain.io.samples import EditJob
from synthbrain.progress import Reporter

DEFAULT_LESION = "tumor"


@dataclass
class Bundle:
    """A ready model with the name and sha256 of the weights it came from."""

    model: DeviationModel
    name: str
    sha256: str | None
    path: Path | None = None


def model_from_file(path: Path, device: torch.device | str = "cpu") -> DeviationModel:
    """Rebuild a DeviationModel from a weights file (its config is in the file's metadata)."""
    from synthbrain.weights import load_engine_weights

    return _model_of(load_engine_weights("deviation", path), device)


def _model_of(loaded: Any, device: torch.device | str) -> DeviationModel:
    """The eval-mode DeviationModel of a `weights.EngineWeights`, on `device`."""
    model = DeviationModel(DeviationConfig.model_validate(loaded.config))
    model.load_state_dict(loaded.state)
    return model.to(device).eval()


def save_weights(
    model: DeviationModel,
    path: str | Path,
    *,
    dtype: torch.dtype | None = torch.float16,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Save a model as safetensors (fp16 by default) with its config in the metadata."""
    from synthbrain.weights import save_state

    meta = {"engine": "deviation", "config": model.config.model_dict(), **(metadata or {})}
    return save_state(model.state_dict(), path, dtype=dtype, metadata=meta)


def load_bundle(
    weights: str | Path | None, *, lesion: str | None = None, device: str = "auto"
) -> Bundle:
    """The model for --weights (a registry name or a file), or the default for `lesion`."""
    from synthbrain.training.config import resolve_device
    from synthbrain.weights import load_engine_weights

    loaded = load_engine_weights("deviation", weights, lesion=lesion or DEFAULT_LESION)
    # an unregistered file is named with its suffix, as the manifests written before said
    name = loaded.name if loaded.registered else loaded.path.name
    return Bundle(_model_of(loaded, resolve_device(device)), name, loaded.sha256, loaded.path)


def _device_of(model: DeviationModel) -> torch.device:
    """Where the model's parameters live."""
    return next(model.parameters()).device


def edit_subject(
    model: DeviationModel,
    subject: Subject,
    *,
    mode: str = "implant",
    variants: int = 1,
    severity: float = 1.0,
    seed: int = 0,
    steps: int | None = None,
    sampler: str | None = None,
    eta: float | None = None,
    advance=None,  # noqa: ANN001
) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    """Implant `variants` lesions (or heal) on a subject's lesion box; results on its grid.

    Variant k draws its noise from derive_seed(seed, k) (one generator per slice of the box), so
    variants differ and each is reproducible alone.

    Returns:
        (one {contrast: array} per variant (one for heal), facts about the box).
    """
    from synthbrain.rng import derive_seed

    cfg, device = model.config, _device_of(model)
    grid = lesion_grid(subject, spacing=cfg.spacing, margin_mm=cfg.margin_mm,
                       min_size=cfg.min_size, multiple=model.multiple, dims=cfg.dims)  # fmt: skip
    box = to_box(subject, cfg.contrasts, grid)
    xb, mb, zs, pad = box_batch(box.x, box.m, cfg.dims, model.multiple)
    xb, mb = xb.to(device), mb.to(device)
    a = availability(model, box.available, xb.shape[0], device)
    facts = {"box": list(grid.grid_shape), "batch": list(xb.shape)}
    if mode == "heal":
        healed = heal_tensors(model, xb, mb, a)
        return [from_box(subject, box, unbatch(box.x, healed, zs, pad), cfg.contrasts)], facts
    results = []
    for k in range(variants):
        generators = element_generators(derive_seed(seed, k), xb.shape[0])
        out = implant_tensors(model, xb, mb, a, generators, severity=severity, steps=steps,
                              sampler=sampler, eta=eta)  # fmt: skip
        edited = unbatch(box.x, out["image"], zs, pad)
        results.append(from_box(subject, box, edited, cfg.contrasts))
        if advance is not None:
            advance(1)
    return results, facts


# ---------------------------------------------------------------- output files


def output_paths(out: Path, contrasts: list[str], primary: str, variants: int) -> dict:
    """(variant, contrast) -> path: variant 0 of the scan's contrast is `out` itself."""
    from synthbrain.io.paths import stem

    out = Path(out)
    ext = ".nii.gz" if out.name.endswith(".nii.gz") else ".nii"
    base = stem(out)
    paths = {}
    for k in range(variants):
        tag = f"_variant-{k}" if k else ""
        for name in contrasts:
            if k == 0 and name == primary:
                paths[(k, name)] = out
            else:
                suffix = "" if name == primary else f"_{name}"
                paths[(k, name)] = out.with_name(f"{base}{tag}{suffix}{ext}")
    paths[("editmask", "")] = out.with_name(f"{base}_editmask{ext}")
    return paths


def check_outputs(paths: dict, inputs: list[Path], overwrite: bool) -> None:
    """Refuse outputs that exist (unless overwrite) or that would overwrite an input."""
    from synthbrain.io.paths import check_output_file

    for path in paths.values():
        check_output_file(path, inputs, overwrite)


def edit_job(subject: Subject, results: list[dict[str, np.ndarray]], paths: dict,
             summary: Callable[[list[str]], dict]) -> EditJob:  # fmt: skip
    """Every variant and contrast on its input's grid, and the edit mask, to be written."""
    from synthbrain.io.nifti import Volume

    outputs = []
    for k, result in enumerate(results):
        for name, data in result.items():
            src = subject.volumes[name]
            outputs.append((Volume(data, src.affine, src.header), paths[(k, name)], None))
    ref = subject.reference
    mask = Volume(subject.mask.astype(np.uint8), ref.affine, ref.header)
    return EditJob(outputs, (mask, paths[("editmask", "")]), summary)


def _prepare(inputs: Any, options: dict[str, Any], command: str) -> tuple[Bundle, Subject]:
    """Weights, then the subject from the contrasts `inputs` already loaded and checked."""
    if inputs.mask is None:
        raise InputError(f"the deviation engine needs --mask to {command} (the lesion's support)")
    bundle = load_bundle(options.get("weights"), lesion=options.get("lesion"),
                         device=options.get("device") or "auto")  # fmt: skip
    images = inputs.images or {bundle.model.config.contrasts[0]: inputs.scan}
    subject = subject_from_inputs(images, inputs.scan, inputs.mask, bundle.model.config.contrasts)
    return bundle, subject


def _summary(bundle: Bundle, subject: Subject, written: list, started: float, **extra) -> dict:  # noqa: ANN003
    """The JSON-ready summary every edit command returns."""
    from synthbrain.io.outputs import lesion_volume_ml

    ref = subject.reference
    return {
        "engine": "deviation", "outputs": written, "editmask": written[-1],
        "contrasts": sorted(subject.volumes), "weights": bundle.name,
        "weights_sha256": bundle.sha256,
        "lesion_ml": round(lesion_volume_ml(subject.mask, ref.affine), 3),
        "seconds": round(time.perf_counter() - started, 3), **extra,
    }  # fmt: skip


def _eta(bundle: Bundle, options: dict[str, Any]) -> float:
    """The DDIM η the sampler used: --eta, else the weights' own default."""
    eta = options.get("eta")
    return float(bundle.model.config.sampling.eta if eta is None else eta)


def implant(inputs: Any, **options: Any) -> EditJob:
    """Implant K different lesions for the mask into the scan (and its other contrasts).

    Options (as the CLI names them): weights, variants (K), severity (s in [0, 2]), steps,
    sampler, seed, device, overwrite, reporter, lesion (which registered weights when no
    `weights`: "tumor" (default) or "stroke"), eta (DDIM η; default the weights' own, 1).
    The contrasts are `inputs.images` (loaded and checked by edit_inputs.check_edit).
    Writes `out` (variant k > 0 as `<stem>_variant-<k>`, other contrasts as `<stem>_<contrast>`)
    and `<stem>_editmask`.
    """
    started = time.perf_counter()
    reporter: Reporter = options.get("reporter") or Reporter(quiet=True)
    variants, seed = int(options.get("variants") or 1), int(options.get("seed") or 0)
    severity = float(1.0 if options.get("severity") is None else options["severity"])
    bundle, subject = _prepare(inputs, options, "implant")
    paths = output_paths(inputs.out, sorted(subject.volumes), subject.primary, variants)
    sources = [v.path for v in subject.volumes.values()] + [inputs.mask.path]
    check_outputs(paths, [p for p in sources if p is not None], bool(options.get("overwrite")))
    with reporter.task("implant", total=variants) as advance:
        results, facts = edit_subject(
            bundle.model, subject, variants=variants, severity=severity, seed=seed,
            steps=options.get("steps"), sampler=options.get("sampler"), eta=options.get("eta"),
            advance=advance,
        )  # fmt: skip
    from synthbrain.rng import derive_seed

    seeds = [derive_seed(seed, k) for k in range(variants)]
    extra = {"variants": variants, "severity": severity, "seed": seed, "variant_seeds": seeds,
             "eta": _eta(bundle, options), "spacing": bundle.model.config.sampling.spacing,
             **facts}  # fmt: skip
    def summary(written: list[str]) -> dict:
        return _summary(bundle, subject, written, started, **extra)

    return edit_job(subject, results, paths, summary)


def heal(inputs: Any, **options: Any) -> EditJob:
    """Write the substrate (the input off the mask, f_sub on it) as the healed scan.

    Options: weights, device, overwrite, reporter, lesion; the contrasts are `inputs.images`.
    (edit_inputs.check_edit refuses the paired engine's alpha0, k, t_start, steps.)
    """
    started = time.perf_counter()
    bundle, subject = _prepare(inputs, options, "heal")
    paths = output_paths(inputs.out, sorted(subject.volumes), subject.primary, 1)
    sources = [v.path for v in subject.volumes.values()] + [inputs.mask.path]
    check_outputs(paths, [p for p in sources if p is not None], bool(options.get("overwrite")))
    results, facts = edit_subject(bundle.model, subject, mode="heal")
    def summary(written: list[str]) -> dict:
        return _summary(bundle, subject, written, started, **facts)

    return edit_job(subject, results, paths, summary)
