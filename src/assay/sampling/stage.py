"""``assay sample``: the sampling stage, plain or under a FLOPs budget.

The runner (``assay.sampling.runner``) samples what is missing from an output file; the budget
(``assay.sampling.budget``) repeats that until a realized-FLOPs budget is met. This module picks
one by the config and is what the command runs.
"""

from __future__ import annotations

from assay.core.io import InputError
from assay.sampling.runner import SampleConfig, run_sampling


def run_sample(cfg: SampleConfig, generator=None, progress: bool = True) -> dict:
    """Sample as ``cfg`` says; a summary of this invocation (``budgeted`` when a budget was set)."""
    if cfg.budget:
        from assay.sampling.budget import run_budgeted
        from assay.sampling.plan import parse_budget

        budget, unit = parse_budget(cfg.budget)
        if unit != "flops":
            raise InputError(f"sample --budget {cfg.budget}: local sampling is budgeted in FLOPs")
        return {"budgeted": True, **run_budgeted(cfg, budget, generator=generator, progress=progress)}
    return {"budgeted": False, **run_sampling(cfg, generator=generator, progress=progress)}


def cli_run(cfg: SampleConfig) -> int:
    s = run_sample(cfg)
    if s["budgeted"]:
        print(f"[assay] {cfg.out}: {s['samples']} samples ({s['k_min']}-{s['k_max']} per problem), realized "
              f"{s['realized_flops']:.4g} FLOPs = {s['realized_over_budget']:.2%} of the budget; "
              f"{s['over_budget']} over-budget samples in {cfg.out}.over_budget.jsonl")
        return 0
    rate = s["completion_tokens"] / s["seconds"] if s["seconds"] else 0.0
    print(f"[assay] {cfg.out}: {s['sampled']} new samples ({s['already_done']} already done), "
          f"{s['completion_tokens']} tokens, {s['flops']:.3g} FLOPs, {rate:.1f} tok/s")
    return 0
