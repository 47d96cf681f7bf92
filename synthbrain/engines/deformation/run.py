"""The deformation engine's file-level commands: `train` (HDF5 → weights) and `enhance` (NIfTI).

`enhance` writes the synthetic T1Gd on T1's exact grid (in T1's intensity scale, see
`deformation_inputs`), the enhancing-tumour mask as uint8 with BraTS 2023's label 3 (BraTS 2020
used 4), and a JSON sidecar beside the T1Gd that records the label convention, the intensity
mapping, the weights and the sampling settings.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthbrain.engines.deformation.config import (
    ENHANCING_LABEL,
    DeformationConfig,
    load_config,
)
from synthbrain.engines.deformation.data import (
    EnhanceSlices,
    describe,
    enhancing_label,
    tumour_subset,
)
from synthbrain.engines.deformation.model import DeformationModel
from synthbrain.errors import InputError
from synthbrain.io.samples import EditJob
from synthbrain.progress import Reporter
from synthbrain.training.request import TrainRequest

DEFAULT_WEIGHTS = "deformation-glioma-2mm"
OUTPUT_CONVENTION = "brats2023"
OUTPUT_LABEL = ENHANCING_LABEL[OUTPUT_CONVENTION]  # enhancing tumour, BraTS 2023 naming
EXPORT_NAME = "deformation.safetensors"


# ---------------------------------------------------------------------- weights


def load_model(weights: str | Path | None = None) -> tuple[DeformationModel, dict[str, Any]]:
    """A DeformationModel from a weights name or file (fp16 or fp32), and facts about it.

    Returns:
        (model in eval mode on the CPU, {"name", "path", "sha256", "enhancing_label"}).

    Raises:
        WeightsError: unknown name, missing file, wrong sha256, not D3M weights.
    """
    from synthbrain.weights import load_engine_weights

    name = str(weights) if weights is not None else DEFAULT_WEIGHTS
    loaded = load_engine_weights("deformation", name)
    meta = loaded.metadata
    config = DeformationConfig.model_validate(meta["config"])
    model = DeformationModel(config, int(meta.get("enhancing_label", OUTPUT_LABEL)))
    missing, unexpected = model.load_state_dict(loaded.state, strict=False)
    if missing or unexpected:
        raise InputError(
            f"weights do not fit their own config (missing {missing[:3]}, extra {unexpected[:3]})",
            loaded.path,
        )
    info = {"name": name, "path": str(loaded.path), "sha256": loaded.sha256}
    info["enhancing_label"] = model.enhancing_label
    return model.eval(), info


def export_weights(source: Path, target: Path) -> Path:
    """Copy fit's EMA weights to an fp16 safetensors file with the same metadata."""
    from synthbrain.weights import load_state, read_metadata, save_state

    meta = {k: v for k, v in read_metadata(source).items() if k not in ("format",)}
    meta.pop("synthbrain_version", None)
    return save_state(load_state(source), target, dtype=torch.float16, metadata=meta)


# ---------------------------------------------------------------------- train


def train(request: TrainRequest) -> dict[str, Any]:
    """Train D3M on an HDF5 set with T1, T2, FLAIR, T1Gd and BraTS tumour labels.

    The request's data is the HDF5 file (`preprocess` or `phantom --hdf5 --slices`); its run
    folder gets checkpoints/, metrics.jsonl, main.safetensors (fp32 EMA) and
    deformation.safetensors (fp16, what `enhance --weights` loads); its config file is a TOML
    like examples/configs/deformation-*.toml. The label convention used is always reported.

    Returns:
        fit's summary plus the exported file, its sha256, the parameter count and the labels.
    """
    from synthbrain.io.dataset import read_info
    from synthbrain.io.outputs import sha256_file
    from synthbrain.train import fit, is_main_process

    reporter, data, out = request.progress(), request.data, request.out
    config = load_config(request.config_file, request.train_overrides())
    info = read_info(data)
    config = config.model_copy(
        update={"grid": tuple(info["grid"]), "spacing": float(info["spacing"][0])}
    )
    label, convention, source = enhancing_label(data)
    reporter.info(f"enhancing tumour = label {label} ({convention} naming, {source})")
    train_set, val_slices = (_slices(data, split, config, label) for split in ("train", "val"))
    # validation_step scores ET Dice / tumour PSNR, so it sees tumour slices (a fixed set)
    val_set = tumour_subset(val_slices, config.train.val_batches * config.train.batch_size)
    model = DeformationModel(config, label)
    meta = {"engine": "deformation", "config": config.model_dict(), **describe(label, convention,
            source), "training_data": Path(data).name}  # fmt: skip
    summary = fit(
        model, train_set, val_set if len(val_set) else None, config.train, out,
        resume=request.resume, progress=reporter.show_progress, metadata=meta,
    )  # fmt: skip
    summary.update(params=sum(p.numel() for p in model.parameters()),
                   **describe(label, convention, source))  # fmt: skip
    if is_main_process():  # under torchrun only rank 0 has the weights and writes files
        exported = export_weights(Path(summary["weights"]), out / EXPORT_NAME)
        summary.update(exported=str(exported), sha256=sha256_file(exported))
    return summary


def _slices(data: Path, split: str, config: DeformationConfig, label: int) -> EnhanceSlices:
    """The EnhanceSlices of one split for a config."""
    return EnhanceSlices(
        data, split, contrasts=config.contrasts, target=config.target, label=label,
        context=config.context, tumour_fraction=config.tumour_fraction,
    )  # fmt: skip


# ---------------------------------------------------------------------- enhance


def sidecar_path(out: Path) -> Path:
    """The JSON sidecar beside an output NIfTI (name.nii.gz → name.json)."""
    name = Path(out).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return Path(out).with_name(name[: -len(suffix)] + ".json")
    return Path(out).with_suffix(".json")


def enhance(
    inputs: Any,
    *,
    weights: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    device: str = "auto",
    register: bool = False,
    overwrite: bool = False,
    reporter: Reporter | None = None,
    sampler: str | None = None,
    **_: Any,
) -> EditJob:
    """Synthesise T1Gd and the enhancing-tumour mask from T1, T2 and FLAIR, as the job the run
    layer writes (`runs.edit.write_edit`: T1Gd, the mask, then the sidecar JSON).

    Args:
        inputs: `EnhanceInputs` (validated by the api): t1, t2, flair Volumes, out, mask_out,
            ignored (a T1Gd found in a subject folder: warned about, never read).
        weights: weights name or file (default: deformation-glioma-2mm).
        steps: sampler steps (default: the weights' sampling.steps).
        seed: run seed; slice z draws its noise from derive_seed(seed, z) (or seed 0's).
        device: "auto", "cpu", "cuda" or "cuda:N".
        register: rigidly register T2 and FLAIR onto T1 first (else they must share its grid).
        overwrite: replace an existing sidecar JSON (the api checked the NIfTI outputs).
        reporter: progress bar and warnings.
        sampler: "ddim" (default), "dpm++" or "ddpm".

    Returns:
        The EditJob; its summary: files, weights name and sha256, seed, seconds, labels.
    """
    from synthbrain.engines.deformation.inputs import (
        compose_outputs,
        register_rigid,
        to_model_grid,
    )
    from synthbrain.engines.deformation.volume import brain_box, enhance_volume
    from synthbrain.spatial.agreement import check_same_subject
    from synthbrain.training.config import resolve_device

    started = time.perf_counter()
    reporter = reporter or Reporter(quiet=True)
    sidecar = sidecar_path(inputs.out)
    if sidecar.exists() and not overwrite:
        raise InputError("sidecar JSON exists already (use --overwrite to replace it)", sidecar)
    dev = resolve_device(device)
    for path in inputs.ignored:
        reporter.warn(
            f"ignoring {path}: enhance synthesises T1Gd from T1, T2 and FLAIR; a T1Gd input "
            "is not used"
        )
    model, winfo = load_model(weights)
    config = model.config
    volumes = {"t1": inputs.t1, "t2": inputs.t2, "flair": inputs.flair}
    registration: dict[str, Any] = {}
    if register:
        for name in ("t2", "flair"):
            reporter.info(f"registering {name} onto t1 (rigid, mutual information)")
            volumes[name], registration[name] = register_rigid(inputs.t1, volumes[name], seed=seed)
            agreement = check_same_subject(inputs.t1, volumes[name], name)
            registration[name]["edge_agreement"] = round(agreement, 4)
    grid = to_model_grid({c: volumes[c] for c in config.contrasts}, config.spacing, config.grid)
    n_steps = _effective_steps(model, steps, sampler)
    n_slices = len(brain_box(grid.brain_grid)[2])
    size = n_slices if dev.type == "cuda" else config.sampling.chunk
    with reporter.task("enhance", total=math.ceil(n_slices / size) * n_steps) as advance:
        result = enhance_volume(
            model, grid.cond, grid.brain_grid, seed=seed, steps=steps, sampler=sampler,
            device=dev, progress=advance,
        )  # fmt: skip
    t1gd, mask = compose_outputs(result.image, result.mask, grid, inputs.t1, label=OUTPUT_LABEL)
    outputs: list[tuple[Any, Path, Any]] = [(t1gd, Path(inputs.out), np.float32)]
    written = {"out": str(inputs.out), "mask_out": None, "sidecar": str(sidecar)}
    if inputs.mask_out is not None:
        if mask is None:
            reporter.warn("these weights predict no enhancing-tumour mask; --mask-out not written")
        else:
            outputs.append((mask, Path(inputs.mask_out), np.uint8))
            written["mask_out"] = str(inputs.mask_out)
    summary = {
        **written, "engine": "deformation", "weights": winfo["name"],
        "weights_sha256": winfo["sha256"], "seed": seed, "steps": n_steps,
        "sampler": sampler or config.sampling.sampler, "device": str(dev),
        "slices": result.slices, "sampling_seconds": round(result.seconds, 3),
        "registered": registration or None, "ignored": [str(p) for p in inputs.ignored],
        "enhancing_volume_ml": _volume_ml(mask),
    }  # fmt: skip
    summary["seconds"] = round(time.perf_counter() - started, 3)
    facts = {**summary, **_sidecar_facts(grid, config, inputs)}
    return EditJob(outputs, None, lambda _: summary, sidecar=(sidecar, facts))


def _effective_steps(model: DeformationModel, steps: int | None, sampler: str | None) -> int:
    """How many denoiser calls one chunk takes."""
    from synthbrain.diffusion import steps_for

    cfg = model.config.sampling
    return steps_for(sampler or cfg.sampler, model.schedule.T, steps or cfg.steps)


def _volume_ml(mask: Any) -> float | None:
    """Enhancing-tumour volume of a mask Volume in ml (None without a mask)."""
    if mask is None:
        return None
    voxel_ml = abs(float(np.linalg.det(mask.affine[:3, :3]))) / 1000.0
    return round(float((mask.data > 0).sum()) * voxel_ml, 3)


def _sidecar_facts(grid: Any, config: DeformationConfig, inputs: Any) -> dict[str, Any]:
    """Label convention, intensity mapping and inputs, for the JSON sidecar."""
    lo, hi = grid.ranges["t1"]
    return {
        "labels": {"background": 0, "enhancing_tumor": OUTPUT_LABEL},
        "label_convention": OUTPUT_CONVENTION,
        "label_note": "BraTS 2023 naming: enhancing tumour = 3 (BraTS 2020 used 4)",
        "intensity_mapping": (
            "T1Gd in T1's intensity scale: model 0 -> T1's 0.5th percentile in the brain "
            f"({lo:.6g}), model 1 -> its 99.5th percentile ({hi:.6g}), linear; outside the "
            "brain the T1 voxels are copied"
        ),
        "inputs": {k: str(getattr(inputs, k).path) for k in ("t1", "t2", "flair")},
        "model": {"context": config.context, "decoder": config.decoder, "deform": config.deform,
                  "warp_mode": config.sampling.warp_mode, "noise": config.sampling.noise},
        "grid": grid.attrs(),
    }  # fmt: skip
