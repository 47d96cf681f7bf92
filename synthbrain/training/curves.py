"""curves.png of a run folder: losses and validation metrics against updates, per stage."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from synthbrain.io.atomic import atomic_target

# Logged values that are not learning curves (rates, timings, the schedule).
_NOT_CURVES = {"stage", "step", "kind", "seconds", "lr", "grad_norm", "samples_per_s",
               "data_wait_s", "best"}  # fmt: skip


def read_curves(metrics: Path) -> dict[str, dict[str, dict[str, list[tuple[int, float]]]]]:
    """stage → "train" | "val" → name → [(step, value)], from metrics.jsonl (bad lines skipped)."""
    curves: dict[str, dict[str, dict[str, list[tuple[int, float]]]]] = {}
    for line in metrics.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed run
        kind = "val" if record.get("kind") == "val" else "train"
        panel = curves.setdefault(str(record.get("stage")), {"train": {}, "val": {}})[kind]
        for key, value in record.items():
            if key in _NOT_CURVES or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                panel.setdefault(key, []).append((int(record["step"]), float(value)))
    return curves


def write_curves(metrics: Path, target: Path) -> Path | None:
    """Plot every stage's train losses and validation metrics (one row per stage) to `target`.

    Uses matplotlib's Agg canvas directly (no pyplot), so no display and no global state.
    Returns None when there is nothing to plot yet.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = read_curves(metrics) if metrics.exists() else {}
    if not curves:
        return None
    fig = Figure(figsize=(11, 3.4 * len(curves)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(curves), 2, squeeze=False)
    for row, (stage, panels) in enumerate(curves.items()):
        for col, kind in enumerate(("train", "val")):
            _panel(axes[row][col], panels[kind], f"{stage}: {kind}")
    with atomic_target(target) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return target


def _panel(ax: Any, series: dict[str, list[tuple[int, float]]], title: str) -> None:
    """One axis: each series against updates; log scale when all values are positive."""
    ax.set_title(title)
    ax.set_xlabel("update")
    if not series:
        ax.text(0.5, 0.5, "no values yet", ha="center", va="center", transform=ax.transAxes)
        return
    values_all = [v for points in series.values() for _, v in points]
    # log scale for losses spanning decades; linear for metrics such as Dice in [0, 1]
    positive = min(values_all) > 0 and max(values_all) > 20 * min(values_all)
    for name, points in sorted(series.items()):
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, ms=3, label=name)
    if positive:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
