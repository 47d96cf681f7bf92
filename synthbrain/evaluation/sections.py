"""The report's numbers, synthetic against reference, from two `SetFeatures`.

Each function returns a JSON-able dict (floats; nan becomes null in summary.json) and takes
no volumes: `features.measure` already reduced them.
"""

from __future__ import annotations

import numpy as np

from synthbrain.evaluation.features import SetFeatures

PCA_COMPONENTS = 20  # realism classifiers see the first 20 principal components of the features


def _finite(value: float) -> float | None:
    """A float for JSON: None for nan / inf."""
    value = float(value)
    return value if np.isfinite(value) else None


def _spread(values: list[float]) -> dict:
    """Median, quartiles and count."""
    if not values:
        return {"n": 0, "median": None, "q1": None, "q3": None}
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return {"n": len(values), "median": float(med), "q1": float(q1), "q3": float(q3)}


def volume_section(synth: SetFeatures, ref: SetFeatures) -> dict:
    """Lesion volumes (ml): medians, IQR and the two-sample KS statistic and p-value."""
    from scipy.stats import ks_2samp

    out = {"synthetic": _spread(synth.ml), "reference": _spread(ref.ml)}
    test = ks_2samp(synth.ml, ref.ml)
    out["ks_statistic"], out["ks_pvalue"] = float(test.statistic), float(test.pvalue)
    out["empty_masks"] = {"synthetic": int(sum(v == 0 for v in synth.ml)),
                          "reference": int(sum(v == 0 for v in ref.ml))}  # fmt: skip
    return out


def frequency_maps(synth: SetFeatures, ref: SetFeatures) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of cases with a lesion at each voxel, synthetic and reference."""
    return synth.counts / max(1, len(synth.ids)), ref.counts / max(1, len(ref.ids))


def location_section(synth: SetFeatures, ref: SetFeatures) -> dict:
    """Pearson correlation of the two frequency maps over the brain (where either set has
    tissue), and the fraction of each set's lesion voxels the other set never covers."""
    fs, fr = frequency_maps(synth, ref)
    brain = (synth.background > 0) | (ref.background > 0)
    a, b = fs[brain], fr[brain]
    corr = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
    return {
        "correlation": _finite(corr),
        "synthetic_outside_reference": _finite(fs[fr == 0].sum() / fs.sum()) if fs.sum() else None,
        "reference_outside_synthetic": _finite(fr[fs == 0].sum() / fr.sum()) if fr.sum() else None,
        "peak_frequency": {"synthetic": float(fs.max()), "reference": float(fr.max())},
    }


def intensity_section(synth: SetFeatures, ref: SetFeatures, pairs: list[tuple[str, str]]) -> dict:
    """Per contrast: mean over cases of each in-lesion statistic, and synthetic / reference."""
    out = {}
    for s_name, r_name in pairs:
        rows_s, rows_r = synth.texture.get(s_name, []), ref.texture.get(r_name, [])
        stats = {}
        for key in ("mean", "skewness", "kurtosis", "contrast", "homogeneity"):
            ms = float(np.nanmean([r[key] for r in rows_s])) if rows_s else float("nan")
            mr = float(np.nanmean([r[key] for r in rows_r])) if rows_r else float("nan")
            ratio = ms / mr if np.isfinite(ms) and np.isfinite(mr) and mr != 0 else float("nan")
            stats[key] = {"synthetic": _finite(ms), "reference": _finite(mr),
                          "ratio": _finite(ratio)}  # fmt: skip
        out[s_name] = {"reference_contrast": r_name, "n": [len(rows_s), len(rows_r)], **stats}
    return out


def _auc(real: list[np.ndarray], fake: list[np.ndarray], bootstrap: int, seed: int
         ) -> tuple[dict, np.ndarray | None]:  # fmt: skip
    """AUC dict and per-fake out-of-fold scores; a reason instead when too few rows."""
    from synthbrain.metrics import realism_auc

    if min(len(real), len(fake)) < 2:
        return {"auc": None, "ci": None, "n": [len(real), len(fake)],
                "note": "fewer than 2 cases on a side"}, None  # fmt: skip
    res = realism_auc(np.stack(real), np.stack(fake), bootstrap=bootstrap, seed=seed,
                      components=PCA_COMPONENTS)  # fmt: skip
    return {"auc": res.auc, "ci": [res.ci_low, res.ci_high], "n": [res.n_real, res.n_fake]}, \
        res.fake_scores  # fmt: skip


def realism_section(synth: SetFeatures, ref: SetFeatures, *, bootstrap: int = 1000,
                    seed: int = 0) -> tuple[dict, dict[str, float]]:  # fmt: skip
    """Realism AUCs (0.5 = indistinguishable) for lesion patches and whole images, with each
    synthetic case's score: the mean out-of-fold P(synthetic) of the classifiers that saw it."""
    patch, patch_scores = _auc(ref.patch_rows, synth.patch_rows, bootstrap, seed)
    whole, whole_scores = _auc(ref.whole_rows, synth.whole_rows, bootstrap, seed)
    per_case: dict[str, list[float]] = {i: [] for i in synth.ids}
    if whole_scores is not None:
        for case_id, score in zip(synth.ids, whole_scores, strict=True):
            per_case[case_id].append(float(score))
    if patch_scores is not None:
        for case_id, score in zip(synth.patch_ids, patch_scores, strict=True):
            per_case[case_id].append(float(score))
    scores = {i: float(np.mean(v)) for i, v in per_case.items() if v}
    return {"lesion_patches": patch, "whole_images": whole}, scores


def consistency_section(checks: list[dict]) -> dict:
    """How many triplets pass each check, and the first few that fail."""
    if not checks:
        return {"n": 0}
    with_healthy = [c for c in checks if c["changed_voxels_outside_seam"] is not None]
    return {
        "n": len(checks),
        "all_ok": int(sum(c["ok"] for c in checks)),
        "geometry_identical": int(sum(c["geometry_identical"] for c in checks)),
        "mask_binary": int(sum(c["mask_binary"] for c in checks)),
        "mask_inside_brain": int(sum(c["mask_voxels_outside_brain"] == 0 for c in checks)),
        "with_healthy": len(with_healthy),
        "healthy_outside_seam_exact": int(
            sum(c["changed_voxels_outside_seam"] == 0 for c in with_healthy)
        ),
        "failures": [c for c in checks if not c["ok"]][:10],
    }


def gallery_ids(scores: dict[str, float], ids: list[str]) -> dict[str, str]:
    """Best (lowest P(synthetic)), median and worst synthetic case; first/middle/last without
    scores (too few cases for a classifier)."""
    ranked = sorted(scores, key=lambda i: (scores[i], i)) if scores else list(ids)
    if not ranked:
        return {}
    return {"best": ranked[0], "median": ranked[len(ranked) // 2], "worst": ranked[-1]}
