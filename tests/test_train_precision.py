"""Precision (fp32 / bf16 autocast) and threads of the shared training loop (tiny CPU models)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synthbrain.errors import InputError
from synthbrain.train import fit
from synthbrain.training import precision as prec
from synthbrain.training.checkpoint import load_checkpoint
from synthbrain.training.options import command_options
from tests.test_train import TensorDictDataset, TinyEngine, config, metrics

CPU = torch.device("cpu")
native_bf16 = pytest.mark.skipif(not prec.cpu_has_native_bf16(), reason="no native bf16 CPU")


class DtypeEngine(TinyEngine):
    """Records the dtype of its first layer's output and of its loss in training."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.dtypes: set[torch.dtype] = set()

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        hidden = self.first(image)
        if self.training:
            self.dtypes.add(hidden.dtype)
        return self.second(self.dropout(torch.relu(hidden)))


@native_bf16
def test_bf16_cpu_run_trains_with_float32_state(tmp_path: Path) -> None:
    engine = DtypeEngine()
    summary = fit(engine, TensorDictDataset(32), None, config(steps=30, precision="bf16"),
                  tmp_path, progress=False)  # fmt: skip
    assert engine.dtypes == {torch.bfloat16}  # the forward pass ran under autocast
    assert summary["precision"] == "bf16"
    train = [r["loss"] for r in metrics(tmp_path)]
    assert train[-1] < 0.5 * train[0]
    payload = load_checkpoint(tmp_path / "checkpoints" / "last.pt", CPU)
    assert payload["precision"] == "bf16"
    assert all(t.dtype == torch.float32 for t in payload["ema"].values())
    assert all(t.dtype == torch.float32 for t in engine.state_dict().values())
    state = payload["optimizer"]["state"]
    assert all(s["exp_avg"].dtype == torch.float32 for s in state.values())
    assert all(t.dtype == torch.float32 for t in load_file(summary["weights"]).values())


def test_fp32_run_resumes_bit_exact(tmp_path: Path) -> None:
    cfg = config(steps=20, log_every=3, val_every=7, checkpoint_every=10, precision="fp32")
    train, val = TensorDictDataset(13), TensorDictDataset(6, seed=1)
    reference = DtypeEngine()
    fit(reference, train, val, cfg, tmp_path / "full", progress=False)
    assert reference.dtypes == {torch.float32}
    with pytest.raises(KeyboardInterrupt):
        fit(DtypeEngine(crash_at=14), train, val, cfg, tmp_path / "cut", progress=False)
    resumed = DtypeEngine(seed=7)
    fit(resumed, train, val, cfg, tmp_path / "cut", resume=True, progress=False)
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in reference.state_dict().items())
    full, cut = load_file(tmp_path / "full" / "main.safetensors"), load_file(
        tmp_path / "cut" / "main.safetensors")  # fmt: skip
    assert all(torch.equal(full[k], cut[k]) for k in full)
    assert metrics(tmp_path / "full") == metrics(tmp_path / "cut")


@native_bf16
def test_resume_in_another_precision_warns(tmp_path: Path) -> None:
    train = TensorDictDataset(8)
    with pytest.raises(KeyboardInterrupt):
        fit(TinyEngine(crash_at=12), train, None, config(precision="fp32"), tmp_path,
            progress=False)  # fmt: skip
    with pytest.warns(UserWarning, match=r"precision \(fp32 → bf16\).*not match"):
        fit(TinyEngine(), train, None, config(precision="bf16"), tmp_path, resume=True,
            progress=False)  # fmt: skip


def test_command_precision_overrides_the_config(tmp_path: Path) -> None:
    engine = DtypeEngine()
    with command_options(precision="fp32"):
        summary = fit(engine, TensorDictDataset(8), None, config(steps=3, precision="auto"),
                      tmp_path, progress=False)  # fmt: skip
    assert summary["precision"] == "fp32" and engine.dtypes == {torch.float32}


def test_auto_and_legacy_amp(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config(amp=False).precision == "fp32"  # the old switch still works
    assert config(amp=True).precision == "auto"
    with pytest.raises(ValueError, match="amp = false contradicts"):
        config(amp=False, precision="bf16")
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: False)
    assert prec.resolve_precision("auto", CPU) == "fp32"
    with pytest.raises(InputError, match="no native bf16"):
        prec.resolve_precision("bf16", CPU)
    with pytest.raises(InputError, match="unknown precision"):
        prec.resolve_precision("fp16", CPU)
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: True)
    assert prec.resolve_precision("auto", CPU) == "bf16"


def test_threads_default_to_the_cores_this_process_may_use(monkeypatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert prec.available_cores() == 1 and prec.set_threads(None) == 1
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        if hasattr(os, "sched_getaffinity"):
            assert prec.available_cores() == len(os.sched_getaffinity(0))
        assert prec.set_threads(2) == 2 and torch.get_num_threads() == 2
        with pytest.raises(InputError, match="--threads must be at least 1"):
            prec.set_threads(0)
    finally:
        torch.set_num_threads(before)


class CountingDataset(TensorDictDataset):
    """Counts how often each item is read."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.reads = [0] * n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        self.reads[i] += 1
        return super().__getitem__(i)


def test_item_cache_reads_each_item_once_and_changes_nothing(tmp_path: Path) -> None:
    plain, cached = CountingDataset(8), CountingDataset(8)
    a, b = TinyEngine(), TinyEngine()
    fit(a, plain, None, config(steps=8, precision="fp32"), tmp_path / "a", progress=False)
    fit(b, cached, None, config(steps=8, precision="fp32", cache_gb=1.0), tmp_path / "b",
        progress=False)  # fmt: skip
    assert plain.reads == [4] * 8 and cached.reads == [1] * 8  # 4 epochs of 8 items
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    item_bytes = sum(v.nbytes for v in cached[0].values())
    small = CountingDataset(8)  # room for 3 items: the others are read every epoch
    fit(TinyEngine(), small, None, config(steps=8, cache_gb=3.5 * item_bytes / 2**30),
        tmp_path / "c", progress=False)  # fmt: skip
    assert sorted(small.reads) == [1, 1, 1, 4, 4, 4, 4, 4]
