"""Speed of the deviation engine: seconds per implant and per generated triplet, vs lesion size.

Implants spheres of several volumes into one healthy phantom anatomy at 2 mm and, to show that
the cost follows the lesion rather than the image, into the same anatomy resampled to 1 mm
(8x the voxels). CPU runs use `--threads` intra-op threads (2 by default, the project's
reference); CUDA runs too when a GPU is present. Peak memory: the process's max RSS on CPU,
torch.cuda.max_memory_allocated on CUDA.

    python benchmarks/bench_deviation.py --weights deviation-tumor-2mm \
        --json runs/deviation/bench.json
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from synthbrain.engines.deviation.io import subject_from_volumes
from synthbrain.engines.deviation.run import edit_subject, load_bundle
from synthbrain.io.nifti import Volume, resample

VOLUMES_ML = (1.0, 5.0, 10.0, 30.0, 60.0)


def anatomy(contrasts: tuple[str, ...], spacing: float) -> dict[str, Volume]:
    """A healthy phantom anatomy (held-out seed) at 2 mm, resampled to `spacing`."""
    from synthbrain.phantom import draw_subject, make_subject
    from synthbrain.rng import derive_seed, generator_for

    params = draw_subject(generator_for(derive_seed(1000, 0)), lesion="none",
                          contrasts=contrasts, spacing=2.0)  # fmt: skip
    ph = make_subject(params)
    vols = {c: Volume(ph.healthy[c], ph.affine) for c in contrasts}
    if spacing != 2.0:
        vols = {c: resample(v, spacing, order=1) for c, v in vols.items()}
    return vols


def sphere(vols: dict[str, Volume], ml: float) -> np.ndarray:
    """A ball of `ml` millilitres at the brain's centre of mass (voxel grid of `vols`)."""
    ref = next(iter(vols.values()))
    brain = ref.data > 0
    centre = np.argwhere(brain).mean(0)
    voxel_ml = abs(np.linalg.det(ref.affine[:3, :3])) / 1000.0
    radius_mm = (3.0 * ml / (4.0 * np.pi) * 1000.0) ** (1.0 / 3.0)
    idx = np.indices(ref.shape).reshape(3, -1).T
    world = (idx - centre) @ ref.affine[:3, :3].T
    ball = (np.linalg.norm(world, axis=1) <= radius_mm).reshape(ref.shape)
    assert abs(ball.sum() * voxel_ml - ml) / ml < 0.25
    return ball


def conv_macs(net: torch.nn.Module, *args: torch.Tensor) -> int:
    """Multiply-accumulates of the convolutions and linear layers of one forward pass."""
    total = [0]

    def hook(module, _inputs, output) -> None:  # noqa: ANN001
        if isinstance(module, torch.nn.Conv2d | torch.nn.Conv3d):
            per_out = module.in_channels // module.groups * module.weight[0, 0].numel()
            total[0] += output.numel() * per_out
        elif isinstance(module, torch.nn.Linear):
            total[0] += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    with torch.no_grad():
        net(*args)
    for handle in handles:
        handle.remove()
    return total[0]


def implant_gmacs(model, subject, steps: int) -> float:  # noqa: ANN001
    """Machine-independent cost of one implant: f_sub once plus ε_θ once per step (GMAC)."""
    from synthbrain.engines.deviation.io import lesion_grid, to_box
    from synthbrain.engines.deviation.tensors import box_batch

    cfg = model.config
    grid = lesion_grid(subject, spacing=cfg.spacing, margin_mm=cfg.margin_mm,
                       min_size=cfg.min_size, multiple=model.multiple, dims=cfg.dims)  # fmt: skip
    box = to_box(subject, cfg.contrasts, grid)
    xb, mb, _, _ = box_batch(box.x, box.m, cfg.dims, model.multiple)
    # each network's own input width (the residual substrate also takes Inp(x, m))
    zeros = lambda net: torch.zeros(xb.shape[0], net.in_channels, *xb.shape[2:])  # noqa: E731
    sub = conv_macs(model.substrate, zeros(model.substrate))
    t = torch.zeros(xb.shape[0], dtype=torch.long)
    den = conv_macs(model.denoiser, zeros(model.denoiser), t)
    return (sub + steps * den) / 1e9


def time_implant(model, vols, ml: float, steps: int | None, repeats: int) -> dict:  # noqa: ANN001
    """Best-of-`repeats` seconds for one implant of a `ml` sphere (first run warms up)."""
    subject = subject_from_volumes(vols, sphere(vols, ml), next(iter(vols)))
    edit_subject(model, subject, steps=steps, seed=0)
    times, facts = [], {}
    for r in range(repeats):
        t0 = time.perf_counter()
        _, facts = edit_subject(model, subject, steps=steps, seed=r)
        times.append(time.perf_counter() - t0)
    gmacs = implant_gmacs(model, subject, steps or model.config.sampling.steps)
    return {"ml": ml, "seconds": min(times), "gmac": round(gmacs, 2), "box": facts["box"],
            "batch": facts["batch"]}  # fmt: skip


def time_generate(weights: str, lesion: str, n: int, device: str) -> float:
    """Seconds per generated triplet (phantom anatomy and mask, written as NIfTI)."""
    from synthbrain.api import generate

    with tempfile.TemporaryDirectory() as tmp:
        options = {"engine": "deviation", "weights": weights, "lesion": lesion, "device": device}
        generate(out=Path(tmp) / "run", n=1, **options)
        t0 = time.perf_counter()
        generate(out=Path(tmp) / "run2", n=n, seed=1, **options)
        return (time.perf_counter() - t0) / n


def peak_mb(device: str) -> float:
    """Peak memory so far: CUDA allocator peak, or the process's max RSS."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run(args: argparse.Namespace, device: str) -> dict:
    """Every measurement on one device."""
    bundle = load_bundle(args.weights, device=device)
    model, cfg = bundle.model, bundle.model.config
    rows = []
    for spacing in (2.0, 1.0):
        vols = anatomy(cfg.contrasts, spacing)
        for ml in args.volumes:
            row = time_implant(model, vols, ml, args.steps, args.repeats)
            row.update(
                {"image_spacing_mm": spacing, "image_shape": list(next(iter(vols.values())).shape)}
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    per_triplet = time_generate(args.weights, cfg.lesion, args.n_generate, device)
    return {
        "device": device, "threads": torch.get_num_threads(), "weights": bundle.name,
        "steps": args.steps or cfg.sampling.steps, "implant": rows,
        "seconds_per_triplet": per_triplet, "peak_mb": peak_mb(device),
    }  # fmt: skip


def markdown(results: list[dict]) -> str:
    """One table: seconds per implant by lesion volume, image spacing and device."""
    lines = ["| device | image | lesion ml | lesion box (voxels) | GMAC / implant | s / implant |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for res in results:
        name = (
            f"{res['device']} ({res['threads']} threads)"
            if res["device"] == "cpu"
            else res["device"]
        )
        for row in res["implant"]:
            image = "x".join(map(str, row["image_shape"])) + f" @ {row['image_spacing_mm']:g} mm"
            box = "x".join(map(str, row["box"]))
            cost = f"{row['gmac']:.1f} | {row['seconds']:.2f}"
            lines.append(f"| {name} | {image} | {row['ml']:g} | {box} | {cost} |")
    lines.append("")
    for res in results:
        lines.append(f"- {res['device']}: {res['seconds_per_triplet']:.2f} s per generated triplet "
                     f"(phantom anatomy included), peak memory {res['peak_mb']:.0f} MB, "
                     f"{res['steps']} steps")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, benchmark CPU (and CUDA), print the table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="deviation-tumor-2mm")
    parser.add_argument("--steps", type=int, default=None, help="default: the weights' own")
    parser.add_argument("--volumes", type=float, nargs="+", default=list(VOLUMES_ML))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--n-generate", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = [run(args, device) for device in devices]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
