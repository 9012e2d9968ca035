"""``assay sample``: the sampling stage, plain or under a FLOPs budget.

The runner (``assay.sampling.runner``) samples what is missing from an output file; the budget
(``assay.sampling.budget``) repeats that until a realized-FLOPs budget is met. This module picks
one by the config and is what the command runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from assay.core.checks import at_least, keyed, one_of, passes, unit_interval
from assay.core.executor import executor_options
from assay.core.hardware import DTYPES
from assay.core.io import InputError, read_problems
from assay.data.prompts import check_template
from assay.models import check_model
from assay.sampling.backends import check_backend
from assay.sampling.budget import run_budgeted
from assay.sampling.forcing import check_forcing
from assay.sampling.plan import parse_budget
from assay.sampling.runner import SampleConfig, parse_shard
from assay.sampling.sharded import run_sampling_on


@dataclass
class SampleResult:
    """One sampling invocation into ``out``: the runner's summary, or the budget's when ``budgeted``."""

    out: str
    budgeted: bool
    summary: dict

    def line(self) -> str:
        s, out = self.summary, self.out
        if self.budgeted:
            return (f"[assay] {out}: {s['samples']} samples ({s['k_min']}-{s['k_max']} per problem), realized "
                    f"{s['realized_flops']:.4g} FLOPs = {s['realized_over_budget']:.2%} of the budget; "
                    f"{s['over_budget']} over-budget samples in {out}.over_budget.jsonl")
        rate = s["completion_tokens"] / s["seconds"] if s["seconds"] else 0.0
        return (f"[assay] {out}: {s['sampled']} new samples ({s['already_done']} already done), "
                f"{s['completion_tokens']} tokens, {s['flops']:.3g} FLOPs, {rate:.1f} tok/s")


def run_sample(cfg: SampleConfig, generator=None, progress: bool = True) -> SampleResult:
    """Sample as ``cfg`` says (under its FLOPs budget, when it sets one)."""
    if cfg.budget:
        budget, unit = parse_budget(cfg.budget)
        if unit != "flops":
            raise InputError(f"sample --budget {cfg.budget}: local sampling is budgeted in FLOPs")
        return SampleResult(str(cfg.out), True, run_budgeted(cfg, budget, generator=generator, progress=progress))
    return SampleResult(str(cfg.out), False, run_sampling_on(cfg, generator=generator, progress=progress))


def cli_run(cfg: SampleConfig) -> int:
    print(run_sample(cfg).line())
    return 0


def check(c: SampleConfig, key: str = "", skip=(), files: bool = False) -> None:
    k = keyed(key)
    check_backend(k, c)
    if "template" not in skip:
        check_template(k("template"), c.template)
    one_of(k("dtype"), c.dtype, DTYPES, "dtype")
    if "n" not in skip:
        at_least(k("n"), c.n, 1)
    at_least(k("max_new_tokens"), c.max_new_tokens, 1)
    at_least(k("temperature"), c.temperature, 0)
    unit_interval(k("top_p"), c.top_p)
    at_least(k("max_batch"), c.max_batch, 1)
    if c.limit is not None:
        at_least(k("limit"), c.limit, 1)
    passes(k("shard"), parse_shard, c.shard)
    check_forcing(lambda n: k(f"forcing.{n}"), c.forcing)
    executor_options(c.executor, c.executor_options, k("executor_options"))
    if c.budget:
        passes(k("budget"), parse_budget, c.budget)
    if "model" not in skip and c.backend == "hf":
        check_model(k("model"), c.model)
    if files:
        if not read_problems(c.problems):
            raise InputError(f"{c.problems}: no problems in it (the file is empty); nothing to sample")
