"""`generate --lesion-volume MIN:MAX`: parsing, refusals, joint redraws, phantom masks in range."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from cli_runner import invoke

from synthbrain import api
from synthbrain.errors import InputError
from synthbrain.io.volume_range import VolumeRange, parse_volume_range
from tests.tiny_models import tiny_paired_bundle

GRID, SPACING = (16, 16, 16), 12.0
VOXEL_ML = SPACING**3 / 1000.0


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return tiny_paired_bundle(tmp_path_factory.mktemp("w"))


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [("5:50", 5.0, 50.0), ("5:", 5.0, math.inf), (":20", 0.0, 20.0), (" 0.5 : 2 ", 0.5, 2.0)],
)
def test_ranges_parse(text, low, high):
    assert parse_volume_range(text) == VolumeRange(low, high)


@pytest.mark.parametrize(
    ("text", "problem"),
    [("abc", "MIN:MAX"), ("5", "MIN:MAX"), (":", "at least one bound"), ("x:5", "not a number"),
     ("-1:5", "negative"), ("10:5", "empty"), ("5:5", "empty"), (":0", "empty"),
     ("nan:5", "finite"), ("1:inf", "finite"), ("3000:", "larger than any brain")],
)  # fmt: skip
def test_bad_ranges_are_refused(text, problem):
    with pytest.raises(InputError, match=problem):
        parse_volume_range(text)


def _gen(out: Path, weights: Path, **kw):
    options = dict(n=3, steps=2, weights=str(weights), seed=7)
    options.update(kw)
    return api.generate(out=out, **options)


def _records(folder: Path) -> dict[str, dict]:
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    return {rec["id"]: rec for rec in map(json.loads, lines)}


def test_a_range_that_takes_everything_writes_the_unfiltered_files(tmp_path, weights):
    _gen(tmp_path / "plain", weights)
    _gen(tmp_path / "ranged", weights, lesion_volume="0:")
    plain, ranged = _records(tmp_path / "plain"), _records(tmp_path / "ranged")
    assert {k: r["sha256"] for k, r in plain.items()} == {k: r["sha256"] for k, r in ranged.items()}
    for rec in ranged.values():  # attempt 0 is the sample's own seed
        assert rec["attempt_seeds"] == [rec["seed"]] and rec["lesion_volume_range"] == "0:"
    config = json.loads((tmp_path / "ranged" / "config.json").read_text())
    assert config["lesion_volume"] == "0:"
    assert "lesion_volume" not in json.loads((tmp_path / "plain" / "config.json").read_text())


@pytest.fixture
def sized_by_seed(monkeypatch):
    """Joint draws whose mask has 1 + seed % 4 voxels, so which attempt meets a range is known."""
    from synthbrain.engines.paired import generation

    real = generation.draw_lesioned

    def draw(bundle, generators, run, brain, masks=None):
        y0, mask = real(bundle, generators, run, brain, masks)
        sized = torch.zeros_like(mask)
        inside = torch.nonzero(brain[0, 0] > 0)
        for i, gen in enumerate(generators):
            for x, y, z in inside[: 1 + gen.initial_seed() % 4].tolist():
                sized[i, 0, x, y, z] = True
        return y0, sized

    monkeypatch.setattr(generation, "draw_lesioned", draw)
    return lambda seed: (1 + seed % 4) * VOXEL_ML


def test_joint_redraws_until_in_range_and_reproduces(tmp_path, weights, sized_by_seed):
    low, high = 2.5 * VOXEL_ML, 3.5 * VOXEL_ML  # exactly three voxels
    summary = _gen(tmp_path / "a", weights, n=4, batch_size=2, lesion_volume=f"{low}:{high}")
    records = _records(tmp_path / "a")
    assert summary["written"] + len(summary["out_of_range"]) == 4 and records
    for rec in records.values():
        seeds = rec["attempt_seeds"]
        assert all(not low <= sized_by_seed(s) <= high for s in seeds[:-1])
        assert low <= sized_by_seed(seeds[-1]) <= high
        assert rec["lesion_volume_ml"] == pytest.approx(3 * VOXEL_ML, rel=1e-6)
        mask = np.asarray(nib.load(tmp_path / "a" / f"{rec['id']}_mask.nii.gz").dataobj)
        assert int(mask.sum()) == 3
    for shard in ("0/2", "1/2"):
        _gen(tmp_path / "s", weights, n=4, shard=shard, lesion_volume=f"{low}:{high}")
    sharded = {}
    for manifest in (tmp_path / "s").glob("manifest*.jsonl"):
        sharded.update(
            {r["id"]: r["sha256"] for r in map(json.loads, manifest.read_text().splitlines())}
        )
    assert sharded == {k: r["sha256"] for k, r in records.items()}


def test_samples_that_never_meet_the_range_are_not_written(tmp_path, weights, sized_by_seed):
    from synthbrain.engines.paired.volume_control import MAX_JOINT_ATTEMPTS

    summary = _gen(tmp_path / "a", weights, n=2, lesion_volume=f"{5.5 * VOXEL_ML}:{9 * VOXEL_ML}")
    assert summary["written"] == 0 and summary["out_of_range"] == [0, 1]
    assert not list((tmp_path / "a").glob("synth*_image.nii.gz"))
    assert MAX_JOINT_ATTEMPTS >= 10


def test_phantom_masks_are_drawn_in_range(tmp_path, weights, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _gen(tmp_path / "p", weights, n=2, steps=1, masks=Path("phantom"), lesion_volume="20:60")
    for rec in _records(tmp_path / "p").values():
        assert 20 <= rec["lesion_volume_ml"] <= 60 and rec["mask_source"] == "phantom"


@pytest.mark.parametrize(
    ("volume", "masks", "problem"),
    [("400:", None, "outside what the stroke model draws"),
     ("160:200", "phantom", "no stroke lesion in that range in 1000 attempts"),
     ("1900:", None, "larger than the model's whole brain")],
)  # fmt: skip
def test_ranges_the_model_cannot_meet_are_refused(tmp_path, weights, monkeypatch, volume, masks,
                                                  problem):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=problem):
        _gen(tmp_path / "x", weights, masks=None if masks is None else Path(masks),
             lesion_volume=volume)  # fmt: skip
    assert not (tmp_path / "x").exists()


def test_a_joint_range_beyond_the_training_volumes_but_drawn_is_accepted(tmp_path, weights):
    from synthbrain.engines.paired.generation import _volume_control
    from synthbrain.engines.paired.run import load_bundle

    bundle = load_bundle(str(weights), "stroke", "cpu")
    assert _volume_control(bundle, "160:200", None, 0) == VolumeRange(160.0, 200.0)


def test_a_mask_folder_with_a_range_is_refused(tmp_path, weights):
    (tmp_path / "masks").mkdir()
    with pytest.raises(InputError, match="not with a folder of masks"):
        _gen(tmp_path / "x", weights, masks=tmp_path / "masks", lesion_volume="1:5")


def _cli(args: list[str], capsys) -> tuple[int, str]:  # noqa: ANN001
    """The CLI in-process: (exit code, stderr)."""
    code, _, err = invoke(args, capsys)
    return code, err


def test_cli_bad_range_is_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "o"
    code, err = _cli(["generate", "--out", str(out), "--n", "1", "--lesion-volume", "10:5"], capsys)
    assert code == 2 and "--lesion-volume '10:5'" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.fixture(scope="module")
def deviation_weights(tmp_path_factory) -> Path:
    from synthbrain.engines.deviation.config import load_config
    from synthbrain.engines.deviation.run import save_weights
    from synthbrain.engines.deviation.tensors import DeviationModel

    torch.manual_seed(0)
    tiny = {"contrasts": ["t1"], "crop": 16, "min_size": 16, "margin_mm": 4.0,
            "denoiser": {"base_channels": 8, "channel_mults": [1, 2], "attention_levels": [-1]},
            "substrate": {"base_channels": 4, "channel_mults": [1, 2, 2, 2, 2],
                          "attention_levels": []}}  # fmt: skip
    model = DeviationModel(load_config(None, tiny))
    return save_weights(model, tmp_path_factory.mktemp("dw") / "tiny-dev.safetensors")


def _dev(out: Path, weights: Path, **kw):
    options = dict(n=2, steps=2, weights=str(weights), seed=3, engine="deviation",
                   lesion="stroke", device="cpu")  # fmt: skip
    options.update(kw)
    return api.generate(out=out, **options)


def test_deviation_draws_phantom_lesions_in_range(tmp_path, deviation_weights):
    _dev(tmp_path / "d", deviation_weights, lesion_volume="20:60")
    records = _records(tmp_path / "d")
    assert len(records) == 2
    for rec in records.values():
        assert 20 <= rec["lesion_ml"] <= 60 and rec["lesion_volume_range"] == "20:60"
        assert rec["anatomy"] == rec["mask_source"]  # one phantom: its anatomy and its lesion
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert config["lesion_volume"] == "20:60"


def test_deviation_refuses_ranges_it_cannot_meet(tmp_path, deviation_weights):
    with pytest.raises(InputError, match="no stroke lesion in that range in 1000 attempts"):
        _dev(tmp_path / "x", deviation_weights, lesion_volume="160:200")
    (tmp_path / "masks").mkdir()
    with pytest.raises(InputError, match="not with a folder of masks"):
        _dev(tmp_path / "x", deviation_weights, lesion_volume="1:5", masks=tmp_path / "masks")
    assert not (tmp_path / "x").exists()
