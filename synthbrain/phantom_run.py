"""`synthbrain phantom`: draw subjects, write them as a run folder and/or an HDF5 training set."""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from synthbrain.config import PhantomConfig, to_json_dict
from synthbrain.phantom.lesions import label_names
from synthbrain.progress import Reporter


def sample_name(k: int) -> str:
    """The id of phantom subject k."""
    return f"phantom{k:05d}"


def subject_volumes(subject: Any, contrasts: tuple[str, ...]) -> dict[str, Any]:
    """The volumes of one phantom subject under RunWriter's keys."""
    from synthbrain.io.nifti import Volume

    volumes: dict[str, Any] = {}
    several = len(contrasts) > 1
    for contrast in contrasts:
        key = f"_{contrast}" if several else ""
        volumes[f"image{key}"] = Volume(subject.images[contrast], subject.affine)
        volumes[f"healthy{key}"] = Volume(subject.healthy[contrast], subject.affine)
    volumes["mask"] = Volume(subject.labels.astype(np.uint8), subject.affine)
    return volumes


def _record(config: PhantomConfig, k: int, seed: int, subject: Any, seconds: float) -> dict:
    """The manifest fields of one phantom subject (its parameters make it replayable)."""
    from synthbrain.io.outputs import lesion_volume_ml

    return {
        "index": k,
        "seed": seed,
        "engine": "phantom",
        "weights": None,
        "weights_sha256": None,
        "lesion": config.lesion,
        "lesion_volume_ml": round(lesion_volume_ml(subject.labels > 0, subject.affine), 3),
        "contrasts": list(config.contrasts),
        "params": subject.params.to_json(),
        "seconds": round(seconds, 3),
    }


def run_phantom(
    config: PhantomConfig,
    *,
    out: Path | None,
    hdf5: Path | None,
    split: tuple[float, ...],
    slices: bool,
    shard: tuple[int, int],
    overwrite: bool,
    resume: bool,
    reporter: Reporter,
    workers: int = 1,
) -> dict[str, Any]:
    """Draw and write this shard's subjects; returns a JSON-ready summary.

    With workers > 1 subjects are made in a process pool, in order, while this process writes.
    """
    from synthbrain.io.dataset import H5Writer
    from synthbrain.io.runwriter import RunWriter
    from synthbrain.phantom import grid_shape
    from synthbrain.rng import shard_indices

    started = time.perf_counter()
    writer = None
    if out is not None:
        writer = RunWriter(
            out,
            layout=config.layout,
            config=to_json_dict(config),
            overwrite=overwrite,
            resume=resume,
            dataset_name="synthbrain-phantom",
            channel_names=config.contrasts,
            labels=label_names(config.lesion),
            shard=shard if shard[1] > 1 else None,
        )
    h5 = None
    if hdf5 is not None:
        h5 = H5Writer(
            hdf5,
            contrasts=list(config.contrasts),
            spacing=[config.spacing] * 3,
            grid=list(grid_shape(config.spacing)),
            label_names=label_names(config.lesion),
            label_convention="brats2023" if config.lesion == "tumor" else "binary",
            overwrite=overwrite,
        )
    indices = shard_indices(config.n, shard)
    done = writer.finished_ids() if (writer is not None and resume) else set()
    if h5 is None:  # a training set needs every subject; a folder only the missing ones
        indices = [k for k in indices if sample_name(k) not in done]
    subjects = _subjects(config, indices, workers)
    try:
        written = _write_subjects(config, subjects, len(indices), writer, h5, done, reporter)
    except BaseException:
        if h5 is not None:  # no half-written training set under the final name
            h5.abort()
        raise
    if h5 is not None:
        h5.finish(split_fractions=split, seed=config.seed, slices=slices)
    return {
        "out": str(out) if out else None,
        "hdf5": str(hdf5) if hdf5 else None,
        "written": written,
        "skipped_finished": len(done),
        "shard": f"{shard[0]}/{shard[1]}",
        "seconds": round(time.perf_counter() - started, 2),
    }


def _write_subjects(
    config: PhantomConfig,
    subjects: Iterator[tuple],
    total: int,
    writer: Any,
    h5: Any,
    done: set[str],
    reporter: Reporter,
) -> int:
    """Write each subject to the run folder and/or the training set; returns folder samples."""
    from synthbrain.rng import derive_seed

    written = 0
    with reporter.task(f"phantom {config.lesion}", total=total) as advance:
        t0 = time.perf_counter()
        for k, _, subject in subjects:
            sample_id = sample_name(k)
            if writer is not None and sample_id not in done:
                record = _record(
                    config, k, derive_seed(config.seed, k), subject, time.perf_counter() - t0
                )
                volumes = subject_volumes(subject, config.contrasts)
                writer.write_sample(sample_id, volumes, record=record, index=k)
                if config.preview:
                    _preview(writer, sample_id, subject, config.contrasts[0])
                written += 1
            if h5 is not None:
                _add_to_h5(h5, sample_id, subject, config)
            advance(1)
            t0 = time.perf_counter()
    if writer is not None:
        writer.close()
    return written


def _one_subject(config: PhantomConfig, k: int) -> tuple[int, Any, Any]:
    """Subject k of the run (picklable, for the process pool)."""
    from synthbrain.phantom import iter_subjects

    return next(
        iter_subjects(
            config.n,
            seed=config.seed,
            lesion=config.lesion,
            contrasts=config.contrasts,
            spacing=config.spacing,
            mass_effect=config.mass_effect,
            indices=[k],
        )
    )


def _subjects(config: PhantomConfig, indices: list[int], workers: int) -> Iterator[tuple]:
    """(k, params, subject) for each index, in order; made `workers` at a time."""
    if workers <= 1 or len(indices) <= 1:
        for k in indices:
            yield _one_subject(config, k)
        return
    from concurrent.futures import ProcessPoolExecutor

    make = functools.partial(_one_subject, config)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for k in indices:
            pending.append(pool.submit(make, k))
            if len(pending) >= 2 * workers:  # bounded look-ahead keeps memory flat
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _add_to_h5(h5: Any, sample_id: str, subject: Any, config: PhantomConfig) -> None:
    """Store one subject in the training set, contrasts as channels."""
    images = np.stack([subject.images[c] for c in config.contrasts]).astype(np.float32)
    healthy = np.stack([subject.healthy[c] for c in config.contrasts]).astype(np.float32)
    h5.add_subject(
        sample_id,
        images=images,
        brain_mask=subject.brain_mask.astype(np.uint8),
        labels=subject.labels.astype(np.uint8) if config.lesion != "none" else None,
        healthy=healthy,
        attrs={
            "spacing": [config.spacing] * 3,
            "affine": subject.affine.tolist(),
            "healthy": config.lesion == "none",
            "lesion_type": config.lesion,
            "params": subject.params.to_json(),
            "intensity": {c: subject.intensity[c] for c in config.contrasts},
        },
    )


def _preview(writer: Any, sample_id: str, subject: Any, contrast: str) -> None:
    """A tri-planar PNG of the first contrast with the lesion overlaid, beside the volumes."""
    from synthbrain.io.preview import save_preview

    folder = Path(writer.out_dir) / "previews"
    folder.mkdir(parents=True, exist_ok=True)
    save_preview(
        folder / f"{sample_id}.png",
        subject.images[contrast],
        subject.labels,
        affine=subject.affine,
        title=f"{sample_id} {contrast}",
    )
