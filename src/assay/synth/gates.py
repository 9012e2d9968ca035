"""``assay gate``: quality gates for synthetic problems, each a filter with reasons and a funnel.

Synthetic data is cheap to make and easy to get wrong, so every synthesized problem passes:

- ``dedup``: near-duplicate questions (word-shingle Jaccard) are dropped, the first one kept;
- ``decontaminate``: any question sharing a word 13-gram with, or equal (normalised) to, an item of
  a benchmark assay evaluates on is dropped, naming that item; a synthesizer fed benchmark-like
  seeds leaks benchmarks easily. Benchmarks whose files are not here are listed as unchecked in the
  summary and printed, never silently skipped;
- ``agreement``: a solver model answers each problem ``k`` times; the problem is verified when the
  majority of the solver's answers equals the synthesizer's reference (judged by the verifier the
  ``verify`` stage uses). The agreement share is kept in ``meta``; problems without agreement are
  dropped, or kept marked ``verified: false`` with ``keep_unverified``.

Each step writes what it dropped to ``<out>.rejected.jsonl`` with its step and reason; the funnel
(and the solver's FLOPs) goes to ``<out>.summary.json``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from assay.core.checks import at_least, fail, keyed, one_of, unit_interval
from assay.core.config import opt
from assay.core.hashing import short_hash
from assay.core.io import InputError, read_problems, read_records, write_json, write_records
from assay.core.records import Problem, Sample, Verdict, key
from assay.data.benchmarks import BENCHMARKS
from assay.data.problems import load_problems
from assay.data.prompts import check_template
from assay.data.text import Match, find_duplicates, find_matches
from assay.models import check_model
from assay.sampling import SampleConfig
from assay.sampling.stage import run_sample
from assay.select.filters import Context, FunctionFilter, Step, run_filters, write_rejected
from assay.verify.extract import clean_answer
from assay.verify.stage import VerifyConfig, run_verify

GATES = ("dedup", "decontaminate", "agreement")
SOLVER = "qwen2.5-coder-0.5b-instruct"


@dataclass
class GateConfig:
    INPUTS, OUTPUTS = ("problems",), ("out",)
    problems: str = opt("synthetic.jsonl", help="Problem JSONL from `assay synthesize`")
    out: str = opt("gated.jsonl", help="Problem JSONL of the problems that pass; rejections and summary beside it")
    steps: list = opt(list(GATES), help="the gates, in order: " + ", ".join(GATES))
    threshold: float = opt(0.8, help="dedup: the Jaccard similarity that makes two questions duplicates")
    ngram: int = opt(13, help="decontaminate: word n-gram length")
    benchmarks: list = opt([], help="decontaminate: benchmark names or Problem files (default: every registered "
                                    "benchmark)")
    data_dir: str = opt("", help="decontaminate: folder of the shared benchmark files (default $ASSAY_DATA or "
                                 "../shared/data)")
    solver: str = opt(SOLVER, help="agreement: the model that answers each problem")
    k: int = opt(4, help="agreement: the solver's answers per problem")
    temperature: float = opt(0.7, help="agreement: the solver's temperature")
    template: str = opt("boxed-v1", help="agreement: the solver's prompt")
    max_new_tokens: int = opt(384, help="agreement: the solver's answer limit")
    backend: str = opt("hf", help="agreement: the solver's backend")
    backend_options: dict = opt({}, help="agreement: that backend's own options")
    min_agreement: float = opt(0.5, help="agreement: the share of the solver's answers that must be the majority's "
                                         "(and equal the reference)")
    keep_unverified: bool = opt(False, help="agreement: keep problems without agreement, marked verified=false")
    seed: int = opt(0, help="agreement: the solver's sampling seed")


def check(c: GateConfig, key: str = "", skip=(), files: bool = False) -> None:
    k = keyed(key)
    for s in c.steps:
        one_of(k("steps"), s, GATES, "gate")
    if len(set(c.steps)) < len(c.steps):
        raise fail(k("steps"), f"names a gate twice: {c.steps}")
    unit_interval(k("threshold"), c.threshold)
    unit_interval(k("min_agreement"), c.min_agreement)
    at_least(k("ngram"), c.ngram, 1)
    if "agreement" in c.steps:
        at_least(k("k"), c.k, 1)
        check_template(k("template"), c.template)
        if c.backend == "hf" and "solver" not in skip:
            check_model(k("solver"), c.solver)
    for b in c.benchmarks:
        if b not in BENCHMARKS.names() and not Path(b).exists():
            BENCHMARKS.get(b)  # unknown: raises with a suggestion
    if files and not Path(c.problems).exists():
        raise InputError(f"{c.problems}: no such file")


def benchmark_items(names: list[str], data_dir: str, workdir: Path) -> tuple[list[Problem], list[str], list[str]]:
    """(every item of the named benchmarks that can be loaded, the names checked, the names not available)."""
    items, checked, missing = [], [], []
    for name in names or BENCHMARKS.names():
        if name not in BENCHMARKS.names():
            items += read_problems(name)
            checked.append(name)
            continue
        try:
            kept, _ = load_problems(BENCHMARKS.get(name).problems_config(str(workdir / f"{name}.jsonl"), None,
                                                                          data_dir or None))
        except InputError:
            missing.append(name)  # a shared-data preset whose file is not on this machine
            continue
        items += [dataclasses.replace(p, id=f"{name}:{p.id}") for p in kept]
        checked.append(name)
    return items, checked, missing


def _dedup(items, threshold: float = 0.8):
    first = find_duplicates([p.question for p in items], Match("jaccard", n=3, threshold=threshold))
    kept, rej = [], []
    for i, (p, c) in enumerate(zip(items, first)):
        if c != i:
            rej.append((p, f"near-duplicate of {items[c].id} (Jaccard >= {threshold})"))
        else:
            kept.append(p)
    return kept, rej


def _decontaminate(items, against: list = (), n: int = 13):
    exact = find_matches([p.question for p in items], [b.question for b in against], Match("exact"))
    gram = find_matches([p.question for p in items], [b.question for b in against], Match("ngram", n=n))
    kept, rej = [], []
    for p, e, g in zip(items, exact, gram):
        if e is not None:
            rej.append((p, f"same question as benchmark item {against[e].id}"))
        elif g is not None:
            rej.append((p, f"shares a {n}-gram with benchmark item {against[g].id}"))
        else:
            kept.append(p)
    return kept, rej


def agreement_of(problems: list[Problem], samples: list[Sample], verdicts: list[Verdict]) -> dict[str, dict]:
    """Per problem: the share of the solver's answers that are its majority answer, and whether that
    majority answer is the reference (some sample with it was judged correct)."""
    vmap = {key(v): v for v in verdicts}
    by_p: dict[str, list[Verdict]] = {}
    for s in samples:
        by_p.setdefault(s.problem_id, []).append(vmap[key(s)])
    out = {}
    for p in problems:
        vs = by_p.get(p.id, [])
        answers = Counter(clean_answer(v.extracted) for v in vs if v.extracted is not None)
        if not answers:
            out[p.id] = {"agreement": 0.0, "majority": None, "matches_reference": False, "k": len(vs)}
            continue
        top = max(answers.values())
        # A tie for the majority is no majority: the reference must be the one most common answer.
        majority = [a for a, c in answers.items() if c == top]
        right = {clean_answer(v.extracted) for v in vs if v.correct and v.extracted is not None}
        out[p.id] = {"agreement": top / len(vs), "majority": majority[0] if len(majority) == 1 else None,
                     "matches_reference": len(majority) == 1 and majority[0] in right, "k": len(vs)}
    return out


@dataclass
class GateResult:
    out: str
    kept: int
    funnel: list = field(default_factory=list)
    unchecked_benchmarks: list = field(default_factory=list)

    def line(self) -> str:
        steps = " -> ".join(f"{f['step']} {f['kept']}" for f in self.funnel)
        note = f"; NOT checked against {', '.join(self.unchecked_benchmarks)} (files not here)" \
            if self.unchecked_benchmarks else ""
        return f"[assay] gate: {steps}{note} -> {self.out}"


def run_gates(cfg: GateConfig) -> GateResult:
    problems = read_problems(cfg.problems)
    work = Path(str(cfg.out) + ".work")
    work.mkdir(parents=True, exist_ok=True)
    summary: dict = {"unchecked_benchmarks": [], "checked_benchmarks": [], "solver_flops": 0.0}
    steps = []
    for name in cfg.steps:
        if name == "dedup":
            steps.append(Step(FunctionFilter("dedup", _dedup, lambda fn, it, ctx: fn(it, **ctx.options)),
                              Context("dedup", options={"threshold": cfg.threshold})))
        elif name == "decontaminate":
            against, checked, missing = benchmark_items(cfg.benchmarks, cfg.data_dir, work)
            summary.update(checked_benchmarks=checked, unchecked_benchmarks=missing)
            steps.append(Step(FunctionFilter("decontaminate", _decontaminate, lambda fn, it, ctx: fn(it, **ctx.options)),
                              Context("decontaminate", options={"against": against, "n": cfg.ngram})))
        else:
            steps.append(Step(FunctionFilter("agreement", lambda items: _agreement(cfg, items, work, summary),
                                             lambda fn, it, ctx: fn(it)), Context("agreement")))
    kept, rejected, funnel = run_filters(problems, steps)
    write_records(cfg.out, kept)
    write_rejected(str(cfg.out) + ".rejected.jsonl", rejected,
                   lambda p: {"id": p.id, "question": p.question, "answer": p.answer,
                              "seed_id": p.meta.get("seed_id"), "agreement": p.meta.get("agreement")})
    write_json(str(cfg.out) + ".summary.json", {**summary, "funnel": funnel, "kept": len(kept)})
    return GateResult(str(cfg.out), len(kept), funnel, summary["unchecked_benchmarks"])


def _agreement(cfg: GateConfig, items: list[Problem], work: Path, summary: dict):
    if not items:
        return [], []
    # Named by what they answer: a rerun on the same problems resumes its samples, one on other problems
    # (a changed gate before this one) starts its own files instead of being refused by the old ones.
    tag = short_hash([[p.id, p.question, p.answer] for p in items])
    todo = work / f"agreement.{tag}.problems.jsonl"
    write_records(todo, items)
    scfg = SampleConfig(problems=str(todo), out=str(work / f"agreement.{tag}.samples.jsonl"), model=cfg.solver,
                        backend=cfg.backend, n=cfg.k, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                        seed=cfg.seed, template=cfg.template, backend_options=dict(cfg.backend_options))
    run_sample(scfg)
    vcfg = VerifyConfig(problems=str(todo), samples=scfg.out, out=str(work / f"agreement.{tag}.verdicts.jsonl"))
    run_verify(vcfg, progress=False)
    samples = read_records(scfg.out, Sample)
    summary["solver_flops"] = sum(s.flops for s in samples)
    agree = agreement_of(items, samples, read_records(vcfg.out, Verdict))
    kept, rej = [], []
    for p in items:
        a = agree[p.id]
        ok = a["matches_reference"] and a["agreement"] >= cfg.min_agreement
        p.meta.update(agreement=a["agreement"], verified=ok)
        if ok or cfg.keep_unverified:
            kept.append(p)
        else:
            why = (f"the solver's majority answer {a['majority']!r} ({a['agreement']:.2f} of {a['k']}) is not the "
                   f"reference {p.answer!r}" if a["majority"] is not None else
                   f"no majority among the solver's answers ({a['agreement']:.2f} of {a['k']} at most)")
            if a["majority"] is not None and a["matches_reference"]:
                why = f"agreement {a['agreement']:.2f} < min_agreement {cfg.min_agreement}"
            rej.append((p, why))
    return kept, rej


def cli_run(cfg: GateConfig) -> int:
    print(run_gates(cfg).line())
    return 0
