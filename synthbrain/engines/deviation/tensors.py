"""Deviation-space diffusion (PathoSyn, METHODS.md §1): the `deviation` engine.

An image is a deterministic anatomical substrate plus a stochastic deviation supported on the
lesion mask, x = x_sub + r (Eq. 1). `f_sub` fills the lesion from its surroundings (trained
against a fixed harmonic inpainting, Eq. 3); a diffusion model draws the residual r over the
mask only, projecting r_t ← r_t ⊙ m after every step (Eq. 8); the image is recomposed as
x̂ = x_sub + s · S ⊙ r with a soft blend map S and a severity s (Eq. 14).

This module is the model bundle and the array-level operations (it knows no files). The command
functions the api calls (`train`, `generate`, `heal`, `implant`) hand over to the file-level
modules `deviation_train`, `deviation_generate` and `deviation_run`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from synthbrain.diffusion import Generators
from synthbrain.engines.deviation.config import DeviationConfig, load_config
from synthbrain.engines.deviation.model import ClampX0, DeviationModel, MaskProjection
from synthbrain.engines.deviation.ops import harmonic_fill
from synthbrain.errors import InputError
from synthbrain.nets import pad_to_multiple, unpad

__all__ = [
    "ClampX0",
    "DeviationConfig",
    "DeviationModel",
    "MaskProjection",
    "box_batch",
    "heal_tensors",
    "implant_tensors",
    "load_config",
    "unbatch",
]


# ---------------------------------------------------------------- array-level operations


def implant_tensors(
    model: DeviationModel,
    x: Tensor,
    m: Tensor,
    a: Tensor,
    generator: Generators,
    *,
    severity: float = 1.0,
    steps: int | None = None,
    sampler: str | None = None,
    eta: float | None = None,
) -> dict[str, Tensor]:
    """One lesion per batch element for images x [B, C, *sp] and masks m [B, 1, *sp].

    Deviation space: x_sub = x off m and f_sub on m; r by Alg. 2; x̂ = x_sub + s · S ⊙ r.
    Image space (the baseline): the whole window is drawn, then pasted into m (the unpasted draw
    is returned as "raw" to measure what the model did to the anatomy).

    Returns:
        {"image": x̂, "substrate": x_sub, "deviation": r (deviation space) or "raw"}.
    """
    with torch.no_grad():
        if model.config.space == "image":
            raw = model.sample_image(x, m, a, generator, steps=steps, sampler=sampler, eta=eta)
            image = x + severity * m * (raw - x)
            return {"image": image, "substrate": x, "raw": raw}
        x_sub = model.substrate_of(x, m, a)
        r = model.sample_deviation(x_sub, m, a, generator, steps=steps, sampler=sampler, eta=eta)
        image = model.recompose(x_sub, m, r, severity)  # Eq. 14 (or m ⊙ r)
        return {"image": image, "substrate": x_sub, "deviation": r}


def heal_tensors(model: DeviationModel, x: Tensor, m: Tensor, a: Tensor) -> Tensor:
    """The substrate as the healed image: x off m, f_sub(x ⊙ m̄, m̄) on m."""
    if model.config.space == "image":
        raise InputError("image-space (baseline) weights cannot heal; use deviation weights")
    with torch.no_grad():
        return model.substrate_of(x, m, a)


def inpaint_tensors(x: Tensor, m: Tensor, iterations: int = 40) -> Tensor:
    """Inp(x, m) alone (the fixed harmonic fill), e.g. as the heal baseline."""
    return harmonic_fill(x, m, iterations=iterations)


def box_batch(
    x: np.ndarray, m: np.ndarray, dims: int, multiple: int
) -> tuple[Tensor, Tensor, np.ndarray | None, tuple]:
    """A box [C, X, Y, Z] as a model batch: the axial slices that meet m (2-D) or one volume.

    Returns:
        (x [B, C, ...], m [B, 1, ...], the slice indices (None in 3-D), the padding to undo).
    """
    xt, mt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(m))
    if dims == 2:
        zs = np.flatnonzero(m.any(axis=(0, 1)))
        xb = xt[..., zs].permute(3, 0, 1, 2)
        mb = mt[..., zs].permute(2, 0, 1)[:, None]
    else:
        zs, xb, mb = None, xt[None], mt[None, None]
    xb, pad = pad_to_multiple(xb.contiguous(), multiple)
    mb, _ = pad_to_multiple(mb.contiguous(), multiple)
    return xb, mb, zs, pad


def unbatch(full: np.ndarray, batch: Tensor, zs: np.ndarray | None, pad: tuple) -> np.ndarray:
    """Put a model batch back into a copy of the box `full` [C, X, Y, Z]."""
    out = full.copy()
    values = unpad(batch, pad).detach().to("cpu", torch.float32).numpy()
    if zs is None:
        out[...] = values[0]
    else:
        out[..., zs] = np.moveaxis(values, 0, -1)
    return out


def element_generators(seed: int, count: int, device: str | torch.device = "cpu") -> list:
    """One generator per batch element j, seeded derive_seed(seed, j) (replayable per slice)."""
    from synthbrain.rng import derive_seed, generator_for

    return [generator_for(derive_seed(seed, j), device) for j in range(count)]


def availability(model: DeviationModel, given: Sequence[float], batch: int, device) -> Tensor:  # noqa: ANN001
    """The contrast availability a [B, C] of a box."""
    a = torch.as_tensor(np.asarray(given, np.float32), device=device)
    return a[None].expand(batch, model.config.n_contrasts)


# ---------------------------------------------------------------- commands (file level)
