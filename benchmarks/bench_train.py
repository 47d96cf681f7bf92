"""Training speed: the shared loop against a bare PyTorch loop, fp32 against bf16 (issue 12).

For each engine's shipped training config (examples/configs) the engine is built as
`synthbrain train` builds it and fed synthetic items of the real shapes:

- paired: the diffusion stage's two 3-D latent U-Nets on 24×28×24 latents (batch 8);
- deviation: the 2-D denoiser + substrate net on 48² crops of 96×112 slices (batch 32 here;
  the shipped config trains at batch 4);
- deformation: the 2.5-D D3M denoiser + deformation net on 48² crops (batch 8).

Two rows per precision: "bare" is a minimal loop (training_step, backward, clip, AdamW) over the
same network, batch and precision; "fit" is `synthbrain.train.fit` (the loop `synthbrain train`
runs: DataLoader collation, per-update seeded generators, clipping, AdamW, cosine schedule, EMA,
logging) over the same items held in memory. Their ratio is the loop's overhead; HDF5 reading
is not in either (a real run logs it as `data_wait_s` per update in metrics.jsonl). Seconds per
update are the median over `--updates` timed updates after `--warmup` untimed ones.
`--channels-last` adds channels-last rows of the bare loop. CUDA rows (bf16, `--cuda-batch`, and
torch.compile with `--compile`) follow when a GPU is present. Not run by the tests.

    python benchmarks/bench_train.py --threads 2 --updates 8 --channels-last --json bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs"
SLICE = (96, 112)  # the 2 mm MNI152 grid's axial slice


def blob(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """A random ellipsoidal lesion mask (float 0/1) of `shape` (spatial dims only)."""
    axes = [torch.linspace(-1, 1, n) for n in shape]
    grids = torch.meshgrid(*axes, indexing="ij")
    centre = (torch.rand(len(shape), generator=generator) - 0.5) * 0.6
    radius = 0.15 + 0.2 * torch.rand(len(shape), generator=generator)
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radius, strict=True))
    return (inside <= 1).float()


def paired_case(batch: int) -> tuple[nn.Module, Callable[[int], dict[str, torch.Tensor]]]:
    """The paired engine's diffusion stage and its latent items."""
    from synthbrain.engines.paired.model import PairedConfig, PairedModel
    from synthbrain.engines.paired.training import load_train_config

    cfg = load_train_config(CONFIGS / "paired-stroke-2mm.toml")
    model = PairedModel(PairedConfig(**cfg.model), stage="diffusion")
    c = model.config
    grid = c.latent_grid

    def item(i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        x = torch.full((c.lesion_channels, *grid), -1.0)
        x[:, blob(grid, g) > 0] = 1.0
        return {"z": torch.randn(c.latent_channels, *grid, generator=g), "x": x}

    return model, item


def deviation_case(batch: int) -> tuple[nn.Module, Callable[[int], dict[str, torch.Tensor]]]:
    """The deviation engine (shipped tumour config) and slice items it crops to 48²."""
    from synthbrain.engines.deviation.config import load_config
    from synthbrain.engines.deviation.model import DeviationModel

    config = load_config(CONFIGS / "deviation-tumor-2mm.toml")
    model = DeviationModel(config)
    channels = len(config.contrasts)

    def item(i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return {"images": torch.rand(channels, *SLICE, generator=g),
                "mask": blob(SLICE, g)[None]}  # fmt: skip

    return model, item


def deformation_case(batch: int) -> tuple[nn.Module, Callable[[int], dict[str, torch.Tensor]]]:
    """The deformation engine (shipped glioma config) and its 2.5-D slice items."""
    from synthbrain.engines.deformation.config import load_config
    from synthbrain.engines.deformation.model import DeformationModel

    config = load_config(CONFIGS / "deformation-glioma-2mm.toml")
    config = config.model_copy(update={"grid": (*SLICE, 96), "spacing": 2.0})
    model = DeformationModel(config, 3)
    n_cond = len(config.contrasts) * (2 * config.context + 1)

    def item(i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        tumour = blob(SLICE, g)[None]
        return {"cond": torch.rand(n_cond, *SLICE, generator=g),
                "target": torch.rand(1, *SLICE, generator=g), "mask": tumour,
                "tumour": tumour, "brain": torch.ones(1, *SLICE)}  # fmt: skip

    return model, item


CASES = {"paired": (paired_case, 8), "deviation": (deviation_case, 32),
         "deformation": (deformation_case, 8)}  # fmt: skip


class Items(torch.utils.data.Dataset):
    """`n` synthetic items, made once and kept in memory."""

    def __init__(self, make: Callable[[int], dict[str, torch.Tensor]], n: int) -> None:
        self.items = [make(i) for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


def params_of(model: nn.Module) -> list[nn.Parameter]:
    """The stage's trainable parameters, as fit chooses them."""
    from synthbrain.training.run import trainable

    return trainable(model)[1]


def bare(model: nn.Module, data: Items, batch: int, device: torch.device, precision: str,
         args: argparse.Namespace, channels_last: bool = False) -> list[float]:  # fmt: skip
    """Seconds of each timed update of a minimal loop over the same network and batches."""
    from synthbrain.training.precision import autocast

    model.to(device).train()
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}
    if channels_last:
        model.to(memory_format=fmt[5 if len(next(iter(data.items[0].values())).shape) == 4 else 4])
    step_fn = torch.compile(model.training_step) if args.compile else model.training_step
    params = params_of(model)
    opt = torch.optim.AdamW(params, lr=1e-4)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, drop_last=True)
    times, stream = [], iter(loader)
    for k in range(args.warmup + args.updates):
        try:
            b = next(stream)
        except StopIteration:
            stream = iter(loader)
            b = next(stream)
        b = {key: v.to(device) for key, v in b.items()}
        if channels_last:
            b = {key: v.contiguous(memory_format=fmt[v.dim()]) if v.dim() in fmt else v
                 for key, v in b.items()}  # fmt: skip
        sync(device)
        start = time.perf_counter()
        with autocast(device, precision):
            loss = step_fn(b, torch.Generator(device).manual_seed(k))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sync(device)
        if k >= args.warmup:
            times.append(time.perf_counter() - start)
    return times


def pipeline(model: nn.Module, data: Items, batch: int, device: torch.device, precision: str,
             args: argparse.Namespace) -> list[float]:  # fmt: skip
    """Seconds per update of fit's logging windows after the warm-up (one window per update)."""
    from synthbrain.train import TrainConfig, fit

    steps = args.warmup + args.updates
    cfg = TrainConfig(steps=steps, batch_size=batch, warmup=1, log_every=1, val_batches=0,
                      checkpoint_every=10**6, num_workers=0, device=str(device),
                      precision=precision, curves=False)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        fit(model, data, None, cfg, tmp, progress=False)
        lines = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in lines if r["kind"] == "train"][args.warmup :]
    return [batch / r for r in rates]


def sync(device: torch.device) -> None:
    """Wait for the GPU (timings of asynchronous kernels)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rows_for(name: str, device: torch.device, batch: int, args: argparse.Namespace) -> list[dict]:
    """Every measured row of one engine on one device."""
    from synthbrain.training.precision import device_has_bf16

    make_case = CASES[name][0]
    precisions = ["fp32", "bf16"] if device_has_bf16(device) else ["fp32"]
    if device.type == "cuda":
        precisions = ["bf16"]
    rows = []
    for precision in precisions:
        kinds = [("bare", False), ("fit", False)]
        if args.channels_last:
            kinds.append(("bare channels-last", True))
        for kind, channels_last in kinds:
            torch.manual_seed(0)
            model, make = make_case(batch)
            data = Items(make, max(4 * batch, 16))
            if kind == "fit":
                times = pipeline(model, data, batch, device, precision, args)
            else:
                times = bare(model, data, batch, device, precision, args, channels_last)
            s = statistics.median(times)
            rows.append({"engine": name, "device": device.type, "batch": batch,
                         "precision": precision, "loop": kind, "s_per_update": round(s, 4),
                         "samples_per_s": round(batch / s, 2)})  # fmt: skip
            print(table([rows[-1]], header=False), flush=True)
    return rows


def table(rows: list[dict], header: bool = True) -> str:
    """Markdown rows: engine, device, batch, precision, loop, s/update, samples/s."""
    lines = []
    if header:
        lines += ["| engine | device | batch | precision | loop | s / update | samples / s |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        cells = [r["engine"], r["device"], r["batch"], r["precision"], r["loop"],
                 f"{r['s_per_update']:.3f}", f"{r['samples_per_s']:.1f}"]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> list[str]:
    """The goals: fit overhead over bare ≤ 15 %, bf16 ≥ 1.5× fp32 (bare loop)."""
    out = []
    for key in sorted({(r["engine"], r["device"]) for r in rows}):
        mine = {(r["precision"], r["loop"]): r["s_per_update"] for r in rows
                if (r["engine"], r["device"]) == key}  # fmt: skip
        for precision in ("fp32", "bf16"):
            if (precision, "fit") in mine:
                over = mine[(precision, "fit")] / mine[(precision, "bare")] - 1
                out.append(f"{key[0]} {key[1]} {precision}: fit overhead {100 * over:+.1f} %")
        if ("fp32", "bare") in mine and ("bf16", "bare") in mine:
            gain = mine[("fp32", "bare")] / mine[("bf16", "bare")]
            out.append(f"{key[0]} {key[1]}: bf16 speed-up {gain:.2f}x over fp32 (bare)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="paired,deviation,deformation")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--updates", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile (bare loop)")
    parser.add_argument("--cuda-batch", type=int, default=16)
    parser.add_argument("--no-cpu", action="store_true", help="CUDA rows only")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    for name in args.engines.split(","):
        if not args.no_cpu:
            rows += rows_for(name, torch.device("cpu"), CASES[name][1], args)
        if torch.cuda.is_available():
            rows += rows_for(name, torch.device("cuda"), args.cuda_batch, args)
    print("\n" + table(rows))
    print("\n".join(summary(rows)))
    if args.json:
        meta = {"threads": args.threads, "torch": torch.__version__, "argv": sys.argv[1:],
                "cpu_capability": torch.backends.cpu.get_cpu_capability()}  # fmt: skip
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
