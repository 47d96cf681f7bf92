"""D3M training under two-process DistributedDataParallel on CPU (gloo), as torchrun runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_engine_deformation import TINY, make_h5

from synthbrain.train import launch_local
from synthbrain.training.request import TrainRequest


def _train(data: str, out: str) -> None:
    """One rank: the engine's own train command (fit joins the process group)."""
    from synthbrain.engines.deformation import run as deformation_run

    deformation_run.train(TrainRequest(data=Path(data), out=Path(out), steps=2, batch_size=2,
                                       device="cpu", overrides=TINY))  # fmt: skip


@pytest.mark.slow
def test_two_process_ddp_training_writes_one_set_of_weights(tmp_path):
    data = make_h5(tmp_path / "set.h5")
    launch_local(_train, 2, str(data), str(tmp_path / "run"))
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in lines if r.get("kind") == "train") == 2
    assert (tmp_path / "run" / "deformation.safetensors").is_file()
