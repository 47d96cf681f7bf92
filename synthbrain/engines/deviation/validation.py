"""Validation by the task: lesions implanted into the true substrate against the true lesions.

The denoising loss says little about what a user sees (issue 14: at 5 000 updates the loss had
fallen while implanted lesions were still told from true ones). So, when `[sampling] val_steps`
is set, each validation batch also implants a lesion into the *true* substrate of every window
(what `implant` does on a healthy scan) and compares the distribution of per-lesion statistics
with the true lesions': mean, standard deviation, skewness and a texture term (mean absolute
difference of neighbouring lesion voxels, a GLCM-contrast proxy), per contrast. The gap of a
statistic is |batch mean of the implanted − batch mean of the true| in units of the true
lesions' spread across the batch (the held-out table's rule, docs/deviation.md); `stat_gap` is
the mean gap over statistics and contrasts, the value `select_by` can keep the best model by.
A second draw gives `diversity` (mean in-lesion L1 between two variants), so a collapse of the
variants shows in the curves. Sets without a true substrate (real cohorts) implant into the
model's own substrate of each window instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

STATISTICS = ("mean", "std", "skewness", "texture")


def _neighbour_texture(x: Tensor, m: Tensor) -> Tensor:
    """Mean |x(i) − x(i+1)| over neighbour pairs inside m, per element and contrast [B, C]."""
    total = torch.zeros(x.shape[:2], device=x.device, dtype=x.dtype)
    pairs = torch.zeros(x.shape[0], 1, device=x.device, dtype=x.dtype)
    for axis in range(2, x.ndim):
        n = x.shape[axis] - 1
        both = m.narrow(axis, 0, n) * m.narrow(axis, 1, n)
        diff = (x.narrow(axis, 0, n) - x.narrow(axis, 1, n)).abs()
        total = total + (diff * both).flatten(2).sum(-1)
        pairs = pairs + both.flatten(2).sum(-1)
    return total / pairs.clamp_min(1.0)


def lesion_statistics(x: Tensor, m: Tensor) -> Tensor:
    """Per element and contrast the statistics of x inside m, [B, C, len(STATISTICS)]."""
    w = m.flatten(2)  # [B, 1, N]
    count = w.sum(-1).clamp_min(1.0)
    v = x.flatten(2)
    mean = (v * w).sum(-1) / count
    centred = (v - mean[..., None]) * w
    var = (centred**2).sum(-1) / count
    std = var.clamp_min(1e-12).sqrt()
    skew = (centred**3).sum(-1) / count / std**3
    return torch.stack([mean, std, skew, _neighbour_texture(x, m)], dim=-1)


def stat_gap(implanted: Tensor, true: Tensor) -> Tensor:
    """|mean_b implanted − mean_b true| / (sd_b true + ε) per contrast and statistic, [C, S]."""
    spread = true.std(dim=0, unbiased=False) + 1e-3
    return (implanted.mean(dim=0) - true.mean(dim=0)).abs() / spread


@torch.no_grad()
def implant_metrics(
    model,  # noqa: ANN001 - a DeviationModel (importing it here would be circular)
    x: Tensor,
    m: Tensor,
    healthy: Tensor,
    generator: torch.Generator,
    steps: int,
) -> dict[str, float]:
    """stat_gap (overall and per statistic) and diversity of lesions implanted into `healthy`.

    x: the true lesion windows [B, C, *sp]; m: their masks; healthy: the true substrates (or,
    for sets that store none, the model's own substrates of x).
    """
    keep = m.flatten(1).sum(-1) > 0
    x, m, healthy = x[keep], m[keep], healthy[keep]
    if x.shape[0] < 2:
        return {}
    a = torch.ones(x.shape[0], model.config.n_contrasts, device=x.device)
    x_sub = model.substrate_of(healthy, m, a)
    draws = [
        model.recompose(x_sub, m, model.sample_deviation(x_sub, m, a, generator, steps=steps))
        for _ in range(2)
    ]
    gaps = stat_gap(lesion_statistics(draws[0].float(), m), lesion_statistics(x.float(), m))
    inside = m.expand_as(x)
    diversity = ((draws[0] - draws[1]).abs() * inside).sum() / inside.sum().clamp_min(1.0)
    out = {"stat_gap": float(gaps.mean()), "diversity": float(diversity)}
    for k, name in enumerate(STATISTICS):
        out[f"gap_{name}"] = float(gaps[:, k].mean())
    return out
