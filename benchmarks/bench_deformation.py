"""Speed of the deformation engine (D3M): seconds per 2 mm volume and peak memory.

Writes one held-out phantom tumour subject (run seed 1000, never used in training) as T1, T2
and FLAIR NIfTI files at 2 mm, then times `synthbrain enhance` end to end (load, model grid,
every brain slice through the sampler, files written) at several step counts. CPU runs use
`--threads` intra-op threads (2 by default: the project's reference machine); CUDA runs follow
when a GPU is present. Reported per run: wall seconds, CPU seconds (user + system: on a shared
machine, CPU seconds / threads estimates the wall time the same run takes alone), slices, and
peak memory (the process's max RSS on CPU, torch.cuda.max_memory_allocated on CUDA).

    python benchmarks/bench_deformation.py --weights deformation-glioma-2mm \\
        --steps 8,12,25,50 --json runs/deformation/bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch


def write_subject(folder: Path) -> dict[str, Path]:
    """A held-out phantom tumour subject at 2 mm as t1 / t2 / flair NIfTI files."""
    from synthbrain.io.nifti import Volume, save_volume
    from synthbrain.phantom import iter_subjects

    _, _, subject = next(iter_subjects(1, seed=1000, lesion="tumor",
                                       contrasts=("t1", "t2", "flair"), spacing=2.0))  # fmt: skip
    return {c: save_volume(Volume(subject.images[c], subject.affine), folder / f"{c}.nii.gz")
            for c in ("t1", "t2", "flair")}  # fmt: skip


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_enhance(paths: dict[str, Path], weights: str, steps: int, device: str, out: Path) -> dict:
    """One `enhance` run: wall and CPU seconds, slices, the sampler's share."""
    from synthbrain import api

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    wall, cpu = time.perf_counter(), cpu_seconds()
    summary = api.enhance(**paths, out=out, weights=weights, steps=steps, seed=0,
                          device=device, overwrite=True)  # fmt: skip
    row = {
        "device": device, "steps": steps, "seconds": round(time.perf_counter() - wall, 2),
        "cpu_seconds": round(cpu_seconds() - cpu, 2), "slices": summary["slices"],
        "sampling_seconds": summary["sampling_seconds"],
    }  # fmt: skip
    if device.startswith("cuda"):
        row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return row


def main() -> None:
    """Time enhance at each step count on the CPU (and CUDA when present)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="deformation-glioma-2mm")
    parser.add_argument("--steps", type=lambda s: [int(v) for v in s.split(",")], default=[12])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-cuda", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_subject(Path(tmp))
        out = Path(tmp) / "t1gd.nii.gz"
        time_enhance(paths, args.weights, 2, "cpu", out)  # warm-up: imports, weights, caches
        for steps in args.steps:
            rows.append(time_enhance(paths, args.weights, steps, "cpu", out))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if torch.cuda.is_available() and not args.no_cuda:
            time_enhance(paths, args.weights, 2, "cuda", out)
            for steps in args.steps:
                rows.append(time_enhance(paths, args.weights, steps, "cuda", out))
    result = {
        "weights": args.weights, "threads": args.threads, "rows": rows,
        "peak_rss_mb_cpu": round(peak_rss_mb, 1), "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
