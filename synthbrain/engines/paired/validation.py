"""Task metrics of the paired diffusion stage, for checkpoint selection (issue 13).

The loss of the lesion branch is dominated by the ~99 % of its entries that are background, so
it says little about whether the branch draws lesions. What decides that is measured directly:
the lesion branch's one-step estimate x̂0 from the true state noised to t (the image latent
noised alike) is thresholded at 0.5 and scored by Dice against the true mask, at t = 100, 300
and 500 of a 1000-step schedule (the probe of docs/paired.md, here on the latent validation
examples; a shorter schedule is probed at the same fractions of its length). The brain branch
is scored by the PSNR of its one-step image-latent estimate, conditioned on the true lesion state,
in latent units (`psnr_brain`) and, decoded, in image units (`psnr_image`, peak 1: images live in
[0, 1]). Only the second compares models whose latents are normalised differently.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from synthbrain.diffusion import q_sample
from synthbrain.engines.paired.tensor_ops import seeded_randn

DICE_T = (100, 300, 500)
BRAIN_T = 300


def validation_metrics(model, batch: dict[str, Tensor], generator: torch.Generator) -> dict:  # noqa: ANN001
    """The diffusion losses, dice_t100/300/500 and their mean `dice`, psnr_brain, psnr_image."""
    out = dict(model.training_step(batch, generator))
    if model.stage != "diffusion":
        return out
    z, x = batch["z"].float(), batch["x"].float()
    truth = model.x_to_soft(x) > 0.5
    has_lesion = truth.flatten(1).any(1)
    dices = []
    for t_val in DICE_T:
        t = _timesteps(model, t_val, z)
        x_t = q_sample(model.schedule, x, t, seeded_randn(x, generator))
        y_t = q_sample(model.schedule, z, t, seeded_randn(z, generator))
        x_hat = model.x0_from(x_t, t, model.lesion_out(x_t, y_t, t).float()).clamp(-1, 1)
        score = _dice(model.x_to_soft(x_hat) > 0.5, truth, has_lesion)
        out[f"dice_t{t_val}"] = score
        dices.append(score)
    out["dice"] = sum(dices) / len(dices)
    out["psnr_brain"], out["psnr_image"] = _brain_psnr(model, z, x, generator)
    return out


def _dice(pred: Tensor, truth: Tensor, keep: Tensor) -> float:
    """Mean Dice over the examples in `keep` (NaN when none has a lesion)."""
    if not bool(keep.any()):
        return math.nan
    p, g = pred[keep].flatten(1).float(), truth[keep].flatten(1).float()
    inter = (p * g).sum(1)
    dice = 2.0 * inter / (p.sum(1) + g.sum(1)).clamp_min(1.0)
    return float(dice.mean())


def _brain_psnr(model, z: Tensor, x: Tensor, generator: torch.Generator) -> tuple[float, float]:  # noqa: ANN001
    """PSNR of the brain branch's ŷ0 at BRAIN_T: in latent units (peak 2: latents live in about
    [-1, 1]) and decoded to images (peak 1)."""
    t = _timesteps(model, BRAIN_T, z)
    y_t = q_sample(model.schedule, z, t, seeded_randn(z, generator))
    y_hat = model.x0_from(y_t, t, model.brain_out(y_t, x, t).float(), "brain")
    latent = _psnr(y_hat, z, peak=2.0)
    image = _psnr(model.decode(y_hat).clamp(0, 1), model.decode(z).clamp(0, 1), peak=1.0)
    return latent, image


def _psnr(estimate: Tensor, truth: Tensor, *, peak: float) -> float:
    mse = float(((estimate - truth) ** 2).mean())
    return 10.0 * math.log10(peak**2 / max(mse, 1e-12))


def _timesteps(model, t_of_1000: int, like: Tensor) -> Tensor:  # noqa: ANN001
    """t_of_1000 at the same fraction of the model's schedule, one per example."""
    T = model.schedule.T
    t = min(T - 1, round(t_of_1000 * T / 1000))
    return torch.full((like.shape[0],), t, device=like.device)
