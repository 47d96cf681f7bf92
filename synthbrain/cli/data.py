"""The data commands: phantom, preprocess, weights list/verify/path, manifest validate/merge."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from synthbrain.cli.options import (
    Json,
    Layout,
    Overwrite,
    Progress,
    Quiet,
    Resume,
    Seed,
    Shard,
    _csv,
    _floats,
    _ints,
    _reporter,
    app,
    manifest_app,
    weights_app,
)


@app.command()
def phantom(
    out: Annotated[Path | None, typer.Option(help="Output folder (volumes + manifest).")] = None,
    n: Annotated[int, typer.Option("--n", help="Number of subjects.")] = 10,
    lesion: Annotated[str, typer.Option(help="stroke | wmh | tumor | none.")] = "stroke",
    contrasts: Annotated[str, typer.Option(help="Comma-separated: t1,t2,flair,t1gd.")] = "t1",
    spacing: Annotated[float, typer.Option(help="Voxel size in mm: 1 or 2.")] = 2.0,
    hdf5: Annotated[
        Path | None,
        typer.Option(help="Also (or only) write a training set in preprocess's format."),
    ] = None,
    layout: Layout = "flat",
    mass_effect: Annotated[bool, typer.Option(help="Tumours displace nearby tissue.")] = False,
    preview: Annotated[bool, typer.Option(help="Write a tri-planar PNG per subject.")] = False,
    split: Annotated[
        str, typer.Option(help="train,val,test fractions for --hdf5.")
    ] = "0.8,0.1,0.1",
    slices: Annotated[
        bool, typer.Option(help="Index axial slices in --hdf5 (2-D engines).")
    ] = False,
    workers: Annotated[int, typer.Option(help="Subjects made in parallel processes.")] = 1,
    shard: Shard = None,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    resume: Resume = False,
    quiet: Quiet = False,
    json_: Json = False,
    progress: Progress = None,
) -> None:
    """Make procedural subjects from MNI152: lesioned image(s), labels, healthy substrate.

    Example: synthbrain phantom --n 20 --lesion tumor --contrasts t1,t2,flair,t1gd --out ph/
    """
    from synthbrain import api

    if out is None and hdf5 is None:
        raise typer.BadParameter("give --out, --hdf5 or both", param_hint="--out")
    report = _reporter(quiet, json_, progress)
    summary = api.phantom(
        out=out,
        hdf5=hdf5,
        n=n,
        lesion=lesion,
        contrasts=_csv(contrasts),
        spacing=spacing,
        layout=layout,
        mass_effect=mass_effect,
        preview=preview,
        split=_floats(split, "--split"),
        slices=slices,
        shard=shard,
        seed=seed,
        overwrite=overwrite,
        resume=resume,
        workers=workers,
        reporter=report,
    )
    report.summary(summary)


@app.command()
def preprocess(
    inputs: Annotated[
        list[Path], typer.Argument(help="Cohort folder(s) (BraTS, ATLAS/BIDS, healthy) or a CSV.")
    ],
    out: Annotated[Path, typer.Option(help="The HDF5 training set to write.")],
    layout: Annotated[str, typer.Option(help="auto | brats | atlas | healthy | csv.")] = "auto",
    spacing: Annotated[float, typer.Option(help="Target voxel size in mm.")] = 1.0,
    grid: Annotated[
        str | None, typer.Option(help="Target grid, e.g. 160,192,160 (default: fits the brain).")
    ] = None,
    space: Annotated[
        str | None,
        typer.Option(
            help="native (default): each brain centred on its grid. template: registered to "
            "MNI152 onto the paired engine's template grid (needed to train paired)."
        ),
    ] = None,
    n4: Annotated[bool, typer.Option(help="N4 bias-field correction (SimpleITK).")] = False,
    contrasts: Annotated[str | None, typer.Option(help="Keep only these contrasts.")] = None,
    split: Annotated[str, typer.Option(help="train,val,test fractions.")] = "0.8,0.1,0.1",
    slices: Annotated[bool, typer.Option(help="Index axial slices for 2-D engines.")] = False,
    workers: Annotated[int, typer.Option(help="Subjects processed in parallel.")] = 1,
    strict: Annotated[bool, typer.Option(help="Stop at the first bad subject.")] = False,
    config: Annotated[Path | None, typer.Option(help="TOML/JSON config file.")] = None,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json_: Json = False,
    progress: Progress = None,
) -> None:
    """Turn NIfTI cohorts into one HDF5 training set with a subject-level train/val/test split.

    Example: synthbrain preprocess BraTS2023/ --out brats.h5 --spacing 2 --slices
    """
    from synthbrain import api

    report = _reporter(quiet, json_, progress)
    summary = api.preprocess(
        inputs,
        out,
        config_file=config,
        overrides={
            "layout": layout,
            "spacing": spacing,
            "grid": _ints(grid, "--grid"),
            "space": space,
            "n4": n4,
            "contrasts": _csv(contrasts),
            "split": _floats(split, "--split"),
            "slices": slices,
            "workers": workers,
            "strict": strict,
            "seed": seed,
        },
        overwrite=overwrite,
        reporter=report,
    )
    report.summary(summary)


@weights_app.command("list")
def weights_list(json_: Json = False) -> None:
    """List the registered weights (embedded and your own $SYNTHBRAIN_WEIGHTS file)."""
    from synthbrain import api

    rows = api.weights_table()
    if json_:
        _reporter(False, True, False).summary({"weights": rows})
        return
    if not rows:
        typer.echo("no weights registered yet (train some with `synthbrain train`)")
    for row in rows:
        typer.echo(f"{row['name']:28s} {row['engine']:12s} {row['lesion']:8s} {row['where']}")


@weights_app.command("verify")
def weights_verify(
    name: Annotated[str | None, typer.Argument(help="Name or path; default: all.")] = None,
) -> None:
    """Check the sha256 of one or all registered weights; exit 2 if any fails."""
    from synthbrain import api

    failures = 0
    for row in api.weights_verify(name):
        typer.echo(f"{'ok  ' if row['ok'] else 'FAIL'} {row['name']}: {row['message']}")
        failures += not row["ok"]
    if failures:
        raise typer.Exit(2)


@weights_app.command("path")
def weights_path(name: Annotated[str, typer.Argument(help="Weights name or path.")]) -> None:
    """Print the local file of a weights entry (downloading it if it has a URL)."""
    from synthbrain import weights

    typer.echo(str(weights.resolve(name)))


@manifest_app.command("validate")
def manifest_validate(
    folder: Annotated[Path, typer.Argument(help="A run's output folder.")], json_: Json = False
) -> None:
    """Check every manifest line against the files on disk (sha256); exit 2 on problems."""
    from synthbrain import api

    summary = api.manifest_validate(folder)
    _reporter(False, json_, False).summary(summary)
    if summary["problems"]:
        raise typer.Exit(2)


@manifest_app.command("merge")
def manifest_merge(
    sources: Annotated[list[Path], typer.Argument(help="Shard folders or manifest files.")],
    out: Annotated[Path, typer.Option(help="The merged manifest.jsonl to write.")],
) -> None:
    """Merge shard manifests into one (de-duplicated by sample id, sorted)."""
    from synthbrain.io.outputs import merge_manifests

    typer.echo(str(merge_manifests(sources, out)))
