"""The one generate loop: shard → todo (skipping finished samples on resume) → make → write.

An engine (or the phantom) describes its run as an `io.samples.GenerateJob`; everything about
folders, shards, resume, manifests and previews happens here. Sample k's content depends only
on (run seed, k), so shards, batch sizes and resumed runs write the same files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from synthbrain.io.samples import GenerateJob, Preview, Sample, sample_id
from synthbrain.progress import Reporter
from synthbrain.rng import parse_shard, shard_from_env, shard_indices


def resolve_shard(shard: str | Sequence[int] | None) -> tuple[int, int]:
    """(index, count) from `--shard i/N`, an (i, N) pair, or Slurm's array variables; (0, 1)
    when none is given. The one parser of --shard."""
    if shard is None:
        return tuple(shard_from_env(os.environ) or (0, 1))  # type: ignore[return-value]
    if isinstance(shard, str):
        return tuple(parse_shard(shard))  # type: ignore[return-value]
    return int(shard[0]), int(shard[1])


def todo_indices(
    n: int, shard: tuple[int, int], writer: Any, resume: bool, kind: str
) -> tuple[list[int], list[int], set[str]]:
    """(this shard's indices, those still to write, the finished ids the folder verifies): on
    resume finished samples are skipped."""
    indices = shard_indices(n, shard)
    done = writer.finished_ids() if (writer is not None and resume) else set()
    return indices, [k for k in indices if sample_id(kind, k) not in done], done


def write_preview(writer: Any, sid: str, preview: Preview) -> Path:
    """previews/<id>.png in the run folder: the image tri-planar, the mask overlaid."""
    from synthbrain.io.preview import save_preview

    folder = Path(writer.out_dir) / "previews"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sid}.png"
    save_preview(path, preview.image, preview.mask, affine=preview.affine, title=preview.title)
    return path


def write_samples(
    writer: Any,
    todo: list[int],
    make: Callable[[list[int]], Iterable[Sample]],
    *,
    task: str,
    reporter: Reporter,
    batch_size: int = 1,
    preview: bool = False,
) -> int:
    """Make the todo indices `batch_size` at a time and write each; returns samples written."""
    written, step = 0, max(1, int(batch_size))
    with reporter.task(task, total=len(todo)) as advance:
        for start in range(0, len(todo), step):
            ks = todo[start : start + step]
            for sample in make(ks):
                if writer is None or sample.volumes is None:
                    continue
                writer.write_sample(sample.id, sample.volumes, record=sample.record, index=sample.k)
                if preview and sample.preview is not None:
                    write_preview(writer, sample.id, sample.preview)
                written += 1
            advance(len(ks))
    return written


def run_job(job: GenerateJob, reporter: Reporter | None = None) -> dict[str, Any]:
    """Open the folder, write this shard's missing samples, close; the job's summary."""
    started = time.perf_counter()
    reporter = reporter or Reporter(quiet=True)
    writer = job.folder.open(job.shard)
    indices, todo, _ = todo_indices(job.n, job.shard, writer, job.folder.resume, job.kind)
    written = write_samples(
        writer, todo, job.make, task=job.task, reporter=reporter, batch_size=job.batch_size,
        preview=job.preview,
    )  # fmt: skip
    if job.after is not None:
        job.after(reporter)
    writer.close()
    return job.summary(written, len(indices) - len(todo), time.perf_counter() - started)
