"""Tests of the shared training loop (synthbrain.train) on tiny CPU models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

from synthbrain.errors import InputError, SynthbrainError
from synthbrain.train import ResumableSampler, TrainConfig, fit, lr_factor
from synthbrain.training.checkpoint import load_checkpoint, save_checkpoint
from synthbrain.weights import read_metadata


class TensorDictDataset(Dataset):
    """In-memory dataset of 8×8 images and a target that is a fixed affine map of them."""

    def __init__(self, n: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.image = torch.rand(n, 1, 8, 8, generator=generator)
        self.target = 0.5 * self.image + 0.25

    def __len__(self) -> int:
        return len(self.image)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.image[i], "target": self.target[i], "index": torch.tensor(i)}


class TinyEngine(nn.Module):
    """Two conv layers with dropout; noise from the generator, dropout from the global RNG."""

    def __init__(self, seed: int = 0, crash_at: int | None = None) -> None:
        super().__init__()
        self.first = nn.Conv2d(1, 4, 3, padding=1)
        self.second = nn.Conv2d(4, 1, 3, padding=1)
        self.dropout = nn.Dropout(0.1)
        self.crash_at = crash_at
        self.calls = 0
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=generator))

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return self.second(self.dropout(F.relu(self.first(image))))

    def training_step(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        self.calls += self.training  # validation calls do not count
        if self.training and self.crash_at is not None and self.calls == self.crash_at:
            raise KeyboardInterrupt("simulated kill")
        image = batch["image"]
        noise = torch.randn(image.shape, generator=generator, device=image.device)
        mse = F.mse_loss(self.predict(image + 0.01 * noise), batch["target"])
        return {"loss": mse, "mse": mse.detach()}


def config(**overrides: object) -> TrainConfig:
    """A small CPU config; tests override what they exercise."""
    base = dict(
        steps=20, batch_size=4, lr=1e-2, warmup=3, checkpoint_every=10, log_every=5,
        val_every=10, val_batches=2, num_workers=0, device="cpu",
    )  # fmt: skip
    return TrainConfig(**{**base, **overrides})


def metrics(out: Path, drop_seconds: bool = True) -> list[dict]:
    """The metrics.jsonl records (without the wall-clock fields, which differ between runs)."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    if drop_seconds:
        for record in records:
            record.pop("seconds")
            record.pop("samples_per_s", None)
            record.pop("data_wait_s", None)
    return records


def test_loss_decreases_and_outputs(tmp_path: Path) -> None:
    summary = fit(TinyEngine(), TensorDictDataset(32), TensorDictDataset(8, seed=1),
                  config(steps=30), tmp_path, progress=False)  # fmt: skip
    train = [r for r in metrics(tmp_path) if r["kind"] == "train"]
    val = [r for r in metrics(tmp_path) if r["kind"] == "val"]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
    assert [r["step"] for r in val] == [10, 20, 30]
    assert train[-1]["loss"] < 0.5 * train[0]["loss"]
    assert val[-1]["val_loss"] < val[0]["val_loss"]
    assert {"loss", "mse", "grad_norm", "lr", "stage"} <= set(train[0])
    assert summary["step"] == 30 and summary["resumed_from"] is None
    assert summary["losses"]["loss"] == train[-1]["loss"]
    assert summary["val"]["val_loss"] == val[-1]["val_loss"]
    weights = load_file(summary["weights"])
    assert Path(summary["weights"]) == tmp_path / "main.safetensors"
    assert set(weights) == set(TinyEngine().state_dict())


def test_checkpoint_is_complete_and_leaves_no_temp(tmp_path: Path) -> None:
    fit(TinyEngine(), TensorDictDataset(16), None, config(steps=12), tmp_path, progress=False)
    folder = tmp_path / "checkpoints"
    assert [p.name for p in folder.iterdir()] == ["last.pt"]
    payload = load_checkpoint(folder / "last.pt", torch.device("cpu"))
    assert payload["step"] == 12
    assert {"model", "ema", "optimizer", "scheduler", "rng"} <= set(payload)
    assert {"cpu", "sampler", "train_generator"} <= set(payload["rng"])
    assert payload["rng"]["sampler"]["position"] == 12 * 4


def test_failed_checkpoint_write_keeps_previous(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"step": 1})
    before = path.read_bytes()

    def broken_save(obj: object, target: Path) -> None:
        Path(target).write_bytes(b"half a checkp")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_resume_after_kill_matches_uninterrupted_run(tmp_path: Path) -> None:
    # 13 examples in batches of 4: batches straddle epochs; intervals do not align.
    cfg = config(steps=20, log_every=3, val_every=7, checkpoint_every=10)
    full, cut = tmp_path / "full", tmp_path / "cut"
    train, val = TensorDictDataset(13), TensorDictDataset(6, seed=1)
    reference = TinyEngine()
    fit(reference, train, val, cfg, full, progress=False)

    killed = TinyEngine(crash_at=14)  # dies in update 14, after the checkpoint at 10
    with pytest.raises(KeyboardInterrupt):
        fit(killed, train, val, cfg, cut, progress=False)
    assert max(r["step"] for r in metrics(cut)) == 12  # lines past the checkpoint exist
    resumed = TinyEngine(seed=99)  # its own initial weights must not matter
    summary = fit(resumed, train, val, cfg, cut, resume=True, progress=False)

    assert summary["resumed_from"] == 10
    trained = resumed.state_dict()
    for name, value in reference.state_dict().items():
        assert torch.equal(value, trained[name]), name
    ema_full, ema_cut = load_file(full / "main.safetensors"), load_file(cut / "main.safetensors")
    assert all(torch.equal(ema_full[k], ema_cut[k]) for k in ema_full)
    assert metrics(full) == metrics(cut)
    opt_full = load_checkpoint(full / "checkpoints" / "last.pt", torch.device("cpu"))["optimizer"]
    opt_cut = load_checkpoint(cut / "checkpoints" / "last.pt", torch.device("cpu"))["optimizer"]
    for key, state in opt_full["state"].items():
        assert torch.equal(state["exp_avg_sq"], opt_cut["state"][key]["exp_avg_sq"])


def test_resume_of_finished_stage_only_reexports(tmp_path: Path) -> None:
    train = TensorDictDataset(8)
    first = fit(TinyEngine(), train, None, config(steps=6), tmp_path, progress=False)
    (tmp_path / "main.safetensors").unlink()
    engine = TinyEngine(seed=5)
    again = fit(engine, train, None, config(steps=6), tmp_path, resume=True, progress=False)
    assert again["resumed_from"] == 6 and again["losses"] == first["losses"]
    assert (tmp_path / "main.safetensors").exists()
    assert len(metrics(tmp_path)) == 2  # steps 5 and 6, not written twice


def test_fresh_start_replaces_old_metrics_of_the_stage(tmp_path: Path) -> None:
    train = TensorDictDataset(8)
    fit(TinyEngine(), train, None, config(steps=10), tmp_path, progress=False)
    fit(TinyEngine(), train, None, config(steps=5), tmp_path, progress=False)
    assert [r["step"] for r in metrics(tmp_path)] == [5]


class ScalarEngine(nn.Module):
    """One parameter pulled towards the batch mean; records the weight each step sees."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([2.0]))
        self.seen: list[float] = []

    def training_step(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        self.seen.append(float(self.w.detach()))
        return {"loss": ((self.w - batch["target"].mean()) ** 2).sum()}


@pytest.mark.parametrize("ema_warmup", [False, True])
def test_ema_matches_analytic_average(tmp_path: Path, ema_warmup: bool) -> None:
    engine = ScalarEngine()
    cfg = config(steps=15, lr=0.1, warmup=0, ema_decay=0.8, ema_warmup=ema_warmup)
    fit(engine, TensorDictDataset(8), None, cfg, tmp_path, progress=False)
    raw = engine.seen[1:] + [float(engine.w.detach())]  # the weight after updates 1..15
    ema = engine.seen[0]
    for k, w in enumerate(raw, start=1):
        decay = min(0.8, (1 + k) / (10 + k)) if ema_warmup else 0.8
        ema = decay * ema + (1 - decay) * w
    exported = float(load_file(tmp_path / "main.safetensors")["w"])
    assert exported == pytest.approx(ema, rel=1e-5)
    assert abs(exported - float(engine.w.detach())) > 1e-3  # the EMA lags the raw weight


def test_lr_warmup_and_cosine(tmp_path: Path) -> None:
    assert lr_factor(0, 4, 12) == 0.25
    assert lr_factor(3, 4, 12) == 1.0
    assert lr_factor(4, 4, 12) == 1.0
    assert lr_factor(8, 4, 12) == pytest.approx(0.5)
    assert lr_factor(11, 4, 12) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert lr_factor(0, 0, 10) == 1.0
    cfg = config(steps=12, warmup=4, lr=0.02, log_every=1)
    fit(TinyEngine(), TensorDictDataset(8), None, cfg, tmp_path, progress=False)
    logged = [r["lr"] for r in metrics(tmp_path)]
    assert logged == pytest.approx([0.02 * lr_factor(s, 4, 12) for s in range(12)])


def test_workers_read_the_same_batches(tmp_path: Path) -> None:
    train = TensorDictDataset(10)
    a, b = TinyEngine(), TinyEngine()
    fit(a, train, None, config(steps=6), tmp_path / "a", progress=False)
    fit(b, train, None, config(steps=6, num_workers=1), tmp_path / "b", progress=False)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_sampler_resumes_and_strides() -> None:
    full = iter(ResumableSampler(7, seed=3))
    stream = [next(full) for _ in range(30)]
    assert sorted(stream[:7]) == list(range(7)) and sorted(stream[7:14]) == list(range(7))
    assert stream[:7] != stream[7:14]  # each epoch its own permutation
    later = iter(ResumableSampler(7, seed=3, start=11))
    assert [next(later) for _ in range(19)] == stream[11:]
    ranks = [ResumableSampler(7, seed=3, rank=r, world_size=3).epoch_indices(0) for r in range(3)]
    assert all(len(r) == 3 for r in ranks)
    assert set(torch.cat(ranks).tolist()) == set(range(7))


class TwoPartEngine(TinyEngine):
    """Trains only its second layer, as a denoiser stage trains with a frozen autoencoder."""

    def trainable_parameters(self):
        return self.second.parameters()


def test_frozen_parameters_and_stages(tmp_path: Path) -> None:
    engine = TwoPartEngine()
    first_before = engine.first.weight.detach().clone()
    second_before = engine.second.weight.detach().clone()
    train = TensorDictDataset(8)
    summary = fit(engine, train, None, config(steps=5), tmp_path, stage="denoiser", progress=False)
    assert torch.equal(engine.first.weight, first_before)
    assert not torch.equal(engine.second.weight, second_before)
    assert engine.first.weight.requires_grad  # flags are restored after the stage
    assert summary["checkpoint"] == str(tmp_path / "checkpoints" / "denoiser" / "last.pt")
    assert (tmp_path / "denoiser.safetensors").exists()
    fit(TinyEngine(), train, None, config(steps=5), tmp_path, stage="autoencoder", progress=False)
    assert [r["stage"] for r in metrics(tmp_path)] == ["denoiser", "autoencoder"]


def test_load_ema_at_end_and_export_metadata(tmp_path: Path) -> None:
    engine = TinyEngine()
    fit(engine, TensorDictDataset(8), None, config(steps=5), tmp_path, progress=False,
        load_ema_at_end=True, metadata={"config": {"channels": 4}})  # fmt: skip
    exported = load_file(tmp_path / "main.safetensors")
    assert all(torch.equal(v, exported[k]) for k, v in engine.state_dict().items())
    meta = read_metadata(tmp_path / "main.safetensors")
    assert meta["config"] == {"channels": 4}
    assert meta["training"] == {"stage": "main", "step": 5, "ema_decay": 0.999}


class NoLossEngine(TinyEngine):
    def training_step(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"mse": self.predict(batch["image"]).mean()}


class DivergingEngine(TinyEngine):
    def training_step(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"loss": self.predict(batch["image"]).mean() * float("nan")}


def test_bad_inputs_are_reported(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="empty"):
        fit(TinyEngine(), TensorDictDataset(0), None, config(), tmp_path, progress=False)
    with pytest.raises(TypeError, match="NoLossEngine.training_step"):
        fit(NoLossEngine(), TensorDictDataset(8), None, config(), tmp_path, progress=False)
    with pytest.raises(SynthbrainError, match="diverged"):
        fit(DivergingEngine(), TensorDictDataset(8), None, config(), tmp_path, progress=False)
    with pytest.raises(InputError, match="stage name"):
        fit(TinyEngine(), TensorDictDataset(8), None, config(), tmp_path, stage="a/b")
    bad = tmp_path / "corrupt"
    (bad / "checkpoints").mkdir(parents=True)
    (bad / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="last.pt"):
        fit(TinyEngine(), TensorDictDataset(8), None, config(), bad, resume=True, progress=False)


def test_plain_progress_lines_go_to_stderr(tmp_path: Path, capsys) -> None:
    fit(TinyEngine(), TensorDictDataset(8), TensorDictDataset(4), config(steps=10), tmp_path)
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0].startswith("[main] step 5/10") and "loss" in lines[0]
    assert "samples/s" in lines[0] and "ETA " in lines[0]
    assert any(line.startswith("[main] step 10/10") and "val_loss" in line for line in lines)


def test_resume_with_changed_config_warns(tmp_path: Path) -> None:
    train = TensorDictDataset(8)
    killed = TinyEngine(crash_at=12)
    with pytest.raises(KeyboardInterrupt):
        fit(killed, train, None, config(steps=20), tmp_path, progress=False)
    with pytest.warns(UserWarning, match="batch_size"):
        summary = fit(TinyEngine(), train, None, config(steps=20, batch_size=2), tmp_path,
                      resume=True, progress=False)  # fmt: skip
    assert summary["resumed_from"] == 10 and summary["step"] == 20
