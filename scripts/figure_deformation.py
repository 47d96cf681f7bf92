"""Figure of one held-out phantom subject: T1, FLAIR, true and synthetic T1Gd, ET masks.

    python scripts/figure_deformation.py --weights deformation-glioma-2mm --steps 4 \\
        --out docs/images/deformation-heldout.png

The subject is k = `--index` of phantom run seed `--seed` (1000: never used in training); the
axial slice is the one with the most enhancing tumour. The synthetic T1Gd is shown as the model
writes it (no calibration); the last panel overlays the predicted ET mask (red) on the true
one (green), yellow where they agree.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from synthbrain import metrics
from synthbrain.engines.deformation.run import load_model
from synthbrain.engines.deformation.volume import enhance_volume
from synthbrain.phantom import iter_subjects

CONTRASTS = ("t1", "t1gd", "t2", "flair")


def panels(subject, image: np.ndarray, mask: np.ndarray) -> tuple[list, list, int]:
    """The five axial panels, their titles and the slice index."""
    et = subject.labels == 3
    z = int(np.argmax(et.sum(axis=(0, 1))))
    overlay = np.zeros((*et.shape[:2], 3), np.float32)
    overlay[..., 0] = mask[..., z]
    overlay[..., 1] = et[..., z]
    pics = [subject.images["t1"][..., z], subject.images["flair"][..., z],
            subject.images["t1gd"][..., z], image[..., z], overlay]  # fmt: skip
    dice = metrics.dice(mask, et)
    titles = ["T1", "FLAIR", "true T1Gd", "synthetic T1Gd", f"ET mask (Dice {dice:.2f})"]
    return pics, titles, z


def main() -> None:
    """Sample one subject and write the PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="deformation-glioma-2mm")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_model(args.weights)
    _, _, subject = next(iter_subjects(1, seed=args.seed, lesion="tumor", contrasts=CONTRASTS,
                                       indices=[args.index]))  # fmt: skip
    cond = np.stack([subject.images[c] for c in model.config.contrasts]).astype(np.float32)
    result = enhance_volume(model, cond, subject.brain_mask > 0, steps=args.steps)
    mask = result.mask if result.mask is not None else np.zeros_like(subject.labels, bool)
    pics, titles, z = panels(subject, result.image, mask.astype(np.float32))
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.6))
    for ax, pic, title in zip(axes, pics, titles, strict=True):
        ax.imshow(np.rot90(pic), cmap=None if pic.ndim == 3 else "gray", vmin=0, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(f"held-out phantom seed {args.seed}, subject {args.index}, axial slice {z}, "
                 f"{args.weights}")  # fmt: skip
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(args.out)


if __name__ == "__main__":
    main()
