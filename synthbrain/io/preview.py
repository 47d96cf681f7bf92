"""Tri-planar PNG previews of a volume with its lesion mask overlaid (matplotlib, Agg, lazy)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from synthbrain.io.atomic import atomic_target

# Label colours: 1 red, 2 yellow, 3 cyan (BraTS necrosis / oedema / enhancing), then more.
_LABEL_COLOURS = ("#ff3030", "#ffd21f", "#20d0ff", "#ff40ff", "#40ff60", "#ff9020")


def preview_center(image: np.ndarray, mask: np.ndarray | None) -> tuple[int, int, int]:
    """The voxel the three planes pass through: the lesion's centre of mass, else the centre."""
    if mask is not None and np.any(mask > 0):
        idx = np.argwhere(mask > 0)
        centre = np.rint(idx.mean(axis=0)).astype(int)
        # The mean of a ring-shaped lesion can fall outside it: snap to its nearest voxel.
        nearest = idx[np.argmin(((idx - centre) ** 2).sum(axis=1))]
        return tuple(int(v) for v in nearest)  # type: ignore[return-value]
    return tuple(int(n) // 2 for n in image.shape)  # type: ignore[return-value]


def _planes(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices, transposed so rows run up the display."""
    x, y, z = centre
    return [volume[:, :, z].T, volume[:, y, :].T, volume[x, :, :].T]


def _aspects(affine: np.ndarray | None) -> list[float]:
    """Display aspect (row mm / column mm) of the three planes from the voxel sizes."""
    if affine is None:
        sx = sy = sz = 1.0
    else:
        sx, sy, sz = np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))
    return [sy / sx, sz / sx, sz / sy]


def _display_range(image: np.ndarray) -> tuple[float, float]:
    """Grey-level window: 0.5 / 99.5 percentiles of the non-zero voxels."""
    values = image[np.isfinite(image) & (image != 0)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float(min(lo, 0.0)), float(hi if hi > lo else lo + 1.0)


def save_preview(
    path: str | os.PathLike[str],
    image: np.ndarray,
    mask: np.ndarray | None = None,
    affine: np.ndarray | None = None,
    title: str | None = None,
    *,
    center: tuple[int, int, int] | None = None,
) -> Path:
    """Write a tri-planar PNG (axial, coronal, sagittal) of `image` with `mask` overlaid.

    The planes pass through the lesion's centre of mass (or the volume centre when the mask is
    empty or absent). Label values get distinct colours (1 red, 2 yellow, 3 cyan, ...). Axes are
    shown in RAS display convention: anterior / superior up, the subject's right on the right.
    The file is written atomically (temporary name, then rename).

    Args:
        path: where to write the PNG.
        image: 3-D array (x, y, z) in RAS voxel order.
        mask: optional 3-D label map of the same shape (0 = background).
        affine: optional 4x4 voxel -> world; its voxel sizes set the display aspect.
        title: optional figure title.
        center: voxel the planes pass through (default: lesion centre of mass / volume centre).

    Returns:
        The path written.

    Raises:
        ValueError: `image` is not 3-D or `mask` has a different shape.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"save_preview needs a 3-D image, got shape {image.shape}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != image.shape:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
    fig = _figure(image, mask, affine, title, center)
    target = Path(path)
    with atomic_target(target) as tmp:
        fig.savefig(tmp, format="png", facecolor=fig.get_facecolor())
    return target


def _figure(image, mask, affine, title, center):
    """Build the three-panel matplotlib Figure (Agg canvas, no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    centre = preview_center(image, mask) if center is None else center
    vmin, vmax = _display_range(image)
    fig = Figure(figsize=(12, 4.6), dpi=100, facecolor="black")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    labels = None
    if mask is not None and np.any(mask > 0):
        labels = np.unique(mask[mask > 0]).astype(int)
        n = int(labels.max())
        cmap = ListedColormap(
            [_LABEL_COLOURS[(i - 1) % len(_LABEL_COLOURS)] for i in range(1, n + 1)]
        )
    names = ("axial", "coronal", "sagittal")
    mask_planes = _planes(mask, centre) if labels is not None else [None] * 3
    for ax, plane, mplane, aspect, name in zip(
        axes, _planes(image, centre), mask_planes, _aspects(affine), names, strict=True
    ):
        ax.imshow(plane, cmap="gray", vmin=vmin, vmax=vmax, origin="lower", aspect=aspect)
        if mplane is not None and np.any(mplane > 0):
            overlay = np.ma.masked_where(mplane <= 0, mplane)
            ax.imshow(
                overlay,
                cmap=cmap,
                vmin=0.5,
                vmax=n + 0.5,
                alpha=0.45,
                origin="lower",
                aspect=aspect,
                interpolation="nearest",
            )
        ax.set_title(name, color="white", fontsize=10)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, color="white")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.88, wspace=0.03)
    return fig
