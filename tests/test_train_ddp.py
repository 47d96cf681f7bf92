"""Two-process DistributedDataParallel training on CPU (gloo), started with launch_local."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from synthbrain.train import TrainConfig, fit, is_main_process, launch_local


class IndexedDataset(Dataset):
    """8×8 images with an affine target, and each item's index (to see who read what)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.image = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.image)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = self.image[i]
        return {"image": image, "target": 0.5 * image + 0.25, "index": torch.tensor(i)}


class RecordingEngine(nn.Module):
    """A 2-layer conv net with an MSE loss that records the dataset indices it trains on."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.first = nn.Conv2d(1, 4, 3, padding=1)
        self.second = nn.Conv2d(4, 1, 3, padding=1)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=generator))
        self.seen: list[list[int]] = []

    def training_step(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self.training:
            self.seen.append(batch["index"].tolist())
        image = batch["image"] + 0.01 * torch.randn(batch["image"].shape, generator=generator)
        return {"loss": F.mse_loss(self.second(F.relu(self.first(image))), batch["target"])}


def _train_on_rank(out_dir: str) -> None:
    """What each spawned process runs: the same fit call, then its own weights to a file."""
    rank = int(os.environ["RANK"])
    engine = RecordingEngine(seed=rank)  # DDP must broadcast rank 0's weights first
    cfg = TrainConfig(
        steps=6, batch_size=2, lr=1e-2, warmup=2, checkpoint_every=3, log_every=2,
        val_every=3, val_batches=1, num_workers=0, device="cpu",
    )  # fmt: skip
    val = IndexedDataset(4, seed=1)
    summary = fit(engine, IndexedDataset(8), val, cfg, out_dir, progress=False)
    out = Path(out_dir)
    torch.save(engine.state_dict(), out / f"rank{rank}.pt")
    seen = {"indices": engine.seen, "world_size": summary["world_size"], "main": is_main_process()}
    (out / f"rank{rank}.json").write_text(json.dumps(seen))


def test_two_gloo_processes_end_with_identical_weights(tmp_path: Path) -> None:
    launch_local(_train_on_rank, 2, str(tmp_path))
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(v, rank1[k]) for k, v in rank0.items())
    assert not torch.equal(rank0["first.weight"], RecordingEngine(seed=0).first.weight)

    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(s["world_size"] == 2 for s in seen)
    assert [s["main"] for s in seen] == [True, False]
    # Epoch 0 (8 examples = 2 ranks × batch 2 × 2 steps) is split between the ranks.
    first_epoch = [set(s["indices"][0] + s["indices"][1]) for s in seen]
    assert first_epoch[0].isdisjoint(first_epoch[1])
    assert first_epoch[0] | first_epoch[1] == set(range(8))

    # Only rank 0 wrote: one metrics line per event, one checkpoint, one weights file.
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    events = [(r["kind"], r["step"]) for r in map(json.loads, lines)]
    assert events == [("train", 2), ("val", 3), ("train", 4), ("train", 6), ("val", 6)]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.pt"]
    assert (tmp_path / "main.safetensors").exists()
