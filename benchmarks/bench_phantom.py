"""Seconds per phantom subject, per lesion type and spacing, on one CPU thread.

Usage:
    python benchmarks/bench_phantom.py --n 5 --spacing 2 1
    python benchmarks/bench_phantom.py --n 3 --spacing 1 --lesion tumor --contrasts t1,t2,flair,t1gd

The template is loaded (and its derived maps cached) before timing; its one-off load time is
printed separately. Both wall-clock and process CPU seconds are printed: on a shared machine
the CPU time is the fairer single-core figure.
"""

from __future__ import annotations

import os

# One core: set before numpy / torch start their thread pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from synthbrain.phantom import LESIONS, draw_subject, make_subject, template  # noqa: E402
from synthbrain.rng import derive_seed, generator_for  # noqa: E402


def _parse() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3, help="subjects per lesion type and spacing")
    parser.add_argument("--spacing", type=float, nargs="+", default=[2.0, 1.0])
    parser.add_argument("--lesion", nargs="+", default=list(LESIONS), choices=list(LESIONS))
    parser.add_argument("--contrasts", default="t1", help="comma-separated, e.g. t1,t2,flair")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--mass-effect", action="store_true", help="tumours push their surroundings"
    )
    return parser.parse_args()


def _warm(spacing: float) -> float:
    """Load the template and build every cache; returns the seconds it took."""
    start = time.perf_counter()
    template(spacing)
    make_subject(draw_subject(generator_for(0), lesion="none", spacing=spacing))
    make_subject(draw_subject(generator_for(1), lesion="wmh", spacing=spacing))
    return time.perf_counter() - start


def _time_one(k: int, args: argparse.Namespace, lesion: str, spacing: float):
    """(wall, cpu) seconds to draw and make subject k."""
    contrasts = tuple(args.contrasts.split(","))
    wall, cpu = time.perf_counter(), time.process_time()
    params = draw_subject(
        generator_for(derive_seed(args.seed, k)),
        lesion=lesion,
        contrasts=contrasts,
        spacing=spacing,
        mass_effect=args.mass_effect and lesion == "tumor",
    )
    make_subject(params)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    """Print a table of seconds per subject."""
    args = _parse()
    torch.set_num_threads(1)
    print(f"contrasts={args.contrasts} n={args.n} torch_threads={torch.get_num_threads()}")
    print(f"{'spacing':>7} {'lesion':>7} {'wall s/subj':>12} {'cpu s/subj':>11} {'max wall':>9}")
    for spacing in args.spacing:
        print(f"# template + caches at {spacing:g} mm: {_warm(spacing):.1f} s (once per process)")
        for lesion in args.lesion:
            times = [_time_one(k, args, lesion, spacing) for k in range(args.n)]
            walls, cpus = zip(*times, strict=True)
            print(
                f"{spacing:>7g} {lesion:>7} {statistics.mean(walls):>12.2f} "
                f"{statistics.mean(cpus):>11.2f} {max(walls):>9.2f}"
            )


if __name__ == "__main__":
    main()
