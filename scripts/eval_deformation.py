"""Quality of the deformation engine (D3M) on held-out phantom tumour subjects.

Draws `--n` phantom subjects with run seed `--seed` (1000: never used in training, which used
seed 0), runs each model on a slab of `--slab` axial slices centred on the enhancing tumour (the
2.5-D context still reads the neighbours outside it), and reports PSNR / SSIM over the brain and
inside the tumour, the enhancing-tumour Dice, through-plane consistency and seconds. Baselines:
T1 copied as T1Gd, and whatever models are passed (a regression U-Net trained with
examples/configs/deformation-baseline-regression.toml is one).

Oracle calibration (default, --no-calibrate turns it off): every method's output, T1 included,
is mapped by the least-squares line a·P + b that best fits the true T1Gd over the brain of that
subject before it is scored, so units and global offsets decide nothing; only the pattern of
the image does. "gain" is a method's tumour PSNR minus the calibrated T1's on the same
subject. Writes JSON and, with --doc, the tables between the markers of docs/deformation.md.

    python scripts/eval_deformation.py \\
        --model full=runs/deformation/ablation-full/deformation.safetensors ... \\
        --steps-model embedded --steps 4,8,12,25,50 --n 4 --slab 12 \\
        --json runs/deformation/eval.json --doc docs/deformation.md

Long runs can be split over processes (one model set each, same --n / --seed / --slab) and
joined: `--merge a.json b.json --json all.json --doc docs/deformation.md`.

--model NAME=PATH[,key=value...] (repeatable): key is warp_mode (x0 | combined), noise
(shared | slice), steps or sampler. Metrics are computed on the model grid in [0, 1].
Through-plane consistency: mean over brain voxels of |(P[z+1] − P[z]) − (R[z+1] − R[z])| for
adjacent slab slices, P the synthetic and R the real T1Gd (0 for a perfect through-plane copy).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from synthbrain import metrics
from synthbrain.engines.deformation.run import load_model
from synthbrain.engines.deformation.volume import enhance_volume
from synthbrain.phantom import iter_subjects

CONTRASTS = ("t1", "t1gd", "t2", "flair")
OPTION_TYPES = {"warp_mode": str, "noise": str, "steps": int, "sampler": str}


def parse_model(text: str) -> tuple[str, Path, dict]:
    """'name=path,key=value' → (name, path, sampling options)."""
    name, _, rest = text.partition("=")
    path, *pairs = rest.split(",")
    options = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in OPTION_TYPES:
            raise SystemExit(f"unknown model option {key!r} (use {', '.join(OPTION_TYPES)})")
        options[key] = OPTION_TYPES[key](value)
    return name, Path(path), options


def slab_region(brain: np.ndarray, target: np.ndarray, slab: int) -> tuple[np.ndarray, list]:
    """The brain restricted to `slab` axial slices centred on `target` (all slices if 0)."""
    zs_brain = np.flatnonzero(brain.any(axis=(0, 1)))
    if slab <= 0:
        return brain, zs_brain.tolist()
    zs_t = np.flatnonzero(target.any(axis=(0, 1)))
    centre = int(round(zs_t.mean())) if zs_t.size else int(zs_brain.mean())
    lo = min(max(centre - slab // 2, int(zs_brain[0])), int(zs_brain[-1]) - slab + 1)
    zs = [z for z in range(lo, lo + slab) if brain[..., z].any()]
    region = np.zeros_like(brain)
    region[..., zs] = brain[..., zs]
    return region, zs


def ssim_2d(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, zs: list) -> float:
    """Axial 2-D SSIM (the paper's setting), averaged over the voxels of `mask`.

    metrics.ssim is scikit-image's SSIM: it leaves out a 5-voxel rim, so a slice whose mask
    lies wholly in that rim gives nan and is skipped (weights count interior voxels only).
    """
    total, count = 0.0, 0
    inner = np.zeros(mask.shape[:2], bool)
    inner[5:-5, 5:-5] = True
    for z in zs:
        n = int(((mask[..., z] > 0) & inner).sum())
        if n:
            total += metrics.ssim(pred[..., z], ref[..., z], mask[..., z]) * n
            count += n
    return total / count if count else float("nan")


def through_plane(pred: np.ndarray, ref: np.ndarray, brain: np.ndarray, zs: list) -> float:
    """Mean |ΔzP − ΔzR| over brain voxels of adjacent slab slices."""
    diffs = []
    for a, b in zip(zs, zs[1:], strict=False):
        if b != a + 1:
            continue
        both = brain[..., a] & brain[..., b]
        change = (pred[..., b] - pred[..., a]) - (ref[..., b] - ref[..., a])
        diffs.append(np.abs(change[both]))
    return float(np.concatenate(diffs).mean()) if diffs else float("nan")


def calibrate(pred: np.ndarray, ref: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """pred mapped by the least-squares line onto ref over the brain (the oracle calibration)."""
    x, y = pred[brain].astype(np.float64), ref[brain].astype(np.float64)
    a, b = np.polyfit(x, y, 1) if x.std() > 0 else (0.0, float(y.mean()))
    return np.where(brain, a * pred + b, pred).astype(np.float32)


def score(pred, mask, subject, region, zs, calibrated: bool = True) -> dict:
    """All metrics of one prediction of one subject (after the oracle calibration if asked)."""
    ref = subject.images["t1gd"]
    if calibrated:
        pred = calibrate(pred, ref, region)
    tumour = (subject.labels > 0) & region
    et = (subject.labels == 3) & region
    out = {
        "psnr_brain": metrics.psnr(pred, ref, region),
        "ssim_brain": ssim_2d(pred, ref, region, zs),
        "psnr_tumour": metrics.psnr(pred, ref, tumour) if tumour.any() else float("nan"),
        "ssim_tumour": ssim_2d(pred, ref, tumour, zs),
        "through_plane": through_plane(pred, ref, region, zs),
    }
    out["dice_et"] = metrics.dice(mask & region, et) if mask is not None else float("nan")
    return out


def scored(image, mask, seconds: float, where: tuple, ref_psnr: float | None) -> dict:
    """score() plus the tumour-PSNR gain over the calibrated T1 and the seconds."""
    subject, region, zs, calibrated = where
    row = score(image, mask, subject, region, zs, calibrated)
    gain = 0.0 if ref_psnr is None else row["psnr_tumour"] - ref_psnr
    return {**row, "gain": gain, "seconds": seconds}


def run_model(model, options: dict, subject, region: np.ndarray, seed: int) -> tuple:
    """(image, mask, seconds) of one model on one subject's slab."""
    cond = np.stack([subject.images[c] for c in model.config.contrasts]).astype(np.float32)
    result = enhance_volume(model, cond, region, seed=seed, **options)
    return result.image, result.mask, result.seconds


def summarise(rows: list[dict]) -> dict:
    """Mean and SD over subjects of every metric."""
    keys = [k for k in rows[0] if isinstance(rows[0][k], float)]
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # all-nan columns (no mask)
    return {k: (float(np.nanmean([r[k] for r in rows])), float(np.nanstd([r[k] for r in rows])))
            for k in keys}  # fmt: skip


def training_facts(path: Path) -> dict:
    """Steps and training seconds from the run folder's metrics.jsonl, if it is there."""
    log = path.parent / "metrics.jsonl"
    if not log.is_file():
        return {}
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    train = [r for r in lines if r.get("kind") == "train"]
    return {"steps": train[-1]["step"], "train_seconds": train[-1].get("seconds")} if train else {}


def evaluate(args: argparse.Namespace) -> dict:
    """Every model (and the steps table) on every held-out subject."""
    specs = [parse_model(m) for m in args.model]
    models = {name: (load_model(path)[0], opts, path) for name, path, opts in specs}
    base = "t1-calibrated" if args.calibrate else "t1-copy"
    per: dict[str, list] = {name: [] for name in [base, *models]}
    steps_per: dict[int, list] = {s: [] for s in args.steps}
    subjects = iter_subjects(args.n, seed=args.seed, lesion="tumor", contrasts=CONTRASTS)
    for k, _, subject in subjects:
        brain = subject.brain_mask > 0
        region, zs = slab_region(brain, subject.labels == 3, args.slab)
        where = (subject, region, zs, args.calibrate)
        per[base].append(scored(subject.images["t1"], None, 0.0, where, None))
        ref_psnr = per[base][-1]["psnr_tumour"]
        for name, (model, opts, _) in models.items():
            out = run_model(model, opts, subject, region, args.sample_seed)
            per[name].append(scored(*out, where, ref_psnr))
            print(f"subject {k} {name}: {per[name][-1]}", file=sys.stderr, flush=True)
        if args.steps_model:
            model, opts, _ = models[args.steps_model]
            for s in args.steps:
                out = run_model(model, {**opts, "steps": s}, subject, region, args.sample_seed)
                steps_per[s].append(scored(*out, where, ref_psnr))
        if args.json:  # partial results survive a run stopped by a time limit
            args.json.write_text(json.dumps(results_of(args, models, per, steps_per), indent=2))
    return results_of(args, models, per, steps_per)


def results_of(args: argparse.Namespace, models: dict, per: dict, steps_per: dict) -> dict:
    """The JSON-ready results of the subjects done so far ("n_done" of them)."""
    return {
        "command": " ".join(["python", *sys.argv]), "n_done": len(next(iter(per.values()))),
        "n": args.n, "seed": args.seed, "slab": args.slab, "calibrated": args.calibrate,
        "models": {name: {"summary": summarise(rows), "subjects": rows,
                          **(training_facts(models[name][2]) if name in models else {}),
                          "options": models[name][1] if name in models else {}}
                   for name, rows in per.items()},
        "steps": {str(s): summarise(rows) for s, rows in steps_per.items() if rows},
        "steps_model": args.steps_model,
    }  # fmt: skip


def _cell(stat: tuple[float, float], digits: int = 2) -> str:
    """'mean ± sd'."""
    mean, sd = stat
    return "n/a" if np.isnan(mean) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def merge(paths: list[Path]) -> dict:
    """Results of several runs over the same subjects as one (models in the order given)."""
    runs = [json.loads(p.read_text()) for p in paths]
    for key in ("n", "seed", "slab", "calibrated"):
        if len({r.get(key) for r in runs}) != 1:
            raise SystemExit(f"the runs to merge differ in {key}")
    out = {k: runs[0].get(k) for k in ("n", "seed", "slab", "calibrated")}
    out["command"] = "\n".join(r["command"] for r in runs)
    out["models"], out["steps"], out["steps_model"] = {}, {}, None
    for r in runs:
        out["models"].update(r["models"])
        if r["steps"]:
            out["steps"], out["steps_model"] = r["steps"], r["steps_model"]
    out["seconds"] = sum(r.get("seconds", 0.0) for r in runs)
    return out


def markdown(results: dict) -> str:
    """The quality, steps and through-plane tables."""
    unit = "s / volume" if results["slab"] <= 0 else "s / slab"
    head = (
        "| model | PSNR brain (dB) | SSIM brain | PSNR tumour (dB) | gain (dB) | SSIM tumour | "
        f"Dice ET | through-plane | {unit} | trained |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for name, r in results["models"].items():
        s = r["summary"]
        trained = f"{r['steps']} steps, {r['train_seconds'] / 60:.0f} min" if r.get("steps") else ""
        lines.append(
            f"| {name} | {_cell(s['psnr_brain'])} | {_cell(s['ssim_brain'], 3)} | "
            f"{_cell(s['psnr_tumour'])} | {_cell(s.get('gain', (np.nan, 0)))} | "
            f"{_cell(s['ssim_tumour'], 3)} | {_cell(s['dice_et'], 3)} | "
            f"{_cell(s['through_plane'], 4)} | {s['seconds'][0]:.1f} | {trained} |"
        )
    if results["steps"]:
        lines += ["", f"Quality versus sampling steps ({results['steps_model']}):", "",
                  "| steps | PSNR brain (dB) | SSIM brain | PSNR tumour (dB) | gain (dB) | Dice ET "
                  f"| {unit} |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for steps, s in results["steps"].items():
            lines.append(
                f"| {steps} | {_cell(s['psnr_brain'])} | {_cell(s['ssim_brain'], 3)} | "
                f"{_cell(s['psnr_tumour'])} | {_cell(s.get('gain', (np.nan, 0)))} | "
                f"{_cell(s['dice_et'], 3)} | {s['seconds'][0]:.1f} |"
            )
    return "\n".join(lines)


def write_doc(doc: Path, text: str, command: str) -> None:
    """Replace the text between '<!-- eval:begin -->' and '<!-- eval:end -->' in `doc`."""
    content = doc.read_text()
    begin, end = "<!-- eval:begin -->", "<!-- eval:end -->"
    if begin not in content or end not in content:
        raise SystemExit(f"{doc} has no {begin} … {end} markers")
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    block = f"{begin}\n\nCommand:\n\n```\n{command}\n```\n\n{text}\n\n{end}"
    doc.write_text(head + block + tail)


def main() -> None:
    """Parse the arguments, evaluate, write JSON / the doc tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH[,key=value]")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1000, help="phantom run seed (held out)")
    parser.add_argument("--sample-seed", type=int, default=0)
    parser.add_argument("--slab", type=int, default=12, help="axial slices (0: whole brain)")
    parser.add_argument("--steps", type=lambda s: [int(v) for v in s.split(",")], default=[])
    parser.add_argument("--steps-model", default=None, help="model NAME for the steps table")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--calibrate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="oracle linear calibration of every output to T1Gd (brain)",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--doc", type=Path, default=None)
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="join JSON results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.merge:
        results = merge(args.merge)
    else:
        started = time.perf_counter()
        results = evaluate(args)
        results["seconds"] = round(time.perf_counter() - started, 1)
    text = markdown(results)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.doc:
        write_doc(args.doc, text, results["command"])


if __name__ == "__main__":
    main()
