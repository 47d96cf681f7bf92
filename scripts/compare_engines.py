"""One held-out table for the engines of `generate --lesion L` (issue 13, item 6).

    python scripts/compare_engines.py --lesion stroke --n 20 --out runs/engines
    python scripts/compare_engines.py --lesion stroke --out runs/engines --table-only

Each engine generates n triplets with run seed 0 (its embedded weights, default settings) and
`synthbrain evaluate` scores them against the same n held-out phantoms (`phantom:n`), so the
numbers are comparable: lesion volume against the reference, location correlation, in-lesion
T1, realism AUC of lesion patches and whole images, triplet consistency. The default engine of
`generate` (`synthbrain.engines.defaults.GENERATE_ENGINE`) is chosen from this table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from statistics import median


def run_engine(engine: str, lesion: str, n: int, out: Path) -> dict:
    """Generate with `engine`, then evaluate; the wall seconds of each."""
    folder, report = out / engine, out / f"{engine}-report"
    t0 = time.perf_counter()
    subprocess.run(["synthbrain", "generate", "--engine", engine, "--lesion", lesion, "--n",
                    str(n), "--seed", "0", "--out", str(folder), "--overwrite", "--json"],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    t1 = time.perf_counter()
    evaluate = ["synthbrain", "evaluate", str(folder), "--reference", f"phantom:{n}", "--out",
                str(report), "--json"]  # fmt: skip
    subprocess.run(evaluate, check=True, stdout=subprocess.DEVNULL)
    return {"generate_s": round(t1 - t0, 1), "evaluate_s": round(time.perf_counter() - t1, 1)}


def row(out: Path, engine: str) -> dict[str, str]:
    """The table cells of one engine, from its report and manifest."""
    d = json.loads((out / f"{engine}-report" / "summary.json").read_text())
    lines = (out / engine / "manifest.jsonl").read_text().splitlines()
    seconds = [json.loads(x)["seconds"] for x in lines]
    v, r, c, t1 = d["volume"], d["realism"], d["consistency"], d["intensity"]["t1"]

    def q(s: dict) -> str:
        return f"{s['median']:.1f} [{s['q1']:.1f}, {s['q3']:.1f}]"

    def auc(a: dict) -> str:
        return f"{a['auc']:.2f} [{a['ci'][0]:.2f}, {a['ci'][1]:.2f}]"

    return {
        "weights": d["inputs"]["weights"],
        "empty masks": str(v["empty_masks"]["synthetic"]),
        "lesion ml, median [Q1, Q3] (reference)": f"{q(v['synthetic'])} ({q(v['reference'])})",
        "volume KS (p)": f"{v['ks_statistic']:.2f} ({v['ks_pvalue']:.2f})",
        "location map correlation": f"{d['location']['correlation']:.2f}",
        "in-lesion T1 mean / reference's": f"{t1['mean']['ratio']:.2f}",
        "in-lesion GLCM contrast / reference's": f"{t1['contrast']['ratio']:.2f}",
        "realism AUC, lesion patches [95% CI]": auc(r["lesion_patches"]),
        "realism AUC, whole images [95% CI]": auc(r["whole_images"]),
        "triplets passing every check": f"{c['all_ok']} / {c['n']}",
        "median s / triplet (manifest)": f"{median(seconds):.1f}",
    }


def table(out: Path, engines: list[str]) -> str:
    """The markdown table, one column per engine."""
    rows = {e: row(out, e) for e in engines}
    keys = list(next(iter(rows.values())))
    lines = ["| | " + " | ".join(engines) + " |", "| --- |" + " --- |" * len(engines)]
    lines += [f"| {k} | " + " | ".join(rows[e][k] for e in engines) + " |" for k in keys]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lesion", default="stroke")
    parser.add_argument("--engines", nargs="+", default=["deviation", "paired"])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--table-only", action="store_true", help="tabulate finished runs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        times = {e: run_engine(e, args.lesion, args.n, args.out) for e in args.engines}
        print(json.dumps(times))
    print(table(args.out, args.engines))


if __name__ == "__main__":
    main()
