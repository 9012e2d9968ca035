"""Which dtype a model runs in when the config says ``auto``: bf16 where the hardware multiplies it.

Why a default that depends on the machine: measured in ``benchmarks/RESULTS.md`` (the precision
decision table), on a CPU with AVX512-BF16/AMX bf16 makes sampling 1.2-1.5x, evaluation 1.6x and
training 1.3-1.5x faster than fp32, and the quickstart's results hold within their confidence
intervals; without those instructions bf16 is emulated and much slower than fp32 (same machine
with oneDNN capped at AVX512_CORE: 59 vs 271 GFLOP/s; at AVX2: 1 vs 322). So ``auto`` picks bf16 only where the hardware multiplies it: a CUDA
device with bf16 support, or a CPU that reports ``avx512_bf16`` or ``amx_bf16`` (x86) or ``bf16``
(ARM); fp32 everywhere else. The resolved dtype, never ``auto``, is what protocols and resume
identities record, so results made in fp32 and in bf16 are never compared or resumed as equal.

CPU flags are read from ``/proc/cpuinfo``, so checking a CPU config imports no torch; only a
``cuda`` device asks torch.
"""

from __future__ import annotations

from functools import lru_cache

DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")
"""What a ``dtype`` setting may say."""

_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


@lru_cache(maxsize=4)
def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Does the CPU report bf16 dot-product instructions (x86 ``flags``, ARM ``Features``)?"""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return bool(_CPU_BF16_FLAGS & set(value.split()))
    except OSError:
        pass
    return False


def bf16_native(device: str = "cpu") -> bool:
    """Does ``device`` multiply bf16 in hardware?"""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return False
        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        # Compute capability 8.0 (Ampere) and up multiplies bf16; older cards only emulate it,
        # which torch.cuda.is_bf16_supported() counts as support by default.
        return torch.cuda.get_device_capability(index)[0] >= 8
    return device == "cpu" and cpu_has_bf16()


def resolve_dtype(dtype: str, device: str = "cpu") -> str:
    """``auto`` -> ``bfloat16`` where :func:`bf16_native`, else ``float32``; any other value as given."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if bf16_native(device) else "float32"
