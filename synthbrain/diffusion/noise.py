"""Gaussian noise from explicit generators, one per batch element if wanted.

With one generator per batch element, each sample's noise depends on its own generator alone, so
sample k of a run is the same whether it is drawn alone, in a batch of 4 or on another shard.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Generators = torch.Generator | Sequence[torch.Generator] | None


def _draw_dtype(dtype: torch.dtype) -> torch.dtype:
    """Draw in float64 for float64 outputs, else float32 (same numbers at every low precision)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _randn_one(
    shape: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """Draw on the generator's device (a CPU generator serves CUDA tensors too), then move."""
    draw_device = device if generator is None else generator.device
    noise = torch.randn(
        tuple(shape), generator=generator, device=draw_device, dtype=_draw_dtype(dtype)
    )
    return noise.to(device=device, dtype=dtype)


def randn(
    shape: Sequence[int],
    generator: Generators = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise of ``shape``.

    Args:
        shape: full shape [B, ...].
        generator: ``None`` (torch's default generator), one ``torch.Generator`` for the whole
            tensor, or a sequence of B generators: element b is drawn from ``generator[b]`` alone.
        device: where the result lives; noise is drawn on each generator's device and moved.
        dtype: the result's dtype (drawn in float32, or float64 for float64).

    Returns:
        A tensor of ``shape`` on ``device`` with ``dtype``.
    """
    device = torch.device(device)
    if generator is None or isinstance(generator, torch.Generator):
        return _randn_one(shape, generator, device, dtype)
    generators = list(generator)
    if len(shape) == 0 or len(generators) != shape[0]:
        raise ValueError(
            f"got {len(generators)} generators for a batch of shape {tuple(shape)}: "
            "pass one generator per batch element"
        )
    return torch.stack([_randn_one(shape[1:], g, device, dtype) for g in generators])


def noise_like(x: Tensor, generator: Generators = None) -> Tensor:
    """Standard normal noise shaped like ``x`` (same dtype and device); see :func:`randn`."""
    return randn(x.shape, generator, x.device, x.dtype)
