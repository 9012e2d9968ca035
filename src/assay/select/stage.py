"""The select stage: from verified samples to an SFT dataset, one small selector at a time.

A selection method is a pipeline of selectors, e.g. ``correct > dedup > shortest > max_per_problem:2``.
Each selector is a pure function from candidates to the candidates it keeps, registered by name
(with did-you-mean for typos), so a new method (gradient-based, curated, ...) is one function and
one registry line. Every candidate a selector drops is written with the selector's name and
reason to ``<out>.rejected.jsonl``, so the funnel can be audited item by item.

Output rows are ``SFTExample`` records: the chat the sample was drawn with (its own prompt
template, so training sees the prompt it will be evaluated with) plus the completion, and the
ids of the source problem and sample.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

from assay.core.config import opt, save_yaml, to_mapping
from assay.core.io import InputError, read_problems, read_records, write_json, write_records
from assay.core.records import Problem, Sample, SFTExample, Verdict, key
from assay.core.registry import Registry
from assay.data.prompts import TEMPLATES
from assay.eval.metrics import normalize_text


@dataclass
class Candidate:
    problem: Problem
    sample: Sample
    verdict: Optional[Verdict]


Rejection = tuple[Candidate, str]


class Selector(Protocol):
    """``(candidates, arg, rng) -> (kept, rejected with reasons)``; must not reorder its input needlessly."""

    def __call__(self, cands: list[Candidate], arg: Optional[str], rng: random.Random) -> tuple[list[Candidate], list[Rejection]]: ...


SELECTORS: Registry[Selector] = Registry("selector")


def _int_arg(name: str, arg: Optional[str]) -> int:
    try:
        v = int(arg) if arg is not None else None
    except ValueError:
        v = None
    if v is None or v < 1:
        raise InputError(f"selector '{name}': needs a positive integer, e.g. '{name}:2' (got {arg!r})")
    return v


def _no_arg(name: str, arg: Optional[str]) -> None:
    if arg is not None:
        raise InputError(f"selector '{name}' takes no argument (got '{name}:{arg}')")


def correct(cands, arg, rng):
    """Keep samples whose verdict is correct (a missing verdict counts as not verified)."""
    _no_arg("correct", arg)
    kept, rej = [], []
    for c in cands:
        if c.verdict is None:
            rej.append((c, "no verdict"))
        elif c.verdict.status != "ok":
            rej.append((c, f"verification {c.verdict.status}"))
        elif not c.verdict.correct:
            rej.append((c, f"incorrect (extracted {c.verdict.extracted!r})"))
        else:
            kept.append(c)
    return kept, rej


def finished(cands, arg, rng):
    """Drop completions cut off by max_new_tokens: they never learned to stop."""
    _no_arg("finished", arg)
    kept = [c for c in cands if c.sample.finish_reason != "length"]
    return kept, [(c, "truncated at max_new_tokens") for c in cands if c.sample.finish_reason == "length"]


def dedup(cands, arg, rng):
    """Keep the first of identical completions (after whitespace/case normalisation) per problem."""
    _no_arg("dedup", arg)
    seen: dict[tuple[str, str], Candidate] = {}
    kept, rej = [], []
    for c in cands:
        k = (c.problem.id, normalize_text(c.sample.text))
        if k in seen:
            rej.append((c, f"duplicate of sample {seen[k].sample.sample_index}"))
        else:
            seen[k] = c
            kept.append(c)
    return kept, rej


def _by_problem(cands: list[Candidate]) -> dict[str, list[Candidate]]:
    groups: dict[str, list[Candidate]] = {}
    for c in cands:
        groups.setdefault(c.problem.id, []).append(c)
    return groups


def _extreme(cands, arg, name: str, longest: bool):
    m = 1 if arg is None else _int_arg(name, arg)
    kept_ids = set()
    for group in _by_problem(cands).values():
        # Ties break on sample_index so the choice is deterministic.
        order = sorted(group, key=lambda c: ((-1 if longest else 1) * c.sample.completion_tokens, c.sample.sample_index))
        kept_ids.update(id(c) for c in order[:m])
    kept = [c for c in cands if id(c) in kept_ids]
    rej = [(c, f"not among the {m} {'longest' if longest else 'shortest'} of its problem") for c in cands
           if id(c) not in kept_ids]
    return kept, rej


def shortest(cands, arg, rng):
    """Keep the m shortest completions per problem (default 1)."""
    return _extreme(cands, arg, "shortest", longest=False)


def longest(cands, arg, rng):
    """Keep the m longest completions per problem (default 1)."""
    return _extreme(cands, arg, "longest", longest=True)


def max_per_problem(cands, arg, rng):
    """Keep at most m per problem, chosen at random (seeded)."""
    m = _int_arg("max_per_problem", arg)
    kept_ids = set()
    for group in _by_problem(cands).values():
        pick = group if len(group) <= m else rng.sample(group, m)
        kept_ids.update(id(c) for c in pick)
    kept = [c for c in cands if id(c) in kept_ids]
    return kept, [(c, f"over the limit of {m} per problem") for c in cands if id(c) not in kept_ids]


def random_n(cands, arg, rng):
    """Keep N candidates chosen uniformly at random (seeded); all of them if there are fewer."""
    n = _int_arg("random", arg)
    if len(cands) <= n:
        return list(cands), []
    pick = set(id(c) for c in rng.sample(cands, n))
    return [c for c in cands if id(c) in pick], [(c, f"not drawn in random:{n}") for c in cands if id(c) not in pick]


def source(cands, arg, rng):
    """Keep problems from one source: its full name (``reasoning_gym:chain_sum``) or last part (``chain_sum``)."""
    if not arg:
        raise InputError("selector 'source' needs a source name, e.g. 'source:chain_sum'")

    def match(p: Problem) -> bool:
        return p.source == arg or p.source.rsplit(":", 1)[-1] == arg

    kept = [c for c in cands if match(c.problem)]
    return kept, [(c, f"source {c.problem.source} is not {arg}") for c in cands if not match(c.problem)]


for _name, _fn in (("correct", correct), ("finished", finished), ("dedup", dedup), ("shortest", shortest),
                   ("longest", longest), ("max_per_problem", max_per_problem), ("random", random_n),
                   ("source", source)):
    SELECTORS.add(_name, _fn)


def parse_pipeline(specs: list[str]) -> list[tuple[str, Optional[str], Selector]]:
    steps = []
    for spec in specs:
        name, _, arg = spec.strip().partition(":")
        steps.append((name, arg or None, SELECTORS.get(name)))
    if not steps:
        raise InputError("select: the selector pipeline is empty")
    return steps


def run_pipeline(cands: list[Candidate], specs: list[str], seed: int) -> tuple[list[Candidate], list[tuple[Candidate, str, str]], list[dict]]:
    """Apply the selectors in order; returns (kept, [(candidate, step, reason)], funnel counts)."""
    steps = parse_pipeline(specs)
    rejected: list[tuple[Candidate, str, str]] = []
    funnel = [{"step": "input", "kept": len(cands)}]
    for i, (name, arg, fn) in enumerate(steps):
        # One RNG per step, derived from the seed and the step, so adding a step later in the
        # pipeline does not change the draws of the steps before it.
        rng = random.Random(int.from_bytes(hashlib.sha256(f"{seed}:{i}:{name}".encode()).digest()[:8], "little"))
        spec = name if arg is None else f"{name}:{arg}"
        cands, rej = fn(cands, arg, rng)
        rejected.extend((c, spec, reason) for c, reason in rej)
        funnel.append({"step": spec, "kept": len(cands), "dropped": len(rej)})
    return cands, rejected, funnel


def build_candidates(problems: list[Problem], samples: list[Sample], verdicts: list[Verdict],
                     where: str) -> list[Candidate]:
    by_id = {p.id: p for p in problems}
    vmap = {key(v): v for v in verdicts}
    cands = []
    for s in samples:
        p = by_id.get(s.problem_id)
        if p is None:
            raise InputError(f"{where}: sample {s.problem_id}/{s.sample_index} names a problem that is not in the problem file")
        cands.append(Candidate(p, s, vmap.get(key(s))))
    return cands


def to_example(c: Candidate, selected_by: str) -> SFTExample:
    msgs = TEMPLATES.get(c.sample.prompt_template).messages(c.problem.question)
    msgs.append({"role": "assistant", "content": c.sample.text})
    return SFTExample(id=f"{c.problem.id}/{c.sample.sample_index}", messages=msgs, problem_id=c.problem.id,
                      sample_index=c.sample.sample_index, model=c.sample.model,
                      prompt_template=c.sample.prompt_template, completion_tokens=c.sample.completion_tokens,
                      selected_by=selected_by)


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
                               "source:NAME")
    seed: int = opt(0, help="seed of the random choices")
    method: str = opt("pipeline", help="pipeline (the selectors only) or gradient (LESS: the selectors make the pool, "
                                       "gradient similarity to --targets picks from it)")
    targets: list = opt([], help="gradient: SFT JSONL files of target examples, one task per file")
    n: int = opt(0, help="gradient: keep the top N (or use fraction)")
    fraction: float = opt(0.05, help="gradient: keep the top fraction when n is 0")
    model: str = opt("smollm2-135m-instruct", help="gradient: the model whose LoRA gradients are the features")
    warmup_fraction: float = opt(0.05, help="gradient: fraction of the pool for the warmup LoRA run")
    warmup_epochs: int = opt(4, help="gradient: warmup epochs; one checkpoint (with optimizer state) per epoch")
    lora_r: int = opt(8, help="gradient: LoRA rank of the warmup")
    dim: int = opt(8192, help="gradient: projection dimension")
    max_length: int = opt(512, help="gradient: truncate examples to this many tokens")
    checkpointing: bool = opt(False, help="gradient: gradient checkpointing, for chains longer than memory allows")


def _gradient_step(cfg: SelectConfig, kept: list[Candidate]) -> tuple[list[Candidate], list, dict]:
    """LESS over the pipeline's survivors: warmup LoRA, per-checkpoint features, top-scoring examples."""
    import math

    from assay.select.less import gradient_scores, top_indices
    from assay.train import LoraOptions, TrainConfig, run_training

    if cfg.method != "gradient":
        raise InputError(f"select method '{cfg.method}': expected pipeline or gradient")
    if not cfg.targets:
        raise InputError("select --method gradient needs --targets (SFT JSONL files of target examples)")
    if not kept:
        raise InputError("select --method gradient: the selector pipeline left no candidates")
    work = Path(cfg.out + ".gradient")
    pool = [to_example(c, "pool") for c in kept]
    rng = random.Random(cfg.seed)
    warm = rng.sample(pool, max(1, math.ceil(cfg.warmup_fraction * len(pool))))
    write_records(work / "warmup.jsonl", warm)
    per_epoch = max(1, math.ceil(len(warm) / 8))
    warm_summary = run_training(TrainConfig(data=str(work / "warmup.jsonl"), out=str(work / "warmup"), model=cfg.model,
                             lora=LoraOptions(r=cfg.lora_r, alpha=2 * cfg.lora_r), epochs=cfg.warmup_epochs,
                             batch_size=8, save_steps=per_epoch, keep_checkpoints=0, merge=False, seed=cfg.seed,
                             max_length=cfg.max_length), progress=False)
    targets = {Path(t).stem: read_records(t, SFTExample) for t in cfg.targets}
    scores, cost = gradient_scores(cfg.model, pool, targets, work / "warmup", cfg.dim, cfg.seed, cfg.max_length,
                             work / "features", checkpointing=cfg.checkpointing)
    top = top_indices(scores, n=cfg.n or None, fraction=None if cfg.n else cfg.fraction)
    chosen = set(top)
    write_json(work / "scores.json", {f"{c.problem.id}/{c.sample.sample_index}": float(s) for c, s in zip(kept, scores)})
    rej = [(c, f"gradient score {scores[i]:.4g} below the top {len(top)}") for i, c in enumerate(kept) if i not in chosen]
    cost = {"warmup_flops": warm_summary["flops"], "feature_flops": cost.pop("flops"), **cost}
    cost["flops"] = cost["warmup_flops"] + cost["feature_flops"]
    return [kept[i] for i in top], rej, {"step": "gradient", "kept": len(top), "dropped": len(rej), "cost": cost}


def run_select(cfg: SelectConfig) -> dict:
    problems = read_problems(cfg.problems)
    samples = read_records(cfg.samples, Sample)
    verdicts = read_records(cfg.verdicts, Verdict) if cfg.verdicts else []
    cands = build_candidates(problems, samples, verdicts, cfg.samples)
    kept, rejected, funnel = run_pipeline(cands, cfg.selectors, cfg.seed)
    label = ">".join(cfg.selectors)
    selection_flops = 0.0
    if cfg.method != "pipeline":
        kept, rej, step = _gradient_step(cfg, kept)
        selection_flops = step["cost"]["flops"]
        rejected.extend((c, "gradient", r) for c, r in rej)
        funnel.append(step)
        label += ">gradient"
    n = write_records(cfg.out, [to_example(c, label) for c in kept])
    write_records(cfg.out + ".rejected.jsonl", [
        {"problem_id": c.problem.id, "sample_index": c.sample.sample_index, "step": step, "reason": reason}
        for c, step, reason in rejected])
    summary = {"examples": n, "problems": len({c.problem.id for c in kept}),
               "completion_tokens": sum(c.sample.completion_tokens for c in kept), "funnel": funnel,
               "sample_flops": sum(c.sample.flops for c in cands), "selection_flops": selection_flops}
    write_json(cfg.out + ".funnel.json", summary)
    save_yaml(cfg.out + ".config.yaml", to_mapping(cfg))
    return summary


def cli_run(cfg: SelectConfig) -> int:
    s = run_select(cfg)
    steps = " -> ".join(f"{f['step']} {f['kept']}" for f in s["funnel"])
    print(f"[assay] select: {steps}; {s['examples']} examples from {s['problems']} problems -> {cfg.out}")
    return 0



def check_selectors(key: str, specs: list) -> None:
    """Names and arguments: each selector runs once on no candidates, which parses its argument."""
    from assay.core.checks import passes

    for name, arg, fn in passes(key, parse_pipeline, [str(s) for s in specs]):
        passes(key, fn, [], arg, random.Random(0))


def check(c: SelectConfig, key: str = "", skip=(), files: bool = False) -> None:
    from assay.core.checks import at_least, check_model, fail, keyed, one_of, unit_interval

    k = keyed(key)
    if "selectors" not in skip:
        check_selectors(k("selectors"), c.selectors)
    one_of(k("method"), c.method, ("pipeline", "gradient"), "selection method")
    if c.method != "gradient":
        return
    if "targets" not in skip and not c.targets:
        raise fail(k("targets"), "method gradient needs target example files (SFT JSONL)")
    at_least(k("n"), c.n, 0)
    unit_interval(k("fraction"), c.fraction)
    unit_interval(k("warmup_fraction"), c.warmup_fraction)
    for name in ("warmup_epochs", "lora_r", "dim", "max_length"):
        at_least(k(name), getattr(c, name), 1)
    if "model" not in skip:
        check_model(k("model"), c.model)
