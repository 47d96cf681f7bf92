"""`synthbrain phantom`: draw subjects, write them as a run folder and/or an HDF5 training set.

The folder goes through the run layer's one loop (`runs.generate.write_samples`: shards, resume,
manifest, previews); a training set needs every subject of the shard, so with --hdf5 finished
samples are made again for it but not rewritten in the folder.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from synthbrain.config import PhantomConfig, to_json_dict
from synthbrain.io.samples import Preview, Sample, sample_id
from synthbrain.phantom.lesions import label_names
from synthbrain.progress import Reporter
from synthbrain.runs.generate import todo_indices, write_samples


def sample_name(k: int) -> str:
    """The id of phantom subject k."""
    return sample_id("phantom", k)


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
    indices, todo, done = todo_indices(config.n, shard, writer, resume, "phantom")
    if h5 is not None:  # a training set needs every subject; a folder only the missing ones
        todo = indices
    make = _Maker(config, _subjects(config, todo, workers), writer is not None, h5, done)
    try:
        written = write_samples(writer, todo, make, task=f"phantom {config.lesion}",
                                reporter=reporter, preview=config.preview)  # fmt: skip
        if writer is not None:
            writer.close()
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


class _Maker:
    """Samples from the subject stream, in order; each also goes to the training set."""

    def __init__(self, config: PhantomConfig, subjects: Iterator[tuple], to_folder: bool,
                 h5: Any, done: set[str]) -> None:  # fmt: skip
        self.config, self.subjects, self.to_folder = config, subjects, to_folder
        self.h5, self.done = h5, done
        self.t0 = time.perf_counter()

    def __call__(self, ks: list[int]) -> Iterator[Sample]:
        from synthbrain.rng import derive_seed

        config = self.config
        for k in ks:
            got, _, subject = next(self.subjects)
            assert got == k, (got, k)  # the stream follows the todo order
            sid = sample_name(k)
            sample = Sample(k, sid, None)
            if self.to_folder and sid not in self.done:
                seconds = time.perf_counter() - self.t0
                sample.record = _record(config, k, derive_seed(config.seed, k), subject, seconds)
                sample.volumes = subject_volumes(subject, config.contrasts)
                sample.preview = _preview(sid, subject, config.contrasts[0])
            if self.h5 is not None:
                _add_to_h5(self.h5, sid, subject, config)
            yield sample
            self.t0 = time.perf_counter()


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


def _preview(sample_id: str, subject: Any, contrast: str) -> Preview:
    """A tri-planar PNG of the first contrast with the lesion overlaid, beside the volumes."""
    return Preview(
        subject.images[contrast], subject.labels, subject.affine, f"{sample_id} {contrast}"
    )
