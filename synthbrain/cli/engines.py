"""The engine-backed commands: train, generate, heal, implant, enhance."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from synthbrain.cli.options import (
    Device,
    Json,
    Layout,
    Overwrite,
    Progress,
    Quiet,
    Resume,
    Seed,
    Shard,
    _reporter,
    app,
)

Engine = Annotated[
    str | None,
    typer.Option(
        help="paired | deviation (default: the engine of --weights, else by command and lesion; "
        "docs/status.md says which and why)."
    ),
]
Weights = Annotated[
    str | None, typer.Option(help="Weights name (see `synthbrain weights list`) or file path.")
]
Steps = Annotated[int | None, typer.Option(help="Sampling steps (default: the engine's).")]
Sampler = Annotated[str, typer.Option(help="ddim | dpm++.")]
MaskOpt = Annotated[Path | None, typer.Option(help="Lesion mask (NIfTI) on the scan's grid.")]
ResampleMask = Annotated[
    bool, typer.Option(help="Resample a mask whose grid differs from the scan's (nearest).")
]
Images = Annotated[
    list[str] | None,
    typer.Option(
        "--image",
        help="Extra contrast as NAME=PATH (t1, t1gd, t2, flair), repeatable; all on one grid.",
        show_default=False,
    ),
]
Resample = Annotated[
    bool, typer.Option(help="Resample contrasts on other grids onto the scan's grid.")
]
LabelOpt = Annotated[
    bool, typer.Option("--label", help="Accept a label map as mask (non-zero = lesion).")
]
InTemplateSpace = Annotated[
    bool, typer.Option(help="The scan is already in MNI152 space: skip registration.")
]
Contrast = Annotated[str, typer.Option(help="Contrast of the positional scan.")]
EditLesion = Annotated[
    str | None,
    typer.Option(
        help="Use the registered weights for this lesion (deviation: tumor, stroke; default "
        "tumor for deviation, stroke for paired). --weights wins; both together must agree.",
        show_default=False,
    ),
]
Severity = Annotated[float, typer.Option(help="Deviation scale in [0, 2].")]
Eta = Annotated[
    float | None,
    typer.Option(
        help="DDIM eta of the deviation engine: 1 fresh noise each step (its default), "
        "0 deterministic.",
        show_default=False,
    ),
]


def _images(values: list[str] | None) -> dict[str, Path] | None:
    """['t1=a.nii.gz', 'flair=b.nii.gz'] -> {'t1': Path('a.nii.gz'), 'flair': Path('b.nii.gz')}."""
    if not values:
        return None
    images: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise typer.BadParameter(f"expected NAME=PATH, got {value!r}", param_hint="--image")
        if name.lower() in images:
            raise typer.BadParameter(f"contrast {name!r} given twice", param_hint="--image")
        images[name.lower()] = Path(path)
    return images


@app.command()
def train(
    engine: Annotated[str, typer.Option(help="paired | deviation | deformation.")],
    data: Annotated[Path, typer.Option(help="HDF5 set written by `synthbrain preprocess`.")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, metrics, weights.")],
    config: Annotated[Path | None, typer.Option(help="TOML config (see examples/configs).")] = None,
    steps: Annotated[int | None, typer.Option(help="Override the number of steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Override the batch size.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from out/checkpoints/last.pt.")] = False,
    device: Device = "auto",
    seed: Seed = 0,
    quiet: Quiet = False,
    json_: Json = False,
    progress: Progress = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="auto | fp32 | bf16 (default: the config's, auto: bf16 where native).",
            show_default=False,
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            help="CPU threads (default: the cores this process may use).", show_default=False
        ),
    ] = None,
    max_time: Annotated[
        str | None,
        typer.Option(
            help="Stop cleanly before this much time (2h45m, 90m, 02:45:00), "
            "checkpoint written, exit 0; SIGTERM/SIGUSR1 do the same.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Fit an engine on an HDF5 set; one GPU or many (torchrun), resumable.

    Example: synthbrain train --engine deviation --data brats.h5 --out runs/dev --max-time 2h45m
    """
    # first: the parameters only (an import below would add a local)
    given = {k: v for k, v in locals().items() if k not in ("quiet", "json_", "progress")}
    from synthbrain import api

    report = _reporter(quiet, json_, progress)
    summary = api.train(
        precision=precision,
        threads=threads,
        max_time=max_time,
        engine=engine,
        data=data,
        out=out,
        config_file=config,
        steps=steps,
        batch_size=batch_size,
        resume=resume,
        device=device,
        seed=seed,
        reporter=report,
    )
    from synthbrain.train import is_main_process

    if not is_main_process():  # under torchrun every rank returns; rank 0 alone reports
        return
    if summary.get("stopped"):
        summary["resume_command"] = _resume_command(given)
        typer.echo(f"stopped at step {summary.get('step')}/{summary.get('steps')} of stage "
                    f"{summary.get('stage')} ({summary['stopped']}): checkpoint and weights "
                    f"written; resume with: {summary['resume_command']}", err=True)  # fmt: skip
    report.summary(summary)


def _resume_command(given: dict[str, Any]) -> str:
    """The train command line of these options with --resume (what continues a stopped run)."""
    import shlex

    args = ["synthbrain", "train"]
    for name, value in given.items():
        if value is None or name == "resume" or (name == "device" and value == "auto"):
            continue
        if name == "seed" and value == 0:
            continue
        args += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join([*args, "--resume"])


def _call(ctx: typer.Context, command: str, values: dict[str, Any]) -> None:
    """Run api.<command> with a command's parameters and print its summary.

    Unset options (None) are not passed, so each engine keeps its own default.
    """
    from synthbrain import api
    from synthbrain.engines.options import engine_specific

    # Options only some engines read go on only when given on the command line, so that the
    # engine's option model can refuse them for an engine that does not read them.
    specific = engine_specific()
    values = {k: v for k, v in values.items() if k != "ctx"}
    report = _reporter(values.pop("quiet"), values.pop("json_"), values.pop("progress"))
    if "image" in values:
        values["images"] = _images(values.pop("image"))
    # By name: Typer ships its own copy of click, so its enum is not click.core's.
    defaulted = {k for k in values if getattr(ctx.get_parameter_source(k), "name", "") == "DEFAULT"}
    kwargs = {
        k: v for k, v in values.items()
        if v is not None and not (k in specific and k in defaulted)
    }  # fmt: skip
    report.summary(getattr(api, command)(**kwargs, reporter=report))


@app.command()
def generate(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Output folder.")],
    n: Annotated[int, typer.Option("--n", help="Number of triplets.")] = 10,
    lesion: Annotated[str, typer.Option(help="Lesion type, e.g. stroke, wmh, tumor.")] = "stroke",
    engine: Engine = None,
    weights: Weights = None,
    batch_size: Annotated[int, typer.Option(help="Samples drawn together.")] = 1,
    steps: Steps = None,
    sampler: Sampler = "ddim",
    eta: Eta = None,
    severity: Annotated[
        float, typer.Option(help="Deviation scale in [0, 2] (deviation engine).")
    ] = 1.0,
    variants: Annotated[
        int,
        typer.Option(
            help="Lesions per anatomy and mask (deviation engine): K samples in a row share "
            "one pair, each with its own seed."
        ),
    ] = 1,
    anatomy: Annotated[
        Path | None, typer.Option(help="Folder of healthy scans (deviation engine).")
    ] = None,
    masks: Annotated[
        Path | None,
        typer.Option(
            help="Folder of lesion masks (MNI152 space for paired), or 'phantom': lesion shapes "
            "drawn by the phantom corpus (paired: conditional generation, task b)."
        ),
    ] = None,
    lesion_volume: Annotated[
        str | None,
        typer.Option(
            metavar="MIN:MAX",
            help="Keep only lesions of MIN to MAX ml, e.g. 5:50 or 20:. Paired joint "
            "samples out of range are redrawn from the next derived seed (12 attempts, seeds in "
            "the manifest); phantom masks (both engines) are drawn in range.",
        ),
    ] = None,
    layout: Layout = "flat",
    preview: Annotated[bool, typer.Option(help="Write a tri-planar PNG per sample.")] = False,
    shard: Shard = None,
    seed: Seed = 0,
    device: Device = "auto",
    overwrite: Overwrite = False,
    resume: Resume = False,
    quiet: Quiet = False,
    json_: Json = False,
    progress: Progress = None,
) -> None:
    """Generate triplets: pathological image, lesion mask, healthy substrate, plus a manifest.

    Example: synthbrain generate --n 500 --lesion stroke --out synth/
    """
    _call(ctx, "generate", locals())


@app.command()
def heal(
    ctx: typer.Context,
    scan: Annotated[Path, typer.Argument(help="The scan to heal (NIfTI).")],
    out: Annotated[Path | None, typer.Option(help="Output file (default: <scan>_healed).")] = None,
    mask: MaskOpt = None,
    engine: Engine = None,
    weights: Weights = None,
    lesion: EditLesion = None,
    alpha0: Annotated[float, typer.Option(help="ACG strength α0.")] = 20.0,
    k: Annotated[float, typer.Option("--k", help="ACG decay k.")] = 0.5,
    t_start: Annotated[int | None, typer.Option(help="Edit start step (default 300).")] = None,
    steps: Steps = None,
    sampler: Sampler = "ddim",
    in_template_space: InTemplateSpace = False,
    resample_mask: ResampleMask = False,
    label: LabelOpt = False,
    image: Images = None,
    contrast: Contrast = "t1",
    resample: Resample = False,
    seed: Seed = 0,
    device: Device = "auto",
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json_: Json = False,
    progress: Progress = None,
) -> None:
    """Write the healthy counterpart of a scan, on the scan's own grid.

    Example: synthbrain heal sub-01_T1w.nii.gz --out sub-01_healed.nii.gz
    """
    _call(ctx, "heal", locals())


@app.command()
def implant(
    ctx: typer.Context,
    scan: Annotated[Path, typer.Argument(help="The healthy scan (NIfTI).")],
    mask: Annotated[Path, typer.Option(help="Lesion mask to implant (NIfTI).")],
    out: Annotated[Path | None, typer.Option(help="Output file (default: <scan>_implant).")] = None,
    engine: Engine = None,
    weights: Weights = None,
    lesion: EditLesion = None,
    variants: Annotated[int, typer.Option(help="Different lesions for the same mask.")] = 1,
    severity: Severity = 1.0,
    steps: Steps = None,
    sampler: Sampler = "ddim",
    eta: Eta = None,
    in_template_space: InTemplateSpace = False,
    resample_mask: ResampleMask = False,
    label: LabelOpt = False,
    image: Images = None,
    contrast: Contrast = "t1",
    resample: Resample = False,
    seed: Seed = 0,
    device: Device = "auto",
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json_: Json = False,
    progress: Progress = None,
) -> None:
    """Implant a lesion into a healthy scan: the same anatomy with that lesion.

    Example: synthbrain implant healthy.nii.gz --mask lesion.nii.gz --out with_lesion.nii.gz
    """
    _call(ctx, "implant", locals())


T1_HELP = (
    "Native (pre-contrast) T1 (NIfTI). A T1 that is already contrast-enhanced cannot be detected "
    "reliably and is not refused: check it is the native one."
)


@app.command()
def enhance(
    subject: Annotated[
        Path | None, typer.Argument(help="A BraTS-layout subject folder (instead of --t1 …).")
    ] = None,
    t1: Annotated[Path | None, typer.Option(help=T1_HELP)] = None,
    t2: Annotated[Path | None, typer.Option(help="T2 (NIfTI).")] = None,
    flair: Annotated[Path | None, typer.Option(help="FLAIR (NIfTI).")] = None,
    out: Annotated[Path | None, typer.Option(help="Synthetic T1Gd to write.")] = None,
    mask_out: Annotated[Path | None, typer.Option(help="Enhancing-tumour mask to write.")] = None,
    register: Annotated[bool, typer.Option(help="Rigidly register T2 and FLAIR onto T1.")] = False,
    weights: Weights = None,
    steps: Steps = None,
    sampler: Sampler = "ddim",
    seed: Seed = 0,
    device: Device = "auto",
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json_: Json = False,
    progress: Progress = None,
) -> None:
    """Synthesise a contrast-enhanced T1 and its enhancing-tumour mask from T1, T2 and FLAIR.

    T2 and FLAIR whose edges do not line up with T1's are refused (another subject, unaligned).

    A T1 that is already contrast-enhanced cannot be detected: give the native one.

    Example: synthbrain enhance --t1 t1.nii.gz --t2 t2.nii.gz --flair flair.nii.gz --out t1gd.nii.gz
    """
    from synthbrain import api

    report = _reporter(quiet, json_, progress)
    summary = api.enhance(
        subject=subject, t1=t1, t2=t2, flair=flair, out=out, mask_out=mask_out,
        register=register, weights=weights, steps=steps, sampler=sampler, seed=seed, device=device,
        overwrite=overwrite, reporter=report,
    )  # fmt: skip
    report.summary(summary)
