"""Time limits and preemption signals: a stopped run resumes to the uninterrupted result."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import invoke_json
from safetensors.torch import load_file

from synthbrain.train import fit
from synthbrain.training.options import command_options
from synthbrain.training.stopping import TrainingStopped
from tests.test_train import TensorDictDataset, TinyEngine, config, metrics


class SlowEngine(TinyEngine):
    """A TinyEngine whose updates take at least `delay` seconds (a stand-in for a real model)."""

    def __init__(self, delay: float = 0.0, signal_at: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.delay, self.signal_at, self.updates = delay, signal_at, 0

    def training_step(self, batch: dict, generator: torch.Generator) -> dict:
        if self.training:
            self.updates += 1
            time.sleep(self.delay)
            if self.updates == self.signal_at:
                os.kill(os.getpid(), self.signal_number)
        return super().training_step(batch, generator)


CFG = dict(steps=30, log_every=3, val_every=7, checkpoint_every=10, precision="fp32")


def assert_same_run(full: Path, cut: Path, a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Raw weights, exported EMA weights and metrics lines equal, bit for bit."""
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    ema_a, ema_b = load_file(full / "main.safetensors"), load_file(cut / "main.safetensors")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert metrics(full) == metrics(cut)


def test_max_time_stops_at_an_update_and_resumes_bit_exact(tmp_path: Path) -> None:
    train, val = TensorDictDataset(13), TensorDictDataset(6, seed=1)
    reference = SlowEngine()
    fit(reference, train, val, config(**CFG), tmp_path / "full", progress=False)
    cut = tmp_path / "cut"
    start = time.monotonic()
    with pytest.raises(TrainingStopped) as stop:
        fit(SlowEngine(delay=0.05), train, val, config(**CFG, max_time="4s"), cut,
            progress=False)  # fmt: skip
    assert time.monotonic() - start < 4.0  # stopped before the limit, with the margin
    reached = stop.value.summary["step"]
    assert stop.value.reason == "max-time" and 1 <= reached < 30
    payload = torch.load(cut / "checkpoints" / "last.pt", weights_only=True)
    assert payload["step"] == reached  # the checkpoint of the stop, wherever it fell
    assert (cut / "main.safetensors").is_file()  # and weights to look at
    resumed = SlowEngine(seed=3)
    summary = fit(resumed, train, val, config(**CFG), cut, resume=True, progress=False)
    assert summary["resumed_from"] == reached and summary["step"] == 30
    assert_same_run(tmp_path / "full", cut, reference, resumed)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_signal_stops_cleanly_and_resumes_bit_exact(tmp_path: Path, name: str) -> None:
    train, val = TensorDictDataset(13), TensorDictDataset(6, seed=1)
    before = signal.getsignal(signal.SIGTERM)
    reference = SlowEngine()
    fit(reference, train, val, config(**CFG), tmp_path / "full", progress=False)
    killed = SlowEngine(signal_at=13)
    killed.signal_number = getattr(signal, name)
    with pytest.raises(TrainingStopped) as stop:
        fit(killed, train, val, config(**CFG), tmp_path / "cut", progress=False)
    assert stop.value.reason == name and stop.value.summary["step"] == 13  # that update done
    assert signal.getsignal(signal.SIGTERM) == before  # the handlers are put back
    resumed = SlowEngine()
    fit(resumed, train, val, config(**CFG), tmp_path / "cut", resume=True, progress=False)
    assert_same_run(tmp_path / "full", tmp_path / "cut", reference, resumed)


def test_command_limit_spans_stages(tmp_path: Path) -> None:
    train = TensorDictDataset(8)
    with command_options(max_time=1.0), pytest.raises(TrainingStopped):
        fit(SlowEngine(), train, None, config(steps=5), tmp_path, progress=False)
    # A limit that has already passed stops the next stage at its first update.
    stages = []
    with command_options(max_time=1.0) as options:
        time.sleep(1.0)
        with pytest.raises(TrainingStopped) as stop:
            fit(SlowEngine(), train, None, config(steps=5), tmp_path / "b", stage="second",
                progress=False)  # fmt: skip
        stages = options.stages
    assert stop.value.summary["step"] == 1 and stages[0]["stage"] == "second"


TOML = """contrasts = ["t1", "flair"]
crop = 16
min_size = 16
margin_mm = 4.0
[denoiser]
base_channels = 8
channel_mults = [1, 2]
attention_levels = [-1]
[substrate]
base_channels = 4
channel_mults = [1, 2, 2, 2, 2]
attention_levels = []
[train]
steps = 3
batch_size = 2
num_workers = 0
val_batches = 1
warmup = 1
"""


def tiny_set(folder: Path) -> Path:
    """A 4-subject HDF5 set with a lesion, and a tiny deviation config beside it."""
    from synthbrain.io.dataset import H5Writer

    rng, grid = np.random.default_rng(0), (24, 24, 6)
    writer = H5Writer(folder / "set.h5", contrasts=["t1", "flair"], spacing=[2.0] * 3,
                      grid=list(grid), label_names={"background": 0, "lesion": 1},
                      label_convention="binary")  # fmt: skip
    for i in range(4):
        images = rng.random((2, *grid)).astype(np.float32) * 0.5
        labels = np.zeros(grid, np.uint8)
        labels[8:14, 9:15, 2:4] = 1
        writer.add_subject(f"s{i}", images=images, brain_mask=np.ones(grid, np.uint8),
                           labels=labels, attrs={"spacing": [2.0] * 3})  # fmt: skip
    writer.finish(split_fractions=(0.5, 0.5, 0.0), seed=0, slices=True)
    (folder / "tiny.toml").write_text(TOML)
    return folder / "set.h5"


cli = invoke_json  # (exit code, summary, stderr)


def test_cli_max_time_prints_resume_and_bad_options(tmp_path: Path, capsys, monkeypatch) -> None:
    data = tiny_set(tmp_path)
    base = ["train", "--engine", "deviation", "--data", str(data), "--config",
            str(tmp_path / "tiny.toml"), "--threads", "1", "--precision", "fp32"]  # fmt: skip
    before = torch.get_num_threads()
    code, summary, err = cli([*base, "--out", str(tmp_path / "run"), "--max-time", "1s"], capsys)
    torch.set_num_threads(before)
    assert code == 0 and summary["stopped"] == "max-time" and summary["step"] < 3
    assert "--resume" in summary["resume_command"] and "resume with: synthbrain train" in err
    assert summary["training"]["threads"] == 1 and summary["training"]["wall_seconds"] > 0
    import shlex

    resume = shlex.split(summary["resume_command"])  # the printed command itself resumes
    assert resume[:2] == ["synthbrain", "train"] and "--api" not in resume
    code, summary, _ = cli([*resume[1:], "--max-time", "10m"], capsys)  # the last --max-time wins
    torch.set_num_threads(before)
    assert code == 0 and summary["step"] == 3 and "stopped" not in summary
    (stage,) = summary["training"]["stages"]
    assert stage["stage"] == "main" and stage["samples_per_s"] > 0 and stage["precision"] == "fp32"
    assert (tmp_path / "run" / "curves.png").is_file()

    monkeypatch.setattr("synthbrain.training.precision.cpu_has_native_bf16", lambda: False)
    for extra, message in ((["--max-time", "2hours"], "cannot read max time"),
                           (["--threads", "0"], "--threads must be at least 1"),
                           (["--precision", "bf16"], "no native bf16")):  # fmt: skip
        out = tmp_path / "bad"
        code, _, err = cli([*base, *extra, "--out", str(out)], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    torch.set_num_threads(before)
