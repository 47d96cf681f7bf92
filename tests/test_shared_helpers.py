"""The helpers that replaced copies (issue 11): seeds, ddpm's timesteps, the lazy HDF5 handle."""

from __future__ import annotations

import hashlib
import os
import pickle

import h5py
import numpy as np
import torch

from synthbrain.diffusion import steps_for, timesteps, timesteps_for
from synthbrain.io.dataset import crop_seed
from synthbrain.io.h5format import LazyH5
from synthbrain.rng import hash_seed
from synthbrain.training.sampler import derive_seed


def _blake(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def test_hash_seed_keeps_both_old_texts():
    assert hash_seed("crop", 3, 17) == _blake("crop:3:17")
    assert crop_seed(5, 2, 9) == _blake("5:2:9")
    assert derive_seed(1, "draw", 4) == _blake(repr((1, "draw", 4)))
    assert hash_seed(1, 2) != hash_seed(2, 1) and 0 <= hash_seed(7) < 2**63


def test_ddpm_takes_every_timestep_whatever_the_step_count():
    assert timesteps_for("ddpm", 50, 5).tolist() == list(range(49, -1, -1))
    assert timesteps_for("ddpm", 50, 5, t_start=9).tolist() == list(range(9, -1, -1))
    assert torch.equal(timesteps_for("ddim", 50, 5, spacing="trailing"),
                       timesteps(50, 5, spacing="trailing"))  # fmt: skip
    assert steps_for("ddpm", 1000, 4) == 1000 and steps_for("dpm++", 1000, 4) == 4


class _Reader(LazyH5):
    def __init__(self, path):  # noqa: ANN001
        self.path = path


def test_lazy_handle_reopens_after_pickling(tmp_path):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as h5:
        h5["a"] = np.arange(3)
    reader = _Reader(path)
    first = reader._file()
    assert reader._file() is first and reader._pid == os.getpid()
    copy = pickle.loads(pickle.dumps(reader))
    assert copy._h5 is None and copy._file()["a"][()].tolist() == [0, 1, 2]
