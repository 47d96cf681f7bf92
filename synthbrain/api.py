"""The plain-function API under every command: what the CLI, tests, notebooks and scripts call.

Every function validates all of its inputs before it writes anything, so a rejected call leaves
no trace on disk.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from synthbrain import engines
from synthbrain.config import PhantomConfig, PreprocessConfig, resolve, to_json_dict
from synthbrain.engines.defaults import default_engine
from synthbrain.errors import InputError
from synthbrain.io.atomic import check_writable
from synthbrain.progress import Reporter

__all__ = [
    "enhance",
    "evaluate",
    "generate",
    "heal",
    "implant",
    "manifest_validate",
    "phantom",
    "preprocess",
    "train",
    "weights_table",
    "weights_verify",
]


def phantom(
    *,
    out: Path | None,
    hdf5: Path | None = None,
    n: int = 10,
    lesion: str = "stroke",
    contrasts: tuple[str, ...] | None = ("t1",),
    spacing: float = 2.0,
    layout: str = "flat",
    mass_effect: bool = False,
    preview: bool = False,
    split: tuple[float, ...] | None = (0.8, 0.1, 0.1),
    slices: bool = False,
    shard: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    resume: bool = False,
    workers: int = 1,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Write `n` phantom subjects (image per contrast, labels, healthy substrate) and a manifest.

    Args:
        out: output folder in `layout` (flat, bids, nnunet); None writes only `hdf5`.
        hdf5: also write a training set in the format `preprocess` writes.
        n, lesion, contrasts, spacing, mass_effect: what to draw (see docs/phantom.md).
        preview: write a tri-planar PNG with the lesion overlaid per subject.
        split, slices: train/val/test fractions and axial-slice index for `hdf5`.
        shard: 'i/N' writes only samples k with k % N == i; seeds depend on (seed, k) alone.
        seed: run seed; subject k is drawn from derive_seed(seed, k).
        overwrite, resume: what to do with an output folder that holds a previous run.
        workers: subjects made in parallel processes (the output is the same).
    """
    from synthbrain.runs.generate import resolve_shard
    from synthbrain.runs.phantom import run_phantom

    reporter = reporter or Reporter(quiet=True)
    config = resolve(
        PhantomConfig,
        overrides={
            "n": n,
            "lesion": lesion,
            "contrasts": contrasts,
            "spacing": spacing,
            "layout": layout,
            "mass_effect": mass_effect,
            "preview": preview,
            "seed": seed,
        },
    )
    if hdf5 is not None and Path(hdf5).exists() and not overwrite:
        raise InputError("HDF5 file exists already (use --overwrite to replace it)", hdf5)
    if out is not None and not Path(out).is_file():  # a file there: the run writer says so
        check_writable(out, folder=True, what="run folder")
    if hdf5 is not None:
        check_writable(hdf5, folder=False)
    return run_phantom(
        config,
        out=out,
        hdf5=hdf5,
        split=tuple(split or (0.8, 0.1, 0.1)),
        slices=slices,
        shard=resolve_shard(shard),
        overwrite=overwrite,
        resume=resume,
        reporter=reporter,
        workers=max(1, workers),
    )


def preprocess(
    inputs: list[Path],
    out: Path,
    *,
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """NIfTI cohorts (BraTS, ATLAS/BIDS, healthy folders, CSV) into one HDF5 training set.

    Args:
        inputs: cohort folders or CSV files.
        out: the HDF5 file to write (a fingerprint JSON is written beside it).
        config_file, overrides: settings (see `PreprocessConfig`); overrides win over the file.
        overwrite: replace an existing HDF5 file.
    """
    reporter = reporter or Reporter(quiet=True)
    config = resolve(PreprocessConfig, config_file, overrides)
    for path in inputs:
        if not Path(path).exists():
            raise InputError("input not found", path)
    if not Path(out).is_dir():  # a folder there: the pipeline says so
        check_writable(out, folder=False)
    from synthbrain.preprocessing import run as pipeline

    started = time.perf_counter()
    with reporter.task("preprocess", total=None) as advance:
        result = pipeline.preprocess(
            [Path(p) for p in inputs],
            Path(out),
            layout=config.layout,
            spacing=config.spacing,
            grid=config.grid,
            space=config.space,
            n4=config.n4,
            contrasts=config.contrasts,
            split=config.split,
            seed=config.seed,
            slices=config.slices,
            workers=config.workers,
            strict=config.strict,
            overwrite=overwrite,
            progress=advance,
        )
    for message in getattr(result, "warnings", []):
        reporter.warn(message)
    for name, reason in getattr(result, "skipped", []):
        reporter.warn(f"skipped {name}: {reason}")
    summary = _as_dict(result)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    summary["config"] = to_json_dict(config)
    return summary


def _as_dict(result: Any) -> dict[str, Any]:
    """A report dataclass (or dict) as a JSON-ready dict."""
    import dataclasses

    if dataclasses.is_dataclass(result):
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(result).items()}
    return dict(result)


def train(
    *,
    engine: str,
    data: Path,
    out: Path,
    config_file: Path | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    resume: bool = False,
    device: str = "auto",
    seed: int = 0,
    reporter: Reporter | None = None,
    precision: str | None = None,
    threads: int | None = None,
    max_time: str | float | None = None,
) -> dict[str, Any]:
    """Fit an engine on an HDF5 set written by `preprocess` (or `phantom --hdf5`).

    precision ("auto", "fp32", "bf16") overrides every stage's config; threads (default: the
    cores this process may use) sets torch's intra-op threads; max_time ("2h45m", "90m",
    seconds) limits the whole command. A run stopped by max_time, SIGTERM or SIGUSR1 returns
    {"stopped": reason, ...} with its checkpoint written: run it again with resume=True.
    The summary's "training" holds the wall time and each stage's samples/s.
    """
    from synthbrain.training.config import resolve_device
    from synthbrain.training.options import command_options, parse_duration
    from synthbrain.training.precision import resolve_precision, set_threads
    from synthbrain.training.request import TrainRequest
    from synthbrain.training.stopping import TrainingStopped, catch_stop_signals

    engines.check_name(engine)
    if not Path(data).is_file():
        raise InputError("training set not found", data)
    check_writable(out, folder=True, what="run folder")
    seconds = None if max_time is None else parse_duration(max_time)
    if precision is not None:  # a device without bf16 is refused before anything is written
        resolve_precision(precision, resolve_device(device))
    used_threads = set_threads(threads)
    module = engines.load(engine, command="train")
    with command_options(precision, seconds) as options, catch_stop_signals():
        try:
            summary = module.train(TrainRequest(
                data=Path(data), out=Path(out), config_file=config_file, steps=steps,
                batch_size=batch_size, resume=resume, device=device, seed=seed,
                reporter=reporter or Reporter(quiet=True),
            ))  # fmt: skip
        except TrainingStopped as stop:
            summary = {"engine": engine, "out": str(out), "stopped": stop.reason, **stop.summary}
    wall = time.monotonic() - options.started
    stages = _stage_rates(options.stages)
    summary["training"] = {"wall_seconds": wall, "threads": used_threads, "stages": stages}
    return summary


def _stage_rates(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per trained stage: its name, updates done, precision, samples/s and seconds."""
    keys = ("stage", "step", "steps", "precision", "samples_per_s", "seconds", "stopped")
    return [{k: stage[k] for k in keys if k in stage} for stage in stages]


def _given(values: dict[str, Any]) -> dict[str, Any]:
    """The options a caller gave (not None): each engine keeps its own default for the rest."""
    return {k: v for k, v in values.items() if v is not None}


def generate(
    *, out: Path, n: int | None = None, lesion: str | None = None, engine: str | None = None,
    weights: str | None = None, batch_size: int = 1, steps: int | None = None,
    sampler: str | None = None, eta: float | None = None, severity: float | None = None,
    variants: int | None = None, anatomy: Path | None = None, masks: Path | str | None = None,
    layout: str = "flat", preview: bool = False, shard: str | tuple[int, int] | None = None,
    seed: int = 0, device: str = "auto", overwrite: bool = False, resume: bool = False,
    spacing: str | None = None, precision: str | None = None, lesion_volume: str | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Generate `n` triplets (pathological image, lesion mask, healthy substrate) and a manifest.

    Args:
        out: the run folder, in `layout` (flat, bids, nnunet).
        n, lesion, engine, weights: how many (default: the engine's, 10 paired / 1 deviation; the
            CLI's is 10), of which lesion (default: stroke without an engine, else the
            engine's: stroke / tumor), by which engine (default: the engine of `weights`, else
            by lesion type, `engines.defaults`), which weights (default: the registered ones
            for `lesion`).
        batch_size, steps, sampler, spacing, precision: how the reverse process runs (None: the
            engine's default; spacing and precision are paired-only).
        eta, severity, variants, anatomy: deviation-only (given to paired: an InputError).
        masks: a folder of lesion masks, or "phantom" for phantom lesion shapes.
        preview: a tri-planar PNG per sample under previews/.
        shard: "i/N" or (i, N); None reads Slurm's SLURM_ARRAY_* variables, else one shard.
        seed: the run seed; sample k depends on derive_seed(seed, k) alone.
        overwrite, resume: what to do with a folder holding a previous run.
        lesion_volume: "MIN:MAX" ml (paired-only): keep only samples whose lesion volume is in
            range (joint samples are redrawn from attempt seeds; phantom masks drawn in range).

    Returns:
        The JSON summary (written, skipped_finished, shard, weights, seconds, ...).
    """  # fmt: skip
    options = _given({k: v for k, v in locals().items() if k not in ("out", "engine", "reporter")})
    from synthbrain.edit_inputs import check_generate
    from synthbrain.io.paths import is_phantom_masks
    from synthbrain.runs.generate import resolve_shard, run_job

    if engine is None:  # the default engine is chosen per lesion type, stroke when none given
        options["lesion"] = lesion = lesion or "stroke"
        engine = default_engine("generate", lesion, weights)
    check_generate(out=Path(out), engine=engine, **options)
    if engine == "deviation" and is_phantom_masks(masks):
        options.pop("masks")  # the deviation engine's default mask source is the phantom's
    options["shard"] = resolve_shard(shard)
    module = engines.load(engine, command="generate")
    return run_job(module.generate_job(out=Path(out), **options), reporter)


def heal(
    *, scan: Path, out: Path | None = None, mask: Path | None = None, engine: str | None = None,
    weights: str | None = None, lesion: str | None = None, alpha0: float | None = None,
    k: float | None = None, t_start: int | None = None, steps: int | None = None,
    sampler: str | None = None, acg_target: str | None = None, in_template_space: bool = False,
    resample_mask: bool = False, label: bool = False, images: dict[str, Path] | None = None,
    contrast: str = "t1", resample: bool = False, seed: int = 0, device: str = "auto",
    overwrite: bool = False, precision: str | None = None, reporter: Reporter | None = None,
) -> dict[str, Any]:
    """The healthy counterpart of `scan`, written on the scan's own grid (+ `<out>_editmask`).

    Args:
        scan, out: the input NIfTI and the output (default `<scan>_healed.nii.gz` beside it).
        mask: the lesion to heal; with a mask the default engine is deviation, else paired.
        weights, lesion: which weights (default: the engine's registered ones for `lesion`).
        alpha0, k, t_start, steps, acg_target, in_template_space, precision: paired-only (ACG
            strength and decay, edit start, steps; given to deviation: an InputError).
        sampler, seed, device, overwrite: as for generate.
        resample_mask, label, images, contrast, resample: how the inputs are read (see the CLI).
    """  # fmt: skip
    options = _given({k_: v for k_, v in locals().items() if k_ not in ("scan", "mask", "engine")})
    from synthbrain.edit_inputs import check_edit

    engine = engine or default_engine("heal", lesion, weights, mask)
    from synthbrain.runs.edit import write_edit

    inputs = check_edit(scan=scan, mask=mask, command="heal", engine=engine, **options)
    module = engines.load(engine, command="heal")
    return write_edit(module.heal(inputs, **options))


def implant(
    *, scan: Path, mask: Path, out: Path | None = None, engine: str | None = None,
    weights: str | None = None, lesion: str | None = None, variants: int = 1,
    severity: float | None = None, steps: int | None = None, sampler: str | None = None,
    eta: float | None = None, in_template_space: bool = False, resample_mask: bool = False,
    label: bool = False, images: dict[str, Path] | None = None, contrast: str = "t1",
    resample: bool = False, seed: int = 0, device: str = "auto", overwrite: bool = False,
    precision: str | None = None, reporter: Reporter | None = None,
) -> dict[str, Any]:
    """`scan` with the lesion of `mask` implanted, on the scan's own grid (+ `<out>_editmask`).

    Args:
        scan, mask, out: the healthy NIfTI, the lesion mask, the output (default
            `<scan>_implant.nii.gz`).
        engine: paired (default) or deviation; variants: K different lesions for the one mask.
        severity, eta: deviation-only; in_template_space, precision: paired-only.
        weights, lesion, steps, sampler, seed, device, overwrite: as for generate.
        resample_mask, label, images, contrast, resample: how the inputs are read (see the CLI).
    """  # fmt: skip
    options = _given({k: v for k, v in locals().items() if k not in ("scan", "mask", "engine")})
    from synthbrain.edit_inputs import check_edit

    engine = engine or default_engine("implant", lesion, weights)
    from synthbrain.runs.edit import write_edit

    inputs = check_edit(scan=scan, mask=mask, command="implant", engine=engine, **options)
    module = engines.load(engine, command="implant")
    return write_edit(module.implant(inputs, **options))


def enhance(
    *, t1: Path | None = None, t2: Path | None = None, flair: Path | None = None,
    subject: Path | None = None, out: Path | None = None, mask_out: Path | None = None,
    register: bool = False, weights: str | None = None, steps: int | None = None,
    sampler: str | None = None, seed: int = 0, device: str = "auto", overwrite: bool = False,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """A synthetic contrast-enhanced T1 and enhancing-tumour mask from T1, T2 and FLAIR (D3M).

    Args:
        t1, t2, flair: the three contrasts, or `subject`: a BraTS subject folder holding them.
        out, mask_out: the T1Gd and (optional) enhancing-tumour mask, on T1's grid.
        register: rigidly register T2 and FLAIR onto T1 first (else they must share its grid).
        weights, steps, sampler, seed, device, overwrite: as for generate.
    """  # fmt: skip
    options = _given(dict(locals()))  # first: the parameters only, before any import below
    from synthbrain.edit_inputs import check_enhance
    from synthbrain.runs.edit import write_edit

    inputs = check_enhance(**options)
    module = engines.load("deformation", command="enhance")
    return write_edit(module.enhance(inputs, **options))


def evaluate(*, synth: Path, reference: str, out: Path, reporter: Reporter | None = None,
             **options: Any) -> dict[str, Any]:  # fmt: skip
    """Report on a generated run against a reference, optionally --downstream (docs/evaluate.md).

    Every input is checked (manifest and sha256, masks, grids, case counts) before `out` is
    written. Options: downstream, quick, segmenter, seed, bootstrap, device.
    """
    from synthbrain.evaluation import evaluate as run_evaluation

    return run_evaluation(Path(synth), reference, Path(out), reporter=reporter, **options)


def weights_table() -> list[dict[str, Any]]:
    """One row per registered weights entry."""
    from synthbrain import weights

    rows = []
    for entry in weights.registry().values():
        where = entry.file or entry.url or "?"
        rows.append(
            {"name": entry.name, "engine": entry.engine, "lesion": entry.lesion, "where": where}
        )
    return rows


def weights_verify(name: str | None = None) -> list[dict[str, Any]]:
    """Check sha256 of one named entry or of all entries."""
    from synthbrain import weights

    entries = weights.registry()
    if name is not None:
        if name not in entries:
            raise InputError(f"no weights named {name!r}; known: {', '.join(entries) or 'none'}")
        entries = {name: entries[name]}
    rows = []
    for entry in entries.values():
        ok, message = weights.verify(entry)
        rows.append({"name": entry.name, "ok": ok, "message": message})
    return rows


def manifest_validate(folder: Path) -> dict[str, Any]:
    """Validate a run folder's manifest against its files."""
    from synthbrain.io.outputs import validate_manifest

    if not Path(folder).is_dir():
        raise InputError("not a folder", folder)
    report = validate_manifest(Path(folder))
    return {
        "folder": str(folder),
        "ok": len(report.ok),
        "problems": [f"{sample}: {why}" for sample, why in report.problems],
    }
