"""Outputs that cannot be written are refused up front (exit 2); resume removes stale temps."""

import os

import numpy as np
import pytest
from niftis import write_nifti
from test_outputs import CONFIG, sample, write_run

from synthbrain.cli import main
from synthbrain.errors import InputError
from synthbrain.io.atomic import STALE_TEMP_SECONDS, check_writable, temp_name
from synthbrain.io.runwriter import RunWriter


def run(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        main(args)
    return stop.value.code, capsys.readouterr().err


@pytest.fixture
def case(tmp_path):
    """A plain file where a folder is expected, and a tiny scan / mask / contrasts."""
    (tmp_path / "plainfile").write_text("not a folder")
    shape, affine = (8, 8, 8), np.diag([2.0, 2.0, 2.0, 1.0])
    scan = write_nifti(tmp_path / "scan.nii.gz", np.random.default_rng(0).random(shape), affine)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[3:5, 3:5, 3:5] = 1
    write_nifti(tmp_path / "mask.nii.gz", mask, affine)
    for name in ("t2", "flair"):
        write_nifti(tmp_path / f"{name}.nii.gz", np.ones(shape, dtype=np.float32), affine)
    (tmp_path / "data.h5").write_bytes(b"")
    return tmp_path, scan


COMMANDS = {
    "heal": ["heal", "{d}/scan.nii.gz", "--out", "{d}/plainfile/out.nii.gz"],
    "implant": ["implant", "{d}/scan.nii.gz", "--mask", "{d}/mask.nii.gz",
                "--out", "{d}/plainfile/out.nii.gz"],
    "enhance": ["enhance", "--t1", "{d}/scan.nii.gz", "--t2", "{d}/t2.nii.gz",
                "--flair", "{d}/flair.nii.gz", "--out", "{d}/plainfile/t1gd.nii.gz"],
    "generate": ["generate", "--out", "{d}/plainfile/run", "--n", "1"],
    "phantom": ["phantom", "--out", "{d}/plainfile/run", "--n", "1"],
    "phantom-hdf5": ["phantom", "--hdf5", "{d}/plainfile/set.h5", "--n", "1"],
    "preprocess": ["preprocess", "{d}", "--out", "{d}/plainfile/set.h5"],
    "train": ["train", "--engine", "paired", "--data", "{d}/data.h5", "--out", "{d}/plainfile/r"],
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_output_under_a_plain_file_is_an_input_error(case, command, capsys):
    folder, _ = case
    args = [a.format(d=folder) for a in COMMANDS[command]]
    code, err = run(args, capsys)
    assert code == 2, err
    assert err.startswith(f"error: {folder / 'plainfile'}: is a file, not a folder"), err
    assert "internal error" not in err
    assert sorted(p.name for p in folder.iterdir())[-1] == "t2.nii.gz"  # nothing written


def test_unwritable_output_folder_is_an_input_error(case, monkeypatch, capsys):
    folder, _ = case
    locked = folder / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: p != locked and real_access(p, m, **k))
    code, err = run(["heal", str(folder / "scan.nii.gz"), "--out", str(locked / "o.nii.gz")],
                    capsys)  # fmt: skip
    assert code == 2
    assert err.startswith(f"error: {locked}: folder is not writable"), err
    code, err = run(["generate", "--out", str(locked / "run"), "--n", "1"], capsys)
    assert code == 2 and "folder is not writable" in err, err
    assert list(locked.iterdir()) == []


def test_check_writable_really_tries_to_create_a_file(tmp_path, monkeypatch):
    assert check_writable(tmp_path / "new" / "deeper", folder=True) == tmp_path / "new" / "deeper"
    assert list(tmp_path.iterdir()) == []  # the probe is gone, nothing created

    def refuse(path, *args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(InputError, match="not writable .Read-only file system"):
        check_writable(tmp_path / "out.nii.gz", folder=False)


def _plant_temp(folder, name: str, age: float = 0.0):
    tmp = temp_name(folder / name)
    tmp.write_bytes(b"half a volume")
    if age:
        stamp = tmp.stat().st_mtime - age
        os.utime(tmp, (stamp, stamp))
    return tmp


def test_resume_removes_a_killed_writers_temp_file(tmp_path):
    write_run(tmp_path, [0])
    killed = _plant_temp(tmp_path, "synth_001_image.nii.gz")
    foreign = tmp_path / ".notes.tmp-mine.txt"  # not a name synthbrain makes
    foreign.write_text("keep")
    RunWriter(tmp_path, config=CONFIG, resume=True)
    assert not killed.exists() and foreign.exists()


def test_a_shard_leaves_live_temp_files_of_other_shards(tmp_path):
    with RunWriter(tmp_path, config=CONFIG, shard=(0, 2)) as writer:
        writer.write_sample("synth_000", sample(0), index=0)
    live = _plant_temp(tmp_path, "synth_001_image.nii.gz")
    stale = _plant_temp(tmp_path, "synth_003_image.nii.gz", age=STALE_TEMP_SECONDS + 60)
    RunWriter(tmp_path, config=CONFIG, shard=(0, 2), resume=True)
    assert live.exists() and not stale.exists()
