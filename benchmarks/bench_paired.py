"""Speed and peak memory of the paired engine (USB) at the default 2 mm grid (96 x 112 x 96).

Two ways to drive the same weights, side by side:
- default: 50 DDIM steps for generation and its substrate at the same stride (15 steps over
  t = 300 … 0), 50 steps per heal; fp32 on the CPU, bf16 and batch 16 on CUDA;
- published: as the USB code drives its models: 342 DDIM steps (stride 3) for generation, stride 1
  (300 steps) for the edit, fp32, batch 1.

Each configuration runs in its own process, so the peak resident memory (CPU) or the peak CUDA
allocation is its own.

    python benchmarks/bench_paired.py --threads 2 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CONFIGS = {
    # name: (generation steps, substrate steps, heal steps, precision, batch on CUDA)
    "default": (50, None, 50, None, 16),
    "published": (342, 300, 300, "fp32", 1),
}


def run_one(name: str, device: str, weights: str | None, n: int) -> dict:
    """Time `n` triplets and one heal in this process; returns seconds and peak memory."""
    import numpy as np
    import torch

    from synthbrain.engines.paired.generation import make_triplets
    from synthbrain.engines.paired.guidance import ACGSettings, SamplerSettings
    from synthbrain.engines.paired.run import brain_tensor, load_bundle
    from synthbrain.engines.paired.scan import edit_images
    from synthbrain.rng import derive_seed, generator_for

    gen_steps, sub_steps, heal_steps, precision, cuda_batch = CONFIGS[name]
    bundle = load_bundle(weights, "stroke", device, precision)
    batch = cuda_batch if bundle.device.type == "cuda" else 1
    run = SamplerSettings("ddim", gen_steps, "linspace", 0.0, bundle.precision)
    brain = brain_tensor(bundle)
    gens = [generator_for(derive_seed(0, k)) for k in range(batch)]
    make_triplets(bundle, gens[:1], SamplerSettings(steps=2), brain, substrate_steps=2)  # warm-up
    _sync(bundle.device)
    t0 = time.perf_counter()
    done = 0
    while done < n:
        trips = make_triplets(bundle, gens, run, brain, substrate_steps=sub_steps)
        done += len(trips)
    _sync(bundle.device)
    per_triplet = (time.perf_counter() - t0) / done
    image = trips[0].image
    mask = None
    heal_run = SamplerSettings("ddim", heal_steps, "linspace", 0.0, bundle.precision)
    t0 = time.perf_counter()
    edit_images(bundle, image, brain[0, 0].cpu().numpy(), mask, "heal", 1, heal_run,
                ACGSettings(t_ref=300), 300, 0)  # fmt: skip
    _sync(bundle.device)
    per_heal = time.perf_counter() - t0
    return {
        "config": name, "device": str(bundle.device), "precision": bundle.precision,
        "batch": batch, "triplets": done, "generation_steps": gen_steps,
        "seconds_per_triplet": round(per_triplet, 2), "heal_steps": heal_steps,
        "seconds_per_heal": round(per_heal, 2), "peak_memory_mb": round(_peak_mb(bundle.device), 1),
        "threads": torch.get_num_threads(), "image_max": float(np.max(image)),
    }  # fmt: skip


def _sync(device) -> None:  # noqa: ANN001
    """Wait for queued CUDA work."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device) -> float:  # noqa: ANN001
    """Peak CUDA allocation, or the process's peak resident memory, in MiB."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or both")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch and OpenMP)")
    ap.add_argument("--n", type=int, default=2, help="triplets timed per configuration")
    ap.add_argument("--configs", default="default,published")
    ap.add_argument("--weights", default=None, help="default: the registered stroke weights")
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # child process: one configuration
        import torch

        torch.set_num_threads(args.threads)
        torch.set_grad_enabled(False)
        print(json.dumps(run_one(args.one, args.device, args.weights, args.n)))
        return
    devices = ["cpu", "cuda"] if args.device == "both" else [args.device]
    rows = []
    for device in devices:
        for name in args.configs.split(","):
            rows.append(_child(name, device, args))
            print(json.dumps(rows[-1]), flush=True)
    _table(rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


def _child(name: str, device: str, args: argparse.Namespace) -> dict:
    """Run one configuration in a fresh process and parse its JSON line."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--one", name, "--device", device, "--threads",
           str(args.threads), "--n", str(args.n)]  # fmt: skip
    if args.weights:
        cmd += ["--weights", args.weights]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"config": name, "device": device, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _table(rows: list[dict]) -> None:
    """Markdown table of the results."""
    print("| config | device | precision | batch | steps | s / triplet | s / heal | peak MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "error" in r:
            print(f"| {r['config']} | {r['device']} | error: {r['error']} | | | | | |")
            continue
        cells = [
            r["config"], f"{r['device']} ({r['threads']} threads)", r["precision"], r["batch"],
            f"{r['generation_steps']} / heal {r['heal_steps']}", r["seconds_per_triplet"],
            r["seconds_per_heal"], r["peak_memory_mb"],
        ]  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
