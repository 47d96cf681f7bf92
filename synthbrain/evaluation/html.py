"""report/index.html: one self-contained page (figures inline as base64 PNG, no scripts, no
external files), so it opens offline in any browser and survives being mailed around."""

from __future__ import annotations

import base64
from html import escape

from synthbrain import __version__

_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee}.note{color:#666;font-size:0.9em}"""


def _num(value: object, digits: int = 3) -> str:
    """A table cell: numbers rounded, None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e4 or 0 < abs(value) < 1e-3 \
            else f"{value:.{digits}f}"  # fmt: skip
    return escape(str(value))


def _table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_num(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(pngs: dict[str, bytes], name: str) -> str:
    if name not in pngs:
        return ""
    data = base64.b64encode(pngs[name]).decode("ascii")
    return f'<p><img alt="{escape(name)}" src="data:image/png;base64,{data}"></p>'


def _volume(s: dict) -> str:
    v = s["volume"]
    rows = [[name, v[name]["n"], v[name]["median"], v[name]["q1"], v[name]["q3"],
             v["empty_masks"][name]] for name in ("synthetic", "reference")]  # fmt: skip
    return (_table(["set", "cases", "median ml", "Q1 ml", "Q3 ml", "empty masks"], rows)
            + f"<p>Two-sample KS statistic {_num(v['ks_statistic'])} "
              f"(p = {_num(v['ks_pvalue'])}).</p>")  # fmt: skip


def _intensity(s: dict) -> str:
    rows = []
    for contrast, stats in s["intensity"].items():
        for key in ("mean", "skewness", "kurtosis", "contrast", "homogeneity"):
            e = stats[key]
            rows.append([f"{contrast} / {stats['reference_contrast']}", key, e["synthetic"],
                         e["reference"], e["ratio"]])  # fmt: skip
    return _table(["contrast (synthetic / reference)", "statistic", "synthetic", "reference",
                   "ratio"], rows)  # fmt: skip


def _realism(s: dict) -> str:
    rows = []
    for name, e in s["realism"].items():
        ci = e["ci"] or [None, None]
        rows.append([name.replace("_", " "), e["auc"], ci[0], ci[1], e["n"][0], e["n"][1]])
    return _table(["classifier", "AUC", "CI low", "CI high", "reference", "synthetic"], rows)


def _why(check: dict) -> str:
    """What a failing triplet got wrong, in words."""
    reasons = []
    if not check["geometry_identical"]:
        reasons.append("files differ in shape or affine")
    if not check["mask_binary"]:
        reasons.append("mask is not binary")
    if check["mask_voxels_outside_brain"]:
        reasons.append(f"{check['mask_voxels_outside_brain']} mask voxels outside the brain")
    if check["changed_voxels_outside_seam"]:
        reasons.append(
            f"{check['changed_voxels_outside_seam']} voxels differ from the healthy "
            f"image outside the seam band (max {check['max_change_outside_seam']:.3g})"
        )
    return "; ".join(reasons)


def _consistency(s: dict) -> str:
    c = s["consistency"]
    if not c.get("n"):
        return "<p>No triplets to check.</p>"
    rows = [["all checks", c["all_ok"], c["n"]], ["geometry identical", c["geometry_identical"],
            c["n"]], ["mask binary", c["mask_binary"], c["n"]],
            ["mask inside the brain", c["mask_inside_brain"], c["n"]],
            ["image = healthy outside the seam band", c["healthy_outside_seam_exact"],
             c["with_healthy"]]]  # fmt: skip
    fails = "".join(f"<li>{escape(f['id'])}: {escape(_why(f))}</li>" for f in c["failures"])
    return _table(["check", "passed", "of"], rows) + (f"<ul>{fails}</ul>" if fails else "")


def _downstream(s: dict) -> str:
    d = s.get("downstream")
    if not d:
        return ""
    if "nnunet" in d:
        return ("<h2>Downstream (nnU-Net)</h2><pre>" + escape("\n".join(d["nnunet"]["commands"]))
                + "</pre>")  # fmt: skip
    rows = [[name, e["dice_mean"], e["dice_ci"][0], e["dice_ci"][1], e["f1"], e["n_train"]]
            for name, e in d["results"].items()]  # fmt: skip
    note = (f"{d['updates']} updates each, seed {d['seed']}, {d['n_test']} held-out reference "
            f"cases, {d['seconds']:.0f} s")  # fmt: skip
    return ("<h2>Downstream segmentation</h2>" + _table(
        ["training set", "Dice", "CI low", "CI high", "lesion F1", "training cases"], rows)
        + f"<p class=note>{escape(note)}</p>")  # fmt: skip


def render(summary: dict, pngs: dict[str, bytes]) -> str:
    """The whole page."""
    src = summary["inputs"]
    title = f"synthbrain evaluate: {src['synthetic']} vs {src['reference']}"
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>",
        f"<p class=note>synthbrain {escape(__version__)}; {src['n_synthetic']} synthetic and "
        f"{src['n_reference']} reference cases on grid {src['grid_shape']}. Intensities are "
        "divided by each image's 99.5th brain percentile before statistics.</p>",
        "<h2>Lesion volume</h2>",
        _volume(summary),
        _img(pngs, "volume.png"),
        "<h2>Lesion location</h2>",
        f"<p>Correlation of the frequency maps: {_num(summary['location']['correlation'])}.</p>",
        _img(pngs, "location.png"),
        "<h2>Intensity inside lesions</h2>",
        _intensity(summary),
        _img(pngs, "intensity.png"),
        "<h2>Realism</h2><p>Cross-validated logistic regression telling reference from synthetic"
        " (0.5: indistinguishable, 1: always told apart).</p>",
        _realism(summary),
        _img(pngs, "realism.png"),
        "<h2>Triplet consistency</h2>",
        _consistency(summary),
        "<h2>Gallery: best, median and worst synthetic case</h2>",
        _img(pngs, "gallery.png"),
        _downstream(summary),
        "</body></html>",
    ]
    return "\n".join(parts)
