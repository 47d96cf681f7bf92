"""Quality of the paired engine (USB) on held-out phantom subjects (seeds never used in training).

Training sets use phantom run seed 0; these subjects come from run seed 1000 (`--seed`). Every
edit runs on the model grid, exactly as `synthbrain heal/implant --in-template-space` does.

    OMP_NUM_THREADS=1 python scripts/eval_paired.py --lesion stroke --doc docs/paired.md

Writes a JSON report (`--json`) and, with `--doc`, the markdown tables between the markers
`<!-- eval-paired:<lesion>:begin -->` and `<!-- eval-paired:<lesion>:end -->` of that file.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from synthbrain import metrics
from synthbrain.engines.paired.edit import dilate
from synthbrain.engines.paired.guidance import ACGSettings, SamplerSettings
from synthbrain.engines.paired.run import (
    SEAM_VOXELS,
    Bundle,
    brain_tensor,
    decode_images,
    load_bundle,
)
from synthbrain.engines.paired.scan import T_START, edit_images, edit_weight

FAR_VOXELS = 6  # "more than 12 mm from the lesion" on the 2 mm grid


def held_out(lesion: str, n: int, seed: int, offset: int = 0) -> list:
    """Phantom subjects k = offset … offset + n − 1 of run `seed` (T1, 2 mm)."""
    from synthbrain.phantom import draw_subject, make_subject
    from synthbrain.rng import derive_seed, generator_for

    out = []
    for k in range(offset, offset + n):
        params = draw_subject(
            generator_for(derive_seed(seed, k)), lesion=lesion, contrasts=("t1",), spacing=2.0
        )
        out.append(make_subject(params))
    return out


def _edit(bundle: Bundle, image, brain, mask, kind, run, acg, seed=0) -> tuple[np.ndarray, float]:
    """One edit on the grid, blended as the commands blend it; returns (result [X,Y,Z], secs)."""
    t0 = time.perf_counter()
    t_start = acg.t_ref
    results, recon = edit_images(bundle, image[None], brain, mask, kind, 1, run, acg, t_start, seed)
    result = results[0]
    weight = edit_weight(result, recon, brain, mask, bundle.model.config.lesion_sign)
    blended = image + weight * (result[0] - image)
    return blended.astype(np.float32), time.perf_counter() - t0


def weight_of(out: np.ndarray, img: np.ndarray) -> np.ndarray:
    """Voxels a heal changed (1) or left bit for bit (0)."""
    return (out != img).astype(np.float32)


def voxel_ml(bundle: Bundle) -> float:
    """Millilitres per voxel of the model grid (its spacing is isotropic, in mm)."""
    return float(bundle.model.config.spacing) ** 3 / 1000.0


def heal_metrics(bundle: Bundle, subjects, run, *, with_mask: bool, target: str = "clean") -> dict:
    """In-lesion L1 ratio, PSNR / SSIM against the true substrate, SSIM outside vs the input."""
    rows = []
    for s in subjects:
        img, healthy, lesion = s.images["t1"], s.healthy["t1"], s.labels > 0
        brain = s.brain_mask.astype(np.float32)
        acg = ACGSettings(t_ref=T_START["heal"], target=target)  # type: ignore[arg-type]
        mask = lesion if with_mask else None
        out, secs = _edit(bundle, img, brain, mask, "heal", run, acg)
        outside = (brain > 0) & ~dilate(lesion, SEAM_VOXELS)
        far = (brain > 0) & ~dilate(lesion, FAR_VOXELS)
        rows.append({
            "l1_ratio": metrics.l1(out, healthy, lesion) / metrics.l1(img, healthy, lesion),
            "psnr": metrics.psnr(out, healthy, brain),
            "ssim": metrics.ssim(out, healthy, brain),
            "ssim_outside_vs_input": metrics.ssim(out, img, outside),
            "unchanged_far": float((out[far] == img[far]).mean()),
            "edited_ml": float((weight_of(out, img) > 0).sum() * voxel_ml(bundle)),
            "seconds": secs,
        })  # fmt: skip
    return _summary(rows)


def reference_metrics(bundle: Bundle, subjects) -> dict:
    """What a heal is measured against: the input left as it is, and the autoencoder's floor.

    The floor is the true substrate passed through the autoencoder and blended into the lesion
    (with the seam band) the way a heal is: no heal in this latent space can do better.
    """
    from synthbrain.engines.paired.edit import blend_weight

    model, rows = bundle.model, []
    for s in subjects:
        img, healthy, lesion = s.images["t1"], s.healthy["t1"], s.labels > 0
        brain = s.brain_mask.astype(np.float32)
        image = torch.from_numpy(np.ascontiguousarray(healthy, np.float32))[None, None]
        mask = torch.from_numpy(brain)[None, None].to(bundle.device)
        recon = (
            decode_images(model, model.encode(image.to(bundle.device)), mask)[0, 0].cpu().numpy()
        )
        floor = img + blend_weight(lesion, SEAM_VOXELS) * (recon - img)
        rows.append({
            "input_psnr": metrics.psnr(img, healthy, brain),
            "input_ssim": metrics.ssim(img, healthy, brain),
            "floor_l1_ratio": metrics.l1(floor, healthy, lesion) / metrics.l1(img, healthy, lesion),
            "floor_psnr": metrics.psnr(floor, healthy, brain),
        })  # fmt: skip
    return _summary(rows)


def _summary(rows: list[dict]) -> dict:
    """Mean (and median of the L1 ratio) over subjects, with the count."""
    keys = rows[0].keys()
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    if "l1_ratio" in keys:
        out["l1_ratio_median"] = float(np.median([r["l1_ratio"] for r in rows]))
    out["n"] = len(rows)
    return out


def implant_metrics(bundle: Bundle, subjects, run, sign: float) -> dict:
    """Healthy substrate of subject i with the mask of subject i + 1: changes and contrast."""
    rows = []
    for i, s in enumerate(subjects):
        healthy = s.healthy["t1"]
        brain = s.brain_mask.astype(np.float32)
        mask = (subjects[(i + 1) % len(subjects)].labels > 0) & (brain > 0)
        acg = ACGSettings(t_ref=T_START["implant"])
        out, secs = _edit(bundle, healthy, brain, mask, "implant", run, acg)
        band = dilate(mask, SEAM_VOXELS)
        change = out - healthy
        rows.append({
            "unchanged_outside_band": float(np.array_equal(out[~band], healthy[~band])),
            "mean_abs_change_in_mask": float(np.abs(change[mask]).mean()),
            "right_sign": float(np.sign(change[mask].mean()) == sign),
            "seconds": secs,
        })  # fmt: skip
    return _summary(rows)


def lesion_sign(subjects) -> float:
    """+1 if lesions are brighter than their substrate in most held-out subjects, else −1."""
    signs = [np.sign((s.images["t1"] - s.healthy["t1"])[s.labels > 0].mean()) for s in subjects]
    return 1.0 if np.mean(signs) > 0 else -1.0


def realism_features(image: np.ndarray, mask: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Brain histogram, whole-brain texture and lesion statistics of one image."""
    inside = brain > 0
    hist = np.histogram(image[inside], bins=16, range=(0.0, 1.0), density=True)[0]
    tex = metrics.texture_statistics(image, inside)
    lesion = mask > 0
    ring = dilate(lesion, 2) & ~lesion & inside
    contrast = image[lesion].mean() - image[ring].mean() if lesion.any() and ring.any() else 0.0
    volume = np.log1p(lesion.sum() * 8e-3)  # a feature: real and synthetic on one grid
    return np.array([*hist, *tex.values(), contrast, volume], np.float64)


def generate_metrics(
    bundle: Bundle, n: int, run, reals, train_ml: np.ndarray, sign: float, phantom_masks=False
) -> dict:
    """Masks, lesion volumes, contrast sign and realism AUC of n generated triplets: joint
    (task a), or with `phantom_masks` the images for phantom lesion masks (task b)."""
    from synthbrain.engines.paired.generation import make_triplets
    from synthbrain.engines.paired.mask_sources import phantom_mask
    from synthbrain.rng import derive_seed, generator_for

    brain_t = brain_tensor(bundle)
    brain = brain_t[0, 0].cpu().numpy()
    trips, t0 = [], time.perf_counter()
    for k in range(n):
        seed = derive_seed(4242, k)
        given = [phantom_mask(bundle, derive_seed(seed, 1))] if phantom_masks else None
        trips += make_triplets(bundle, [generator_for(seed)], run, brain_t, given)
    secs = (time.perf_counter() - t0) / n
    ml = np.array([t.mask.sum() * voxel_ml(bundle) for t in trips])
    nonempty = ml > 0
    inside = [metrics.dice(t.mask, t.mask & (brain > 0)) for t in trips if t.mask.any()]
    signs = [
        np.sign((t.image[0] - t.healthy[0])[t.mask].mean()) == sign for t in trips if t.mask.any()
    ]
    fake = np.stack([realism_features(t.image[0], t.mask, brain) for t in trips])
    real = np.stack([realism_features(s.images["t1"], s.labels, s.brain_mask) for s in reals])
    auc = metrics.realism_auc(real, fake, bootstrap=500)
    q = lambda a: [float(v) for v in np.percentile(a, [25, 50, 75])] if len(a) else [0.0] * 3  # noqa: E731
    return {
        "n": n, "seconds_per_triplet": secs, "nonempty": float(nonempty.mean()),
        "inside_brain": float(np.mean(inside)) if inside else 0.0,
        "volume_ml_q25_50_75": q(ml[nonempty]), "train_volume_ml_q25_50_75": q(train_ml),
        "right_sign": float(np.mean(signs)) if signs else 0.0,
        "realism_auc": [auc.auc, auc.ci_low, auc.ci_high],
    }  # fmt: skip


def training_volumes(path: Path) -> np.ndarray:
    """Lesion volumes (ml) of a training set's subjects."""
    import h5py

    from synthbrain.io.dataset import read_info

    ml = float(np.prod(read_info(path)["spacing"])) / 1000.0
    with h5py.File(path, "r") as h5:
        groups = h5["subjects"].values()
        return np.array([g["labels"][()].sum() * ml for g in groups if "labels" in g])


def steps_table(bundle: Bundle, subjects, counts, samplers, published: int) -> list[dict]:
    """Heal quality and time per (sampler, steps), plus DDIM at the published stride 1."""
    plan = [(sampler, steps) for sampler in samplers for steps in counts]
    if published:
        plan.append(("ddim", published))  # USB's code: every step from t = 300 (stride 1)
    rows = []
    for sampler, steps in plan:
        run = SamplerSettings(sampler, steps, "linspace", 0.0, bundle.precision)
        r = heal_metrics(bundle, subjects, run, with_mask=False)
        rows.append({"sampler": sampler, "steps": steps, **r})
    return rows


def markdown(res: dict, command: str) -> str:
    """The report as markdown tables."""
    h, hm, im, g = res["heal"], res["heal_mask"], res["implant"], res["generate"]
    lines = [
        f"Command: `{command}` (weights `{res['weights']}`, {res['device']}, "
        f"{res['minutes']:.1f} min).", "",
        "| task | metric | value | goal |", "| --- | --- | --- | --- |",
        f"| heal, no mask (n={h['n']}) | in-lesion L1 / input's (mean, median) | "
        f"{h['l1_ratio']:.2f}, {h['l1_ratio_median']:.2f} | ≤ 0.50 |",
        f"| | PSNR / SSIM vs true substrate (brain) | {h['psnr']:.1f} dB / {h['ssim']:.3f} "
        "| ≥ 30 dB |",
        f"| | SSIM outside the dilated lesion vs input | {h['ssim_outside_vs_input']:.4f} | 1 |",
        f"| | voxels > 12 mm from the lesion unchanged; ml edited | "
        f"{h.get('unchanged_far', float('nan')):.2%}; {h.get('edited_ml', float('nan')):.1f} "
        "| ≥ 99.9% |",
        f"| | seconds per heal | {h['seconds']:.1f} | |",
        *_reference_rows(res.get("reference")),
        f"| heal, with mask (n={hm['n']}) | in-lesion L1 / input's (mean, median) | "
        f"{hm['l1_ratio']:.2f}, {hm['l1_ratio_median']:.2f} | ≤ 0.40 |",
        f"| | PSNR / SSIM vs true substrate | {hm['psnr']:.1f} dB / {hm['ssim']:.3f} | |",
        f"| implant (n={im['n']}) | output = input outside the seam band | "
        f"{im['unchanged_outside_band']:.0%} | 100% |",
        f"| | mean abs change inside the mask | {im['mean_abs_change_in_mask']:.3f} | > 0 |",
        f"| | right contrast sign | {im['right_sign']:.0%} | 100% |",
        f"| generate (n={g['n']}) | masks non-empty / inside the brain | "
        f"{g['nonempty']:.0%} / {g['inside_brain']:.0%} | 100% |",
        f"| | lesion ml q25/median/q75 (training) | "
        f"{'/'.join(f'{v:.1f}' for v in g['volume_ml_q25_50_75'])} "
        f"({'/'.join(f'{v:.1f}' for v in g['train_volume_ml_q25_50_75'])}) | median 0.5–2× |",
        f"| | right contrast sign | {g['right_sign']:.0%} | 100% |",
        f"| | realism AUC (95% CI) | {g['realism_auc'][0]:.2f} "
        f"({g['realism_auc'][1]:.2f}–{g['realism_auc'][2]:.2f}) | 0.5 |",
        f"| | seconds per triplet | {g['seconds_per_triplet']:.1f} | ≤ 20 |",
        *_masks_rows(res.get("generate_masks")),
    ]  # fmt: skip
    if "steps" not in res:  # --no-tables
        return "\n".join(lines)
    lines += ["", "| sampler | steps | in-lesion L1 ratio | PSNR (dB) | SSIM | s / heal |",
              "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in res["steps"]:
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['l1_ratio']:.2f} | {r['psnr']:.1f} | "
                     f"{r['ssim']:.3f} | {r['seconds']:.1f} |")  # fmt: skip
    lines += ["", "| ACG target | in-lesion L1 ratio | PSNR (dB) | SSIM outside vs input |",
              "| --- | --- | --- | --- |"]  # fmt: skip
    for name, r in res["acg"].items():
        lines.append(f"| {name} | {r['l1_ratio']:.2f} | {r['psnr']:.1f} | "
                     f"{r['ssim_outside_vs_input']:.4f} |")  # fmt: skip
    return "\n".join(lines)


def _reference_rows(r: dict | None) -> list[str]:
    """The input as it is and the autoencoder floor (same subjects), when measured."""
    if not r:
        return []
    return [
        f"| reference: the input, unedited | PSNR / SSIM vs true substrate | "
        f"{r['input_psnr']:.1f} dB / {r['input_ssim']:.3f} | |",
        f"| reference: true substrate through the representation | in-lesion L1 / input's; PSNR | "
        f"{r['floor_l1_ratio']:.2f}; {r['floor_psnr']:.1f} dB | |",
    ]


def _masks_rows(g: dict | None) -> list[str]:
    """Table rows of generation from phantom masks (task b), when measured."""
    if not g:
        return []
    auc = g["realism_auc"]
    return [
        f"| generate `--masks phantom` (n={g['n']}) | right contrast sign | "
        f"{g['right_sign']:.0%} | 100% |",
        f"| | realism AUC (95% CI) | {auc[0]:.2f} ({auc[1]:.2f}–{auc[2]:.2f}) | 0.5 |",
        f"| | seconds per triplet | {g['seconds_per_triplet']:.1f} | ≤ 20 |",
    ]


def write_doc(doc: Path, lesion: str, text: str) -> None:
    """Replace the block between this lesion's markers in `doc`."""
    begin, end = f"<!-- eval-paired:{lesion}:begin -->", f"<!-- eval-paired:{lesion}:end -->"
    content = doc.read_text()
    if begin not in content or end not in content:
        raise SystemExit(f"{doc}: markers {begin} / {end} not found")
    head, rest = content.split(begin, 1)
    doc.write_text(head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lesion", default="stroke")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--n-edit", type=int, default=12, help="held-out subjects for heal/implant")
    ap.add_argument("--n-steps-table", type=int, default=6, help="subjects per steps-table row")
    ap.add_argument("--n-generate", type=int, default=24)
    ap.add_argument("--n-generate-masks", type=int, default=0, help="task b: phantom masks")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--steps-table", default="10,25,50,100", help="step counts to compare")
    ap.add_argument(
        "--published-steps",
        type=int,
        default=300,
        help="also DDIM at this count (USB's stride-1 heal; 0: skip)",
    )
    ap.add_argument("--seed", type=int, default=1000, help="phantom run seed of the held-out set")
    ap.add_argument("--train-data", type=Path, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-tables", action="store_true", help="skip the steps and ACG tables")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--doc", type=Path, default=None)
    args = ap.parse_args(argv)
    started = time.perf_counter()
    bundle = load_bundle(args.weights, args.lesion, args.device)
    subjects = held_out(args.lesion, args.n_edit, args.seed)
    sign = lesion_sign(subjects)
    run = SamplerSettings("ddim", args.steps, "linspace", 0.0, bundle.precision)
    part = subjects[: args.n_steps_table]
    counts = [int(c) for c in args.steps_table.split(",")]
    res = {
        "weights": bundle.name, "device": str(bundle.device), "lesion_sign": sign,
        "reference": reference_metrics(bundle, subjects),
        "heal": heal_metrics(bundle, subjects, run, with_mask=False),
        "heal_mask": heal_metrics(bundle, subjects, run, with_mask=True),
        "implant": implant_metrics(bundle, subjects, run, sign),
    }  # fmt: skip
    if not args.no_tables:
        res["acg"] = {t: heal_metrics(bundle, part, run, with_mask=False, target=t)
                      for t in ("clean", "renoised")}  # fmt: skip
        res["steps"] = steps_table(bundle, part, counts, ("ddim", "dpm++"), args.published_steps)
    train = args.train_data or Path(f"data/{args.lesion}-t1.h5")
    train_ml = training_volumes(train) if train.exists() else np.array([])
    reals = held_out(args.lesion, args.n_generate, args.seed, offset=args.n_edit)
    res["generate"] = generate_metrics(bundle, args.n_generate, run, reals, train_ml, sign)
    if args.n_generate_masks:
        res["generate_masks"] = generate_metrics(
            bundle, args.n_generate_masks, run, reals, train_ml, sign, phantom_masks=True
        )
    res["minutes"] = (time.perf_counter() - started) / 60
    command = "OMP_NUM_THREADS=1 python scripts/eval_paired.py " + shlex.join(argv or sys.argv[1:])
    res["command"] = command
    text = markdown(res, command)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    if args.doc:
        write_doc(args.doc, args.lesion, text)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
