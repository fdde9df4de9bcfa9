"""What the machine can do fast: the CPU's name and the instruction sets that decide bf16 speed.

bfloat16 convolutions are fast on a CPU only with native bf16 instructions: AVX512-BF16 (dot
products of bf16 pairs) or AMX (Intel's tile units, several times faster again). Without either,
oneDNN emulates bf16 and float32 is the better choice. Figures in benchmarks are always quoted with
:func:`machine_info`, because the same code runs several times faster on one CPU than another;
:func:`cpu_class` names the kind of CPU a measured figure holds for (the runner's choice of
runtime is keyed by it).
"""
from __future__ import annotations

import os
import platform
from importlib import metadata
from functools import lru_cache
from pathlib import Path

import torch

# Flags reported beside every benchmark figure.
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset, str]:
    name, flags, ident = "", frozenset(), {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name" and not name:
                name = value
            elif key == "flags" and not flags:
                flags = frozenset(value.split())
            elif key in ("vendor_id", "cpu family", "model") and key not in ident:
                ident[key] = value
    except OSError:
        pass
    # Virtual machines often hide the model name ("Intel(R) Xeon(R) Processor"); vendor, family
    # and model number still tell the generation (Intel family 6: model 143 Sapphire Rapids, 207
    # Emerald Rapids; AMD family 25 is Zen 3/4, 26 Zen 5).
    cpu_id = " ".join(filter(None, (ident.get("vendor_id"), "family " + ident["cpu family"] if "cpu family" in ident
                                    else "", "model " + ident["model"] if "model" in ident else "")))
    return name or platform.processor() or platform.machine(), flags, cpu_id


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


def cpu_class() -> str:
    """The kind of CPU, as far as inference speed goes: ``amx`` (AMX-BF16 tiles: Xeon Sapphire
    Rapids and later), ``avx512_bf16`` (native bf16 dot products without AMX: AMD Zen 4/5, Cooper
    Lake), ``avx512`` (AVX-512 without bf16) or ``other``."""
    flags = _cpuinfo()[1]
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return "avx512" if "avx512f" in flags else "other"


def package_version(name: str) -> str | None:
    """The installed version of a distribution (``openvino``), None when it is not installed; read
    from its metadata, without importing it."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info(device: torch.device | str | None = None) -> dict:
    """CPU model, class, cores, flags, torch and openvino versions and threads (and the GPU's name
    on CUDA)."""
    info = {
        "cpu": cpu_name(),
        "cpu_id": _cpuinfo()[2],
        "cpu_class": cpu_class(),
        "cores": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "torch": torch.__version__,
        "openvino": package_version("openvino"),
        "threads": torch.get_num_threads(),
    }
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


__all__ = ["cpu_name", "cpu_flags", "cpu_class", "cpu_has_fast_bf16", "machine_info", "package_version",
           "REPORTED_FLAGS"]
