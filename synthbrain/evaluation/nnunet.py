"""--downstream --segmenter nnunet: the same three training sets, handed to nnU-Net v2.

Writes three nnU-Net v2 raw datasets under `<out>/nnunet/` (reference-only, synthetic-only,
both; same held-out split as our own U-Net), one shared test folder, and `commands.sh` with
the plan/train/predict/evaluate commands. Training nnU-Net is a GPU job: we do not start it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from synthbrain.errors import EngineUnavailable
from synthbrain.evaluation.cases import CaseSet
from synthbrain.evaluation.grid import Grid, align

DATASET_IDS = {"reference": 901, "synthetic": 902, "reference+synthetic": 903}
_NAMES = {"reference": "Reference", "synthetic": "Synthetic", "reference+synthetic": "Both"}


def require_nnunet() -> None:
    """EngineUnavailable (exit 2) unless nnunetv2 is importable."""
    if importlib.util.find_spec("nnunetv2") is None:
        raise EngineUnavailable(
            "--segmenter nnunet needs nnU-Net v2 (pip install nnunetv2); "
            "or use the built-in --segmenter unet"
        )


def _write_case(case, contrasts: list[str], grid: Grid, images: Path, labels: Path,
                label: str) -> None:  # noqa: ANN001  # fmt: skip
    """One case as `<label>_XXXX.nii.gz` channels and `<label>.nii.gz` labels."""
    from synthbrain.io.nifti import Volume, save_volume

    case = align(case, grid, case.id)
    for i, contrast in enumerate(contrasts):
        data = case.images[contrast].astype(np.float32)
        save_volume(Volume(data, grid.affine), images / f"{label}_{i:04d}.nii.gz")
    save_volume(Volume(case.mask.astype(np.uint8), grid.affine), labels / f"{label}.nii.gz")


def _dataset_json(contrasts: list[str], n: int, name: str) -> dict:
    from synthbrain.io.layouts import NNUNET_CHANNELS

    return {
        "channel_names": {str(i): NNUNET_CHANNELS.get(c, c) for i, c in enumerate(contrasts)},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": n,
        "file_ending": ".nii.gz",
        "name": name,
    }


def write_datasets(synth: CaseSet, ref: CaseSet, pairs: list[tuple[str, str]], grid: Grid,
                   root: Path, *, seed: int) -> dict:  # fmt: skip
    """The three raw datasets, the test folder and commands.sh; returns what was written."""
    from synthbrain.evaluation.downstream import split_reference
    from synthbrain.io.outputs import atomic_write_bytes, atomic_write_json

    train_ids, test_ids = split_reference(ref.ids, seed)
    ref_c, syn_c = [r for _, r in pairs], [s for s, _ in pairs]
    members = {
        "reference": [(ref, i, ref_c) for i in train_ids],
        "synthetic": [(synth, i, syn_c) for i in synth.ids],
    }
    members["reference+synthetic"] = members["reference"] + members["synthetic"]
    datasets = {}
    for name, items in members.items():
        folder = root / f"Dataset{DATASET_IDS[name]}_synthbrain{_NAMES[name]}"
        for k, (source, case_id, contrasts) in enumerate(items):
            _write_case(source.load(case_id), contrasts, grid, folder / "imagesTr",
                        folder / "labelsTr", f"case{k:04d}")  # fmt: skip
        atomic_write_json(folder / "dataset.json", _dataset_json(ref_c, len(items), folder.name))
        datasets[name] = str(folder)
    for k, case_id in enumerate(test_ids):
        _write_case(ref.load(case_id), ref_c, grid, root / "test" / "imagesTs",
                    root / "test" / "labelsTs", f"test{k:04d}")  # fmt: skip
    commands = _commands(root)
    atomic_write_bytes(root / "commands.sh", ("\n".join(commands) + "\n").encode())
    return {"datasets": datasets, "test": str(root / "test"), "test_ids": test_ids,
            "commands": commands}  # fmt: skip


def _commands(root: Path) -> list[str]:
    """Plan, train (fold 'all'), predict the held-out test cases and score them, per dataset."""
    lines = [
        "#!/usr/bin/env bash",
        "# nnU-Net v2 on the three training sets of `synthbrain evaluate --downstream`.",
        "set -euo pipefail",
        f'export nnUNet_raw="{root.resolve()}"',
        f'export nnUNet_preprocessed="{(root / "preprocessed").resolve()}"',
        f'export nnUNet_results="{(root / "results").resolve()}"',
    ]
    for name, d in DATASET_IDS.items():
        pred = f"{root.resolve()}/pred-{d}"
        lines += [
            f"# {name}",
            f"nnUNetv2_plan_and_preprocess -d {d} --verify_dataset_integrity",
            f"nnUNetv2_train {d} 3d_fullres all",
            f'nnUNetv2_predict -d {d} -c 3d_fullres -f all -i "$nnUNet_raw/test/imagesTs" '
            f'-o "{pred}"',
            f'nnUNetv2_evaluate_simple "$nnUNet_raw/test/labelsTs" "{pred}" -l 1',
        ]
    return lines
