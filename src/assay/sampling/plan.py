"""Compute-matched sampling plans: how many samples per problem each model gets for one budget.

Bansal et al. (2024) compare a weaker-cheaper (WC) and a stronger-expensive (SE) model at equal
sampling FLOPs: a sample costs about 2 x N x tokens, so with N_SE / N_WC = r the WC model gets
k_WC = r x k_SE samples per problem. That rule ignores the prompt; here the prompt counts too,
because our sampler prefills it once per problem and its length differs by tokenizer:

    flops(problem) = 2 N (P + k C)          (P prompt tokens, C mean completion tokens)
    dollars(problem) = price_in P + price_out k C

so for a budget B over n problems, k = floor((B / n - cost of the prompt) / cost per completion).
With P = 0 this is exactly the paper's k_WC = r x k_SE. ``paper_k`` gives that textbook number
next to the prompt-aware one so the two can be compared.

The plan is an estimate (C comes from a pilot or a guess); ``assay sample --budget`` enforces
the budget on the realized FLOPs recorded in each Sample (see ``assay.sampling.budget``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from assay.core.checks import at_least, fail, keyed, passes
from assay.core.config import opt
from assay.core.io import InputError, read_problems
from assay.data.prompts import TEMPLATES, check_template, render_ids
from assay.models import resolve, stats_for


@dataclass(frozen=True)
class Arm:
    """One model's side of a compute-matched comparison."""

    name: str
    n_params: float
    """Parameters used per token (for FLOPs: 2 x n_params per token)."""
    prompt_tokens: float
    """Mean prompt tokens per problem with this model's tokenizer and chat template."""
    completion_tokens: float
    """Expected mean completion tokens per sample."""
    price_in: Optional[float] = None
    """Dollars per prompt token (API models); None for FLOPs-only arms."""
    price_out: Optional[float] = None
    """Dollars per completion token."""

    def flops_per_problem(self, k: float) -> float:
        return 2.0 * self.n_params * (self.prompt_tokens + k * self.completion_tokens)

    def dollars_per_problem(self, k: float) -> float:
        if self.price_in is None or self.price_out is None:
            raise InputError(f"arm '{self.name}': a dollar budget needs price_in and price_out")
        return self.price_in * self.prompt_tokens + self.price_out * k * self.completion_tokens


def samples_for_budget(arm: Arm, budget: float, n_problems: int, unit: str = "flops") -> int:
    """Largest k whose cost over ``n_problems`` stays within ``budget`` (0 if even k=1 does not fit)."""
    if n_problems < 1:
        raise InputError("a plan needs at least one problem")
    if budget <= 0:
        raise InputError(f"budget must be positive, got {budget}")
    per_problem = budget / n_problems
    if unit == "flops":
        fixed, per_sample = arm.flops_per_problem(0), arm.flops_per_problem(1) - arm.flops_per_problem(0)
    elif unit == "dollars":
        fixed, per_sample = arm.dollars_per_problem(0), arm.dollars_per_problem(1) - arm.dollars_per_problem(0)
    else:
        raise InputError(f"budget unit '{unit}': expected flops or dollars")
    if per_sample <= 0:
        raise InputError(f"arm '{arm.name}': a sample must cost something (completion_tokens > 0)")
    # A tiny epsilon guards against 2.9999999 from float division of exact multiples.
    return max(0, math.floor((per_problem - fixed) / per_sample + 1e-9))


def paper_k(k_anchor: int, n_anchor: float, n_other: float) -> float:
    """The paper's rule without prompts: k_other = (N_anchor / N_other) x k_anchor."""
    return k_anchor * n_anchor / n_other


def parse_budget(text: str | float) -> tuple[float, str]:
    """``"1e15"`` / ``"1e15 flops"`` -> (1e15, "flops"); ``"$5"`` / ``"5 usd"`` -> (5.0, "dollars")."""
    if isinstance(text, (int, float)):
        return float(text), "flops"
    t = str(text).strip().lower().replace("_", "")
    unit = "flops"
    if t.startswith("$"):
        unit, t = "dollars", t[1:]
    for suffix, u in (("flops", "flops"), ("usd", "dollars"), ("dollars", "dollars")):
        if t.endswith(suffix):
            unit, t = u, t[: -len(suffix)].strip()
    try:
        value = float(t)
    except ValueError:
        raise InputError(f"budget '{text}': expected a number of FLOPs (1e15) or dollars ($5)") from None
    if value <= 0:
        raise InputError(f"budget '{text}': must be positive")
    return value, unit


def plan(arms: list[Arm], budget: float, n_problems: int, unit: str = "flops") -> list[dict]:
    """One row per arm: k, planned cost, and the paper's prompt-free k relative to the first arm."""
    rows = []
    for arm in arms:
        k = samples_for_budget(arm, budget, n_problems, unit)
        cost = (arm.flops_per_problem(k) if unit == "flops" else arm.dollars_per_problem(k)) * n_problems
        rows.append({"arm": arm.name, "n_params": arm.n_params, "prompt_tokens": arm.prompt_tokens,
                     "completion_tokens": arm.completion_tokens, "k": k, "planned_cost": cost,
                     "budget_used": cost / budget})
    anchor = arms[0]
    for row, arm in zip(rows, arms):
        row["paper_k"] = paper_k(rows[0]["k"], anchor.n_params, arm.n_params)
    return rows


@dataclass
class PlanConfig:
    models: list = opt([], help="model specs, comma-separated (first is the anchor, e.g. the strong model)")
    budget: str = opt("", help="total budget: FLOPs (1e15) or dollars ($5); empty = k_anchor x the anchor's cost")
    k_anchor: int = opt(1, help="with no budget: samples per problem of the first model; the budget follows from it")
    problems: str = opt("problems.jsonl", help="Problem JSONL: prompt lengths are measured with each model's tokenizer")
    template: str = opt("plain-v1", help="prompt template id")
    completion_tokens: float = opt(256.0, help="expected mean completion tokens per sample (from a pilot run)")
    n_params: list = opt([], help="override parameter counts, 'spec=N' (API models)")
    prices: list = opt([], help="dollar prices per token, 'spec=IN:OUT' (API models)")
    prompt_tokens: list = opt([], help="override mean prompt tokens, 'spec=N' (API models, whose tokenizer is not local)")


def _kv(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"{what} '{item}': expected spec=value")
        k, v = item.rsplit("=", 1)
        out[k] = v
    return out


def mean_prompt_tokens(spec: str, problems, template: str) -> float:
    """Mean prompt length of ``problems`` under ``spec``'s tokenizer and chat template."""
    from transformers import AutoTokenizer


    tok = AutoTokenizer.from_pretrained(resolve(spec))  # adapter folders carry their tokenizer too
    tpl = TEMPLATES.get(template)
    return sum(len(render_ids(tpl.messages(p.question), tok)) for p in problems) / len(problems)


def build_arms(cfg: PlanConfig, problems) -> list[Arm]:
    if not cfg.models:
        raise InputError("plan: give at least one model (--models a,b)")
    n_over = _kv(cfg.n_params, "n_params")
    prices = _kv(cfg.prices, "prices")
    p_over = _kv(cfg.prompt_tokens, "prompt_tokens")
    arms = []
    for spec in cfg.models:
        n = float(n_over[spec]) if spec in n_over else float(stats_for(spec).n_matmul)
        p_in = p_out = None
        if spec in prices:
            try:
                p_in, p_out = (float(x) for x in prices[spec].split(":"))
            except ValueError:
                raise InputError(f"prices '{spec}={prices[spec]}': expected IN:OUT dollars per token") from None
        p_tok = float(p_over[spec]) if spec in p_over else mean_prompt_tokens(spec, problems, cfg.template)
        arms.append(Arm(spec, n, p_tok, cfg.completion_tokens, p_in, p_out))
    return arms


@dataclass
class PlanResult:
    """A budget (in ``unit``) over ``problems`` problems and each model's row of the plan."""

    budget: float
    unit: str
    problems: int
    rows: list


def cli_run(cfg: PlanConfig) -> int:
    r = run_plan(cfg)
    print(f"budget {r.budget:.4g} {r.unit} over {r.problems} problems ({cfg.problems})")
    print(f"{'model':<32} {'params':>12} {'prompt tok':>10} {'compl tok':>9} {'k':>5} {'paper k':>8} {'planned':>11} {'used':>6}")
    for row in r.rows:
        print(f"{row['arm']:<32} {row['n_params']:>12.4g} {row['prompt_tokens']:>10.1f} {row['completion_tokens']:>9.1f} "
              f"{row['k']:>5d} {row['paper_k']:>8.2f} {row['planned_cost']:>11.4g} {row['budget_used']:>6.1%}")
    return 0


def check(c: PlanConfig, key: str = "", skip=(), files: bool = False) -> None:
    k = keyed(key)
    check_template(k("template"), c.template)
    at_least(k("k_anchor"), c.k_anchor, 1)
    if c.completion_tokens <= 0:
        raise fail(k("completion_tokens"), f"must be positive, got {c.completion_tokens!r}")
    if c.budget:
        passes(k("budget"), parse_budget, c.budget)
    if not c.models:
        raise fail(k("models"), "give at least one model (--models a,b)")


def run_plan(cfg: PlanConfig) -> PlanResult:
    """Samples per problem for each model of ``cfg.models`` under one budget."""

    problems = read_problems(cfg.problems)
    if not problems:
        raise InputError(f"{cfg.problems}: no problems")
    arms = build_arms(cfg, problems)
    if cfg.budget:
        budget, unit = parse_budget(cfg.budget)
    else:
        budget, unit = arms[0].flops_per_problem(cfg.k_anchor) * len(problems), "flops"
    return PlanResult(budget, unit, len(problems), plan(arms, budget, len(problems), unit))
