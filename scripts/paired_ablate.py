"""Short, time-bounded experiments for the paired engine (issue 13): representation and lesion loss.

    python scripts/paired_ablate.py floor --n 10            # Haar vs autoencoder on held-out brains
    python scripts/paired_ablate.py cost                    # seconds per U-Net update, both latents
    python scripts/paired_ablate.py train --data D.h5 --config C.toml --out RUN --minutes 8
    python scripts/paired_ablate.py probe --weights RUN/paired-stroke-2mm.safetensors
    python scripts/paired_ablate.py samples --weights A.safetensors B.safetensors --png S.png

`train` is the diffusion stage of `synthbrain train --engine paired` (same PairedTrainConfig, same
`PairedModel.training_step`, same latents and export) in a loop bounded by wall time and run
under bf16 autocast on the CPU, which the shared `fit` loop does not offer yet; it checkpoints
every few minutes and `--resume`s. `probe` measures what decides the lesion branch: its denoising
Dice at t = 100/300/500 on held-out phantoms (run seed 1000) and the joint sampler's non-empty
rate and lesion-volume median. Held-out subjects never come from the training seed (0).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthbrain import metrics
from synthbrain.engines.paired.model import PairedConfig, PairedModel


def held_out(n: int, seed: int = 1000, lesion: str = "stroke") -> list:
    """Phantom subjects 0 … n − 1 of run `seed` (T1, 2 mm)."""
    from synthbrain.phantom import draw_subject, make_subject
    from synthbrain.rng import derive_seed, generator_for

    return [
        make_subject(draw_subject(generator_for(derive_seed(seed, k)), lesion=lesion,
                                  contrasts=("t1",), spacing=2.0))
        for k in range(n)
    ]  # fmt: skip


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, np.float32))[None, None]


# ---------------------------------------------------------------------- floor


@torch.no_grad()
def cmd_floor(args: argparse.Namespace) -> dict[str, Any]:
    """PSNR / SSIM in the brain of held-out healthy substrates through each representation."""
    from synthbrain.engines.paired.run import load_bundle

    ae = load_bundle(args.weights, "stroke", device="cpu").model
    haar = PairedModel(PairedConfig(representation="haar")).eval()
    rows: dict[str, list] = {"haar": [], "autoencoder": []}
    for s in held_out(args.n):
        ref, brain = s.healthy["t1"].astype(np.float32), s.brain_mask > 0
        for name, m in (("haar", haar), ("autoencoder", ae)):
            t0 = time.perf_counter()
            out = m.decode(m.encode(_t(ref)))[0, 0].float().clamp(0, 1).numpy() * brain
            secs = time.perf_counter() - t0
            psnr = metrics.psnr(out, ref, brain.astype(np.float32))
            ssim = metrics.ssim(out, ref, brain.astype(np.float32))
            rows[name].append((min(psnr, 200.0), ssim, secs))
    return {
        name: {"psnr_mean": float(np.mean([r[0] for r in v])),
               "psnr_min": float(np.min([r[0] for r in v])),
               "ssim_mean": float(np.mean([r[1] for r in v])),
               "ssim_min": float(np.min([r[1] for r in v])),
               "seconds": float(np.mean([r[2] for r in v])), "n": len(v)}
        for name, v in rows.items()
    }  # fmt: skip


# ---------------------------------------------------------------------- cost


def cmd_cost(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per update of both sub-models (batch 8, bf16 autocast, AdamW) on each latent."""
    out = {}
    for name, width in (("autoencoder", 16), ("haar", 16), ("haar", 24)):
        cfg = PairedConfig(representation=name, denoiser_base_channels=width, prediction="v")
        model = PairedModel(cfg)
        model.stage = "diffusion"
        opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        z = torch.randn(args.batch, cfg.latent_channels, *cfg.latent_grid)
        x = model.mask_to_x(torch.zeros(args.batch, 1, *cfg.grid))
        times = []
        for i in range(args.warmup + args.updates):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model.training_step({"z": z, "x": x}, g)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        params = sum(p.numel() for p in model.trainable_parameters())
        out[f"{name}-w{width}"] = {"s_per_update": float(np.median(times)), "params": params}
    return out


# ---------------------------------------------------------------------- train


def _setup(args: argparse.Namespace) -> tuple[PairedModel, Any, torch.Tensor, torch.Tensor]:
    """Model from the config file and the data, its loss knobs, and the (cached) latents."""
    from synthbrain.engines.paired import training as tr
    from synthbrain.engines.paired.latents import compute_latents, load_latents, save_latents

    cfg = tr.load_train_config(args.config, seed=args.seed, steps=args.steps)
    model = PairedModel(tr.model_config_for(args.data, cfg.model))
    d = cfg.diffusion
    model.p_true_condition = d.p_true_condition
    model.latent_crop, model.lesion_fraction = d.latent_crop, d.lesion_fraction
    model.lesion_weight, model.lesion_dilate = d.lesion_weight, d.lesion_dilate
    model.min_snr_gamma = d.min_snr_gamma
    if cfg.autoencoder.weights:
        tr.load_autoencoder(model, Path(cfg.autoencoder.weights))
    cache = Path(args.latents)
    if cache.exists():  # shared by the arms of an ablation: same data, same representation
        z, x, _, norm = load_latents(cache)
        model.set_latent_norm(*norm)
    else:
        z, x, counts = compute_latents(model, args.data, cfg.data, 0, torch.device("cpu"))
        save_latents(cache, z, x, counts, (model.config.latent_shift, model.config.latent_scale))
    if d.weights:
        tr.load_denoisers(model, Path(d.weights))
    model.stage = "diffusion"
    return model, cfg, z, x


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    """The diffusion stage for `--minutes` of wall time (bf16 autocast), resumable."""
    from synthbrain.engines.paired.training import export_bundle
    from synthbrain.training.ema import EMA

    model, cfg, z, x = _setup(args)
    d = cfg.diffusion
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("eps_")]
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW([params[n] for n in names], lr=d.lr, weight_decay=d.weight_decay)
    ema = EMA(model, names, d.ema_decay, d.ema_warmup)
    gen = torch.Generator().manual_seed(args.seed)
    step, spent = 0, 0.0
    ckpt = out / "checkpoint.pt"
    if args.resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        ema.load_state_dict(state["ema"])
        gen.set_state(state["gen"])
        step, spent = state["step"], state["spent"]
    started, last_ckpt = time.perf_counter(), time.perf_counter()
    log = (out / "metrics.jsonl").open("a")
    model.train()
    while spent + (time.perf_counter() - started) < args.minutes * 60 and step < d.steps:
        idx = torch.randint(0, z.shape[0], (d.batch_size,), generator=gen)
        for group in opt.param_groups:  # linear warm-up, then constant: the length is unknown
            group["lr"] = d.lr * min(1.0, (step + 1) / max(1, d.warmup))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = model.training_step({"z": z[idx].float(), "x": x[idx].float()}, gen)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if d.grad_clip:
            torch.nn.utils.clip_grad_norm_([params[n] for n in names], d.grad_clip)
        opt.step()
        step += 1
        ema.update(model, step)
        if step % d.log_every == 0:
            elapsed = spent + time.perf_counter() - started
            row = {k: round(float(v.detach()), 5) for k, v in losses.items()}
            log.write(json.dumps({"step": step, "seconds": round(elapsed, 1), **row}) + "\n")
            log.flush()
        if time.perf_counter() - last_ckpt > args.checkpoint_minutes * 60:
            _save(ckpt, model, opt, ema, gen, step, spent + time.perf_counter() - started)
            last_ckpt = time.perf_counter()
    spent += time.perf_counter() - started
    _save(ckpt, model, opt, ema, gen, step, spent)
    live = {n: params[n].detach().clone() for n in names}
    with torch.no_grad():  # export the EMA weights, keep the live ones in the checkpoint
        for n, v in ema.state_dict().items():
            params[n].copy_(v)
    c = model.config
    weights = export_bundle(model, out / f"paired-{c.lesion}-{c.spacing:g}mm.safetensors", {
        "diffusion": {"step": step, "seconds": round(spent, 1), "device": "cpu"},
    })  # fmt: skip
    with torch.no_grad():
        for n, v in live.items():
            params[n].copy_(v)
    return {"steps": step, "seconds": round(spent, 1), "s_per_update": spent / max(1, step),
            "examples": int(z.shape[0]), "weights": str(weights)}  # fmt: skip


def _save(path: Path, model, opt, ema, gen, step: int, spent: float) -> None:  # noqa: ANN001
    """Checkpoint atomically (a killed run keeps its previous checkpoint)."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "ema": ema.state_dict(),
                "gen": gen.get_state(), "step": step, "spent": spent}, tmp)  # fmt: skip
    tmp.replace(path)


# ---------------------------------------------------------------------- probe


@torch.no_grad()
def lesion_dice(bundle, subjects: list, t_values: tuple[int, ...]) -> dict[str, float]:  # noqa: ANN001
    """The lesion branch's one-step x̂0 from the true state noised to t (image latent alike),
    thresholded at 0.5 in the brain: Dice with the true mask, mean over subjects. The noise of
    subject k is seeded by k alone, so every weights file sees the same noisy inputs."""
    from synthbrain.diffusion import q_sample
    from synthbrain.engines.paired.run import brain_tensor, soft_to_mask

    model, brain = bundle.model, brain_tensor(bundle)
    out: dict[str, float] = {}
    for t_val in t_values:
        scores = []
        for k, s in enumerate(subjects):
            g = torch.Generator().manual_seed(1000 + k)
            y0, x0 = model.encode(_t(s.images["t1"])), model.mask_to_x(_t(s.labels > 0))
            t = torch.full((1,), t_val)
            x_t = q_sample(model.schedule, x0, t, torch.randn(x0.shape, generator=g))
            y_t = q_sample(model.schedule, y0, t, torch.randn(y0.shape, generator=g))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                pred = model.lesion_out(x_t, y_t, t)
            x_hat = model.x0_from(x_t, t, pred.float()).clamp(-1, 1)
            mask = soft_to_mask(model, x_hat, brain)[0, 0].numpy()
            scores.append(metrics.dice(mask, s.labels > 0))
        out[f"dice_t{t_val}"] = float(np.mean(scores))
    return out


@torch.no_grad()
def brain_psnr(bundle, subjects: list, t_val: int = 300) -> float:  # noqa: ANN001
    """The brain branch's one-step ŷ0 from the image latent noised to t (conditioned on the true
    lesion state), decoded: PSNR in the brain against the image, mean over subjects. Decoded, so
    weights with differently normalised latents compare; the noise of subject k is seeded by k."""
    from synthbrain.diffusion import q_sample
    from synthbrain.engines.paired.run import brain_tensor

    model, brain = bundle.model, brain_tensor(bundle)[0, 0].numpy() > 0
    scores = []
    for k, s in enumerate(subjects):
        g = torch.Generator().manual_seed(2000 + k)
        image = _t(s.images["t1"])
        y0, x0 = model.encode(image), model.mask_to_x(_t(s.labels > 0))
        t = torch.full((1,), t_val)
        y_t = q_sample(model.schedule, y0, t, torch.randn(y0.shape, generator=g))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred = model.brain_out(y_t, x0, t)
        y_hat = model.decode(model.x0_from(y_t, t, pred.float(), "brain")).clamp(0, 1)[0, 0].numpy()
        scores.append(metrics.psnr(y_hat, image[0, 0].numpy(), brain))
    return float(np.mean(scores))


@torch.no_grad()
def joint_stats(bundle, n: int, steps: int, seed: int, batch: int = 10) -> dict[str, Any]:  # noqa: ANN001
    """Joint samples (DDIM, `steps`): non-empty rate, lesion ml quartiles, soft-map maximum."""
    from synthbrain.engines.paired.guidance import SamplerSettings, sample_joint
    from synthbrain.engines.paired.run import brain_tensor, soft_to_mask
    from synthbrain.rng import derive_seed

    model, brain = bundle.model, brain_tensor(bundle)
    vols, peaks, outside = [], [], []
    for lo in range(0, n, batch):
        gens = [torch.Generator().manual_seed(derive_seed(seed, k))
                for k in range(lo, min(n, lo + batch))]  # fmt: skip
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x0, _ = sample_joint(model, gens, SamplerSettings(steps=steps))
        soft = model.x_to_soft(x0.float())
        masks = soft_to_mask(model, x0.float(), brain)
        vols += (masks.flatten(1).sum(1).float() * model.config.spacing**3 / 1000.0).tolist()
        peaks += soft.flatten(1).amax(1).tolist()
        lesion_any = (soft > 0.5).flatten(1).sum(1).clamp_min(1)
        outside += (((soft > 0.5) & (brain == 0)).flatten(1).sum(1) / lesion_any).tolist()
    v = np.array(vols)
    return {
        "non_empty": float((v > 0).mean()), "ml_q25": float(np.percentile(v, 25)),
        "ml_median": float(np.median(v)), "ml_q75": float(np.percentile(v, 75)),
        "soft_max_mean": float(np.mean(peaks)), "outside_brain_frac": float(np.mean(outside)),
        "n": n, "steps": steps,
    }  # fmt: skip


def cmd_probe(args: argparse.Namespace) -> dict[str, Any]:
    """Denoising Dice at t = 100/300/500 and joint-sampler statistics of one weights file."""
    from synthbrain.engines.paired.run import load_bundle

    bundle = load_bundle(args.weights, args.lesion, device="cpu")
    bundle.model.batch_invariant = False  # batched is faster; byte identity is not needed here
    subjects = [s for s in held_out(args.n_subjects, lesion=args.lesion) if (s.labels > 0).any()]
    t0 = time.perf_counter()
    out: dict[str, Any] = lesion_dice(bundle, subjects, (100, 300, 500))
    out["dice_subjects"] = len(subjects)
    out["brain_psnr_t300"] = brain_psnr(bundle, subjects)
    out.update(joint_stats(bundle, args.n_joint, args.steps, args.seed))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


@torch.no_grad()
def cmd_heal(args: argparse.Namespace) -> dict[str, Any]:
    """eval_paired's heal without a mask (and the unedited input) on the same held-out subjects,
    for several weights files: the cheap part of the held-out table, side by side."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from eval_paired import heal_metrics, reference_metrics

    from synthbrain.engines.paired.guidance import SamplerSettings
    from synthbrain.engines.paired.run import load_bundle

    subjects = held_out(args.n)
    out = {}
    for weights in args.weights:
        bundle = load_bundle(weights, "stroke", device="cpu")
        run = SamplerSettings("ddim", 50, "linspace", 0.0, bundle.precision)
        out[weights] = {"reference": reference_metrics(bundle, subjects),
                        "heal": heal_metrics(bundle, subjects, run, with_mask=False)}  # fmt: skip
    return out


@torch.no_grad()
def sample_stats(bundle, subjects: list, steps: int) -> tuple[dict[str, float], list]:  # noqa: ANN001
    """Task (b) on held-out masks (DDIM, `steps`): whether samples carry the data's structure or
    the noise the sampler started from. Per subject, sample / true ratios of the Haar low band's
    and the 63 detail bands' energy in the brain, and of the decoded image's mean |gradient| in the
    brain (block noise: ratios well above 1). Returns the means and the decoded samples."""
    from synthbrain.engines.paired.guidance import SamplerSettings, sample_given_mask
    from synthbrain.engines.paired.run import brain_tensor

    model, brain = bundle.model, brain_tensor(bundle)[0, 0].numpy() > 0
    rows, images = [], []
    for k, s in enumerate(subjects):
        image = _t(s.images["t1"])
        y_true, x0 = model.encode(image), model.mask_to_x(_t(s.labels > 0))
        gens = [torch.Generator().manual_seed(3000 + k)]
        y = sample_given_mask(model, x0, gens, SamplerSettings(steps=steps))
        decoded = model.decode(y).clamp(0, 1)[0, 0].numpy()
        truth = image[0, 0].numpy()
        rows.append({
            "low_band": float(y[:, 0].var() / y_true[:, 0].var()),
            "detail_bands": float(y[:, 1:].pow(2).mean() / y_true[:, 1:].pow(2).mean()),
            "gradient": _mean_gradient(decoded, brain) / _mean_gradient(truth, brain),
            "psnr_vs_subject": metrics.psnr(decoded, truth, brain),
        })  # fmt: skip
        images.append((truth, decoded))
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}, images


def _mean_gradient(volume: np.ndarray, brain: np.ndarray) -> float:
    """Mean gradient magnitude (voxel units) inside the brain."""
    grads = np.gradient(volume.astype(np.float64))
    return float(np.sqrt(sum(g**2 for g in grads))[brain].mean())


def cmd_samples(args: argparse.Namespace) -> dict[str, Any]:
    """`sample_stats` for several weights files on the same held-out subjects; with --png, the
    middle axial slice of each subject, true then one sample per weights file."""
    from synthbrain.engines.paired.run import load_bundle

    subjects = [s for s in held_out(args.n) if (s.labels > 0).any()]
    out, columns = {}, []
    for weights in args.weights:
        bundle = load_bundle(weights, "stroke", device="cpu")
        bundle.model.batch_invariant = False
        out[weights], images = sample_stats(bundle, subjects, args.steps)
        columns.append(images)
    if args.png:
        names = [f"{Path(w).parent.name}/{Path(w).stem}" for w in args.weights]
        _sample_figure(args.png, columns, names)
    return out


def _sample_figure(path: Path, columns: list, names: list[str]) -> None:
    """Rows: subjects; columns: the true image, then each weights file's sample."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(columns[0])
    fig, axes = plt.subplots(rows, 1 + len(columns), figsize=(2.4 * (1 + len(columns)), 2.6 * rows))
    axes = np.atleast_2d(axes)
    for r in range(rows):
        truth = columns[0][r][0]
        z = truth.shape[2] // 2
        panels = [("true", truth)] + [(n, col[r][1]) for n, col in zip(names, columns, strict=True)]
        for c, (name, vol) in enumerate(panels):
            axes[r, c].imshow(np.rot90(vol[:, :, z]), cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("floor")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--weights", default=None, help="autoencoder weights (default: embedded)")
    p = sub.add_parser("cost")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--updates", type=int, default=8)
    p = sub.add_parser("train")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--latents", required=True, help="latent cache shared by the arms")
    p.add_argument("--minutes", type=float, required=True)
    p.add_argument("--steps", type=int, default=None, help="stop at this update (equal budget)")
    p.add_argument("--checkpoint-minutes", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p = sub.add_parser("probe")
    p.add_argument("--weights", required=True)
    p.add_argument("--lesion", default="stroke")
    p.add_argument("--n-subjects", type=int, default=6)
    p.add_argument("--n-joint", type=int, default=20)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=1000)
    p = sub.add_parser("heal")
    p.add_argument("--weights", nargs="+", required=True)
    p.add_argument("--n", type=int, default=5)
    p = sub.add_parser("samples")
    p.add_argument("--weights", nargs="+", required=True)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--png", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    commands = {"floor": cmd_floor, "cost": cmd_cost, "train": cmd_train, "probe": cmd_probe}
    result = {**commands, "heal": cmd_heal, "samples": cmd_samples}[args.cmd](args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
