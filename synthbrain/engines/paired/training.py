"""`synthbrain train --engine paired`: autoencoder, latents, the two sub-models, one weights file.

Stage "autoencoder" fits the KL autoencoder on image crops (L1 + SSIM + KL); the latents of every
stage-2 example are then computed once with the frozen autoencoder (cached in the run folder);
stage "diffusion" fits ε^x_θ and ε^y_θ on them (Eq. 10–11). Both stages go through
`synthbrain.train.fit` (resumable, DDP-ready; under torchrun one process group serves both). The
result is one fp16 safetensors file holding the autoencoder and both sub-models, its network
config in the metadata, and a weights.toml entry (`paired_entry`) that `--weights PATH` or a user
registry accepts.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from synthbrain.engines.paired.entry import weights_entry
from synthbrain.engines.paired.model import PairedConfig, PairedModel
from synthbrain.errors import InputError
from synthbrain.io.outputs import atomic_write_bytes
from synthbrain.progress import Reporter
from synthbrain.train import is_main_process, process_group
from synthbrain.training.config import TrainConfig, resolve_device
from synthbrain.training.request import TrainRequest
from synthbrain.training.stopping import TrainingStopped


class StageSettings(TrainConfig):
    """A stage's TrainConfig plus the paired engine's own knobs (all optional in the file)."""

    steps: int = Field(default=1000, ge=1)
    batch_size: int = Field(default=4, ge=1)
    crop: int = Field(default=32, ge=8)  # autoencoder crops (voxels per side)
    # A paired weights file: the autoencoder stage reuses its autoencoder (no training); the
    # diffusion stage starts both sub-models from its sub-models (fine-tuning).
    weights: str | None = None
    p_true_condition: float = Field(default=0.5, ge=0, le=1)
    # Diffusion stage: train on latent_crop³ windows of the latent grid (None: whole grid), a
    # lesion_fraction of them centred on a lesion entry (foreground oversampling; our addition).
    latent_crop: int | None = Field(default=None, ge=4)
    lesion_fraction: float = Field(default=0.0, ge=0, le=1)
    # Diffusion stage loss (our additions, docs/methods.md): the lesion branch's MSE weighted
    # 1 + lesion_weight on lesion entries dilated by lesion_dilate latent voxels; min-SNR-γ.
    lesion_weight: float = Field(default=0.0, ge=0)
    lesion_dilate: int = Field(default=1, ge=0)
    min_snr_gamma: float | None = Field(default=None, gt=0)
    # Which sub-models the diffusion stage trains (with `weights`: fine-tune one, freeze the other).
    train_branches: list[Literal["lesion", "brain"]] = Field(
        default_factory=lambda: ["lesion", "brain"], min_length=1
    )


class DataSettings(BaseModel):
    """Which stage-2 examples are made from the training set."""

    model_config = ConfigDict(extra="forbid")

    healthy_fraction: float = Field(default=0.5, ge=0, le=1)
    anomaly_randomisation: bool = True
    pseudo_fraction: float = Field(default=0.5, ge=0, le=1)
    max_subjects: int | None = Field(default=None, ge=1)
    encode_batch: int = Field(default=2, ge=1)
    # "channel": each latent channel to unit variance; "shared": one scale (see latent_norm)
    latent_norm: Literal["channel", "shared"] = "channel"


class PairedTrainConfig(BaseModel):
    """The whole training config file (examples/configs/paired-*.toml)."""

    model_config = ConfigDict(extra="forbid")

    model: dict[str, Any] = Field(default_factory=dict)
    autoencoder: StageSettings = Field(default_factory=StageSettings)
    diffusion: StageSettings = Field(default_factory=StageSettings)
    data: DataSettings = Field(default_factory=DataSettings)


def load_train_config(path: Path | None, **overrides: Any) -> PairedTrainConfig:
    """The config file (or defaults) with --steps / --batch-size / --seed / --device applied."""
    from synthbrain.config import resolve

    cfg = resolve(PairedTrainConfig, path)
    for stage in (cfg.autoencoder, cfg.diffusion):
        for key, value in overrides.items():
            if value is not None:
                setattr(stage, key, value)
    return cfg


def model_config_for(data: Path, settings: dict[str, Any]) -> PairedConfig:
    """The network config: the [model] table; lesion, contrasts and grid default to the data's."""
    from synthbrain.io.dataset import read_info

    info = read_info(data)
    if info.get("space") == "native":  # preprocess --space native: grids centred per subject
        raise InputError(
            "the paired engine works on the MNI152 template grid, but this set is in native "
            "space: preprocess it with --space template",
            data,
        )
    values = {
        "contrasts": list(info["contrasts"]),
        "grid": tuple(info["grid"]),
        "spacing": float(info["spacing"][0]),
        **settings,
    }
    values["lesion"] = data_lesion(data, settings.get("lesion"))
    try:
        return PairedConfig.model_validate(values)
    except ValidationError as err:
        raise InputError(f"invalid [model] settings: {err.errors()[0]['msg']}", data) from None


def data_lesion(data: Path, explicit: str | None = None) -> str:
    """The lesion type of a set: `explicit` ([model] lesion) when given, else the commonest
    lesion_type of the subjects with a lesion (ties: alphabetical); healthy ones do not count.

    Raises:
        InputError: no subject has a lesion (the engine learns lesions from them), or none of
            them names its type and `explicit` is not given.
    """
    from synthbrain.io.h5format import decode_attr, open_set

    counts: Counter[str] = Counter()
    lesioned = 0
    with open_set(data) as h5:  # attributes only: read_subject would read every volume
        for group in h5["subjects"].values():
            if "labels" not in group or decode_attr(group.attrs.get("healthy", False)):
                continue
            lesioned += 1
            kind = str(decode_attr(group.attrs.get("lesion_type", "")))
            if kind not in ("", "none"):
                counts[kind] += 1
    if not lesioned:
        raise InputError("no subject has a lesion: the paired engine needs lesion examples", data)
    if explicit:
        return str(explicit)
    if not counts:
        problem = "the subjects with lesions carry no lesion_type: set lesion in [model]"
        raise InputError(problem, data)
    return min(counts, key=lambda kind: (-counts[kind], kind))


def train(request: TrainRequest) -> dict[str, Any]:
    """Train a paired model on an HDF5 set; returns the summary with the weights entry.

    The run folder gets checkpoints/, metrics.jsonl, latents.pt and the weights file; the
    request's steps and batch size override both stages' values, and resume continues both
    stages from their checkpoints (a finished stage re-exports). The paired config has two
    training stages, so dotted `overrides` are refused rather than guessed at.
    """
    if request.overrides:
        keys = ", ".join(sorted(request.overrides))
        raise InputError(f"the paired engine takes no dotted overrides ({keys})")
    reporter, data, out, resume = request.progress(), request.data, request.out, request.resume
    started = time.perf_counter()
    cfg = load_train_config(
        request.config_file, steps=request.steps, batch_size=request.batch_size,
        seed=request.seed, device=request.device if request.device != "auto" else None,
    )  # fmt: skip
    model = PairedModel(
        model_config_for(data, cfg.model),
        p_true_condition=cfg.diffusion.p_true_condition,
    )
    d = cfg.diffusion
    model.latent_crop, model.lesion_fraction = d.latent_crop, d.lesion_fraction
    model.lesion_weight, model.lesion_dilate = d.lesion_weight, d.lesion_dilate
    model.min_snr_gamma = d.min_snr_gamma
    model.train_branches = tuple(dict.fromkeys(d.train_branches))
    out.mkdir(parents=True, exist_ok=True)
    # One process group for both stages: re-creating it under torchrun's store can hang.
    with process_group(_group_device(cfg)):
        ae_summary = _stage_autoencoder(model, data, cfg, out, resume, reporter)
        z, x, counts = _latents(model, data, cfg, out, resume, reporter)
        try:
            diff_summary = _stage_diffusion(model, z, x, cfg, out, resume, reporter)
        except TrainingStopped as stop:  # still leave a weights file that generate/heal load
            _export_stopped(model, stop, out, {"autoencoder": ae_summary, "examples": counts})
            raise
    summary = {
        "engine": "paired",
        "examples": counts,
        "autoencoder": _brief(ae_summary),
        "diffusion": _brief(diff_summary),
    }
    if not is_main_process():  # under torchrun only rank 0 writes the weights and the entry
        return {**summary, "seconds": round(time.perf_counter() - started, 2)}
    c = model.config
    weights = export_bundle(model, out / f"paired-{c.lesion}-{c.spacing:g}mm.safetensors", {
        "autoencoder": ae_summary, "diffusion": diff_summary, "examples": counts,
    })  # fmt: skip
    entry = weights_entry(model, weights, data, request.config_file, counts, cfg)
    atomic_write_bytes(out / "weights-entry.toml", entry.encode("utf-8"))
    from rich.markup import escape

    reporter.info(escape(f"weights.toml entry (in {out / 'weights-entry.toml'}):\n{entry}"))
    return {
        **summary,
        "weights": str(weights),
        "sha256": _sha(weights),
        "seconds": round(time.perf_counter() - started, 2),
        "weights_entry": str(out / "weights-entry.toml"),
    }


def _group_device(cfg: PairedTrainConfig) -> torch.device:
    """The device the process group is made for: the one both training stages use."""
    from synthbrain.training.ddp import env_context

    ctx = env_context()
    rank = ctx.local_rank if ctx.distributed else None
    no_ae = cfg.autoencoder.weights or cfg.model.get("representation") == "haar"
    stages = [cfg.diffusion] if no_ae else [cfg.autoencoder, cfg.diffusion]
    devices = {resolve_device(stage.device, rank) for stage in stages}
    if ctx.distributed and len(devices) > 1:
        raise InputError("under torchrun [autoencoder] and [diffusion] must use one device")
    return devices.pop()


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    """The parts of a fit summary worth reporting."""
    keys = ("step", "losses", "val", "seconds", "device")
    return {k: summary.get(k) for k in keys}


def _stage_autoencoder(
    model: PairedModel, data: Path, cfg: PairedTrainConfig, out: Path, resume: bool, rep: Reporter
) -> dict[str, Any]:
    """Fit the autoencoder on crops, or load one from `autoencoder.weights`."""
    from synthbrain.engines.paired.data import CropDataset
    from synthbrain.train import fit

    settings = cfg.autoencoder
    if model.ae is None:  # the Haar representation: nothing to train
        rep.info("autoencoder: none (haar representation)")
        return {"representation": model.config.representation}
    if settings.weights:
        load_autoencoder(model, Path(settings.weights))
        rep.info(f"autoencoder: loaded from {settings.weights}")
        return {"loaded_from": settings.weights}
    model.stage = "autoencoder"
    crop = min(settings.crop, *model.config.grid)
    train_set = CropDataset(data, "train", crop=crop, seed=settings.seed)
    val_set = _val(data, lambda split: CropDataset(data, split, crop=crop, seed=1, repeats=1))
    rep.info(f"autoencoder: {settings.steps} steps on {crop}^3 crops")
    return fit(
        model, train_set, val_set, _train_config(settings), out, resume=resume,
        progress=not rep.quiet, stage="autoencoder", load_ema_at_end=True,
        metadata={"config": model.config.model_dump(mode="json")},
    )  # fmt: skip


def _val(data: Path, make: Any) -> Any:
    """The validation dataset, or None when the split is empty."""
    from synthbrain.io.dataset import split_ids

    return make("val") if split_ids(data, "val") else None


def _train_config(settings: StageSettings) -> TrainConfig:
    """The TrainConfig fields of a stage's settings."""
    fields = TrainConfig.model_fields.keys()
    return TrainConfig(**{k: getattr(settings, k) for k in fields})


def load_autoencoder(model: PairedModel, path: Path) -> None:
    """Copy the autoencoder weights (keys `ae.*`) of a paired weights file into `model`."""
    from synthbrain.weights import load_state, resolve

    state = load_state(resolve(str(path)))
    ae = {k[3:]: v.float() for k, v in state.items() if k.startswith("ae.")}
    if not ae:
        raise InputError("no autoencoder weights (ae.*) in the file", path)
    try:
        model.ae.load_state_dict(ae)
    except RuntimeError as err:
        problem = f"autoencoder weights do not fit the [model] settings: {err}"
        raise InputError(problem, path) from None


def load_denoisers(model: PairedModel, path: Path) -> None:
    """Copy both sub-models (keys `eps_x.*`, `eps_y.*`) of a paired weights file into `model`."""
    from synthbrain.weights import load_state, resolve

    state = load_state(resolve(str(path)))
    nets = {k: v.float() for k, v in state.items() if k.startswith(("eps_x.", "eps_y."))}
    if not nets:
        raise InputError("no sub-model weights (eps_x.*, eps_y.*) in the file", path)
    try:
        missing, unexpected = model.load_state_dict(nets, strict=False)
    except RuntimeError as err:  # shapes differ
        detail = " ".join(str(err).split())[:200]  # one line
        problem = f"sub-model weights do not fit the [model] settings: {detail}"
        raise InputError(problem, path) from None
    wrong = [k for k in missing if k.startswith(("eps_x.", "eps_y."))] + list(unexpected)
    if wrong:
        raise InputError(f"sub-model weights do not fit the [model] settings: {wrong[:3]}", path)


def _latents(
    model: PairedModel, data: Path, cfg: PairedTrainConfig, out: Path, resume: bool, rep: Reporter
) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """Encode every stage-2 example once (cached in out/latents.pt when resuming)."""
    from synthbrain.engines.paired.latents import compute_latents, load_latents, save_latents

    cache = out / "latents.pt"
    if resume and cache.exists():
        z, x, counts, norm = load_latents(cache)
        model.set_latent_norm(*norm)
        rep.info(f"latents: reused {cache} ({z.shape[0]} examples)")
        return z, x, counts
    device = resolve_device(cfg.diffusion.device)
    with rep.task("encoding examples", total=None) as advance:
        z, x, counts = compute_latents(model, data, cfg.data, cfg.diffusion.seed, device, advance)
    if is_main_process():
        save_latents(cache, z, x, counts, (model.config.latent_shift, model.config.latent_scale))
    return z, x, counts


def _stage_diffusion(
    model: PairedModel,
    z: torch.Tensor,
    x: torch.Tensor,
    cfg: PairedTrainConfig,
    out: Path,
    resume: bool,
    rep: Reporter,
) -> dict[str, Any]:
    """Fit both sub-models on the latents (the autoencoder frozen)."""
    from synthbrain.engines.paired.data import LatentDataset
    from synthbrain.train import fit

    model.stage = "diffusion"
    n_val = max(1, min(16, z.shape[0] // 20)) if z.shape[0] > 4 else 0
    train_set = LatentDataset(z[n_val:], x[n_val:]) if n_val else LatentDataset(z, x)
    val_set = LatentDataset(z[:n_val], x[:n_val]) if n_val else None
    settings = cfg.diffusion.model_copy(update={"num_workers": 0})  # the data is in memory
    if settings.weights:  # a checkpoint, when resuming, replaces these
        load_denoisers(model, Path(settings.weights))
        rep.info(f"diffusion: sub-models start from {settings.weights}")
    rep.info(f"diffusion: {settings.steps} steps on {len(train_set)} latent examples")
    return fit(
        model, train_set, val_set, _train_config(settings), out, resume=resume,
        progress=not rep.quiet, stage="diffusion", load_ema_at_end=True,
        metadata={"config": model.config.model_dump(mode="json")},
    )  # fmt: skip


def _export_stopped(
    model: PairedModel, stop: TrainingStopped, out: Path, training: dict[str, Any]
) -> None:
    """A diffusion stage stopped by --max-time or a signal: its EMA sub-models (the stage's
    weights file) go into the bundle under the name a finished run uses, so the printed
    "checkpoint and weights written" holds; `--resume` later overwrites it."""
    weights = stop.summary.get("weights")
    if not is_main_process() or not weights:
        return
    load_denoisers(model, Path(weights))
    c = model.config
    path = out / f"paired-{c.lesion}-{c.spacing:g}mm.safetensors"
    bundle = export_bundle(model, path, {**training, "diffusion": stop.summary})
    stop.summary["bundle"] = str(bundle)


def export_bundle(model: PairedModel, path: Path, training: dict[str, Any]) -> Path:
    """The weights file: autoencoder + both sub-models in fp16, config in the metadata."""
    from synthbrain.weights import save_state

    meta = {
        "engine": "paired",
        "config": model.config.model_dump(mode="json"),
        "training": {k: _brief(v) if "step" in v else v for k, v in training.items()},
    }
    return save_state(model.state_dict(), path, dtype=torch.float16, metadata=meta)


def _sha(path: Path) -> str:
    """sha256 of a file."""
    from synthbrain.io.outputs import sha256_file

    return sha256_file(path)
