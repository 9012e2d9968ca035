"""What this machine can do at most, measured in the same run as the benchmark that cites it.

Every benchmark prints its achieved FLOP/s beside the machine's measured matmul peak in the same
dtype, so a ratio between two arms also says how far both are from what the cores can do. The
peak is the best of a few large square ``torch.matmul`` calls (best, not mean: it is an upper
bound). Decoding at small batch is bound by memory reads (every step streams all the weights
and each row's KV cache), so the read bandwidth of a large ``sum`` is measured too.

Shared by the benchmark scripts only; nothing in ``src/`` depends on it.
"""

from __future__ import annotations

import time

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def matmul_peak(dtype: str, sizes=(1024, 2048, 4096), seconds: float = 0.3, tries: int = 3) -> float:
    """Best FLOP/s of square matmuls in ``dtype`` on the current torch threads."""
    dt = _DTYPES[dtype]
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
        torch.matmul(a, b)  # warm-up: first call pays for oneDNN's kernel choice
        for _ in range(tries):
            reps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds or reps < 2:
                torch.matmul(a, b)
                reps += 1
            best = max(best, 2.0 * n**3 * reps / (time.perf_counter() - t0))
    return best


def read_bandwidth(megabytes: int = 256, reps: int = 5) -> float:
    """Bytes/s of summing a buffer much larger than the caches."""
    a = torch.ones(megabytes * 1024 * 1024 // 4)
    a.sum()
    t0 = time.perf_counter()
    for _ in range(reps):
        a.sum()
    return a.numel() * 4 * reps / (time.perf_counter() - t0)


class Limits:
    """The peaks measured once per run, keyed by dtype."""

    def __init__(self, dtypes=("float32", "bfloat16")):
        self.peak = {d: matmul_peak(d) for d in dtypes}
        self.bandwidth = read_bandwidth()

    def header(self) -> str:
        peaks = ", ".join(f"{d} {v / 1e9:.0f} GFLOP/s" for d, v in self.peak.items())
        return (f"machine limits (measured in this run, {torch.get_num_threads()} threads): matmul peak {peaks}; "
                f"memory read {self.bandwidth / 1e9:.1f} GB/s")

    def fraction(self, flops_per_s: float, dtype: str) -> float:
        return flops_per_s / self.peak[dtype]

    def as_dict(self) -> dict:
        return {"matmul_peak_flops": self.peak, "read_bandwidth_bytes": self.bandwidth,
                "threads": torch.get_num_threads()}
