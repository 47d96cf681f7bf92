"""Forward-pass time and peak memory of every default network config at its working size.

Usage:
    python benchmarks/bench_nets.py --device cpu --repeats 3
    python benchmarks/bench_nets.py --device cuda --repeats 20 --backward
    python benchmarks/bench_nets.py --sliding     # sliding encode/decode error of the autoencoder

Each config runs in its own process (CPU) so the peak resident-memory figure (ru_maxrss) belongs
to that config alone; "peak MB" is the rise of the peak over the resident size just before the
timed passes (activations and workspaces, not the weights). On CUDA it is
torch.cuda.max_memory_allocated() minus the memory allocated before the passes. The table is
printed as Markdown (docs/networks.md holds a copy).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time


def _rss_mb() -> float:
    """Current resident set size of this process in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _make_step(net, config, x, backward: bool):
    """A closure running one forward (and backward) pass of ``net``."""
    import torch

    t = torch.full((x.shape[0],), 500, device=x.device)

    def step():
        with torch.set_grad_enabled(backward):
            if config.kind == "autoencoder":
                out = net(x, sample=False)[0]
            else:
                out = net(x, t) if config.timed else net(x)
            outs = out if isinstance(out, tuple) else (out,)
            if backward:
                sum(o.float().square().mean() for o in outs).backward()

    return step


def _measure(name: str, device: str, repeats: int, backward: bool, threads: int | None) -> dict:
    """Time ``repeats`` passes of config ``name`` after one warm-up; return one table row."""
    import torch

    from synthbrain.nets import count_params, default_configs

    if threads:
        torch.set_num_threads(threads)
    config = default_configs()[name]
    net = config.build().to(device).train(backward)
    x = torch.rand(1, *config.input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    step = _make_step(net, config, x, backward)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_mb()
    step()  # warm-up: allocator caches, cuDNN autotuning
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if device.startswith("cuda"):
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {
        "name": name,
        "shape": "x".join(map(str, config.input_shape[1:])),
        "channels": config.input_shape[0],
        "params": count_params(net),
        "ms": 1000 * statistics.median(times),
        "peak_mb": peak,
    }


def _run_isolated(args: tuple) -> dict:
    """Pool worker: one config per fresh process."""
    return _measure(*args)


def _template_volume(shape: tuple[int, ...]):
    """The MNI152 2 mm T1 template (nilearn) in [0, 1], centre-cropped/padded to ``shape``."""
    import numpy as np
    import torch
    from nilearn.datasets import load_mni152_template

    data = np.asarray(load_mni152_template(resolution=2).get_fdata(), dtype=np.float32)
    data = data / data.max()
    out = np.zeros(shape, dtype=np.float32)
    src, dst = [], []
    for n_in, n_out in zip(data.shape, shape, strict=True):
        lo_in, lo_out = max((n_in - n_out) // 2, 0), max((n_out - n_in) // 2, 0)
        n = min(n_in, n_out)
        src.append(slice(lo_in, lo_in + n))
        dst.append(slice(lo_out, lo_out + n))
    out[tuple(dst)] = data[tuple(src)]
    return torch.from_numpy(out)[None, None]


def sliding_report(threads: int | None) -> None:
    """Relative error of encode_sliding / decode_sliding against whole-volume passes.

    Uses the paired-ae-2mm architecture at random initialisation (no trained weights exist
    here) on the MNI152 template, once with each norm.
    """
    import torch

    from synthbrain.nets import default_configs

    if threads:
        torch.set_num_threads(threads)
    config = default_configs()["paired-ae-2mm"]
    x = _template_volume(config.input_shape[1:])
    enc = [(48, 16, None), (64, 32, None), (80, 64, None), (92, 88, 10)]
    dec = [(12, 4, None), (16, 8, None), (20, 16, None), (23, 22, 41)]
    print("| norm | pass | slab | overlap | margin | max rel. error | mean rel. error |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for norm in ("channel", "group"):
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)
            ae = config.build(norm=norm).eval()
            whole = ae.encode(x).mean
            recon = ae.decode(whole)
            for kind, combos, ref in (("encode", enc, whole), ("decode", dec, recon)):
                for slab, overlap, margin in combos:
                    if kind == "encode":
                        got = ae.encode_sliding(x, slab, overlap, margin=margin).mean
                    else:
                        got = ae.decode_sliding(whole, slab, overlap, margin=margin)
                    err = (got - ref).abs()
                    mx = (err.max() / ref.abs().max()).item()
                    mean = (err.mean() / ref.abs().mean()).item()
                    m = "default" if margin is None else margin
                    print(f"| {norm} | {kind} | {slab} | {overlap} | {m} | {mx:.2e} | {mean:.2e} |")


def main() -> None:
    """Parse arguments, benchmark every config, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (median reported)")
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--only", nargs="*", default=None, help="config names to run")
    parser.add_argument(
        "--sliding", action="store_true", help="report sliding-window autoencoder error instead"
    )
    args = parser.parse_args()
    if args.sliding:
        sliding_report(args.threads)
        return

    from synthbrain.nets import default_configs

    names = args.only or list(default_configs())
    jobs = [(n, args.device, args.repeats, args.backward, args.threads) for n in names]
    if args.device == "cpu":
        ctx = mp.get_context("spawn")  # fresh process per config: clean ru_maxrss
        rows = []
        for job in jobs:
            with ctx.Pool(1) as pool:
                rows.append(pool.apply(_run_isolated, (job,)))
    else:
        rows = [_measure(*job) for job in jobs]
    what = "forward + backward" if args.backward else "forward"
    print(f"{what}, batch 1, device {args.device}, median of {args.repeats}\n")
    print("| config | input (C, spatial) | params | time (ms) | peak memory (MB) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| `{r['name']}` | {r['channels']}, {r['shape']} | {r['params']:,} "
            f"| {r['ms']:.0f} | {r['peak_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
