"""Sampling under a FLOPs budget: realized compute, not planned compute, is what gets matched.

Completion lengths are only known after sampling, so a plan (``assay.sampling.plan``) is an estimate.
``run_budgeted`` makes the budget exact on what was actually spent, using the resumable sampler:

1. sample ``n`` per problem into ``<out>.all.jsonl`` (resumable as usual);
2. while the recorded FLOPs fall short of the budget, raise ``n`` by the estimated shortfall and
   sample the missing indices (nothing already sampled is redone);
3. keep samples in round-robin order (every problem's index 0, then every index 1, ...) while the
   running total stays within the budget; write them to ``out`` and the rest to
   ``<out>.over_budget.jsonl`` with the reason.

So every problem ends with k or k+1 samples, and the kept FLOPs are within one sample's cost of
the budget: two arms with the same budget match to a fraction of a percent.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from assay.core.io import InputError, read_problems, read_records, write_json, write_records
from assay.core.records import Sample
from assay.sampling.runner import select_problems
from assay.sampling.sharded import run_sampling_on


def trim_to_budget(samples: list[Sample], problem_order: list[str], budget: float) -> tuple[list[Sample], list[Sample]]:
    """Round-robin prefix of ``samples`` whose FLOPs sum stays within ``budget``: (kept, over)."""
    rank = {pid: i for i, pid in enumerate(problem_order)}
    order = sorted(samples, key=lambda s: (s.sample_index, rank.get(s.problem_id, len(rank))))
    kept, over, total = [], [], 0.0
    for s in order:
        if not over and total + s.flops <= budget:
            kept.append(s)
            total += s.flops
        else:
            over.append(s)
    return kept, over


def run_budgeted(cfg, budget: float, generator=None, progress: bool = True, max_rounds: int = 8) -> dict:
    """Sample until ``budget`` FLOPs are realized, then trim to it; see the module docstring."""

    if budget <= 0:
        raise InputError(f"budget must be positive, got {budget}")
    problems = select_problems(read_problems(cfg.problems), cfg.limit, cfg.shard)
    if not problems:
        raise InputError(f"{cfg.problems}: no problems")
    all_path = str(cfg.out) + ".all.jsonl"
    n = max(1, cfg.n)
    for _ in range(max_rounds):
        run_sampling_on(dataclasses.replace(cfg, out=all_path, n=n), generator=generator, progress=progress)
        samples = read_records(all_path, Sample)
        total = sum(s.flops for s in samples)
        if total <= 0:
            raise InputError(f"{all_path}: the samples record no FLOPs (an API backend without n_params?); "
                             "a FLOPs budget cannot be enforced on them")
        if total >= budget:
            break
        mean = total / len(samples)
        n += max(1, math.ceil((budget - total) / mean / len(problems)))
    else:
        raise InputError(f"budget {budget:.4g} FLOPs not reached after {max_rounds} rounds (n={n}); "
                         "raise --n to start closer to the plan")
    kept, over = trim_to_budget(samples, [p.id for p in problems], budget)
    kept.sort(key=lambda s: ([p.id for p in problems].index(s.problem_id), s.sample_index))
    write_records(cfg.out, kept)
    write_records(str(cfg.out) + ".over_budget.jsonl",
                  [{**dataclasses.asdict(s), "reason": "over the FLOPs budget"} for s in over])
    per = {}
    for s in kept:
        per[s.problem_id] = per.get(s.problem_id, 0) + 1
    realized = sum(s.flops for s in kept)
    summary = {"budget": budget, "realized_flops": realized, "realized_over_budget": realized / budget,
               "samples": len(kept), "over_budget": len(over), "problems": len(problems),
               "k_min": min(per.get(p.id, 0) for p in problems), "k_max": max(per.get(p.id, 0) for p in problems),
               "model": cfg.model, "completion_tokens": sum(s.completion_tokens for s in kept)}
    write_json(Path(str(cfg.out) + ".budget.json"), summary)
    return summary
