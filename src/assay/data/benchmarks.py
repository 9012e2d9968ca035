"""Named benchmarks: pinned problem sets that every evaluation and study refers to by name.

A name fixes everything that decides the rows (source, generator settings, seed, size), so two
evaluations of "rg-chain-sum-v1" ask the same questions. Reasoning-gym sets start at generator
seed ``HELDOUT_SEED`` so they stay disjoint from training pools drawn from small seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from assay.core.registry import Registry
from assay.data.problems import ProblemsConfig


@dataclass(frozen=True)
class Benchmark:
    """A pinned problem set: a problems source with everything that decides its rows."""

    source: str
    description: str
    task_kwargs: Optional[dict] = None
    seed: int = 0
    size: int = 500
    distinct: bool = False
    """Drop repeated questions (generators with small spaces repeat themselves)."""

    def problems_config(self, out: str, limit: Optional[int], data_dir: Optional[str]):
        rg = self.source.startswith("rg:")
        return ProblemsConfig(source=self.source, out=out, limit=limit, seed=self.seed if rg else 0,
                              size=self.size if rg else 500, task_kwargs=dict(self.task_kwargs or {}),
                              data_dir=None if rg else data_dir, distinct=self.distinct)


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")
for _name, _desc in (("gsm8k-test", "GSM8K test, 1319 grade-school word problems"),
                     ("math500", "MATH-500, competition math (Lightman et al. subset)"),
                     ("aime24", "AIME 2024, 30 problems"), ("amc23", "AMC 2023, 40 problems"),
                     ("svamp", "SVAMP, 1000 arithmetic word problems")):
    BENCHMARKS.add(_name, Benchmark(source=_name, description=_desc + " (from the shared data dir)"))

# Reasoning-gym sets: generator seed 10_000 so that item i comes from seed 10_000 + i, disjoint
# from training pools drawn with small seeds (0..9_999 - size); see ProblemsConfig.seed.
CHAIN_SUM_SMALL = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}
CHAIN_SUM_3_4 = {"min_terms": 3, "max_terms": 4, "min_digits": 1, "max_digits": 2}
BENCHMARKS.add("rg-chain-sum-v1", Benchmark(
    "rg:chain_sum", "reasoning-gym chain_sum, 2 terms of 1-2 digits, distinct questions (the quickstart's "
    "held-out set is its first rows)", CHAIN_SUM_SMALL, seed=10_000, size=500, distinct=True))
BENCHMARKS.add("rg-chain-sum-3-4-v1", Benchmark(
    "rg:chain_sum", "reasoning-gym chain_sum, 3-4 terms of 1-2 digits, distinct questions (multi-step sums "
    "for the teacher tier)", CHAIN_SUM_3_4,
    seed=10_000, size=500, distinct=True))
BENCHMARKS.add("rg-basic-arithmetic-v1", Benchmark(
    "rg:basic_arithmetic", "reasoning-gym basic_arithmetic, 2-4 terms, 1-2 digits, with parentheses",
    {"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 2, "allow_parentheses": True},
    seed=10_000, size=500, distinct=True))
BENCHMARKS.add("rg-gsm-symbolic-v1", Benchmark(
    "rg:gsm_symbolic", "reasoning-gym gsm_symbolic word problems", {}, seed=10_000, size=500))
HELDOUT_SEED = 10_000
