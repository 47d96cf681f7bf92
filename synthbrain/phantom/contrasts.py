"""Contrasts and acquisition: clean tissue images, bias field, blur, Rician noise, normalisation.

T1w and T1Gd come from the template's own (warped) T1 intensities raised to a per-subject gamma;
T2w and FLAIR are partial-volume mixtures `sum_k p_k mu_k` over CSF / GM / WM with per-subject
tissue means drawn from disjoint ranges, so the orderings T2: CSF > GM > WM and
FLAIR: GM > WM > CSF always hold. Acquisition (SynthSeg-style domain randomisation) multiplies a
smooth bias field, blurs slightly, adds Rician noise inside the brain, then maps the healthy
image's 0.5 / 99.5 brain percentiles to [0, 1]; the pathological image reuses the same bias,
noise and window, so it equals the healthy image wherever the lesion did not change it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy import ndimage

from synthbrain.phantom import fields
from synthbrain.phantom.anatomy import WarpedAnatomy

CONTRASTS = ("t1", "t2", "flair", "t1gd")
TISSUES = ("csf", "gm", "wm")
# Tissue means of the synthesised contrasts (arbitrary units; disjoint ranges fix the ordering).
TISSUE_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "t2": {"csf": (0.85, 1.00), "gm": (0.50, 0.62), "wm": (0.34, 0.44)},
    "flair": {"csf": (0.06, 0.16), "gm": (0.56, 0.68), "wm": (0.42, 0.50)},
}
GAMMA_RANGES = {"t1": (0.9, 1.1), "t1gd": (0.85, 1.15)}
BIAS_NODE_MM = 64.0
BIAS_STD_RANGE = (0.0, 0.15)  # std of the log bias field
BLUR_MM_RANGE = (0.0, 0.8)  # Gaussian sigma
NOISE_RANGE = (0.01, 0.04)  # Rician sigma as a fraction of the brightest tissue mean
PERCENTILES = (0.5, 99.5)
_TRUNCATE = 3.0


@dataclass
class ContrastParams:
    """Appearance and acquisition of one contrast (plain numbers, JSON-able).

    Attributes:
        name: "t1", "t2", "flair" or "t1gd".
        tissue_means: CSF / GM / WM means (T2 and FLAIR; empty for T1 and T1Gd).
        gamma: exponent applied to the template T1 (T1 and T1Gd; 1 otherwise).
        bias_seed, bias_std: the smooth multiplicative bias field exp(bias_std * field).
        blur_mm: Gaussian blur sigma in mm.
        noise_seed, noise_std: Rician noise, sigma = noise_std * brightest tissue mean.
    """

    name: str
    bias_seed: int
    bias_std: float
    blur_mm: float
    noise_seed: int
    noise_std: float
    gamma: float = 1.0
    tissue_means: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> ContrastParams:
        """Rebuild from `asdict` output."""
        return cls(**d)

    def to_dict(self) -> dict:
        """Plain-dict form."""
        return asdict(self)


@dataclass
class Acquisition:
    """Per-voxel acquisition fields of one contrast on the grid (shared by healthy and lesion)."""

    bias: np.ndarray
    noise_real: np.ndarray
    noise_imag: np.ndarray
    sigma: float
    blur_voxels: float


def draw_contrast(generator: torch.Generator, name: str) -> ContrastParams:
    """Draw one contrast's tissue means and acquisition parameters (always the same draws)."""
    u = fields.draw_uniform
    lo, hi = GAMMA_RANGES.get(name, (1.0, 1.0))
    gamma = u(generator, lo, hi)
    ranges = TISSUE_RANGES.get(name, {})
    means = {t: u(generator, *ranges[t]) for t in TISSUES if t in ranges}
    return ContrastParams(
        name=name,
        bias_seed=fields.draw_seed(generator),
        bias_std=u(generator, *BIAS_STD_RANGE),
        blur_mm=u(generator, *BLUR_MM_RANGE),
        noise_seed=fields.draw_seed(generator),
        noise_std=u(generator, *NOISE_RANGE),
        gamma=gamma if name in GAMMA_RANGES else 1.0,
        tissue_means=means,
    )


def tissue_means(anat: WarpedAnatomy, cp: ContrastParams) -> dict[str, float]:
    """Clean-image means of CSF / GM / WM for this contrast (used to paint lesions)."""
    if cp.name in GAMMA_RANGES:
        return {t: float(anat.t1_means[t] ** cp.gamma) for t in TISSUES}
    return {t: float(cp.tissue_means[t]) for t in TISSUES}


def clean_image(anat: WarpedAnatomy, cp: ContrastParams) -> np.ndarray:
    """The noiseless healthy image of one contrast on the grid (0 outside the brain)."""
    if cp.name in GAMMA_RANGES:
        return np.power(anat.t1, np.float32(cp.gamma), dtype=np.float32)
    m = cp.tissue_means
    out = anat.csf * np.float32(m["csf"])
    out += anat.gm * np.float32(m["gm"])
    out += anat.wm * np.float32(m["wm"])
    return out


def prepare_acquisition(
    cp: ContrastParams, brain: np.ndarray, spacing: float, means: dict[str, float]
) -> Acquisition:
    """Bias field and Rician noise fields for one contrast (noise only inside the brain)."""
    shape = brain.shape
    bias = fields.smooth_field(cp.bias_seed, BIAS_NODE_MM, shape)
    bias = np.exp(np.float32(cp.bias_std) * bias, dtype=np.float32)
    rng = np.random.default_rng(cp.noise_seed)
    n = int(brain.sum())
    noise = []
    for _ in range(2):
        full = np.zeros(shape, dtype=np.float32)
        full[brain] = rng.standard_normal(n, dtype=np.float32)
        noise.append(full)
    return Acquisition(
        bias=bias,
        noise_real=noise[0],
        noise_imag=noise[1],
        sigma=float(cp.noise_std * max(means.values())),
        blur_voxels=float(cp.blur_mm / spacing),
    )


def blur_margin(acq: Acquisition) -> int:
    """Voxels of context the blur needs around a region to match the full-volume result."""
    return int(np.ceil(_TRUNCATE * acq.blur_voxels)) + 1


def acquire(
    clean: np.ndarray, acq: Acquisition, brain: np.ndarray, region: tuple[slice, ...] | None = None
) -> np.ndarray:
    """Bias, blur and Rician noise applied to `clean` (which covers `region` of the grid)."""
    region = region or tuple(slice(None) for _ in range(3))
    x = clean * acq.bias[region]
    if acq.blur_voxels > 0.05:
        x = ndimage.gaussian_filter(x, acq.blur_voxels, mode="nearest", truncate=_TRUNCATE)
    sigma = np.float32(acq.sigma)
    real = x + sigma * acq.noise_real[region]
    imag = sigma * acq.noise_imag[region]
    out = np.sqrt(real * real + imag * imag)
    out *= brain[region]
    return out.astype(np.float32, copy=False)


def intensity_window(raw: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    """The healthy image's 0.5 / 99.5 percentiles inside the brain."""
    lo, hi = np.percentile(raw[brain], PERCENTILES)
    return float(lo), float(max(hi, lo + 1e-6))


def normalise(raw: np.ndarray, brain: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] to [0, 1], clip, and zero outside the brain."""
    out = (raw - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    out *= brain
    return out.astype(np.float32, copy=False)
