"""The report's figures as PNG bytes (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io

import numpy as np

from synthbrain.evaluation.cases import Case
from synthbrain.evaluation.features import normalise

SYNTH_COLOUR, REF_COLOUR = "#d95f02", "#1b9e77"


def _figure(width: float, height: float, rows: int = 1, cols: int = 1):  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    # matplotlib is imported here, not at module level: `synthbrain --help` stays fast.
    return plt.subplots(rows, cols, figsize=(width, height), dpi=100, squeeze=False)


def _png(fig) -> bytes:  # noqa: ANN001
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def volume_histogram(synth_ml: list[float], ref_ml: list[float], ks: float) -> bytes:
    """Overlaid lesion-volume histograms with both medians."""
    fig, axes = _figure(6, 3.2)
    ax = axes[0, 0]
    top = max([*synth_ml, *ref_ml, 1e-3])
    bins = np.linspace(0, top * 1.05, 21)
    for values, colour, name in ((ref_ml, REF_COLOUR, "reference"),
                                 (synth_ml, SYNTH_COLOUR, "synthetic")):  # fmt: skip
        ax.hist(values, bins=bins, alpha=0.55, color=colour, label=f"{name} (n={len(values)})")
        if values:
            ax.axvline(float(np.median(values)), color=colour, linestyle="--")
    ax.set_xlabel("lesion volume (ml)")
    ax.set_ylabel("cases")
    ax.set_title(f"Lesion volume (dashed: medians), KS = {ks:.3f}")
    ax.legend()
    return _png(fig)


def location_montage(background: np.ndarray, maps: list[np.ndarray], names: list[str],
                     corr: float | None, n_slices: int = 8) -> bytes:  # fmt: skip
    """Axial montage: one row per frequency map over the mean image, one shared colour scale."""
    z = np.linspace(0.25, 0.8, n_slices) * background.shape[2]
    top = max(float(max(m.max() for m in maps)), 1e-6)
    fig, axes = _figure(1.6 * n_slices, 2.0 * len(maps) + 0.4, len(maps), n_slices)
    image = None
    for row, (freq, name) in enumerate(zip(maps, names, strict=True)):
        for col, k in enumerate(z.astype(int)):
            ax = axes[row, col]
            ax.imshow(background[:, :, k].T, cmap="gray", origin="lower")
            shown = np.ma.masked_where(freq[:, :, k] <= 0, freq[:, :, k])
            image = ax.imshow(shown.T, cmap="hot", vmin=0, vmax=top, origin="lower", alpha=0.85)
            ax.set_axis_off()
            if col == 0:
                ax.set_title(name, loc="left", fontsize=9)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.7, label="fraction of cases")
    title = "Lesion frequency" + (f", correlation {corr:.3f}" if corr is not None else "")
    fig.suptitle(title)
    return _png(fig)


def intensity_bars(section: dict) -> bytes:
    """Synthetic / reference ratio of each in-lesion statistic per contrast (1 = equal)."""
    keys = ("mean", "skewness", "kurtosis", "contrast", "homogeneity")
    fig, axes = _figure(6, 3.2)
    ax = axes[0, 0]
    width = 0.8 / max(1, len(section))
    for i, (contrast, stats) in enumerate(section.items()):
        ratios = [stats[k]["ratio"] if stats[k]["ratio"] is not None else np.nan for k in keys]
        ax.bar(np.arange(len(keys)) + i * width, ratios, width, label=contrast)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(keys)) + width * (len(section) - 1) / 2, keys)
    ax.set_ylabel("synthetic / reference")
    ax.set_title("In-lesion intensity statistics (ratio of means)")
    ax.legend()
    return _png(fig)


def realism_bars(section: dict) -> bytes:
    """Realism AUC with its bootstrap 95% CI for each classifier (0.5 = indistinguishable)."""
    fig, axes = _figure(5, 3)
    ax = axes[0, 0]
    names = list(section)
    for i, name in enumerate(names):
        entry = section[name]
        if entry["auc"] is None:
            continue
        low, high = entry["ci"]
        ax.errorbar([i], [entry["auc"]], yerr=[[entry["auc"] - low], [high - entry["auc"]]],
                    fmt="o", capsize=6, color=SYNTH_COLOUR)  # fmt: skip
        ax.annotate(f"{entry['auc']:.3f}", (i, entry["auc"]), xytext=(8, 0),
                    textcoords="offset points", va="center")  # fmt: skip
    ax.axhline(0.5, color="gray", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names])
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("AUC (reference vs synthetic)")
    ax.set_title("Realism classifier AUC, 95% CI")
    return _png(fig)


def gallery(cases: dict[str, Case], scores: dict[str, float]) -> bytes:
    """One row per case (best, median, worst): image, healthy substrate, mask outline."""
    fig, axes = _figure(7.5, 2.6 * len(cases), len(cases), 3)
    for row, (label, case) in enumerate(cases.items()):
        brain = case.brain_mask()
        contrast = next(iter(case.images))
        k = int(np.argwhere(case.mask).mean(0)[2]) if case.mask.any() else case.shape[2] // 2
        panels = [("image", normalise(case.images[contrast], brain))]
        if case.healthy:
            panels.append(("healthy", normalise(case.healthy[contrast], brain)))
        panels.append(("mask", panels[0][1]))
        for col in range(3):
            ax = axes[row, col]
            ax.set_axis_off()
            if col >= len(panels):
                continue
            name, volume = panels[col]
            ax.imshow(volume[:, :, k].T, cmap="gray", origin="lower", vmin=0, vmax=1)
            if name == "mask" and case.mask[:, :, k].any():
                ax.contour(case.mask[:, :, k].T.astype(float), [0.5], colors="red",
                           linewidths=0.8)  # fmt: skip
            score = scores.get(case.id)
            text = f"{label}: {case.id}" + (f" (P={score:.2f})" if score is not None else "")
            ax.set_title(text if col == 0 else name, fontsize=8, loc="left")
    return _png(fig)
