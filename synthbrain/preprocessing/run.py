"""`preprocess`: NIfTI cohorts into one HDF5 training set plus a dataset fingerprint.

Two passes over the subjects, both parallel when ``workers > 1``:

1. fingerprint: load and check every subject, record its facts (source shape and spacing, brain
   extent, label values, lesion volume, intensity percentiles). This validates every input before
   anything is written, fixes the label convention and the default grid, and is cached as
   ``<name>.fingerprint.json`` beside the HDF5 (reused while the input files and the options that
   shape it, layout and contrasts, are unchanged, unless ``overwrite``).
2. processing: each subject onto the model grid (`synthbrain.preprocessing.prepare`); the parent
   process alone writes the HDF5 (`H5Writer`: temporary name, renamed when complete). With
   ``space="template"`` each subject is first registered to MNI152 (as heal does) and lands on
   the paired engine's template grid; the HDF5's global attribute ``space`` says which ("native"
   or "template").

A bad subject (unreadable, truncated, NaN, grids that disagree, missing files, a failed
registration) is skipped and reported, or with ``strict`` stops the run with an InputError naming
its file, writing nothing.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthbrain.config import CONTRASTS
from synthbrain.errors import InputError
from synthbrain.io.dataset import H5Writer, read_info
from synthbrain.preprocessing import fingerprint, prepare
from synthbrain.preprocessing.cohorts import SubjectFiles, detect_label_convention, discover

log = logging.getLogger(__name__)
Job = tuple[Callable[..., Any], tuple, dict]


@dataclass
class PreprocessReport:
    """What `preprocess` wrote and skipped (JSON-able but for the two paths)."""

    out: Path
    fingerprint: Path
    n_subjects: int
    subjects: list[str]
    skipped: list[tuple[str, str]]
    contrasts: list[str]
    spacing: float
    grid: list[int]
    space: str
    label_convention: str
    label_names: dict[str, int]
    splits: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    fingerprint_reused: bool = False


def make_pool(workers: int) -> contextlib.AbstractContextManager[ProcessPoolExecutor | None]:
    """A process pool of `workers` (None for one worker), kept for both passes."""
    if workers <= 1:
        return contextlib.nullcontext(None)
    # spawn, not fork: the parent may hold threads (torch, ITK) that a fork would copy mid-state.
    # Workers import only synthbrain.preprocessing.prepare (no torch), so they start quickly.
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=prepare.init_worker)


def run_jobs(
    jobs: Sequence[Job], pool: ProcessPoolExecutor | None, workers: int = 1
) -> Iterator[tuple[int, str, Any]]:
    """Yield (job index, status, result) as jobs finish: in order here, or from `pool`.

    At most 2 x workers jobs are in flight, so finished subjects never pile up in memory.
    """
    if pool is None:
        for i, job in enumerate(jobs):
            yield (i, *prepare.run_job(job))
        return
    pending: dict[Future, int] = {}
    queue = iter(enumerate(jobs))
    try:
        for i, job in queue:
            pending[pool.submit(prepare.run_job, job)] = i
            if len(pending) >= 2 * max(workers, 1):
                break
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield (pending.pop(future), *future.result())
                nxt = next(queue, None)
                if nxt is not None:
                    pending[pool.submit(prepare.run_job, nxt[1])] = nxt[0]
    finally:
        for future in pending:
            future.cancel()


def _choose_contrasts(subjects: Sequence[SubjectFiles], contrasts: Sequence[str] | None) -> list:
    """The contrasts asked for, else every contrast any subject has (in canonical order)."""
    if contrasts:
        unknown = [c for c in contrasts if c not in CONTRASTS]
        if unknown or len(set(contrasts)) != len(contrasts):
            raise InputError(f"contrasts must be distinct names from {CONTRASTS}, got {contrasts}")
        return list(contrasts)
    present = {c for s in subjects for c in s.images}
    return [c for c in CONTRASTS if c in present]


def _reason(problem: str, path: str | None) -> str:
    """A skipped subject's reason, as the CLI prints errors."""
    return f"{path}: {problem}" if path else problem


@dataclass
class _Runner:
    """How the passes run: the pool (or none), strictness and the progress callback."""

    pool: ProcessPoolExecutor | None
    workers: int
    strict: bool
    tick: Callable[[int], None]

    def run(self, jobs: list[tuple[str, Job]], bad: dict[str, str]) -> Iterator[tuple[str, Any]]:
        """Yield (id, result) of the good jobs; record the bad ones in `bad` (strict: raise)."""
        for i, status, result in run_jobs([job for _, job in jobs], self.pool, self.workers):
            self.tick(1)
            sid = jobs[i][0]
            if status == "ok":
                yield sid, result
            elif self.strict:
                raise InputError(f"subject {sid}: {result[0]}", result[1])
            else:
                bad[sid] = _reason(*result)


def _no_progress(n: int = 1) -> None:
    """Progress callback that reports nothing."""


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse a folder, or an existing file without overwrite, before any work."""
    if out.is_dir():
        raise InputError("output is a folder; give the .h5 file to write", out)
    if out.exists() and not overwrite:
        raise InputError("output file exists (use --overwrite to replace it)", out)


def _require_some(good: Sequence | dict, bad: dict[str, str]) -> None:
    """InputError when no subject is usable, quoting the first problem."""
    if not good:
        first = bad[min(bad)] if bad else "no subjects"
        raise InputError(f"no usable subject; first problem: {first}")


def preprocess(
    inputs: Sequence[Path],
    out: Path,
    *,
    layout: str = "auto",
    spacing: float = 1.0,
    grid: Sequence[int] | None = None,
    space: str = "native",
    n4: bool = False,
    contrasts: Sequence[str] | None = None,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    slices: bool = False,
    workers: int = 1,
    strict: bool = False,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    n4_shrink: int = 4,
    n4_iterations: Sequence[int] = (50, 50, 30),
    grid_multiple: int = 16,
    compression: str = "lzf",
) -> PreprocessReport:
    """Turn NIfTI cohorts into one HDF5 training set (see `synthbrain.io.dataset`).

    Args:
        inputs: cohort folders (BraTS 2020/2023, ATLAS/BIDS, a folder of healthy scans) or CSVs.
        out: the .h5 file; ``<name>.fingerprint.json`` is written beside it.
        layout: "auto" (detected per input) or "brats", "atlas" ("bids"), "healthy", "csv".
        spacing: model grid spacing in mm.
        grid: model grid shape; default a grid covering every subject's brain at `spacing` (in
            template space the 2 mm template grid's field of view), each size rounded up to a
            multiple of `grid_multiple` (so U-Nets can halve it).
        space: "native" (each subject's grid centred on its brain; enough for the 2-D engines)
            or "template" (each subject affinely registered to MNI152 and put on the template
            grid the paired engine generates and edits on; subjects that fail are skipped).
        n4: N4 bias-field correction, fitted on an `n4_shrink`-times smaller copy with
            `n4_iterations` iterations per fitting level.
        contrasts: contrasts to keep, from t1, t2, flair, t1gd; default all that appear.
            Subjects lacking one are skipped.
        split: train / val / test fractions of the seeded subject-level split.
        seed: the split's seed.
        slices: also index the axial slices meeting the brain (for 2-D engines).
        workers: processes working on subjects in parallel (the HDF5 is written by this one).
        strict: stop at the first bad subject with its InputError, writing nothing.
        overwrite: replace an existing HDF5 and recompute the cached fingerprint.
        progress: called with 1 each time a subject finishes a pass (two passes).
        compression: "lzf" (fast) or "gzip".

    Returns:
        PreprocessReport: written subjects, skipped subjects with reasons, the grid, the label
        convention, split sizes and warnings.

    Raises:
        InputError: bad inputs or output; a bad subject when `strict`; no usable subject.
    """
    out = Path(out)
    if space not in prepare.SPACES:
        raise InputError(f"space must be one of {', '.join(prepare.SPACES)}, got {space!r}")
    _check_out(out, overwrite)
    subjects = discover([Path(p) for p in inputs], layout, contrasts)
    options = {
        "inputs": [str(p) for p in inputs],
        "layout": layout,
        "contrasts": _choose_contrasts(subjects, contrasts),
        "spacing": float(spacing),
        "grid": None if grid is None else [int(g) for g in grid],
        "grid_multiple": int(grid_multiple),
        "space": space,
        "n4": bool(n4),
        "n4_shrink": int(n4_shrink),
        "n4_iterations": [int(i) for i in n4_iterations],
        "split": [float(f) for f in split],
        "seed": int(seed),
        "slices": bool(slices),
        "compression": compression,
    }
    with make_pool(workers if len(subjects) > 1 else 1) as pool:
        runner = _Runner(pool, workers, strict, progress or _no_progress)
        return _preprocess(subjects, out, options, runner, overwrite)


def _preprocess(
    subjects: list[SubjectFiles],
    out: Path,
    options: dict[str, Any],
    runner: _Runner,
    overwrite: bool,
) -> PreprocessReport:
    """Both passes and the fingerprint; `preprocess` has validated the arguments."""
    fp_path = fingerprint.fingerprint_path(out)
    key = fingerprint.fingerprint_key(subjects, options["layout"], options["contrasts"])
    facts, bad, reused = _collect_facts(subjects, options, fp_path, key, runner, overwrite)
    convention, names, warnings = detect_label_convention([facts[k] for k in sorted(facts)])
    warnings += fingerprint.mask_warnings(facts)  # shown by the caller (api) from the report
    if options["grid"] is None and options["space"] == "template":
        options["grid"] = prepare.template_grid(options["spacing"], options["grid_multiple"])
    elif options["grid"] is None:
        options["grid"] = prepare.default_grid(
            list(facts.values()), options["spacing"], options["grid_multiple"]
        )
    record = fingerprint.make_record(key, options["inputs"], options, facts, bad, out.name)
    record.update(label_convention=convention, label_names=names, warnings=warnings)
    existed = fp_path.exists()
    fingerprint.write_json(fp_path, record)  # after pass 1, so a killed pass 2 restarts from here
    todo = [s for s in subjects if s.id in facts]
    try:
        written = _write_hdf5(out, todo, options, (names, convention), runner, overwrite, bad)
    except InputError:
        if not existed:
            fp_path.unlink(missing_ok=True)  # a rejected run leaves nothing behind
        raise
    splits = read_info(out)["split_sizes"]
    record.update(skipped=sorted(bad.items()), written=written, n_subjects=len(written))
    record["splits"] = splits
    fingerprint.write_json(fp_path, record)
    return PreprocessReport(
        out=out,
        fingerprint=fp_path,
        n_subjects=len(written),
        subjects=written,
        skipped=sorted(bad.items()),
        contrasts=options["contrasts"],
        spacing=options["spacing"],
        grid=options["grid"],
        space=options["space"],
        label_convention=convention,
        label_names=names,
        splits=splits,
        warnings=warnings,
        fingerprint_reused=reused,
    )


def _collect_facts(
    subjects: list[SubjectFiles],
    options: dict[str, Any],
    fp_path: Path,
    key: str,
    runner: _Runner,
    overwrite: bool,
) -> tuple[dict[str, dict], dict[str, str], bool]:
    """Pass 1, or its cached result: (facts by id, bad subjects' reasons, reused?)."""
    cached = None if overwrite else fingerprint.cached(fp_path, key)
    bad: dict[str, str] = {}
    if cached is not None:
        facts, bad = cached["subjects"], dict(cached["fingerprint_skipped"])
        if runner.strict and bad:
            raise InputError(f"subject {min(bad)}: {bad[min(bad)]}")
    else:
        jobs = [(s.id, (prepare.subject_facts, (s, options["contrasts"]), {})) for s in subjects]
        facts = dict(runner.run(jobs, bad))
    _require_some(facts, bad)
    return facts, bad, cached is not None


def _write_hdf5(
    out: Path,
    subjects: Sequence[SubjectFiles],
    options: dict[str, Any],
    labels: tuple[dict[str, int], str],
    runner: _Runner,
    overwrite: bool,
    bad: dict[str, str],
) -> list[str]:
    """Pass 2: every subject onto the model grid, added to the HDF5 by this process alone."""
    args = (options["contrasts"], options["spacing"], options["grid"])
    kwargs = {k: options[k] for k in ("space", "n4", "n4_shrink", "n4_iterations")}
    jobs = [(s.id, (prepare.process_subject, (s, *args), kwargs)) for s in subjects]
    written = []
    with H5Writer(
        out,
        contrasts=options["contrasts"],
        spacing=options["spacing"],
        grid=options["grid"],
        label_names=labels[0],
        label_convention=labels[1],
        compression=options["compression"],
        overwrite=overwrite,
        extra_attrs={"space": options["space"]},
    ) as writer:
        for sid, result in runner.run(jobs, bad):
            writer.add_subject(**result)
            written.append(sid)
        _require_some(written, bad)
        writer.finish(options["split"], seed=options["seed"], slices=options["slices"])
    return sorted(written)
