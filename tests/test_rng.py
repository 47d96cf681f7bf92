"""Seeds derived per sample, generators, and shard parsing (user text and Slurm env)."""

import subprocess
import sys

import pytest
import torch

from synthbrain.errors import InputError
from synthbrain.rng import (
    Shard,
    derive_seed,
    generator_for,
    parse_shard,
    shard_from_env,
    shard_indices,
)


def test_derive_seed_is_stable_across_processes():
    here = [derive_seed(7, k) for k in range(3)]
    code = "from synthbrain.rng import derive_seed; print([derive_seed(7, k) for k in range(3)])"
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert str(here) == there.strip()


def test_derive_seed_distinct_and_in_range():
    seeds = {derive_seed(run, k) for run in (0, 1, -1, 2**40) for k in range(200)}
    assert len(seeds) == 800
    assert all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(0, 1) != derive_seed(1, 0)


def test_generator_for_reproduces_draws():
    a = torch.randn(5, generator=generator_for(derive_seed(3, 4)))
    b = torch.randn(5, generator=generator_for(derive_seed(3, 4)))
    c = torch.randn(5, generator=generator_for(derive_seed(3, 5)))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_generator_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    torch.rand(4, generator=generator_for(9))
    assert torch.equal(torch.rand(3), expected)


def test_parse_shard_zero_based():
    assert parse_shard("3/16") == Shard(3, 16)
    assert parse_shard(" 0 / 1 ") == (0, 1)
    assert str(parse_shard("15/16")) == "15/16"


@pytest.mark.parametrize("text", ["16/16", "-1/4", "a/4", "3", "1/0", "1/2/3", ""])
def test_parse_shard_rejects(text):
    with pytest.raises(InputError):
        parse_shard(text)


def test_shard_indices_partition_the_run():
    n, count = 23, 4
    parts = [shard_indices(n, Shard(i, count)) for i in range(count)]
    assert sorted(k for part in parts for k in part) == list(range(n))
    assert parts[1] == [k for k in range(n) if k % count == 1]
    assert shard_indices(5, None) == [0, 1, 2, 3, 4]


def test_shard_from_env_outside_slurm():
    assert shard_from_env({}) is None
    assert shard_from_env({"SLURM_JOB_ID": "5"}) is None


def test_shard_from_env_uses_array_minimum():
    env = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "16", "SLURM_ARRAY_TASK_MIN": "1"}
    assert shard_from_env(env) == Shard(0, 16)
    env["SLURM_ARRAY_TASK_ID"] = "16"
    assert shard_from_env(env) == Shard(15, 16)
    zero_based = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert shard_from_env(zero_based) == Shard(3, 4)


def test_shard_from_env_with_step():
    env = {
        "SLURM_ARRAY_TASK_ID": "6",
        "SLURM_ARRAY_TASK_COUNT": "4",
        "SLURM_ARRAY_TASK_MIN": "0",
        "SLURM_ARRAY_TASK_STEP": "2",
    }
    assert shard_from_env(env) == Shard(3, 4)


@pytest.mark.parametrize(
    "env",
    [
        {"SLURM_ARRAY_TASK_ID": "2"},  # no count
        {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"},
        {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1"},
    ],
)
def test_shard_from_env_rejects(env):
    with pytest.raises(InputError):
        shard_from_env(env)
