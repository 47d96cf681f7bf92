"""Stage-2 latents of the paired engine: encode each example once, normalise, cache.

The latent normalisation (per-channel shift and scale of the encoder mean, measured here) is what
makes the latents unit-variance for the diffusion; it is stored in the model config, so the
weights file carries it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from synthbrain.engines.paired.data import Example, iter_examples
from synthbrain.engines.paired.model import PairedModel


@torch.no_grad()
def _encode_batch(model: PairedModel, batch: list[Example], device: torch.device) -> tuple:
    """Raw (unnormalised) encoder means and lesion states of a few examples."""
    images = torch.from_numpy(np.stack([e.image for e in batch]).astype(np.float32)).to(device)
    masks = torch.from_numpy(np.stack([e.mask for e in batch]).astype(np.float32))[:, None]
    z = model.encode_raw(images).cpu()
    x = model.mask_to_x(masks.to(device)).cpu()
    return z, x


def compute_latents(
    model: PairedModel,
    data: Path,
    settings,  # noqa: ANN001 - paired_train.DataSettings
    seed: int,
    device: torch.device,
    advance: Callable[[int], None] = lambda n: None,
) -> tuple[Tensor, Tensor, dict[str, int]]:
    """Encode the stage-2 examples; sets the model's latent normalisation from them.

    Returns:
        (z, x, counts): normalised latents [N, Cz, *latent] (fp16), lesion states
        [N, Cx, *latent] (fp16) and the number of examples of each kind.
    """
    model.to(device).eval()
    pseudo = settings.pseudo_fraction if settings.anomaly_randomisation else 0.0
    examples = iter_examples(
        data, "train", healthy_fraction=settings.healthy_fraction, pseudo_fraction=pseudo,
        seed=seed, max_subjects=settings.max_subjects,
    )  # fmt: skip
    zs, xs, counts, pending = [], [], {}, []
    for example in examples:
        counts[example.kind] = counts.get(example.kind, 0) + 1
        pending.append(example)
        if len(pending) == settings.encode_batch:
            _flush(model, pending, device, zs, xs, advance)
    if pending:
        _flush(model, pending, device, zs, xs, advance)
    z, x = torch.cat(zs), torch.cat(xs)
    shift, scale = latent_norm(z, shared=settings.latent_norm == "shared")
    model.set_latent_norm(shift, scale)
    z = (z - torch.tensor(shift).reshape(1, -1, 1, 1, 1)) * torch.tensor(scale).reshape(
        1, -1, 1, 1, 1
    )
    model.train()
    return z.half(), x.half(), counts


def _flush(model, pending, device, zs, xs, advance) -> None:  # noqa: ANN001
    """Encode the pending examples and empty the list."""
    z, x = _encode_batch(model, pending, device)
    zs.append(z)
    xs.append(x)
    advance(len(pending))
    pending.clear()


def latent_norm(z: Tensor, *, shared: bool = False) -> tuple[list[float], list[float]]:
    """Per-channel mean and 1/std of latents [N, C, ...].

    shared: one scale for every channel, the 1/std of the highest-variance one (the Haar
    low-pass band), so each channel keeps its share of the energy, as WDM's raw coefficients
    do. Per-channel scaling lifts the 63 near-zero detail bands to unit variance, and a whole-grid
    loss then spends 63/64 of its weight on them and 1/64 on the band that holds the anatomy.
    """
    flat = z.float().transpose(0, 1).reshape(z.shape[1], -1)
    mean = flat.mean(1)
    std = flat.std(1).clamp_min(1e-6)
    if shared:
        std = torch.full_like(std, float(std.max()))
    return mean.tolist(), (1.0 / std).tolist()


def save_latents(path: Path, z: Tensor, x: Tensor, counts: dict[str, int], norm: tuple) -> None:
    """Cache latents, counts and the normalisation (tensors only: loadable with weights_only)."""
    from synthbrain.io.statedict import save_tensors

    kinds = sorted(counts)
    payload = {
        "z": z,
        "x": x,
        "counts": torch.tensor([counts[k] for k in kinds]),
        "shift": torch.tensor(norm[0]),
        "scale": torch.tensor(norm[1]),
    }
    save_tensors(path, {"kinds": ",".join(kinds), **payload})


def load_latents(path: Path) -> tuple[Tensor, Tensor, dict[str, int], tuple]:
    """Read a cache written by `save_latents`."""
    from synthbrain.io.statedict import load_tensors

    data = load_tensors(path)
    kinds = [k for k in data["kinds"].split(",") if k]
    counts = dict(zip(kinds, (int(c) for c in data["counts"]), strict=True))
    norm = (data["shift"].tolist(), data["scale"].tolist())
    return data["z"], data["x"], counts, norm
