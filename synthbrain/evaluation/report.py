"""`evaluate`: read both sets, compute every section, then write the report folder.

Nothing is written until every number is computed, so a bad input (caught while opening or
while reading a case) leaves `--out` untouched.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from synthbrain.errors import InputError
from synthbrain.evaluation import figures, sections
from synthbrain.evaluation.cases import CaseSet
from synthbrain.evaluation.features import measure
from synthbrain.evaluation.grid import align, grid_of
from synthbrain.evaluation.html import render
from synthbrain.evaluation.sources import open_reference, open_run

MIN_DOWNSTREAM_REFERENCE = 10


def contrast_pairs(synth: CaseSet, ref: CaseSet) -> list[tuple[str, str]]:
    """(synthetic, reference) contrast names compared: the shared ones, or the only ones."""
    shared = [(c, c) for c in synth.contrasts if c in ref.contrasts]
    if shared:
        return shared
    if len(synth.contrasts) == 1 and len(ref.contrasts) == 1:
        return [(synth.contrasts[0], ref.contrasts[0])]
    raise InputError(f"no contrast in common: synthetic {list(synth.contrasts)}, reference "
                     f"{list(ref.contrasts)}", ref.source or ref.name)  # fmt: skip


def check_inputs(synth_dir: Path, reference: str, out: Path, *, downstream: bool,
                 segmenter: str) -> tuple[CaseSet, CaseSet, list[tuple[str, str]]]:  # fmt: skip
    """Open and check everything a report needs before any work; InputError otherwise."""
    from synthbrain.io.atomic import check_writable

    check_writable(out, folder=True, what="the report")
    synth = open_run(Path(synth_dir))
    ref = open_reference(reference, synth)
    if len(synth) < 2 or len(ref) < 2:
        raise InputError(
            f"need at least 2 cases on each side ({len(synth)} synthetic, {len(ref)} reference)",
            synth_dir if len(synth) < 2 else reference,
        )
    if downstream and len(ref) < MIN_DOWNSTREAM_REFERENCE:
        raise InputError(f"--downstream needs at least {MIN_DOWNSTREAM_REFERENCE} reference "
                         f"cases, got {len(ref)}", ref.source or reference)  # fmt: skip
    if segmenter not in ("unet", "nnunet"):
        raise InputError(f"--segmenter {segmenter!r}: choose unet or nnunet")
    if downstream and segmenter == "nnunet":
        from synthbrain.evaluation.nnunet import require_nnunet

        require_nnunet()
    return synth, ref, contrast_pairs(synth, ref)


def _figures(summary: dict, fs, fr, scores: dict, gallery_cases: dict) -> dict[str, bytes]:  # noqa: ANN001
    """Every PNG of the report."""
    maps = sections.frequency_maps(fs, fr)
    background = fs.background / max(1, len(fs.ids))
    return {
        "volume.png": figures.volume_histogram(fs.ml, fr.ml, summary["volume"]["ks_statistic"]),
        "location.png": figures.location_montage(
            background, list(maps), ["synthetic", "reference"], summary["location"]["correlation"]
        ),
        "intensity.png": figures.intensity_bars(summary["intensity"]),
        "realism.png": figures.realism_bars(summary["realism"]),
        "gallery.png": figures.gallery(gallery_cases, scores),
    }


def _write(out: Path, summary: dict, pngs: dict[str, bytes]) -> None:
    """summary.json, the PNGs and index.html, each written atomically."""
    from synthbrain.io.outputs import atomic_write_bytes, atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    for name, data in pngs.items():
        atomic_write_bytes(out / name, data)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_bytes(out / "index.html", render(summary, pngs).encode("utf-8"))


def evaluate(synth_dir: Path, reference: str, out: Path, *, downstream: bool = False,
             quick: bool = False, segmenter: str = "unet", seed: int = 0, bootstrap: int = 1000,
             device: str = "cpu", reporter: Any = None) -> dict[str, Any]:  # fmt: skip
    """Write `out`/index.html, summary.json and the PNGs; return the summary."""
    from synthbrain.progress import Reporter

    reporter = reporter or Reporter(quiet=True)
    start = time.perf_counter()
    synth, ref, pairs = check_inputs(synth_dir, reference, Path(out), downstream=downstream,
                                     segmenter=segmenter)  # fmt: skip
    grid = grid_of(synth.load(synth.ids[0]))
    with reporter.task("synthetic cases", len(synth)) as advance:
        fs = measure(synth, grid, [s for s, _ in pairs], triplets=True, advance=advance)
    with reporter.task("reference cases", len(ref)) as advance:
        fr = measure(ref, grid, [r for _, r in pairs], triplets=False, advance=advance)
    summary: dict[str, Any] = {
        "inputs": {
            "synthetic": str(synth_dir),
            "reference": reference,
            "n_synthetic": len(synth),
            "n_reference": len(ref),
            "contrasts": pairs,
            "grid_shape": list(grid.shape),
            "engine": synth.info.get("engine"),
            "weights": synth.info.get("weights"),
            "lesion": synth.lesion,
        },  # fmt: skip
        "volume": sections.volume_section(fs, fr),
        "location": sections.location_section(fs, fr),
        "intensity": sections.intensity_section(fs, fr, pairs),
    }
    reporter.info("realism classifiers")
    summary["realism"], scores = sections.realism_section(fs, fr, bootstrap=bootstrap, seed=seed)
    summary["consistency"] = sections.consistency_section(fs.checks)
    picks = sections.gallery_ids(scores, fs.ids)
    summary["gallery"] = {k: {"id": v, "score": scores.get(v)} for k, v in picks.items()}
    shown = {k: align(synth.load(v), grid, str(synth_dir)) for k, v in picks.items()}
    pngs = _figures(summary, fs, fr, scores, shown)
    if downstream:
        summary["downstream"] = _downstream(synth, ref, pairs, grid, out=Path(out), quick=quick,
                                            segmenter=segmenter, seed=seed, device=device,
                                            reporter=reporter)  # fmt: skip
    summary["seconds"] = round(time.perf_counter() - start, 1)
    _write(Path(out), summary, pngs)
    return summary


def _downstream(synth, ref, pairs, grid, *, out, quick, segmenter, seed, device, reporter):  # noqa: ANN001, ANN202
    """The --downstream part: nnU-Net datasets + commands, or our own three trainings."""
    if segmenter == "nnunet":
        from synthbrain.evaluation.nnunet import write_datasets

        return {"nnunet": write_datasets(synth, ref, pairs, grid, out / "nnunet", seed=seed)}
    from synthbrain.evaluation.downstream import run_downstream

    return run_downstream(synth, ref, pairs, grid, quick=quick, seed=seed, device=device,
                          reporter=reporter)  # fmt: skip
