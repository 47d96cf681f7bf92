"""The run layer's one generate loop: shards, resume, previews, sample ids (tiny fake samples)."""

from __future__ import annotations

import numpy as np
import pytest
from test_outputs import CONFIG, sample

from synthbrain.errors import InputError
from synthbrain.io.samples import GenerateJob, Preview, RunFolder, Sample, sample_id
from synthbrain.runs.generate import resolve_shard, run_job


def _job(out, made: list[int], *, n=5, shard=(0, 1), resume=False, preview=False) -> GenerateJob:
    """A job whose samples are test_outputs' tiny volumes; `made` records what was made."""

    def make(ks):
        for k in ks:
            made.append(k)
            vols = sample(k)
            look = Preview(vols["image"].data, vols["mask"].data, vols["image"].affine, str(k))
            yield Sample(k, sample_id("deviation", k), vols, {"seed": k}, look)

    folder = RunFolder(out, "flat", CONFIG, "test", ("t1",), {"background": 0, "lesion": 1},
                       resume=resume)  # fmt: skip
    return GenerateJob(folder, "deviation", n, shard, make, "test",
                       lambda w, s, t: {"written": w, "skipped": s}, batch_size=2,
                       preview=preview)  # fmt: skip


def test_shards_write_their_share_and_resume_makes_only_the_missing(tmp_path):
    made: list[int] = []
    assert run_job(_job(tmp_path / "a", made, shard=(1, 2))) == {"written": 2, "skipped": 0}
    assert made == [1, 3]
    (tmp_path / "b").mkdir()
    made.clear()
    run_job(_job(tmp_path / "b", made, n=3, preview=True))
    (tmp_path / "b" / "synth_00001_image.nii.gz").unlink()  # a broken sample is made again
    made.clear()
    assert run_job(_job(tmp_path / "b", made, n=4, resume=True)) == {"written": 2, "skipped": 2}
    assert made == [1, 3]
    assert sorted(p.name for p in (tmp_path / "b" / "previews").iterdir())[0] == "synth_00000.png"


def test_shard_from_text_pair_or_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    assert resolve_shard(None) == (0, 1) and resolve_shard("2/4") == (2, 4)
    assert resolve_shard((1, 3)) == (1, 3)
    slurm = {"ID": "5", "MIN": "4", "STEP": "1", "COUNT": "3"}
    for key, value in slurm.items():
        monkeypatch.setenv(f"SLURM_ARRAY_TASK_{key}", value)
    assert resolve_shard(None) == (1, 3)
    with pytest.raises(InputError):
        resolve_shard("3/3")


def test_sample_ids_keep_each_commands_old_scheme():
    assert [sample_id(kind, 7) for kind in ("paired", "deviation", "phantom")] == [
        "synth00007", "synth_00007", "phantom00007"]  # fmt: skip


def test_edit_writes_every_output_then_the_edit_mask(tmp_path):
    from synthbrain.io.samples import EditJob
    from synthbrain.runs.edit import write_edit

    vols = sample(0)
    outputs = [(vols["image"], tmp_path / "o.nii.gz", np.float32),
               (vols["healthy"], tmp_path / "o_flair.nii.gz", None)]  # fmt: skip
    job = EditJob(outputs, (vols["mask"], tmp_path / "o_editmask.nii.gz"), lambda w: {"w": w})
    written = write_edit(job)["w"]
    assert [p.rsplit("/", 1)[1] for p in written] == [
        "o.nii.gz", "o_flair.nii.gz", "o_editmask.nii.gz"]  # fmt: skip
    stamps = [(tmp_path / p.rsplit("/", 1)[1]).stat().st_mtime_ns for p in written]
    assert stamps == sorted(stamps)
