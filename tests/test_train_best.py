"""Task-metric validation and the best checkpoint of the shared training loop (tiny CPU models)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synthbrain.errors import InputError
from synthbrain.train import fit
from synthbrain.training.checkpoint import load_checkpoint
from synthbrain.weights import read_metadata
from tests.test_train import TensorDictDataset, TinyEngine, config, metrics


class ScoredEngine(TinyEngine):
    """Validation returns a scripted task score per validation call, a Dice that is NaN on the
    first batch, and records which examples it saw."""

    def __init__(self, scores: list[float], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.scores = scores
        self.validations = 0
        self.seen: list[list[int]] = []

    def validation_step(self, batch: dict, generator: torch.Generator) -> dict[str, float]:
        index = batch["index"].tolist()
        if not self.seen or index[0] <= self.seen[-1][-1]:  # a new validation begins
            self.validations += 1
            self.seen.append([])
        self.seen[-1].extend(index)
        loss = float(self.training_step(batch, generator)["loss"])
        dice = math.nan if len(self.seen[-1]) == len(index) else 0.5
        return {"loss": loss, "score": self.scores[self.validations - 1], "dice": dice}


def test_best_weights_are_kept_exported_and_survive_resume(tmp_path: Path) -> None:
    cfg = config(steps=30, val_every=10, checkpoint_every=10, select_by="val_score",
                 higher_is_better=True)  # fmt: skip
    train, val = TensorDictDataset(16), TensorDictDataset(12, seed=1)
    full = tmp_path / "full"
    summary = fit(ScoredEngine([1.0, 3.0, 2.0]), train, val, cfg, full, progress=False)

    best_file = full / "checkpoints" / "best.safetensors"
    assert summary["best"] == {"metric": "val_score", "value": 3.0, "step": 20,
                               "weights": str(best_file)}  # fmt: skip
    assert summary["exported"] == "best"
    exported, best = load_file(full / "main.safetensors"), load_file(best_file)
    assert all(torch.equal(exported[k], best[k]) for k in best)
    last = load_file(full / "checkpoints" / "last.safetensors")
    assert any(not torch.equal(last[k], best[k]) for k in best)
    meta = read_metadata(full / "main.safetensors")["training"]
    assert meta["step"] == 20 and meta["select_by"] == "val_score" and meta["value"] == 3.0
    val_lines = [r for r in metrics(full) if r["kind"] == "val"]
    assert [r.get("best", False) for r in val_lines] == [True, True, False]
    assert all(r["val_dice"] == 0.5 for r in val_lines)  # the NaN batch is left out

    # Killed in update 21: its checkpoint at 20 holds the EMA weights that were best.
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        fit(ScoredEngine([1.0, 3.0], crash_at=21), train, val, cfg, cut, progress=False)
    payload = load_checkpoint(cut / "checkpoints" / "last.pt", torch.device("cpu"))
    assert payload["best"] == {"metric": "val_score", "value": 3.0, "step": 20}
    assert all(torch.equal(payload["ema"][k], best[k]) for k in payload["ema"])
    # Resumed, its next validation scores 1.0: the best restored from the checkpoint stays.
    again = fit(ScoredEngine([1.0]), train, val, cfg, cut, resume=True, progress=False)
    assert again["best"]["step"] == 20
    resumed = load_file(cut / "main.safetensors")
    assert all(torch.equal(resumed[k], exported[k]) for k in exported)


def test_validation_uses_a_fixed_seeded_subset(tmp_path: Path) -> None:
    engine = ScoredEngine([0.0] * 3)
    cfg = config(steps=30, val_every=10, val_batches=2)
    fit(engine, TensorDictDataset(16), TensorDictDataset(40, seed=1), cfg, tmp_path,
        progress=False)  # fmt: skip
    assert len(engine.seen) == 3 and engine.seen[0] == engine.seen[1] == engine.seen[2]
    assert len(engine.seen[0]) == 8 and engine.seen[0] == sorted(engine.seen[0])
    assert engine.seen[0] != list(range(8))  # drawn from the whole set, not its head
    other = ScoredEngine([0.0] * 3)
    fit(other, TensorDictDataset(16), TensorDictDataset(40, seed=1), config(steps=10,
        val_every=10, seed=5), tmp_path / "seed5", progress=False)  # fmt: skip
    assert other.seen[0] == engine.seen[0]  # val_seed, not the training seed, draws it


def test_lower_is_better_by_default_for_a_loss(tmp_path: Path) -> None:
    cfg = config(steps=30, val_every=10, select_by="val_loss")
    summary = fit(TinyEngine(), TensorDictDataset(16), TensorDictDataset(8, seed=1), cfg,
                  tmp_path, progress=False, load_ema_at_end=True)  # fmt: skip
    val = {r["step"]: r["val_loss"] for r in metrics(tmp_path) if r["kind"] == "val"}
    assert summary["best"]["step"] == min(val, key=val.get)
    assert summary["best"]["value"] == min(val.values())


def test_bad_selection_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="higher_is_better"):
        config(select_by="val_dice")
    with pytest.raises(ValueError, match="select_by"):
        config(select_by="dice")  # must name a validation metric
    psnr = config(select_by="val_psnr", higher_is_better=True)
    with pytest.raises(InputError, match="val_psnr.*val_dice, val_loss, val_score"):
        fit(ScoredEngine([0.0] * 3), TensorDictDataset(8), TensorDictDataset(8), psnr,
            tmp_path / "a", progress=False)  # fmt: skip
    with pytest.warns(UserWarning, match="no validation chose a best"):
        summary = fit(TinyEngine(), TensorDictDataset(8), None, config(steps=5,
                      select_by="val_loss"), tmp_path / "b", progress=False)  # fmt: skip
    assert summary["exported"] == "last" and summary["best"]["weights"] is None


def test_speed_is_logged_and_curves_drawn(tmp_path: Path) -> None:
    from synthbrain.training.curves import read_curves

    summary = fit(ScoredEngine([1.0, 2.0]), TensorDictDataset(16), TensorDictDataset(8, seed=1),
                  config(steps=20, val_every=10), tmp_path, progress=False)  # fmt: skip
    train = [r for r in metrics(tmp_path, drop_seconds=False) if r["kind"] == "train"]
    assert all(r["samples_per_s"] > 0 and r["data_wait_s"] >= 0 for r in train)
    assert summary["samples_per_s"] > 0
    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = read_curves(tmp_path / "metrics.jsonl")["main"]
    assert set(curves["val"]) == {"val_loss", "val_score", "val_dice"}
    assert [s for s, _ in curves["val"]["val_score"]] == [10, 20]
    assert {"loss", "mse"} <= set(curves["train"]) and "samples_per_s" not in curves["train"]
    png.unlink()
    fit(TinyEngine(), TensorDictDataset(8), TensorDictDataset(8), config(steps=10, curves=False),
        tmp_path / "off", progress=False)  # fmt: skip
    assert not (tmp_path / "off" / "curves.png").exists()
