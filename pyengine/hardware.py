"""What the machine under us can do, detected at run time (never assumed).

CPUs differ between hosts: with AVX512-BF16 or AMX, bf16 autocast runs convolutions several
times faster than fp32; without them oneDNN emulates bf16 and is an order of magnitude slower.
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, ...]:
    try:
        return tuple(Path("/proc/cpuinfo").read_text().splitlines())
    except OSError:
        return ()


def _cpuinfo_field(*names: str) -> str | None:
    """The value of the first ``<name> : value`` line of /proc/cpuinfo (None where there is none)."""
    return next((ln.split(":", 1)[1].strip() for ln in _cpuinfo() if ln.startswith(names) and ":" in ln), None)


def cpu_flags() -> frozenset[str]:
    """The ISA flags of the first CPU in /proc/cpuinfo (empty where there is no such file)."""
    return frozenset((_cpuinfo_field("flags", "Features") or "").split())


def cpu_has_native_bf16() -> bool:
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_description() -> str:
    """E.g. ``Intel(R) Xeon(R) Processor, 2 threads, avx2 avx512f avx512_bf16 amx_bf16``:
    the CPU, the threads torch uses, and the vector ISA flags that decide its speed."""
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in cpu_flags()]
    return f"{cpu_model()}, {torch.get_num_threads()} threads, {' '.join(isa) or 'no AVX2/AVX-512'}"


def fast_autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the device computes it natively (CUDA, CPUs with AVX512-BF16 or AMX), else None."""
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return torch.bfloat16
    return None
