"""The evaluate command: a report on a generated run against a reference (docs/evaluate.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from synthbrain.cli.options import Device, Json, Progress, Quiet, Seed, _reporter, app


def _table(report: Any, summary: dict) -> None:
    """The headline numbers as a rich table on stderr."""
    from rich.table import Table

    table = Table(title="synthbrain evaluate", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    v, loc, real = summary["volume"], summary["location"], summary["realism"]

    def fmt(x: Any) -> str:
        return "—" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)

    table.add_row("median lesion ml (synthetic / reference)",
                  f"{fmt(v['synthetic']['median'])} / {fmt(v['reference']['median'])}")  # fmt: skip
    table.add_row("lesion volume KS", fmt(v["ks_statistic"]))
    table.add_row("location map correlation", fmt(loc["correlation"]))
    for name, entry in real.items():
        ci = entry["ci"] or [None, None]
        table.add_row(f"realism AUC, {name.replace('_', ' ')}",
                      f"{fmt(entry['auc'])} [{fmt(ci[0])}, {fmt(ci[1])}]")  # fmt: skip
    c = summary["consistency"]
    table.add_row("triplets passing every check", f"{c.get('all_ok', 0)} / {c.get('n', 0)}")
    for name, e in (summary.get("downstream") or {}).get("results", {}).items():
        table.add_row(
            f"Dice, trained on {name}",
            f"{e['dice_mean']:.3f} [{e['dice_ci'][0]:.3f}, {e['dice_ci'][1]:.3f}]",
        )
    report.console.print(table)


@app.command()
def evaluate(
    synth: Annotated[Path, typer.Argument(help="A generate run folder (read via its manifest).")],
    reference: Annotated[
        str,
        typer.Option(
            help="Real data: a folder of image/mask pairs (flat, BIDS, nnU-Net), a preprocess "
            ".h5 set, or phantom:N (N held-out phantoms of the run's lesion type)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Report folder: index.html, summary.json, PNGs.")],
    downstream: Annotated[
        bool, typer.Option(help="Also train a segmenter on reference / synthetic / both.")
    ] = False,
    quick: Annotated[bool, typer.Option(help="CPU-sized --downstream (600 updates).")] = False,
    segmenter: Annotated[
        str, typer.Option(help="unet (built in) | nnunet (writes nnU-Net v2 datasets).")
    ] = "unet",
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the CIs.")] = 1000,
    seed: Seed = 0,
    device: Device = "auto",
    quiet: Quiet = False,
    json_: Json = False,
    progress: Progress = None,
) -> None:
    """Report on a synthetic dataset against a reference, and whether it helps a segmenter.

    Example: synthbrain evaluate synth/ --reference phantom:100 --out report/
    """
    from synthbrain import api

    report = _reporter(quiet, json_, progress)
    summary = api.evaluate(synth=synth, reference=reference, out=out, downstream=downstream,
                           quick=quick, segmenter=segmenter, seed=seed, bootstrap=bootstrap,
                           device=device, reporter=report)  # fmt: skip
    if json_:
        report.summary(summary)
    elif not quiet:
        _table(report, summary)
        report.info(f"report: {Path(out) / 'index.html'}")
