"""Training data of the paired engine: image crops, anomaly randomisation, precomputed latents.

Stage 1 (autoencoder) reads random crops of the pathological images and healthy substrates of an
HDF5 training set. Stage 2 (diffusion) trains on latents computed once per example with the frozen
autoencoder: the pathological images with their masks, healthy substrates with empty masks, and
pseudo-pathological pairs made by anomaly randomisation (METHODS §2, USB's stroke training data):
a lesion mask from another subject, randomly flipped / rotated / scaled / elastically deformed,
painted into a healthy brain with a lesion-like intensity seen in training and soft edges.
Every random choice is drawn first from a torch.Generator (`draw_anomaly`), then applied
deterministically (`apply_anomaly`), so each pseudo-lesion can be replayed from its parameters.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from synthbrain.io.dataset import read_subject, split_ids
from synthbrain.io.h5format import LazyH5, open_set
from synthbrain.rng import hash_seed


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    """One uniform draw in [low, high)."""
    return low + (high - low) * float(torch.rand((), generator=generator))


@dataclass
class AnomalyParams:
    """One pseudo-lesion: which mask, how it is moved and deformed, and how it is painted."""

    source: int
    flip: bool
    angles_deg: tuple[float, float, float]
    scale: float
    shift_mm: tuple[float, float, float]
    elastic_mm: float
    field_seed: int
    ratio: float
    texture: float
    edge_sigma_vox: float


def draw_anomaly(generator: torch.Generator, n_sources: int, ratios: list[float]) -> AnomalyParams:
    """Draw a pseudo-lesion's parameters (source mask index and lesion intensity ratio too)."""
    source = int(torch.randint(0, n_sources, (), generator=generator))
    ratio = ratios[int(torch.randint(0, len(ratios), (), generator=generator))]
    return AnomalyParams(
        source=source,
        flip=bool(torch.rand((), generator=generator) < 0.5),
        angles_deg=tuple(_uniform(generator, -15.0, 15.0) for _ in range(3)),  # type: ignore[arg-type]
        scale=float(np.exp(_uniform(generator, np.log(0.8), np.log(1.25)))),
        shift_mm=tuple(_uniform(generator, -8.0, 8.0) for _ in range(3)),  # type: ignore[arg-type]
        elastic_mm=_uniform(generator, 0.0, 4.0),
        field_seed=int(torch.randint(0, 2**31 - 1, (), generator=generator)),
        ratio=float(ratio) * _uniform(generator, 0.9, 1.1),
        texture=_uniform(generator, 0.0, 0.15),
        edge_sigma_vox=_uniform(generator, 0.5, 1.2),
    )


def _rotation(angles_deg: tuple[float, float, float]) -> np.ndarray:
    """3x3 rotation about x, then y, then z."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def smooth_field(seed: int, shape: tuple[int, ...], node: int = 8, channels: int = 3) -> np.ndarray:
    """Smooth random fields [channels, *shape] of unit-ish amplitude (coarse noise, linear zoom)."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((channels, *[max(2, s // node + 2) for s in shape]))
    zoom = [s / c for s, c in zip(shape, coarse.shape[1:], strict=True)]
    window = tuple(slice(0, s) for s in shape)
    return np.stack([ndimage.zoom(c, zoom, order=1)[window] for c in coarse]).astype(np.float32)


def transform_mask(mask: np.ndarray, p: AnomalyParams, spacing: float) -> np.ndarray:
    """The source mask flipped, rotated and scaled about its centroid, shifted, deformed."""
    if not mask.any():
        return mask.astype(bool)
    centre = np.array(ndimage.center_of_mass(mask))
    linear = _rotation(p.angles_deg) * p.scale
    if p.flip:
        linear = linear @ np.diag([-1.0, 1.0, 1.0])  # left-right mirror (RAS axis 0)
    offset = centre + np.asarray(p.shift_mm) / spacing
    box = _moved_box(mask, centre, linear, offset, p.elastic_mm / spacing + 2.0)
    shape = tuple(b.stop - b.start for b in box)
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    grid += np.array([b.start for b in box], np.float32)[:, None]
    coords = np.linalg.inv(linear) @ (grid - offset[:, None]) + centre[:, None]
    if p.elastic_mm > 0:
        field = smooth_field(p.field_seed, shape).reshape(3, -1)
        coords = coords + field * (p.elastic_mm / spacing)
    values = ndimage.map_coordinates(mask.astype(np.float32), coords, order=1, mode="constant")
    out = np.zeros(mask.shape, bool)
    out[box] = values.reshape(shape) > 0.5
    return out


def _moved_box(mask, centre, linear, offset, margin: float) -> tuple[slice, ...]:  # noqa: ANN001
    """The region (with a margin) that holds the transformed mask: where to evaluate it."""
    idx = np.argwhere(mask)
    lo, hi = idx.min(0) - 1, idx.max(0) + 1
    corners = np.array(
        [[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])]
    )
    moved = (linear @ (corners - centre).T).T + offset
    start = np.clip(np.floor(moved.min(0) - margin), 0, None).astype(int)
    stop = np.minimum(np.ceil(moved.max(0) + margin) + 1, mask.shape).astype(int)
    stop = np.maximum(stop, start + 1)
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))


def apply_anomaly(
    healthy: np.ndarray,
    brain: np.ndarray,
    source_mask: np.ndarray,
    p: AnomalyParams,
    spacing: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint a pseudo-lesion into a healthy image [C, X, Y, Z]; returns (image, mask uint8).

    The lesion's intensity is the healthy tissue's times `p.ratio` (a lesion-to-tissue ratio
    measured on the training lesions), with a little smooth texture; its edges are soft (the
    binary mask smoothed by `p.edge_sigma_vox`), the mask is kept inside the brain.
    """
    mask = transform_mask(source_mask > 0, p, spacing) & (brain > 0)
    if not mask.any():  # moved out of the brain: keep the source where it was
        mask = (source_mask > 0) & (brain > 0)
    weight = np.clip(ndimage.gaussian_filter(mask.astype(np.float32), p.edge_sigma_vox), 0, 1)
    weight = np.maximum(weight, mask) * (brain > 0)
    texture = 1.0 + p.texture * smooth_field(p.field_seed + 1, mask.shape, node=3, channels=1)[0]
    lesion = np.clip(healthy * p.ratio * texture, 0.0, 1.0)
    image = healthy * (1.0 - weight) + lesion * weight
    return image.astype(np.float32), mask.astype(np.uint8)


def lesion_ratio(image: np.ndarray, healthy: np.ndarray, mask: np.ndarray) -> float | None:
    """Mean lesion intensity over mean healthy intensity at the same voxels (first channel)."""
    inside = mask > 0
    if inside.sum() < 4:
        return None
    base = float(healthy[0][inside].mean())
    return float(image[0][inside].mean()) / base if base > 1e-3 else None


# ---------------------------------------------------------------------- stage 1: crops


class CropDataset(LazyH5, torch.utils.data.Dataset):
    """Random crops of the images and healthy substrates of an HDF5 split, for the autoencoder.

    Item i reads subject i mod N (its pathological image for even rounds, its healthy
    substrate for odd ones) at a crop position hashed from (seed, i): deterministic, so a resumed
    run reads what the original would. Crops are drawn where the template brain is.
    """

    def __init__(
        self, path: str | os.PathLike[str], split: str, *, crop: int, seed: int = 0,
        repeats: int = 2000,
    ) -> None:  # fmt: skip
        self.path = Path(path)
        self.ids = split_ids(self.path, split)
        self.crop, self.seed, self.repeats = int(crop), int(seed), int(repeats)
        with open_set(self.path) as h5:
            first = h5["subjects"][self.ids[0]]
            brain = first["brain_mask"][()] > 0
            self.has_healthy = [("healthy" in h5["subjects"][s]) for s in self.ids]
        self.lo, self.hi = _crop_range(brain, self.crop)

    def __len__(self) -> int:
        return len(self.ids) * self.repeats

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        n = len(self.ids)
        subject, round_ = index % n, index // n
        key = "healthy" if (round_ % 2 and self.has_healthy[subject]) else "images"
        rng = np.random.default_rng(hash_seed("crop", self.seed, index))
        start = [int(rng.integers(lo, hi + 1)) for lo, hi in zip(self.lo, self.hi, strict=True)]
        region = tuple(slice(s, s + self.crop) for s in start)
        data = self._file()["subjects"][self.ids[subject]][key][(slice(None), *region)]
        return {"image": torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))}


def _crop_range(brain: np.ndarray, crop: int) -> tuple[list[int], list[int]]:
    """Lowest and highest crop starts per axis that keep the crop centre in the brain's box."""
    lo, hi = [], []
    for axis, size in enumerate(brain.shape):
        hit = np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != axis)))
        first, last = (int(hit[0]), int(hit[-1])) if hit.size else (0, size - 1)
        a = min(max(first - crop // 2, 0), size - crop)
        b = min(max(last - crop // 2, a), size - crop)
        lo.append(a)
        hi.append(b)
    return lo, hi


# ---------------------------------------------------------------------- stage 2: latents


class LatentDataset(torch.utils.data.Dataset):
    """Precomputed (z, x) pairs: normalised image latents and lesion states."""

    def __init__(self, z: Tensor, x: Tensor) -> None:
        if z.shape[0] != x.shape[0]:
            raise ValueError("z and x must hold the same number of examples")
        self.z, self.x = z, x

    def __len__(self) -> int:
        return self.z.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"z": self.z[index].float(), "x": self.x[index].float()}


def crop_latents(
    z: Tensor, x: Tensor, size: int, generator: torch.Generator, lesion_fraction: float
) -> tuple[Tensor, Tensor]:
    """One `size`³ window per example of latents z and lesion states x, drawn with `generator`.

    With probability `lesion_fraction` (when the example has a lesion) the window is centred on
    a random lesion entry, otherwise its corner is uniform: foreground oversampling, as nnU-Net
    does, so that lesion entries (≈ 0.3 % of a whole lesion state) carry weight in the loss. An
    axis shorter than `size` is kept whole.
    """
    on = {"generator": generator, "device": generator.device}
    dims = z.shape[2:]
    sizes = [min(size, d) for d in dims]
    zs, xs = [], []
    for b in range(z.shape[0]):
        coin = float(torch.rand((), **on))
        hits = torch.nonzero(x[b].amax(dim=0) > -0.999)
        if coin < lesion_fraction and len(hits):
            centre = hits[int(torch.randint(len(hits), (), **on))].tolist()
            corner = [c - s // 2 for c, s in zip(centre, sizes, strict=True)]
        else:
            corner = [
                int(torch.randint(d - s + 1, (), **on)) for d, s in zip(dims, sizes, strict=True)
            ]
        corner = [min(max(c, 0), d - s) for c, d, s in zip(corner, dims, sizes, strict=True)]
        window = tuple(slice(c, c + s) for c, s in zip(corner, sizes, strict=True))
        zs.append(z[b][(slice(None), *window)])
        xs.append(x[b][(slice(None), *window)])
    return torch.stack(zs), torch.stack(xs)


@dataclass
class Example:
    """One stage-2 example before encoding: image [C, *grid], binary mask [*grid], its kind."""

    image: np.ndarray
    mask: np.ndarray
    kind: str  # "pathological" | "healthy" | "pseudo"


def iter_examples(
    path: Path,
    split: str,
    *,
    healthy_fraction: float,
    pseudo_fraction: float,
    seed: int,
    max_subjects: int | None = None,
):  # noqa: ANN201 - generator of Example
    """Yield the stage-2 examples of a split: pathological, healthy and pseudo-pathological.

    Subject i contributes its image and mask; its healthy substrate (or its image, for healthy
    subjects) with an empty mask when i falls in the healthy fraction; a pseudo-pathological
    image (another subject's mask randomised into its substrate) when i falls in the pseudo one.
    """
    ids = split_ids(path, split)[:max_subjects]
    masks, ratios = _mask_bank(path, ids)
    generator = torch.Generator().manual_seed(hash_seed("anomaly", seed))
    spacing = float(np.mean(read_subject(path, ids[0])["attrs"].get("spacing", [2.0])))
    for i, sid in enumerate(ids):
        s = read_subject(path, sid)
        substrate = s.get("healthy", s["images"])
        labels = s.get("labels", np.zeros(s["brain_mask"].shape, np.uint8))
        if labels.any():
            yield Example(s["images"], labels > 0, "pathological")
        if _chosen(i, healthy_fraction) or not labels.any():
            yield Example(substrate, np.zeros(labels.shape, bool), "healthy")
        if len(masks) and ratios and _chosen(i, pseudo_fraction, offset=0.5):
            p = draw_anomaly(generator, len(masks), ratios)
            image, mask = apply_anomaly(substrate, s["brain_mask"], masks[p.source], p, spacing)
            yield Example(image, mask > 0, "pseudo")


def _chosen(i: int, fraction: float, offset: float = 0.0) -> bool:
    """Whether item i is in an evenly spread `fraction` of the items."""
    return int((i + 1) * fraction + offset) > int(i * fraction + offset)


class MaskBank:
    """Binary masks kept bit-packed (a 500-subject bank takes ~70 MB instead of ~500 MB)."""

    def __init__(self) -> None:
        self.packed: list[np.ndarray] = []
        self.shape: tuple[int, ...] = ()

    def add(self, mask: np.ndarray) -> None:
        """Store one mask."""
        self.shape = mask.shape
        self.packed.append(np.packbits(mask.ravel() > 0))

    def __len__(self) -> int:
        return len(self.packed)

    def __getitem__(self, i: int) -> np.ndarray:
        n = int(np.prod(self.shape))
        return np.unpackbits(self.packed[i], count=n).reshape(self.shape).astype(bool)


def _mask_bank(path: Path, ids: list[str]) -> tuple[MaskBank, list[float]]:
    """Every non-empty lesion mask of the split and the lesion-to-tissue intensity ratios."""
    masks, ratios = MaskBank(), []
    for sid in ids:
        s = read_subject(path, sid)
        labels = s.get("labels")
        if labels is None or not labels.any():
            continue
        masks.add(labels > 0)
        if "healthy" in s and (r := lesion_ratio(s["images"], s["healthy"], labels)) is not None:
            ratios.append(r)
    return masks, ratios
