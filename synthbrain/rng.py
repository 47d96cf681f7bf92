"""Seeds and shards: sample k of a run depends on (run seed, k) alone.

`derive_seed` hashes the run seed and the sample index, so a sample's noise never depends on
which shard, batch or process made it: `--shard 3/16` writes exactly the files the unsharded
run would, and a resumed run regenerates a missing sample bit for bit.

Shards are 0-based: `"i/N"` with 0 <= i < N (Slurm's usual `--array=0-(N-1)`); sample k goes
to shard k % N.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from typing import Literal, NamedTuple

import torch

from synthbrain.errors import InputError

_SEED_MASK = (1 << 63) - 1
_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class Shard(NamedTuple):
    """One slice of a run: 0-based `index` of `count` shards (unpacks as a tuple)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def derive_seed(run_seed: int, k: int) -> int:
    """The seed of sample `k` of a run seeded with `run_seed`.

    A SHA-256 hash of both integers, cut to 63 bits so it fits `torch.Generator.manual_seed`
    and JSON readers that use signed 64-bit integers. Stable across Python versions,
    platforms and processes (unlike `hash()`), distinct for distinct (run_seed, k).

    Args:
        run_seed: the run's seed (any integer, negative allowed).
        k: the 0-based sample index within the run.

    Returns:
        An integer in [0, 2**63).
    """
    digest = hashlib.sha256(f"synthbrain/sample-seed/v1:{int(run_seed)}:{int(k)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & _SEED_MASK


def hash_seed(*parts: object, text: Literal["joined", "repr"] = "joined") -> int:
    """A 63-bit seed that depends only on `parts`: blake2b-64 of their text, little-endian, >> 1.

    The one helper for seeds that are not sample seeds (crops, augmentations, training draws).
    Two texts are kept because seeds already in use were made from both, and changing either
    would change which crops an old run resumes with: "joined" hashes ':'.join(map(str, parts))
    (HDF5 crops, paired training), "repr" hashes repr(parts) (the training loop's draws).
    """
    blob = ":".join(map(str, parts)) if text == "joined" else repr(parts)
    digest = hashlib.blake2b(blob.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def generator_for(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh `torch.Generator` on `device` seeded with `seed` (global RNGs are left alone)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed) & _SEED_MASK)
    return generator


def parse_shard(text: str) -> Shard:
    """Parse a user's `"i/N"` (0-based: `"0/16"` … `"15/16"`) into a `Shard`.

    Raises:
        InputError: the text is not `i/N`, N < 1, or i is outside 0..N-1.
    """
    match = _SHARD_RE.match(str(text))
    if match is None:
        raise InputError(f"--shard must look like i/N (0-based, e.g. 0/16), got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    return _checked(index, count, f"--shard {text}")


def _checked(index: int, count: int, origin: str) -> Shard:
    """A Shard after range checks; `origin` names where the numbers came from."""
    if count < 1:
        raise InputError(f"{origin}: the shard count must be at least 1, got {count}")
    if not 0 <= index < count:
        raise InputError(
            f"{origin}: shard index {index} is outside 0..{count - 1} (shards are 0-based)"
        )
    return Shard(index, count)


def _env_int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    """An integer Slurm variable, or `default` when it is unset."""
    value = environ.get(name)
    if value is None or value.strip() == "":
        if default is None:
            raise InputError(f"{name} is not set although SLURM_ARRAY_TASK_ID is")
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{name} must be an integer, got {value!r}") from None


def shard_from_env(environ: Mapping[str, str] | None = None) -> Shard | None:
    """The shard of a Slurm job-array task, or None outside a job array.

    Slurm numbers tasks from the array's minimum id (`--array=1-16` starts at 1) and may step
    (`--array=0-30:2`), so the 0-based index is (TASK_ID - TASK_MIN) // TASK_STEP and the count
    is TASK_COUNT. Arrays with irregular ids (`--array=1,5,9`) map onto 0..N-1 only when they
    are evenly stepped; otherwise the index falls outside the range and an InputError says so.

    Args:
        environ: the environment to read (default `os.environ`).
    """
    env = os.environ if environ is None else environ
    if env.get("SLURM_ARRAY_TASK_ID", "").strip() == "":
        return None
    task_id = _env_int(env, "SLURM_ARRAY_TASK_ID")
    count = _env_int(env, "SLURM_ARRAY_TASK_COUNT")
    minimum = _env_int(env, "SLURM_ARRAY_TASK_MIN", 0)
    step = max(_env_int(env, "SLURM_ARRAY_TASK_STEP", 1), 1)
    offset = task_id - minimum
    if offset % step:
        raise InputError(
            f"SLURM_ARRAY_TASK_ID={task_id} is not on the array's step {step} from {minimum}"
        )
    return _checked(offset // step, count, f"SLURM_ARRAY_TASK_ID={task_id}")


def shard_indices(n: int, shard: Shard | tuple[int, int] | None) -> list[int]:
    """The sample indices 0..n-1 that belong to `shard` (k goes to shard k % N); all when None."""
    if shard is None:
        return list(range(n))
    index, count = _checked(int(shard[0]), int(shard[1]), "shard")
    return list(range(index, n, count))
