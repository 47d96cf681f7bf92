"""--downstream: the segmenter protocol's pieces, and a tiny end-to-end run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from evalfolders import write_pairs, write_run

from synthbrain.evaluation import downstream as ds

TINY = ds.Schedule(updates=3, patch=16, batch=2, base_channels=4)


def test_lesion_f1_counts_components():
    truth = np.zeros((12, 12, 12), bool)
    truth[1:3, 1:3, 1:3] = True  # found
    truth[8:10, 8:10, 8:10] = True  # missed
    pred = np.zeros_like(truth)
    pred[2:4, 2:4, 2:4] = True  # touches the first lesion
    pred[5, 10, 1] = True  # a false positive
    counts = ds.lesion_counts(pred, truth)
    assert counts == (1, 2, 1, 2)
    assert ds.lesion_f1([counts]) == pytest.approx(0.5)  # recall 1/2, precision 1/2
    assert ds.lesion_f1([(0, 0, 0, 0)]) is None


def test_split_and_ci_are_seeded():
    ids = [f"c{k}" for k in range(10)]
    train, test = ds.split_reference(ids, seed=3)
    assert len(test) == 4 and set(train) | set(test) == set(ids) and not set(train) & set(test)
    assert ds.split_reference(ids, seed=3) == (train, test)
    low, high = ds.bootstrap_ci([0.2, 0.4, 0.6, 0.8], seed=0)
    assert 0.2 <= low < 0.5 < high <= 0.8


def test_equal_seeds_give_equal_starts_and_updates():
    a, b = ds.make_net(1, TINY, seed=7), ds.make_net(1, TINY, seed=7)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    images = np.random.default_rng(0).random((3, 1, 16, 16, 16)).astype(np.float16)
    masks = images[:, 0] > 0.8
    nets = [ds.train(images, masks, TINY, seed=7, device="cpu", advance=lambda n: None)
            for _ in range(2)]  # fmt: skip
    assert all(torch.equal(p, q) for p, q in
               zip(nets[0].parameters(), nets[1].parameters(), strict=True))  # fmt: skip


def test_run_downstream_three_ways(tmp_path):
    from synthbrain.evaluation.grid import grid_of
    from synthbrain.evaluation.report import contrast_pairs
    from synthbrain.evaluation.sources import open_folder, open_run
    from synthbrain.progress import Reporter

    synth = open_run(write_run(tmp_path / "s", 4, seed=1))
    ref = open_folder(write_pairs(tmp_path / "r", 10, "flat", seed=2))
    out = ds.run_downstream(synth, ref, contrast_pairs(synth, ref), grid_of(synth.load("case000")),
                            quick=True, seed=0, device="cpu", reporter=Reporter(quiet=True),
                            schedule=TINY)  # fmt: skip
    assert set(out["results"]) == {"reference", "synthetic", "reference+synthetic"}
    assert [out["results"][k]["n_train"] for k in out["results"]] == [6, 4, 10]
    for entry in out["results"].values():
        assert 0.0 <= entry["dice_ci"][0] <= entry["dice_mean"] <= entry["dice_ci"][1] <= 1.0
        assert len(entry["dice_per_case"]) == out["n_test"] == 4


@pytest.mark.slow
def test_segmenter_learns_tiny_lesions(tmp_path):
    """40 updates on 24^3 balls: the reference-trained net finds the dark lesions."""
    from synthbrain.evaluation.grid import grid_of
    from synthbrain.evaluation.report import contrast_pairs
    from synthbrain.evaluation.sources import open_folder, open_run
    from synthbrain.progress import Reporter

    synth = open_run(write_run(tmp_path / "s", 6, radius=3.5, seed=1))
    ref = open_folder(write_pairs(tmp_path / "r", 12, "flat", radius=3.5, seed=2))
    schedule = ds.Schedule(updates=60, patch=24, batch=2, base_channels=8, lr=3e-3)
    out = ds.run_downstream(synth, ref, contrast_pairs(synth, ref), grid_of(synth.load("case000")),
                            quick=True, seed=0, device="cpu", reporter=Reporter(quiet=True),
                            schedule=schedule)  # fmt: skip
    assert out["results"]["reference"]["dice_mean"] > 0.5
    assert out["results"]["synthetic"]["dice_mean"] > 0.5
