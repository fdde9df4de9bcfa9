"""What the machine can do fast: the CPU's name and the instruction sets that decide bf16 speed.

bfloat16 convolutions are fast on a CPU only with native bf16 instructions: AVX512-BF16 (dot
products of bf16 pairs) or AMX (Intel's tile units, several times faster again). Without either,
oneDNN emulates bf16 and float32 is the better choice. Figures in benchmarks are always quoted with
:func:`machine_info`, because the same code runs several times faster on one CPU than another.
"""
from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path

import torch

# Flags reported beside every benchmark figure.
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset]:
    name, flags = "", frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not name:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return name or platform.processor() or platform.machine(), flags


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), or what the platform module knows."""
    return _cpuinfo()[0]


def cpu_flags() -> list[str]:
    """The CPU features among :data:`REPORTED_FLAGS` that this machine has."""
    flags = _cpuinfo()[1]
    return [f for f in REPORTED_FLAGS if f in flags]


def cpu_has_fast_bf16() -> bool:
    """Native bf16 arithmetic on this CPU (AVX512-BF16 or AMX-BF16)."""
    flags = _cpuinfo()[1]
    return "avx512_bf16" in flags or "amx_bf16" in flags


def machine_info(device: torch.device | str | None = None) -> dict:
    """CPU model, cores, flags, torch version and threads (and the GPU's name on CUDA)."""
    info = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


__all__ = ["cpu_name", "cpu_flags", "cpu_has_fast_bf16", "machine_info", "REPORTED_FLAGS"]
