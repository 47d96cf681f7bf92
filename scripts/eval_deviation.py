"""Quality of the deviation engine on held-out phantom subjects (the table in docs/deviation.md).

For each held-out phantom subject (seeds never used in training: derive_seed(1000, k)) the true
lesion image, its healthy substrate and the lesion mask are known. On the same anatomy and mask:

- deviation: the PathoSyn engine implants lesions into the healthy substrate;
- image: the image-space baseline (the same denoiser diffusing the whole window given x ⊙ m̄ and
  m, then pasted into m), if its weights are given;
- inp+shift: the fixed harmonic inpainting plus a per-contrast mean lesion shift measured on the
  training set.

Everything is measured on the lesion box at the model's 2 mm grid (model intensities in [0, 1]):
change outside the lesion, realism AUC of lesion-slice features (true vs implanted, bootstrap 95%
CI), first-order and GLCM texture inside the lesion per contrast, diversity across variants, and
heal (in-lesion L1 against the true substrate: f_sub vs Inp alone).

Example:
    python scripts/eval_deviation.py --weights deviation-tumor-2mm \
        --baseline runs/deviation/tumor-image/main.safetensors \
        --train-set runs/deviation/tumor-train.h5 --n 8 --variants 3 --json runs/deviation/eval.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from synthbrain.engines.deviation.io import lesion_grid, subject_from_volumes, to_box
from synthbrain.engines.deviation.ops import harmonic_fill
from synthbrain.engines.deviation.run import load_bundle
from synthbrain.engines.deviation.tensors import (
    availability,
    box_batch,
    element_generators,
    heal_tensors,
    implant_tensors,
    unbatch,
)
from synthbrain.io.nifti import Volume
from synthbrain.metrics import first_order, realism_auc, texture_statistics

TEXTURE = ("mean", "skewness", "kurtosis", "contrast", "homogeneity")


def held_out(k: int, seed: int, lesion: str, config) -> dict:  # noqa: ANN001
    """Held-out phantom subject k: healthy and true subjects on one lesion box."""
    from synthbrain.io.dataset import lesion_mask_from_labels
    from synthbrain.phantom import draw_subject, make_subject
    from synthbrain.phantom.lesions import label_names
    from synthbrain.rng import derive_seed, generator_for

    params = draw_subject(generator_for(derive_seed(seed, k)), lesion=lesion,
                          contrasts=config.contrasts, spacing=config.spacing)  # fmt: skip
    ph = make_subject(params)
    mask = lesion_mask_from_labels(ph.labels, config.labels, label_names(lesion)) > 0
    first = config.contrasts[0]
    healthy = subject_from_volumes(
        {c: Volume(ph.healthy[c], ph.affine) for c in config.contrasts}, mask, first
    )
    true = subject_from_volumes({c: Volume(ph.images[c], ph.affine) for c in config.contrasts},
                                mask, first)  # fmt: skip
    return {"healthy": healthy, "true": true, "ml": ph.lesion_ml}


def boxes(model, pair: dict) -> dict:  # noqa: ANN001
    """The healthy and the true subject resampled onto the same lesion box."""
    cfg = model.config
    grid = lesion_grid(pair["healthy"], spacing=cfg.spacing, margin_mm=cfg.margin_mm,
                       min_size=cfg.min_size, multiple=model.multiple, dims=cfg.dims)  # fmt: skip
    healthy = to_box(pair["healthy"], cfg.contrasts, grid)
    true = to_box(pair["true"], cfg.contrasts, grid, windows=healthy.windows)
    return {"healthy": healthy, "true": true}


def run_model(model, box, *, seed: int, variants: int, steps: int | None, eta=None, heal_from=None):  # noqa: ANN001, ANN201, E501
    """Implant `variants` lesions into `box` (and heal `heal_from`): box arrays [C, X, Y, Z]."""
    cfg = model.config
    xb, mb, zs, pad = box_batch(box.x, box.m, cfg.dims, model.multiple)
    a = availability(model, box.available, xb.shape[0], "cpu")
    images, raws = [], []
    for v in range(variants):
        out = implant_tensors(model, xb, mb, a, element_generators(seed + v, xb.shape[0]),
                              steps=steps, eta=eta)  # fmt: skip
        images.append(unbatch(box.x, out["image"], zs, pad))
        raw = out.get("raw")
        raws.append(None if raw is None else unbatch(box.x, raw, zs, pad))
    healed = None
    if heal_from is not None:
        hb, _, _, _ = box_batch(heal_from.x, heal_from.m, cfg.dims, model.multiple)
        healed = unbatch(heal_from.x, heal_tensors(model, hb, mb, a), zs, pad)
    return {"images": images, "raws": raws, "healed": healed}


def inpaint_shift(box, shift: np.ndarray, dims: int) -> np.ndarray:  # noqa: ANN001
    """Inp(x, m) + μ_c on m, slice by slice in 2-D (the plain baseline)."""
    xb, mb, zs, pad = box_batch(box.x, box.m, dims, 16)
    filled = (
        harmonic_fill(xb, mb) + torch.as_tensor(shift, dtype=xb.dtype)[None, :, None, None] * mb
    )
    return unbatch(box.x, filled, zs, pad)


def mean_shift(train_set: Path, config, max_items: int = 300) -> np.ndarray:  # noqa: ANN001
    """Per-contrast mean of x − Inp(x, m) over training lesion voxels."""
    from synthbrain.engines.deviation.training import LesionItems

    items = LesionItems(train_set, "train", config)
    picks = np.linspace(0, len(items) - 1, min(max_items, len(items))).astype(int)
    total, count = np.zeros(config.n_contrasts), 0.0
    for i in picks:
        item = items[int(i)]
        x, m = item["images"][None], item["mask"][None]
        diff = (x - harmonic_fill(x, m)) * m
        total += diff.sum(dim=(0, 2, 3)).numpy()
        count += float(m.sum())
    return total / max(count, 1.0)


def slice_features(image: np.ndarray, m: np.ndarray, min_voxels: int = 10) -> list[np.ndarray]:
    """One feature row per axial slice with a lesion: per contrast first-order statistics,
    percentiles and the mean edge gradient on the lesion boundary."""
    from scipy import ndimage

    rows = []
    for z in np.flatnonzero(m.sum(axis=(0, 1)) >= min_voxels):
        mz = m[..., z] > 0
        edge = mz & ~ndimage.binary_erosion(mz)
        row = []
        for c in range(image.shape[0]):
            v = image[c, ..., z]
            stats = first_order(v[mz])
            grad = np.hypot(*np.gradient(v))
            row += [stats["mean"], float(v[mz].std()), stats["skewness"], stats["kurtosis"],
                    *np.percentile(v[mz], [10, 90]), float(grad[edge].mean())]  # fmt: skip
        rows.append(np.nan_to_num(np.asarray(row)))
    return rows


FEATURES = ("mean", "sd", "skewness", "kurtosis", "p10", "p90", "edge gradient")


def auc_by_feature(real: np.ndarray, fake: np.ndarray, contrasts) -> dict:  # noqa: ANN001
    """What the realism classifier keys on: its AUC on one feature of slice_features across
    contrasts, and on all features of one contrast (columns are contrast-major)."""
    width = len(FEATURES)
    groups = {f: [c * width + i for c in range(len(contrasts))] for i, f in enumerate(FEATURES)}
    groups |= {c: list(range(j * width, (j + 1) * width)) for j, c in enumerate(contrasts)}
    out = {name: realism_auc(real[:, cols], fake[:, cols], bootstrap=1, seed=0).auc
           for name, cols in groups.items()}  # fmt: skip
    out["means, true / implanted"] = {
        f"{c}/{f}": [round(float(real[:, j * width + i].mean()), 4),
                     round(float(fake[:, j * width + i].mean()), 4)]
        for j, c in enumerate(contrasts) for i, f in enumerate(FEATURES)
    }  # fmt: skip
    return out


def diversity(images: list[np.ndarray], m: np.ndarray) -> float:
    """Mean pairwise L1 inside the mask between variants (model units); 0 for one output."""
    pairs = list(itertools.combinations(images, 2))
    if not pairs:
        return 0.0
    inside = np.broadcast_to(m > 0, images[0].shape)
    return float(np.mean([np.abs(a - b)[inside].mean() for a, b in pairs]))


def aligned_l1(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Mean L1 between two lesions' deviations (true image − substrate) [C, *sp], their masks
    [*sp] placed on each other by the masks' centroids, over the voxels both masks cover."""
    (ra, ma), (rb, mb) = a, b
    pa = np.argwhere(ma)
    q = pa - np.round(pa.mean(0)).astype(int) + np.round(np.argwhere(mb).mean(0)).astype(int)
    ok = np.all((q >= 0) & (q < np.array(mb.shape)), axis=1)
    pa, q = pa[ok], q[ok]
    both = mb[tuple(q.T)]
    if not both.any():
        return float("nan")
    pa, q = pa[both], q[both]
    return float(np.abs(ra[(slice(None), *pa.T)] - rb[(slice(None), *q.T)]).mean())


def true_diversity(lesions: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """The goal's reference: diversity between true lesions of different subjects on the same
    mask size, as the mean aligned L1 of each subject's lesion with that of the subject whose
    mask size is nearest (the variants' diversity compares lesions on one mask the same way)."""
    sizes = np.array([m.sum() for _, m in lesions], float)
    values = []
    for i, lesion in enumerate(lesions):
        gap = np.abs(sizes - sizes[i])
        gap[i] = np.inf
        values.append(aligned_l1(lesion, lesions[int(np.argmin(gap))]))
    return float(np.nanmean(values)) if len(lesions) > 1 else float("nan")


def evaluate_heal(args: argparse.Namespace) -> dict:
    """--heal-only: in-lesion L1 of heal-with-mask (f_sub) and of Inp alone against the true
    substrate, per held-out subject (no diffusion, so seconds for many subjects)."""
    dev = load_bundle(args.weights, lesion=args.lesion, device="cpu").model
    rows = []
    for k in range(args.n):
        pair = held_out(k, args.seed, args.lesion, dev.config)
        bx = boxes(dev, pair)
        x, m = bx["healthy"].x, bx["healthy"].m
        inside = np.broadcast_to(m > 0, x.shape)
        healed = run_model(dev, bx["healthy"], seed=0, variants=0, steps=None,
                           heal_from=bx["true"])["healed"]  # fmt: skip
        inp = inpaint_shift(bx["true"], np.zeros(dev.config.n_contrasts), dev.config.dims)
        rows.append({"ml": pair["ml"], "f_sub": float(np.abs(healed - x)[inside].mean()),
                     "inp": float(np.abs(inp - x)[inside].mean())})  # fmt: skip
    f_sub, inp = (float(np.mean([r[key] for r in rows])) for key in ("f_sub", "inp"))
    wins = sum(r["f_sub"] < r["inp"] for r in rows)
    return {"subjects": args.n, "seed": args.seed, "weights": args.weights, "per_subject": rows,
            "heal_l1_in_lesion": {"f_sub": f_sub, "Inp alone": inp}, "ratio": f_sub / inp,
            "subjects_f_sub_better": wins}  # fmt: skip


def evaluate(args: argparse.Namespace) -> dict:
    """Run every method on every held-out subject and collect the metrics."""
    dev = load_bundle(args.weights, lesion=args.lesion, device="cpu").model
    if args.recompose:
        dev.config.sampling.recompose = args.recompose
    if args.spacing:
        dev.config.sampling.spacing = args.spacing
    if args.invert_tanh:
        dev.config.sampling.invert_tanh = True
    if args.clamp_image:
        dev.config.sampling.clamp_image = True
    base = load_bundle(args.baseline, device="cpu").model if args.baseline else None
    cfg = dev.config
    shift = mean_shift(Path(args.train_set), cfg) if args.train_set else np.zeros(cfg.n_contrasts)
    methods = ["deviation", "inp+shift"] + (["image"] if base is not None else [])
    every = ["true", *methods]
    acc = {
        "feats": {m: [] for m in every},
        "tex": {m: {c: {k: [] for k in TEXTURE} for c in cfg.contrasts} for m in every},
        "out_change": {m: [] for m in methods + (["image (unpasted)"] if base else [])},
        "div": {m: [] for m in methods},
        "heal_l1": {"f_sub": [], "Inp alone": []},
        "seconds": {m: [] for m in methods},
        "lesions": [],
    }  # fmt: skip
    for k in range(args.n):
        pair = held_out(k, args.seed, args.lesion, cfg)
        bx = boxes(dev, pair)
        results = implant_all(args, k, dev, base, bx, shift, acc)
        score_subject(bx, results, cfg, acc)
        box = list(bx["healthy"].grid.grid_shape)
        print(f"subject {k}: {pair['ml']:.1f} ml, box {box}", flush=True)
    return _summarise(args, methods, shift, **acc)


def implant_all(args, k, dev, base, bx, shift, acc) -> dict:  # noqa: ANN001
    """Every method's implants on subject k's box (and the heal scores); timings into acc."""
    x, m = bx["healthy"].x, bx["healthy"].m
    inside = np.broadcast_to(m > 0, x.shape)
    results = {}
    t0 = time.perf_counter()
    run = run_model(dev, bx["healthy"], seed=args.seed + 10 * k, variants=args.variants,
                    steps=args.steps, eta=args.eta, heal_from=bx["true"])  # fmt: skip
    acc["seconds"]["deviation"].append((time.perf_counter() - t0) / args.variants)
    results["deviation"] = run["images"]
    acc["heal_l1"]["f_sub"].append(float(np.abs(run["healed"] - x)[inside].mean()))
    inp = inpaint_shift(bx["true"], np.zeros(len(shift)), dev.config.dims)
    acc["heal_l1"]["Inp alone"].append(float(np.abs(inp - x)[inside].mean()))
    t0 = time.perf_counter()
    results["inp+shift"] = [inpaint_shift(bx["healthy"], shift, dev.config.dims)]
    acc["seconds"]["inp+shift"].append(time.perf_counter() - t0)
    if base is not None:
        t0 = time.perf_counter()
        brun = run_model(base, bx["healthy"], seed=args.seed + 10 * k, variants=args.variants,
                         steps=args.steps, eta=args.eta)  # fmt: skip
        acc["seconds"]["image"].append((time.perf_counter() - t0) / args.variants)
        results["image"] = brun["images"]
        if brun["raws"][0] is None:
            raise SystemExit(f"--baseline {args.baseline} is not image-space (space = 'image')")
        outside = np.broadcast_to(m == 0, x.shape)
        unpasted = float(np.abs(brun["raws"][0] - x)[outside].mean())
        acc["out_change"]["image (unpasted)"].append(unpasted)
    return results


def score_subject(bx: dict, results: dict, cfg, acc: dict) -> None:  # noqa: ANN001
    """Features, texture, change outside the lesion and diversity of one subject."""
    x, m, truth = bx["healthy"].x, bx["healthy"].m, bx["true"].x
    outside = np.broadcast_to(m == 0, x.shape)
    acc["feats"]["true"] += slice_features(truth, m)
    acc["lesions"].append((truth - x, np.asarray(m).reshape(x.shape[1:]) > 0))
    _texture(acc["tex"]["true"], truth, m, cfg.contrasts)
    for name, images in results.items():
        acc["out_change"][name].append(float(np.abs(images[0] - x)[outside].max()))
        acc["feats"][name] += slice_features(images[0], m)
        _texture(acc["tex"][name], images[0], m, cfg.contrasts)
        acc["div"][name].append(diversity(images, m))


def _texture(store: dict, image: np.ndarray, m: np.ndarray, contrasts) -> None:  # noqa: ANN001
    """Append one subject's texture statistics per contrast."""
    for i, c in enumerate(contrasts):
        stats = texture_statistics(image[i], m)
        for key in TEXTURE:
            store[c][key].append(stats[key])


def _summarise(  # noqa: ANN001
    args, methods, shift, *, feats, tex, out_change, div, heal_l1, seconds, lesions
) -> dict:
    """Means and AUCs as one JSON-ready dict."""
    real = np.stack(feats["true"])
    auc = {}
    for name in methods:
        res = realism_auc(real, np.stack(feats[name]), bootstrap=args.bootstrap, seed=0)
        auc[name] = {"auc": res.auc, "ci": [res.ci_low, res.ci_high], "n": [res.n_real, res.n_fake]}
    by_feature = auc_by_feature(real, np.stack(feats["deviation"]), list(tex["true"]))
    mean = lambda v: float(np.nanmean(v)) if len(v) else float("nan")  # noqa: E731
    texture = {
        m: {c: {k: mean(v) for k, v in d.items()} for c, d in t.items()} for m, t in tex.items()
    }
    # the true lesions' own spread across subjects: the goal's "or within that spread" tolerance
    spread = {c: {k: float(np.nanstd(v)) for k, v in d.items()} for c, d in tex["true"].items()}
    return {
        "subjects": args.n, "seed": args.seed, "variants": args.variants, "steps": args.steps,
        "eta": args.eta, "spacing": args.spacing, "invert_tanh": args.invert_tanh,
        "clamp_image": args.clamp_image,
        "weights": args.weights, "baseline": args.baseline, "mean_shift": shift.tolist(),
        "realism_auc": auc, "realism_auc_by_feature": by_feature,
        "texture": texture, "true_spread": spread,
        "texture_within": within_goal(texture, spread),
        "outside_change": {k: mean(v) for k, v in out_change.items()},
        "diversity_l1": {k: mean(v) for k, v in div.items()},
        "diversity_true_between_subjects": true_diversity(lesions),
        "heal_l1_in_lesion": {k: mean(v) for k, v in heal_l1.items()},
        "seconds_per_implant": {k: mean(v) for k, v in seconds.items()},
    }  # fmt: skip


def within_goal(texture: dict, spread: dict, rel: float = 0.30) -> dict:
    """Per method: "contrast/statistic" -> whether its mean lies within ±30 % of the true mean
    or within the true lesions' standard deviation across subjects, whichever is wider."""
    out = {}
    for name, per in texture.items():
        if name == "true":
            continue
        out[name] = {
            f"{c}/{k}": bool(abs(v - texture["true"][c][k])
                             <= max(rel * abs(texture["true"][c][k]), spread[c][k]))
            for c, stats in per.items() for k, v in stats.items()
        }  # fmt: skip
    return out


def markdown(r: dict) -> str:
    """The results as the markdown tables of docs/deviation.md."""
    head = "| method | realism AUC (95% CI) ↓ | change outside lesion | diversity (L1 in mask) |"
    lines = [head + " s / implant |", "| --- | --- | --- | --- | --- |"]
    for name, a in r["realism_auc"].items():
        lines.append(
            f"| {name} | {a['auc']:.3f} ({a['ci'][0]:.3f}–{a['ci'][1]:.3f}) | "
            f"{r['outside_change'][name]:.3g} | {r['diversity_l1'][name]:.4f} | "
            f"{r['seconds_per_implant'][name]:.2f} |"
        )
    if "image (unpasted)" in r["outside_change"]:
        unpasted = r["outside_change"]["image (unpasted)"]
        lines.append(f"| image, before pasting | | {unpasted:.4f} (mean) | | |")
    ref = r.get("diversity_true_between_subjects")
    if ref:
        ratio = r["diversity_l1"]["deviation"] / ref
        lines.append(f"| true lesions, between subjects (nearest mask size) | | | {ref:.4f} | |")
        lines += ["", f"diversity of the deviation variants / between true lesions: {ratio:.2f} "
                  "(goal ≥ 0.50)"]  # fmt: skip
    by_feature = r.get("realism_auc_by_feature", {})
    if by_feature:
        lines += ["", "realism AUC of the deviation lesions on one feature group: " + ", ".join(
            f"{name} {value:.2f}" for name, value in by_feature.items()
            if isinstance(value, float))]  # fmt: skip
    names = list(r["realism_auc"])
    lines += ["", "| contrast | statistic | true (± sd) | " + " | ".join(names) + " |",
              "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |"]  # fmt: skip
    ok = r["texture_within"]
    for c, stats in r["texture"]["true"].items():
        for key in TEXTURE:
            row = [f"{r['texture'][m][c][key]:.3f}{'' if ok[m][f'{c}/{key}'] else ' ✗'}"
                   for m in names]  # fmt: skip
            sd = r["true_spread"][c][key]
            lines.append(f"| {c} | {key} | {stats[key]:.3f} ± {sd:.3f} | " + " | ".join(row) + " |")
    hits = {m: f"{sum(v.values())}/{len(v)}" for m, v in ok.items()}
    lines.append("")
    lines.append("within ±30 % or the true sd (✗ = outside): " + ", ".join(
        f"{m} {h}" for m, h in hits.items()))  # fmt: skip
    heal = r["heal_l1_in_lesion"]
    lines += [
        "",
        "| heal (in-lesion L1 vs true substrate) | f_sub | Inp alone |",
        "| --- | --- | --- |",
        f"| mean over subjects | {heal['f_sub']:.4f} | {heal['Inp alone']:.4f} |",
        f"| ratio f_sub / Inp (goal ≤ 0.8) | {heal['f_sub'] / heal['Inp alone']:.3f} | |",
    ]
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, evaluate, print the tables and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="deviation-tumor-2mm")
    parser.add_argument("--baseline", default=None, help="image-space weights (space=image)")
    parser.add_argument("--train-set", default=None, help="HDF5 set for the inp+shift mean shift")
    parser.add_argument("--lesion", default="tumor")
    parser.add_argument("--n", type=int, default=8, help="held-out subjects")
    parser.add_argument("--seed", type=int, default=1000, help="held-out phantom run seed")
    parser.add_argument("--variants", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--eta", type=float, default=None, help="DDIM η (default: the weights')")
    recompose = "override the weights' recomposition (x_sub + S·r or x_sub + m·r)"
    parser.add_argument("--recompose", choices=["blend", "mask"], default=None, help=recompose)
    spacing = "override the weights' timestep spacing (trailing, linspace, leading, logsnr)"
    parser.add_argument("--spacing", default=None, help=spacing)
    parser.add_argument("--invert-tanh", action="store_true", help="add δ·artanh(r/δ), not r")
    parser.add_argument("--clamp-image", action="store_true", help="x̂ on m kept in [0, 1]")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--heal-only", action="store_true", help="only the heal-with-mask L1")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = evaluate_heal(args) if args.heal_only else evaluate(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    if args.heal_only:
        heal = result["heal_l1_in_lesion"]
        print(f"heal in-lesion L1: f_sub {heal['f_sub']:.4f}, Inp {heal['Inp alone']:.4f}, "
              f"ratio {result['ratio']:.3f}, f_sub better on "
              f"{result['subjects_f_sub_better']}/{result['subjects']} subjects")  # fmt: skip
    else:
        print(markdown(result))


if __name__ == "__main__":
    main()
