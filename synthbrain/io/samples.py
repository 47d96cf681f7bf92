"""What a generate run writes, described as data: samples, previews, the folder, the job.

An engine describes its run as a `GenerateJob` (how to open the folder, how to make samples
k…); the run layer (`synthbrain.runs.generate`) owns the loop that shards, resumes and writes.
These types live in io because they describe outputs, so engines can build them without
importing the run layer above them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Per command: the id of sample k (also its file stem in the flat layout). Kept as each command
# has always written them, so `--resume` of an older run folder finds its finished samples.
SAMPLE_IDS: dict[str, str] = {
    "paired": "synth{k:05d}",
    "deviation": "synth_{k:05d}",
    "phantom": "phantom{k:05d}",
}


def sample_id(kind: str, k: int) -> str:
    """The id of sample k of a `kind` run (paired, deviation, phantom)."""
    return SAMPLE_IDS[kind].format(k=int(k))


@dataclass
class Preview:
    """What a sample's tri-planar PNG shows: an image with a mask overlaid."""

    image: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    title: str


@dataclass
class Sample:
    """One made sample: its volumes (RunWriter keys) and manifest fields; `volumes` None means
    made but not written to the folder (a finished sample made again for a training set)."""

    k: int
    id: str
    volumes: dict[str, Any] | None
    record: dict[str, Any] = field(default_factory=dict)
    preview: Preview | None = None


@dataclass
class RunFolder:
    """How to open a run folder (see io.runwriter.RunWriter for each field)."""

    out: Path
    layout: str
    config: dict[str, Any]
    dataset_name: str
    channel_names: tuple[str, ...]
    labels: dict[str, int]
    overwrite: bool = False
    resume: bool = False
    identity_keys: tuple[str, ...] | None = None

    def open(self, shard: tuple[int, int]) -> Any:
        """The RunWriter of this shard (refuses a folder holding another run)."""
        from synthbrain.io.runwriter import RunWriter

        extra = {} if self.identity_keys is None else {"identity_keys": self.identity_keys}
        return RunWriter(
            self.out, layout=self.layout, config=self.config, overwrite=self.overwrite,
            resume=self.resume, dataset_name=self.dataset_name,
            channel_names=tuple(self.channel_names), labels=self.labels, shard=shard, **extra,
        )  # fmt: skip


@dataclass
class GenerateJob:
    """A generate run as an engine describes it; `synthbrain.runs.generate.run_job` runs it.

    Attributes:
        folder: the run folder to open.
        kind: the sample-id scheme (`SAMPLE_IDS`).
        n, shard: samples 0..n-1, of which this shard writes k % count == index.
        make: batch of indices -> their Samples, in order (sample k from (run seed, k) alone).
        task: the progress bar's label.
        summary: (written, skipped as finished, seconds) -> the command's JSON summary.
        batch_size, preview: samples made together; write previews/<id>.png.
        after: called with the reporter once every sample is written (e.g. warnings).
    """

    folder: RunFolder
    kind: str
    n: int
    shard: tuple[int, int]
    make: Callable[[list[int]], Iterable[Sample]]
    task: str
    summary: Callable[[int, int, float], dict[str, Any]]
    batch_size: int = 1
    preview: bool = False
    after: Callable[[Any], None] | None = None


@dataclass
class EditJob:
    """A heal / implant / enhance result as an engine describes it;
    `synthbrain.runs.edit.write_edit` writes it (each file atomically; the edit mask, then the
    sidecar JSON last) and returns `summary(written paths)`.

    Attributes:
        outputs: (volume on the scan's grid, path, dtype or None for the volume's own) per file.
        editmask: the voxels the edit may have changed, and its path (None: enhance, which
            writes a new contrast rather than editing the scan).
        summary: the written paths (outputs, then edit mask) -> the command's JSON summary.
        sidecar: a JSON file written after every volume, and its content (None: none).
    """

    outputs: list[tuple[Any, Path, Any]]
    editmask: tuple[Any, Path] | None
    summary: Callable[[list[str]], dict[str, Any]]
    sidecar: tuple[Path, dict[str, Any]] | None = None
