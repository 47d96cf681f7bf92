"""A loadable paired bundle from a (running) training's best diffusion checkpoint.

    python scripts/paired_export_best.py --base RUN0/paired-stroke-2mm.safetensors \\
        --best RUN/checkpoints/diffusion/best.safetensors --out RUN/best-bundle.safetensors

A paired run writes its bundle when the diffusion stage ends; to evaluate the best checkpoint
so far (selected by the run's `select_by`) while it keeps training, its EMA sub-models are put
into a bundle with the same config (`--base`: a bundle of that config, e.g. the run's start).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="a bundle with the run's config")
    parser.add_argument("--best", type=Path, required=True, help="checkpoints/diffusion/best…")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from synthbrain.engines.paired.run import load_bundle
    from synthbrain.engines.paired.training import export_bundle, load_denoisers
    from synthbrain.weights import read_metadata

    model = load_bundle(args.base, "stroke", "cpu").model
    load_denoisers(model, args.best)
    training = {"exported_from": str(args.best), "base": str(args.base),
                "best": read_metadata(args.best).get("training", {})}  # fmt: skip
    print(export_bundle(model, args.out, {"diffusion": training}))


if __name__ == "__main__":
    main()
