"""The residual substrate (issue 14): f_sub as a correction on top of Inp(x, m), never worse at
initialisation, exact off the mask, trained towards the true substrate where a set stores one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthbrain.engines.deviation.config import load_config
from synthbrain.engines.deviation.ops import harmonic_fill, masked_mean
from synthbrain.engines.deviation.tensors import DeviationModel, heal_tensors
from synthbrain.training.request import TrainRequest

TINY = {
    "contrasts": ["t1", "flair"],
    "crop": 16,
    "min_size": 16,
    "timesteps": 40,
    "substrate_mode": "residual",
    "denoiser": {"base_channels": 8, "channel_mults": [1, 2], "attention_levels": [-1]},
    "substrate": {"base_channels": 4, "channel_mults": [1, 2, 2, 2, 2], "attention_levels": []},
}


def residual_model(**changes) -> DeviationModel:
    """A tiny residual-substrate model with its own (untouched) initialisation."""
    torch.manual_seed(0)
    return DeviationModel(load_config(None, {**TINY, **changes})).eval()


def batch(b: int = 2, size: int = 16, dims: int = 2) -> dict[str, torch.Tensor]:
    """Images whose lesion is the healthy image plus 0.4, and the healthy image itself: a true
    substrate that a smooth fill misses (the healthy texture has a stripe pattern)."""
    g = torch.Generator().manual_seed(1)
    shape = (size,) * dims
    ramp = torch.linspace(0, 1, size).reshape(size, *([1] * (dims - 1))).expand(shape)
    stripes = 0.2 * (torch.arange(size) % 2).float().reshape(*([1] * (dims - 1)), size)
    healthy = (0.3 * ramp + stripes + 0.05 * torch.rand(b, 2, *shape, generator=g)).contiguous()
    m = torch.zeros(b, 1, *shape)
    m[(slice(None), slice(None), *([slice(size // 3, 2 * size // 3)] * dims))] = 1
    return {"images": healthy + 0.4 * m, "mask": m, "healthy": healthy}


@pytest.mark.parametrize("dims", [2, 3])
def test_heal_at_init_is_inp_exactly_and_input_off_mask(dims):
    model = residual_model(dims=dims)
    data = batch(2, 16) if dims == 2 else batch(1, 32, 3)  # 3-D: 4 poolings need 32³
    x, m = data["images"], data["mask"]
    a = torch.ones(x.shape[0], 2)
    healed = heal_tensors(model, x, m, a)
    assert torch.equal(healed, harmonic_fill(x, m, iterations=model.config.inpaint_iterations))
    off = m.expand_as(x) == 0
    assert torch.equal(healed[off], x[off])  # bit for bit


def test_direct_mode_is_not_inp_at_init():
    """The paper's f_sub (direct) starts from a random output: the guarantee is the residual's."""
    model = residual_model(substrate_mode="direct")
    data = batch()
    x, m = data["images"], data["mask"]
    healed = heal_tensors(model, x, m, torch.ones(2, 2))
    assert not torch.equal(healed, harmonic_fill(x, m))


def test_residual_substrate_learns_the_true_substrate_and_stays_exact_off_mask():
    model = residual_model().train()
    data = batch()
    x, m, healthy = data["images"], data["mask"], data["healthy"]
    a = torch.ones(2, 2)
    inside = m.expand_as(x)
    inp_l1 = masked_mean((harmonic_fill(x, m) - healthy).abs(), inside)
    opt = torch.optim.Adam(model.substrate.parameters(), lr=3e-3)
    for _ in range(60):
        raw = model.substrate_raw(x, m, a)
        loss = model.substrate_loss(x, m, a, raw, healthy)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    healed = heal_tensors(model, x, m, a)
    assert masked_mean((healed - healthy).abs(), inside) < 0.8 * inp_l1
    off = inside == 0
    assert torch.equal(healed[off], x[off])


def test_training_step_uses_the_true_substrate_and_validation_reports_l1():
    model = residual_model().train()
    data = batch()
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    with_truth = model.training_step(data, gen())
    # without a stored substrate the target is Inp itself: the zero correction is optimal
    without = model.training_step({k: data[k] for k in ("images", "mask")}, gen())
    assert with_truth["sub"] > 0 and without["sub"] == 0
    with_truth["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.substrate.parameters())
    val = model.eval().validation_step(data, gen())
    assert val["sub_l1"] == pytest.approx(val["inp_l1"]) and val["inp_l1"] > 0
    assert "sub_l1" not in model.validation_step({k: data[k] for k in ("images", "mask")}, gen())


def test_lesion_items_carry_the_stored_substrate(tmp_path):
    from synthbrain.engines.deviation.training import LesionItems
    from synthbrain.io.dataset import H5Writer

    rng, grid = np.random.default_rng(0), (20, 20, 4)
    writer = H5Writer(tmp_path / "set.h5", contrasts=["t1", "flair"], spacing=[2.0] * 3,
                      grid=list(grid), label_names={"background": 0, "lesion": 1},
                      label_convention="binary")  # fmt: skip
    for i in range(2):
        healthy = rng.random((2, *grid)).astype(np.float32) * 0.5
        labels = np.zeros(grid, np.uint8)
        labels[6:12, 6:12, 1:3] = 1
        writer.add_subject(f"s{i}", images=healthy + 0.4 * labels, healthy=healthy,
                           brain_mask=np.ones(grid, np.uint8), labels=labels)  # fmt: skip
    writer.finish(split_fractions=(1.0, 0.0, 0.0), seed=0, slices=True)
    items = LesionItems(tmp_path / "set.h5", "train", load_config(None, TINY))
    assert items.has_healthy and len(items) == 4
    item = items[0]
    assert item["healthy"].shape == item["images"].shape
    lesion = item["mask"][0] > 0
    assert torch.allclose(item["images"][:, lesion] - item["healthy"][:, lesion],
                          torch.tensor(0.4))  # fmt: skip


def test_train_selects_the_substrate_by_validation_l1(tmp_path):
    """A tiny residual run with select_by = val_sub_l1 exports the best validated weights."""
    import json

    from synthbrain.engines.deviation.training import train
    from synthbrain.io.dataset import H5Writer

    rng, grid = np.random.default_rng(0), (20, 20, 4)
    writer = H5Writer(tmp_path / "set.h5", contrasts=["t1", "flair"], spacing=[2.0] * 3,
                      grid=list(grid), label_names={"background": 0, "lesion": 1},
                      label_convention="binary")  # fmt: skip
    for i in range(4):
        healthy = rng.random((2, *grid)).astype(np.float32) * 0.5
        labels = np.zeros(grid, np.uint8)
        labels[6:12, 6:12, 1:3] = 1
        writer.add_subject(f"s{i}", images=healthy + 0.4 * labels, healthy=healthy,
                           brain_mask=np.ones(grid, np.uint8), labels=labels)  # fmt: skip
    writer.finish(split_fractions=(0.5, 0.5, 0.0), seed=0, slices=True)
    overrides = {**TINY, "train.num_workers": 0, "train.val_batches": 1, "train.warmup": 1,
                 "train.val_every": 1, "train.select_by": "val_sub_l1",
                 "train.higher_is_better": False}  # fmt: skip
    summary = train(TrainRequest(data=tmp_path / "set.h5", out=tmp_path / "run", steps=3,
                                 batch_size=2, device="cpu", overrides=overrides))  # fmt: skip
    vals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    vals = [r for r in vals if r["kind"] == "val"]
    assert len(vals) == 3 and all(r["val_inp_l1"] > 0 for r in vals)
    assert summary["best"]["value"] == pytest.approx(min(r["val_sub_l1"] for r in vals))


def test_residual_implant_exact_off_mask_variants_differ_seeds_reproduce():
    from synthbrain.engines.deviation.tensors import element_generators, implant_tensors

    model = residual_model()
    with torch.no_grad():  # zero-initialised heads would predict ε̂ = 0 everywhere
        for net in (model.denoiser, model.substrate):
            for p in net.heads.parameters():
                p.add_(0.05 * torch.randn_like(p))
    data = batch(3)
    x, m, a = data["images"], data["mask"], torch.ones(3, 2)
    first = implant_tensors(model, x, m, a, element_generators(7, 3), steps=4)
    again = implant_tensors(model, x, m, a, element_generators(7, 3), steps=4)["image"]
    other = implant_tensors(model, x, m, a, element_generators(8, 3), steps=4)["image"]
    off = m.expand_as(x) == 0
    assert torch.equal(first["image"][off], x[off]) and torch.equal(other[off], x[off])
    assert torch.count_nonzero(first["deviation"][off]) == 0  # the projection keeps r at 0 off m
    assert torch.equal(first["image"], again)
    assert (first["image"] - other).abs().max() > 1e-4
    assert not torch.equal(first["substrate"], harmonic_fill(x, m))  # the correction acts
