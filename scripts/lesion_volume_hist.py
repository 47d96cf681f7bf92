"""Lesion volumes of `generate` with and without `--lesion-volume` (issue 13, item 8).

    python scripts/lesion_volume_hist.py --lesion stroke --n 100 --range 10:40 \\
        --joint 20 --png docs/images/lesion-volume-control.png --json volumes.json

Draws exactly what `synthbrain generate` draws for samples 0 … n − 1 of the run seed, without
writing images: with `--masks phantom` the mask source of each sample (unfiltered, and in range
as `--lesion-volume` draws it); with `--joint N` the joint sampler's masks of the first N
samples (unfiltered, and redrawn from attempt seeds as the command does, skipping the substrate
and decoding, which do not change the mask). Reports medians, IQR, the fraction in range and
the attempts the joint control needed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def phantom_volumes(bundle, n: int, seed: int, volume) -> list[float]:
    """Volumes (ml) of the phantom masks of samples 0 … n − 1 (`volume`: drawn in range)."""
    from synthbrain.engines.paired.generation import grid_affine
    from synthbrain.engines.paired.mask_sources import phantom_mask
    from synthbrain.io.outputs import lesion_volume_ml
    from synthbrain.rng import derive_seed

    affine = grid_affine(bundle)
    return [lesion_volume_ml(phantom_mask(bundle, derive_seed(derive_seed(seed, k), 1), volume),
                             affine) for k in range(n)]  # fmt: skip


def joint_volumes(bundle, n: int, seed: int, volume) -> tuple[list[float], list[int]]:
    """Joint masks' volumes of samples 0 … n − 1 and attempts used (`volume`: redrawn in range;
    a sample that misses every attempt keeps NaN)."""
    from synthbrain.engines.paired.generation import draw_lesioned, grid_affine
    from synthbrain.engines.paired.guidance import SamplerSettings
    from synthbrain.engines.paired.run import DEFAULT_STEPS, brain_tensor
    from synthbrain.engines.paired.volume_control import MAX_JOINT_ATTEMPTS
    from synthbrain.io.outputs import lesion_volume_ml
    from synthbrain.phantom.volume_draws import attempt_seed
    from synthbrain.rng import derive_seed, generator_for

    run = SamplerSettings("ddim", DEFAULT_STEPS, "linspace", 0.0, bundle.precision)
    brain, affine = brain_tensor(bundle), grid_affine(bundle)
    volumes, attempts = [], []
    for k in range(n):
        ml, used = float("nan"), 0
        for attempt in range(1 if volume is None else MAX_JOINT_ATTEMPTS):
            used += 1
            gen = generator_for(attempt_seed(derive_seed(seed, k), attempt))
            mask = draw_lesioned(bundle, [gen], run, brain)[1][0, 0]
            drawn = lesion_volume_ml(mask.cpu().numpy(), affine)
            if volume is None or drawn in volume:
                ml = drawn
                break
        volumes.append(ml)
        attempts.append(used)
    return volumes, attempts


def stats(values: list[float], volume) -> dict:
    """Median, IQR, count and fraction in range of finite values."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if v.size == 0:
        return {"n": 0}
    q = np.percentile(v, [25, 50, 75])
    return {"n": int(v.size), "q25_50_75": [round(float(x), 2) for x in q],
            "in_range": round(float(np.mean([x in volume for x in v])), 3)}  # fmt: skip


def figure(path: Path, series: dict[str, tuple[list[float], list[float]]], volume) -> None:
    """One histogram panel per mask source: without and with the control, range shaded."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(5.5 * len(series), 3.6), squeeze=False)
    for ax, (title, (plain, ranged)) in zip(axes[0], series.items(), strict=True):
        finite = [x for x in plain + ranged if np.isfinite(x) and x > 0]
        bins = np.geomspace(max(min(finite), 0.1), max(finite) * 1.05, 25)
        ax.hist([x for x in plain if np.isfinite(x)], bins=bins, alpha=0.6, label="no control")
        ax.hist([x for x in ranged if np.isfinite(x)], bins=bins, alpha=0.6,
                label=f"--lesion-volume {volume}")  # fmt: skip
        ax.axvspan(volume.low, min(volume.high, bins[-1]), color="grey", alpha=0.15)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set(title=f"{title} ({len(plain)} samples)", xlabel="lesion volume (ml)",
               ylabel="samples")  # fmt: skip
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lesion", default="stroke")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--n", type=int, default=100, help="samples with --masks phantom")
    parser.add_argument("--joint", type=int, default=0, help="joint samples (≈ 7 s each)")
    parser.add_argument("--range", dest="range_", default="10:40")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--png", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--replot", type=Path, default=None, help="redraw a --json file's figure")
    args = parser.parse_args()
    if args.replot is not None:
        from synthbrain.io.volume_range import parse_volume_range

        saved = json.loads(args.replot.read_text())
        figure(args.png, saved["series"], parse_volume_range(saved["range"]))
        return

    import torch

    from synthbrain.engines.paired.run import load_bundle
    from synthbrain.io.volume_range import parse_volume_range

    torch.set_num_threads(max(1, torch.get_num_threads()))
    volume = parse_volume_range(args.range_)
    bundle = load_bundle(args.weights, args.lesion, "cpu")
    started, out, series = time.perf_counter(), {"range": str(volume), "seed": args.seed}, {}
    if args.n:
        plain = phantom_volumes(bundle, args.n, args.seed, None)
        ranged = phantom_volumes(bundle, args.n, args.seed, volume)
        out["phantom"] = {"plain": stats(plain, volume), "controlled": stats(ranged, volume)}
        series["--masks phantom"] = (plain, ranged)
    if args.joint:
        plain, _ = joint_volumes(bundle, args.joint, args.seed, None)
        ranged, attempts = joint_volumes(bundle, args.joint, args.seed, volume)
        out["joint"] = {
            "plain": stats(plain, volume), "controlled": stats(ranged, volume),
            "missed": int(np.sum(~np.isfinite(ranged))),
            "mean_attempts": round(float(np.mean(attempts)), 2),
        }  # fmt: skip
        series["joint (task a)"] = (plain, ranged)
    out.update(weights=bundle.name, minutes=round((time.perf_counter() - started) / 60, 1))
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps({**out, "series": series}, indent=1))
    if args.png and series:
        figure(args.png, series, volume)


if __name__ == "__main__":
    main()
