"""Losses and task scores of the deformation engine that look at the tumour (issue 15).

The enhancing tumour is ~0.1 % of the voxels, so a plain v-loss is satisfied by copying T1 and
predicting no enhancement. These helpers up-weight the loss inside and around the tumour, add a
soft Dice loss on the mask stream's x̂0 and score a prediction the way the task is judged
(enhancing-tumour Dice, PSNR inside the tumour), for validation and checkpoint selection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# The mask channel lives in [−1, 1] and is thresholded at 0; sigmoid(4·m) maps ±1 to 0.02 / 0.98
# and keeps a gradient for values outside [−1, 1], which a clamp to [0, 1] would not.
MASK_SHARPNESS = 4.0


def tumour_region(batch: dict[str, Tensor]) -> Tensor:
    """The whole tumour [B, 1, H, W] (labels > 0) of a batch; the enhancing mask when absent."""
    return batch.get("tumour", batch["mask"])


def region_weights(tumour: Tensor, weight: float, margin: int) -> Tensor:
    """Per-pixel loss weights 1 + weight·(tumour dilated by `margin` pixels), [B, 1, H, W].

    The margin matters: the enhancing rim sits on the tumour's border, and the model must also
    learn where enhancement stops.
    """
    if weight == 0.0:
        return torch.ones_like(tumour)
    near = tumour.float()
    if margin > 0:
        near = F.max_pool2d(near, 2 * margin + 1, stride=1, padding=margin)
    return 1.0 + weight * near


def mask_probability(m0: Tensor) -> Tensor:
    """Soft enhancing-tumour probability of a mask-channel estimate in [−1, 1]."""
    return torch.sigmoid(MASK_SHARPNESS * m0)


def soft_dice_loss(
    prob: Tensor, target: Tensor, item_weight: Tensor | None = None, smooth: float = 1.0
) -> Tensor:
    """Mean over items of 1 − soft Dice, each item weighted by `item_weight` [B] if given.

    The smoothing term makes an item without tumour cost Σp / (Σp + 1): it still pushes false
    positives down instead of dividing by zero.
    """
    dims = tuple(range(1, prob.ndim))
    inter = (prob * target).sum(dims)
    total = prob.sum(dims) + target.sum(dims)
    loss = 1.0 - (2.0 * inter + smooth) / (total + smooth)
    if item_weight is not None:
        loss = loss * item_weight
    return loss.mean()


def weighted_error(err: Tensor, weights: Tensor) -> Tensor:
    """Per-item mean of err·weights over channels and pixels, [B]."""
    return (err * weights).mean(dim=tuple(range(1, err.ndim)))


def dice_score(pred: Tensor, target: Tensor) -> Tensor:
    """Hard Dice of two boolean tensors over all their elements (1 when both are empty)."""
    pred, target = pred.bool(), target.bool()
    total = pred.sum() + target.sum()
    if total == 0:
        return torch.ones((), device=pred.device)
    return 2.0 * (pred & target).sum() / total


def psnr_in(image: Tensor, reference: Tensor, region: Tensor) -> Tensor:
    """PSNR (dB, data range 1) of image against reference inside `region` (nan when empty)."""
    region = region.bool()
    if not region.any():
        return torch.full((), float("nan"), device=image.device)
    mse = (image - reference)[region].pow(2).mean().clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


def task_scores(state: Tensor, batch: dict[str, Tensor], mask_stream: bool) -> dict[str, Tensor]:
    """ET Dice and tumour PSNR of a sampled state [B, S, H, W] in [−1, 1] against a batch.

    "select" = Dice + PSNR / 20 (dB): one number for checkpoint selection in which 0.05 Dice
    and 1 dB weigh the same; models without a mask are selected by PSNR alone.
    """
    state = state.float()  # a bf16 autocast sample
    image = ((state[:, :1] + 1.0) / 2.0).clamp(0.0, 1.0)
    psnr = psnr_in(image, batch["target"], tumour_region(batch) > 0.5)
    out = {"psnr_tumour": psnr}
    select = psnr / 20.0
    if mask_stream:
        out["dice_et"] = dice_score(state[:, 1:2] > 0.0, batch["mask"] > 0.5)
        select = select + out["dice_et"]
    out["select"] = select
    return out
