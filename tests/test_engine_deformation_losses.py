"""Deformation engine, issue 15: tumour-weighted loss, Dice on the mask stream, regression
baseline, sampled validation (ET Dice, tumour PSNR) and the fixed tumour validation set.

Tiny models on 16 x 16 slices, 2 sampling steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from synthbrain.engines.deformation import model as d3m
from synthbrain.engines.deformation.config import load_config
from synthbrain.engines.deformation.data import EnhanceSlices, tumour_subset
from synthbrain.engines.deformation.losses import (
    dice_score,
    psnr_in,
    region_weights,
    soft_dice_loss,
    task_scores,
)
from synthbrain.errors import InputError
from synthbrain.io.dataset import H5Writer

TINY = {
    "crop": 8,
    "denoiser.base_channels": 4,
    "denoiser.channel_mults": [1, 2],
    "denoiser.groups": 2,
    "warp_net.base_channels": 2,
    "warp_net.channel_mults": [1, 2],
    "warp_net.groups": 1,
    "train.num_workers": 0,
    "sampling.steps": 2,
    "val_steps": 2,
}


def tiny(**changes):
    return load_config(None, {**TINY, **changes})


def batch_with_tumour(n: int = 4, cond_channels: int = 9) -> dict[str, torch.Tensor]:
    """Items with a 4 x 4 tumour whose centre 2 x 2 enhances (bright in the target)."""
    g = torch.Generator().manual_seed(1)
    tumour = torch.zeros(n, 1, 16, 16)
    tumour[:, :, 6:10, 6:10] = 1.0
    mask = torch.zeros_like(tumour)
    mask[:, :, 7:9, 7:9] = 1.0
    target = torch.rand(n, 1, 16, 16, generator=g) * 0.5 + 0.5 * mask
    cond = torch.rand(n, cond_channels, 16, 16, generator=g)
    return {"cond": cond, "target": target, "mask": mask, "tumour": tumour,
            "brain": torch.ones_like(mask)}  # fmt: skip


def test_region_weights_cover_the_tumour_and_its_margin_only():
    tumour = torch.zeros(1, 1, 16, 16)
    tumour[0, 0, 7, 7] = 1.0
    w = region_weights(tumour, 4.0, 2)
    assert w[0, 0, 7, 7] == 5.0 and w[0, 0, 9, 9] == 5.0 and w[0, 0, 5, 7] == 5.0
    assert w[0, 0, 10, 7] == 1.0 and w[0, 0, 0, 0] == 1.0
    assert torch.equal(region_weights(tumour, 0.0, 2), torch.ones_like(tumour))


def test_soft_dice_loss_is_zero_for_a_match_one_for_a_miss_and_weighted_per_item():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1.0
    assert soft_dice_loss(target, target) < 1e-6
    assert soft_dice_loss(1.0 - target, target) > 0.95
    # an item without tumour still pays for false positives
    empty = torch.zeros(1, 1, 8, 8)
    assert soft_dice_loss(torch.full_like(empty, 0.5), empty) > 0.9
    weights = torch.tensor([0.0, 1.0])
    one_bad = torch.stack([1.0 - target[0], target[1]])
    assert soft_dice_loss(one_bad, target, weights) < 1e-6


def test_task_scores_on_a_perfect_and_a_blank_prediction():
    batch = batch_with_tumour()
    perfect = torch.cat([batch["target"], batch["mask"]], dim=1) * 2 - 1
    scores = task_scores(perfect, batch, mask_stream=True)
    assert scores["dice_et"] == 1.0 and scores["psnr_tumour"] > 60
    blank = -torch.ones_like(perfect)
    worse = task_scores(blank, batch, mask_stream=True)
    assert worse["dice_et"] == 0.0 and worse["psnr_tumour"] < 10
    assert worse["select"] < scores["select"]
    assert "dice_et" not in task_scores(perfect[:, :1], batch, mask_stream=False)
    assert dice_score(torch.zeros(3), torch.zeros(3)) == 1.0
    assert torch.isnan(psnr_in(batch["target"], batch["target"], torch.zeros(4, 1, 16, 16)))


def test_defaults_keep_the_published_loss_and_the_new_terms_change_it():
    batch = batch_with_tumour()
    torch.manual_seed(0)
    old = d3m.DeformationModel(tiny(crop=None))
    new = d3m.DeformationModel(tiny(crop=None, tumour_weight=4.0, dice_weight=1.0))
    new.load_state_dict(old.state_dict())
    out_old = old.training_step(batch, torch.Generator().manual_seed(3))
    out_new = new.training_step(batch, torch.Generator().manual_seed(3))
    assert "dice" not in out_old and out_new["dice"] > 0
    # same noise and weights: the same per-stream errors, a heavier weighted loss
    torch.testing.assert_close(out_old["v_img"], out_new["v_img"])
    assert out_new["syn"] > out_old["syn"]
    torch.testing.assert_close(out_new["loss"], out_new["syn"] + out_new["flow"] + out_new["dice"])
    # without any tumour in the batch the weighting is the identity
    blank = {**batch, "tumour": torch.zeros_like(batch["tumour"])}
    a = old.training_step(blank, torch.Generator().manual_seed(3))["syn"]
    b = new.training_step(blank, torch.Generator().manual_seed(3))["syn"]
    torch.testing.assert_close(a, b)


def test_dice_loss_reaches_the_mask_decoder_and_the_deformation_net():
    model = d3m.DeformationModel(tiny(crop=None, dice_weight=1.0))
    out = model.training_step(batch_with_tumour(), torch.Generator().manual_seed(0))
    out["dice"].requires_grad_(False)
    loss = out["loss"] - out["syn"] - out["flow"]  # the Dice term alone (with its graph)
    loss.backward()
    mask_head = model.denoiser.heads[1]
    assert mask_head.conv.weight.grad.abs().sum() > 0


def test_crop_centre_fraction_defaults_to_the_tumour_fraction():
    assert tiny(tumour_fraction=0.3).crop_centre_fraction == 0.3
    assert tiny(tumour_fraction=0.3, centre_fraction=0.9).crop_centre_fraction == 0.9


def test_regression_baseline_trains_and_predicts_without_noise():
    config = tiny(regression=True, deform=False, mask_stream=False, decoder="single",
                  tumour_weight=2.0)  # fmt: skip
    model = d3m.DeformationModel(config)
    assert model.denoiser.time_embed is None
    out = model.training_step(batch_with_tumour(), torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.denoiser.heads[0].conv.weight.grad.abs().sum() > 0
    cond = torch.rand(2, config.cond_channels, 16, 16) * 2 - 1
    a = model.sample(cond, torch.randn(2, 1, 16, 16))
    b = model.sample(cond, torch.randn(2, 1, 16, 16))
    assert a.shape == (2, 1, 16, 16) and torch.equal(a, b)
    with pytest.raises(InputError):
        tiny(regression=True)  # deform is on by default: refused


@pytest.mark.parametrize("changes", [{}, {"regression": True, "deform": False}])
def test_validation_step_reports_the_task_scores_reproducibly(changes):
    model = d3m.DeformationModel(tiny(**changes)).eval()
    batch = {k: v[:2, :, :, :12] for k, v in batch_with_tumour().items()}  # 12: needs padding
    a = model.validation_step(batch, torch.Generator().manual_seed(5))
    b = model.validation_step(batch, torch.Generator().manual_seed(5))
    for key in ("loss", "psnr_tumour", "dice_et", "select"):
        assert torch.isfinite(a[key]) and torch.equal(a[key], b[key])
    assert 0.0 <= float(a["dice_et"]) <= 1.0


def test_tumour_subset_is_fixed_and_holds_enhancing_slices_only(tmp_path: Path):
    grid = (16, 16, 8)
    writer = H5Writer(
        tmp_path / "t.h5", contrasts=["t1", "t1gd", "t2", "flair"], spacing=[2.0] * 3,
        grid=list(grid), label_names={"background": 0, "edema": 2, "enhancing": 3},
        label_convention="brats2023", overwrite=True,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for i in range(4):
        brain = np.zeros(grid, bool)
        brain[2:-2, 2:-2, 1:-1] = True
        labels = np.zeros(grid, np.uint8)
        labels[5:10, 5:10, 2:6] = 2
        labels[6:9, 6:9, 3:5] = 3
        writer.add_subject(f"s{i}", rng.random((4, *grid)).astype(np.float32) * brain, brain,
                           labels)  # fmt: skip
    path = writer.finish(split_fractions=(0.5, 0.25, 0.25), slices=True)
    val = EnhanceSlices(path, "val", contrasts=("t1", "t2", "flair"), target="t1gd", label=3)
    subset = tumour_subset(val, 8)
    assert 0 < len(subset) <= 8
    assert all(bool(item["mask"].any()) for item in subset)
    assert all(float(item["tumour"].sum()) >= float(item["mask"].sum()) for item in subset)
    assert tumour_subset(val, 8).indices == subset.indices
