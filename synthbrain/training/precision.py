"""Numeric precision of a training stage: bf16 autocast where the device runs it natively."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from pathlib import Path
from typing import Literal

import torch

from synthbrain.errors import InputError

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS = ("auto", "fp32", "bf16")
# cpuinfo flags of CPUs with bf16 arithmetic (x86: AVX512-BF16, AMX; Arm: FEAT_BF16).
_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (autocast elsewhere emulates it, slowly).

    torch's capability string names AVX512_BF16 / AMX on builds that detect them; older builds
    say only "AVX512", so the kernel's cpuinfo flags are read as well (Linux).
    """
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if "BF16" in capability or "AMX" in capability:
        return True
    cpuinfo = Path("/proc/cpuinfo")
    if platform.system() == "Linux" and cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith(("flags", "features")):
                return bool(_BF16_FLAGS & set(line.split(":", 1)[-1].split()))
    return False


def device_has_bf16(device: torch.device) -> bool:
    """bf16 autocast runs natively on `device` (an Ampere+ GPU, or a CPU with bf16 units)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    return cpu_has_native_bf16()


def resolve_precision(name: str, device: torch.device) -> Literal["fp32", "bf16"]:
    """ "auto" → bf16 where the device has it, else fp32; "bf16" on a device without it is an
    InputError (emulated bf16 is slower than fp32)."""
    if name not in PRECISIONS:
        raise InputError(f"unknown precision {name!r} (use {', '.join(PRECISIONS)})")
    if name == "fp32":
        return "fp32"
    native = device_has_bf16(device)
    if name == "bf16" and not native:
        raise InputError(f"precision bf16 asked for, but {device} has no native bf16 support "
                         "(use --precision fp32 or auto)")  # fmt: skip
    return "bf16" if native else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device for "bf16", nothing for "fp32"."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def available_cores() -> int:
    """The cores this process may use: OMP_NUM_THREADS when set, else its CPU affinity."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """Use `threads` intra-op threads (None: `available_cores()`); returns the number."""
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")
    count = threads or available_cores()
    torch.set_num_threads(count)
    return count
