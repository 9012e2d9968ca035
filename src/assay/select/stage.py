"""The select stage: from verified samples to an SFT dataset, one small selector at a time.

A selection method is a pipeline of selectors, e.g. ``correct > dedup > shortest > max_per_problem:2``.
Each selector is a filter (``assay.select.filters``) registered by name (with did-you-mean for
typos) in ``assay.select.selectors``, so a new method is one filter and one registry line; a
model-backed one brings its own options section (``less``: ``SelectConfig.less``, trained and
scored behind the selector in ``assay.select.less``, so this stage never imports training).
Every candidate a selector drops is written with the step and reason to ``<out>.rejected.jsonl``,
and the funnel (counts per step, and what a step's compute cost) to ``<out>.funnel.json``, the
same way ``assay curate`` writes its own.

Output rows are ``SFTExample`` records: the chat the sample was drawn with (its own prompt
template, so training sees the prompt it will be evaluated with) plus the completion, and the
ids of the source problem and sample.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Optional

from assay.core.checks import keyed, one_of, passes
from assay.core.config import opt, save_yaml, to_mapping
from assay.core.io import InputError, read_problems, read_records, write_json, write_records
from assay.core.records import Sample, Verdict
from assay.select import less
from assay.select.filters import Context, Filter, Rejection, Step, funnel_flops, run_filters, write_rejected
from assay.select.less import LessOptions
from assay.select.selectors import SELECTORS, Candidate, build_candidates, to_example

__all__ = ["SELECTORS", "Candidate", "LessOptions", "SelectConfig", "build_candidates", "parse_pipeline",
           "run_pipeline", "run_select", "to_example"]


def parse_pipeline(specs: list[str]) -> list[tuple[str, Optional[str], Filter]]:
    steps = []
    for spec in specs:
        name, _, arg = spec.strip().partition(":")
        steps.append((name, arg or None, SELECTORS.get(name)))
    if not steps:
        raise InputError("select: the selector pipeline is empty")
    return steps


def _step_rng(seed: int, i: int, name: str) -> random.Random:
    # One RNG per step, derived from the seed and the step, so adding a step later in the
    # pipeline does not change the draws of the steps before it.
    return random.Random(int.from_bytes(hashlib.sha256(f"{seed}:{i}:{name}".encode()).digest()[:8], "little"))


def run_pipeline(cands: list[Candidate], specs: list[str], seed: int, less: Optional[LessOptions] = None,
                 workdir: Optional[str] = None) -> tuple[list[Candidate], list[Rejection], list[dict]]:
    """Apply the selectors in order; returns (kept, [(candidate, step, reason)], funnel counts)."""
    steps = []
    for i, (name, arg, flt) in enumerate(parse_pipeline(specs)):
        flt.check(arg)
        ctx = Context(step=name if arg is None else f"{name}:{arg}", arg=arg, rng=_step_rng(seed, i, name),
                      seed=seed, options=less if less is not None else LessOptions(), workdir=workdir)
        steps.append(Step(flt, ctx))
    return run_filters(cands, steps)


@dataclass
class SelectConfig:
    INPUTS, OUTPUTS = ("problems", "samples", "verdicts"), ("out",)
    problems: str = opt("problems.jsonl", help="Problem JSONL the samples were drawn from")
    samples: str = opt("samples.jsonl", help="Sample JSONL")
    verdicts: str = opt("verdicts.jsonl", help="Verdict JSONL (needed by 'correct')")
    out: str = opt("sft.jsonl", help="SFT JSONL to write; rejects go to <out>.rejected.jsonl, counts to <out>.funnel.json")
    selectors: list = opt(["correct", "finished", "dedup", "max_per_problem:4"],
                          help="pipeline of selectors, 'name' or 'name:arg', applied in order: "
                               "correct, finished, dedup, shortest[:m], longest[:m], max_per_problem:m, random:N, "
                               "source:NAME, less (LESS gradient selection, settings in less.*)")
    seed: int = opt(0, help="seed of the random choices")
    method: str = opt("pipeline", help="pipeline, or gradient: the older spelling of a final 'less' selector")
    less: LessOptions = field(default_factory=LessOptions,
                              metadata={"help": "the 'less' selector: targets, n, fraction, model, warmup_fraction, "
                                                "warmup_epochs, lora_r, dim, max_length, checkpointing, dtype"})
    # The flags of the older flat spelling (``--method gradient --targets t.jsonl --n 100``) keep
    # working: each sets its field of the less section.
    FLAGS = {name: f"less.{name}" for name in ("targets", "n", "fraction", "model", "warmup_fraction",
                                               "warmup_epochs", "lora_r", "dim", "max_length", "checkpointing")}



def selectors_of(cfg: SelectConfig) -> list[str]:
    """The pipeline as run: ``method: gradient`` appends the ``less`` selector it stands for."""
    if cfg.method not in ("pipeline", "gradient"):
        raise InputError(f"select method '{cfg.method}': expected pipeline or gradient")
    specs = [str(x) for x in cfg.selectors]
    return specs + ["less"] if cfg.method == "gradient" and "less" not in specs else specs


def run_select(cfg: SelectConfig) -> dict:
    problems = read_problems(cfg.problems)
    samples = read_records(cfg.samples, Sample)
    verdicts = read_records(cfg.verdicts, Verdict) if cfg.verdicts else []
    cands = build_candidates(problems, samples, verdicts, cfg.samples)
    specs = selectors_of(cfg)
    # Named for what it holds (the warmup run and gradient features), as before the selector existed.
    kept, rejected, funnel = run_pipeline(cands, specs, cfg.seed, less=cfg.less, workdir=cfg.out + ".gradient")
    n = write_records(cfg.out, [to_example(c, ">".join(specs)) for c in kept])
    write_rejected(cfg.out + ".rejected.jsonl", rejected,
                   lambda c: {"problem_id": c.problem.id, "sample_index": c.sample.sample_index})
    summary = {"examples": n, "problems": len({c.problem.id for c in kept}),
               "completion_tokens": sum(c.sample.completion_tokens for c in kept), "funnel": funnel,
               "sample_flops": sum(c.sample.flops for c in cands), "selection_flops": funnel_flops(funnel)}
    write_json(cfg.out + ".funnel.json", summary)
    save_yaml(cfg.out + ".config.yaml", to_mapping(cfg))
    return summary


def cli_run(cfg: SelectConfig) -> int:
    s = run_select(cfg)
    steps = " -> ".join(f"{f['step']} {f['kept']}" for f in s["funnel"])
    print(f"[assay] select: {steps}; {s['examples']} examples from {s['problems']} problems -> {cfg.out}")
    return 0



def check_selectors(key: str, specs: list) -> None:
    """Names and arguments: each selector checks its own argument."""

    for name, arg, flt in passes(key, parse_pipeline, [str(s) for s in specs]):
        passes(key, flt.check, arg)


def check(c: SelectConfig, key: str = "", skip=(), files: bool = False) -> None:
    k = keyed(key)
    if "selectors" not in skip:
        check_selectors(k("selectors"), c.selectors)
    one_of(k("method"), c.method, ("pipeline", "gradient"), "selection method")
    # The less section matters only when the less selector runs (method gradient appends it).
    if c.method == "gradient" or "less" in [str(s).partition(":")[0] for s in c.selectors]:
        less.check(c.less, k("less"), {s[len("less."):] for s in skip if s.startswith("less.")}, files)
