"""How stable is a validation metric? Its spread over validation subsets of several sizes.

The training loop validates on a fixed subset of `val_batches × batch_size` examples drawn
with `val_seed`. This evaluates one trained deviation model (default: the embedded
deviation-stroke-2mm) exactly as the loop's validation does, for several subset sizes and
`--seeds` different val_seed values, and prints each metric's mean and standard deviation
across seeds: the run-to-run spread that a difference between two checkpoints must exceed to
mean anything. Not run by the tests.

    python benchmarks/val_spread.py --data stroke300.h5 --batches 1,2,8 --seeds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="HDF5 set with a val split")
    parser.add_argument("--weights", default="deviation-stroke-2mm")
    parser.add_argument("--batches", default="1,2,8", help="val_batches values")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from synthbrain.engines.deviation.run import model_from_file
    from synthbrain.engines.deviation.training import LesionItems
    from synthbrain.training.data import val_loader
    from synthbrain.training.ddp import DistContext
    from synthbrain.training.loop import _validation_sums
    from synthbrain.training.run import new_run, only_trainable
    from synthbrain.weights import resolve

    model = model_from_file(resolve(args.weights))
    config = model.config
    items = LesionItems(args.data, "val", config)
    cpu = torch.device("cpu")
    print(f"{args.weights} on {len(items)} val items of {args.data.name}, "
          f"batch_size {config.train.batch_size}, {args.precision}")  # fmt: skip
    print("| val_batches | examples | metric | mean | sd over seeds | sd / mean |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n_batches in (int(b) for b in args.batches.split(",")):
        values: dict[str, list[float]] = {}
        for seed in range(args.seeds):
            change = {"val_batches": n_batches, "val_seed": seed, "precision": args.precision}
            cfg = config.train.model_copy(update={**change, "device": "cpu"})
            with tempfile.TemporaryDirectory() as tmp, only_trainable(model):
                run = new_run(model, cfg, DistContext(), cpu, "main", Path(tmp))
                sums, counts = _validation_sums(run, val_loader(items, cfg, cpu))
            for key in sums:
                if counts[key]:
                    values.setdefault(f"val_{key}", []).append(sums[key] / counts[key])
        examples = min(len(items), n_batches * cfg.batch_size)
        for key, vals in sorted(values.items()):
            mean, sd = statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0
            ratio = sd / abs(mean) if mean else float("nan")
            print(f"| {n_batches} | {examples} | {key} | {mean:.4g} | {sd:.2g} | {ratio:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
