"""The paired engine's shared run pieces: load weights, decode, composite, the healed substrate.

generate: sample k uses only derive_seed(run seed, k) (one generator per sample, noise drawn on
the CPU), so shards and batch sizes give the same files; --resume skips samples whose files and
manifest line verify. The substrate of a generated sample is its healed counterpart (heal with the
sample's own mask as the LCG gate), composited so that image and substrate are identical outside
the lesion's seam band.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from synthbrain.engines.paired.guidance import (
    ACGSettings,
    SamplerSettings,
    edit,
    substrate_steps,
)
from synthbrain.engines.paired.model import PairedConfig, PairedModel
from synthbrain.training.config import resolve_device

DEFAULT_STEPS = 50
SUBSTRATE_T_START = 300
SEAM_VOXELS = 2  # the seam band around a lesion, in model-grid voxels (4 mm at 2 mm)


@dataclass
class Bundle:
    """A loaded paired model and where it came from."""

    model: PairedModel
    name: str
    path: Path
    sha256: str
    device: torch.device
    precision: str


def load_bundle(
    weights: str | None, lesion: str, device: str = "auto", precision: str | None = None
) -> Bundle:
    """The paired model for `lesion` (or the named / given weights), on `device`, in eval mode.

    precision: "fp32" or "bf16" (default: bf16 autocast on CUDA, fp32 on the CPU).
    """
    from synthbrain.weights import load_engine_weights

    loaded = load_engine_weights("paired", weights, lesion=lesion)
    model = PairedModel(PairedConfig.model_validate(loaded.config))
    model.load_state_dict(loaded.state)
    name, path, sha = loaded.name, loaded.path, loaded.sha256
    dev = resolve_device(device)
    precision = precision or ("bf16" if dev.type == "cuda" else "fp32")
    model.batch_invariant = dev.type == "cpu"
    return Bundle(model.to(dev).eval(), name, path, sha, dev, precision)


# ---------------------------------------------------------------------- shared pieces


def avg_pool_gate(mask: torch.Tensor) -> torch.Tensor:
    """x_soft of LCG: the voxel-space mask average-pooled onto the latent grid (x4)."""
    return F.avg_pool3d(mask.float(), 4)


def decode_images(model: PairedModel, z: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1], zero outside the template brain."""
    return model.decode(z).float().clamp(0.0, 1.0) * brain


def soft_to_mask(model: PairedModel, x: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """Binary masks of lesion states: upsampled soft map > 0.5, inside the brain."""
    return (model.x_to_soft(x) > 0.5) & (brain > 0)


def composite(base: torch.Tensor, edited: torch.Tensor, core: torch.Tensor, seam: int) -> tuple:
    """base + w·(edited − base), w = 1 on the core falling to 0 across the seam band."""
    from synthbrain.engines.paired.edit import blend_weight

    w = np.stack([blend_weight(c[0].cpu().numpy(), seam) for c in core])[:, None]
    w_t = torch.from_numpy(w).to(base.device)
    return base + w_t * (edited - base), w_t > 0


def healed_substrate(
    bundle: Bundle,
    y0: torch.Tensor,
    mask: torch.Tensor,
    generators: list[torch.Generator],
    run: SamplerSettings,
    t_start: int = SUBSTRATE_T_START,
    steps: int | None = None,
) -> torch.Tensor:
    """Heal latents with their own masks as the LCG gate; returns the healed latents.

    `steps` defaults to the stride `run` has over the whole schedule (15 for 50 of 1024).
    """
    model = bundle.model
    n = steps or substrate_steps(run.steps, t_start, model.schedule.T)
    sub = SamplerSettings(run.sampler, n, run.spacing, run.eta, run.precision)
    acg = ACGSettings(t_ref=t_start)
    empty = model.empty_x(y0.shape[0], y0)
    return edit(
        model, y0, empty, generators, sub, t_start=t_start, acg=acg, x_soft=avg_pool_gate(mask)
    )


def brain_tensor(bundle: Bundle) -> torch.Tensor:
    """The template brain mask on the model grid, [1, 1, *grid]."""
    from synthbrain.spatial.template import template_arrays

    brain = template_arrays(bundle.model.config.spacing, bundle.model.config.grid)[1]
    return torch.from_numpy(np.array(brain, np.float32))[None, None].to(bundle.device)
