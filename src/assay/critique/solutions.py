"""``assay solutions``: candidate solutions to seed problems from many generators, verified.

One-Shot CFT's gain comes from the *diversity* of the solutions critiqued (one generator: ~38
average, ten: 42.2 in the paper), so this stage samples every (generator, temperature) pair,
keeps the generator and temperature on each solution, drops exact duplicates (whitespace and case
folded) and verifies every kept one, so each solution's correctness is known before a teacher
sees it.

With ``student`` set, the seed problems are chosen first by the student's own pass rate: it
samples ``student_n`` times per problem and only problems whose rate lies in ``band`` are kept
(the paper's seed score: the model solves some tries but not all), the ``seeds`` nearest the
middle of the band. Every rate and the choice are saved in ``<out>.seeds.json``.

Each (generator, temperature) pair is one resumable ``sample`` + ``verify`` run under
``<out>.parts/`` (the runs check their own identities), so a killed stage resumes without
redrawing anything; the merge that follows is deterministic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

from assay.core.checks import at_least, fail, keyed
from assay.core.config import opt
from assay.core.io import InputError, read_problems, read_records, write_json, write_records
from assay.core.records import Sample, Verdict, key
from assay.data.prompts import check_template
from assay.models import check_model
from assay.sampling import SampleConfig
from assay.sampling.backends import check_backend
from assay.sampling.stage import run_sample
from assay.select.filters import Rejection, write_rejected
from assay.verify.stage import VerifyConfig, run_verify

GENERATORS = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"]


@dataclass
class Solution:
    """One candidate solution to a seed problem, with who wrote it and whether it is right."""

    problem_id: str
    sample_index: int
    """0..n-1 within the problem after deduplication; (problem_id, sample_index) is the key."""
    generator: str
    """The model spec that wrote it."""
    temperature: float
    text: str
    extracted: Optional[str]
    """The final answer the verifier found, or None."""
    correct: bool
    """The verifier's verdict on the final answer."""
    prompt_template: str
    completion_tokens: int
    flops: float
    finish_reason: str
    seed: int
    source: str = ""
    """``<part file>:<problem_id>/<index>``: the raw sample it was taken from."""

    kind: ClassVar[str] = "solution"


@dataclass
class SolutionsConfig:
    INPUTS, OUTPUTS = ("problems",), ("out",)
    problems: str = opt("problems.jsonl", help="Problem JSONL: the candidate seed problems")
    out: str = opt("solutions.jsonl", help="Solution JSONL to write; per-run parts in <out>.parts/, duplicates "
                                           "in <out>.rejected.jsonl, counts in <out>.summary.json")
    generators: list = opt(GENERATORS, help="model specs that write solutions (every embedded model by default)")
    temperatures: list = opt([0.6, 1.0], help="sampling temperatures; each generator samples at each")
    n: int = opt(4, help="solutions per problem from each (generator, temperature)")
    template: str = opt("boxed-v1", help="prompt template of the generators (and of the student's seed test)")
    max_new_tokens: int = opt(384, help="solution length limit")
    backend: str = opt("hf", help="generation backend of every generator (hf, vllm, openai)")
    base_url: str = opt("", help="openai backend: the server URL")
    backend_options: dict = opt({}, help="the backend's own options (see `assay sample --help`)")
    seed: int = opt(0, help="sampling seed (each temperature adds its position)")
    dedup: bool = opt(True, help="drop a solution whose text (whitespace and case folded) a kept one has")
    student: str = opt("", help="choose seed problems by this model's pass rate (empty: every problem is a seed)")
    student_n: int = opt(16, help="student: tries per problem for its pass rate")
    student_temperature: float = opt(0.7, help="student: sampling temperature of the tries")
    band: list = opt([0.1, 0.7], help="student: keep problems whose pass rate is in [low, high]")
    seeds: int = opt(1, help="student: how many in-band problems to keep (nearest the band's middle; 0 = all)")


def check(c: SolutionsConfig, key: str = "", skip=(), files: bool = False) -> None:
    k = keyed(key)
    if not c.generators:
        raise fail(k("generators"), "give at least one generator")
    if len(set(c.generators)) < len(c.generators):
        raise fail(k("generators"), f"names a generator twice: {c.generators} (n and temperatures give more samples)")
    if c.backend == "hf" and "generators" not in skip:
        for g in c.generators:
            check_model(k("generators"), g)
    if not c.temperatures or any(not isinstance(t, (int, float)) or t < 0 for t in c.temperatures):
        raise fail(k("temperatures"), f"must be a list of temperatures >= 0, got {c.temperatures!r}")
    at_least(k("n"), c.n, 1)
    at_least(k("max_new_tokens"), c.max_new_tokens, 1)
    check_template(k("template"), c.template)
    check_backend(k, c, "backend")
    if c.student:
        if c.backend == "hf":
            check_model(k("student"), c.student)
        at_least(k("student_n"), c.student_n, 1)
        at_least(k("seeds"), c.seeds, 0)
        if (len(c.band) != 2 or not all(isinstance(b, (int, float)) for b in c.band)
                or not 0 <= c.band[0] <= c.band[1] <= 1):
            raise fail(k("band"), f"must be [low, high] with 0 <= low <= high <= 1, got {c.band!r}")
    if files and not Path(c.problems).exists():
        raise InputError(f"{c.problems}: no such file")


@dataclass
class SolutionsResult:
    out: str
    solutions: int
    by_generator: dict = field(default_factory=dict)
    duplicates: int = 0
    seeds: Optional[dict] = None

    def line(self) -> str:
        parts = ", ".join(f"{g}: {v['solutions']} ({v['correct']} correct)" for g, v in self.by_generator.items())
        chosen = f"; seeds {', '.join(self.seeds['chosen'])} by the student's pass rate" if self.seeds else ""
        return (f"[assay] solutions: {self.solutions} kept, {self.duplicates} duplicates dropped ({parts}){chosen} "
                f"-> {self.out}")


def _sample_verify(cfg: SolutionsConfig, problems: str, part: Path, model: str, n: int, temperature: float,
                   seed: int) -> tuple[list[Sample], list[Verdict]]:
    scfg = SampleConfig(problems=problems, out=str(part) + ".samples.jsonl", model=model, backend=cfg.backend, n=n,
                        temperature=float(temperature), max_new_tokens=cfg.max_new_tokens, seed=seed,
                        template=cfg.template, base_url=cfg.base_url, backend_options=dict(cfg.backend_options))
    run_sample(scfg)
    vcfg = VerifyConfig(problems=problems, samples=scfg.out, out=str(part) + ".verdicts.jsonl")
    print(run_verify(vcfg, progress=False).line())
    return read_records(scfg.out, Sample), read_records(vcfg.out, Verdict)


def choose_seeds(cfg: SolutionsConfig, parts: Path) -> dict:
    """The student's pass rate on every problem, and the in-band problems chosen as seeds."""
    samples, verdicts = _sample_verify(cfg, cfg.problems, parts / "student", cfg.student, cfg.student_n,
                                       cfg.student_temperature, cfg.seed)
    ok = {key(v) for v in verdicts if v.correct}
    tries: dict[str, list[bool]] = {}
    for s in samples:
        tries.setdefault(s.problem_id, []).append(key(s) in ok)
    rates = {pid: sum(t) / len(t) for pid, t in tries.items()}
    low, high = cfg.band
    mid = (low + high) / 2
    order = {p.id: i for i, p in enumerate(read_problems(cfg.problems))}
    in_band = sorted((pid for pid, r in rates.items() if low <= r <= high), key=lambda p: (abs(rates[p] - mid), order[p]))
    chosen = in_band[: cfg.seeds] if cfg.seeds else in_band
    if not chosen:
        raise InputError(f"{cfg.problems}: no problem has a pass rate of {cfg.student} in the band [{low}, {high}] "
                         f"({cfg.student_n} tries each; rates {sorted(rates.values())}); widen 'band' or give more problems")
    return {"student": cfg.student, "tries": cfg.student_n, "temperature": cfg.student_temperature, "band": [low, high],
            "rates": rates, "in_band": in_band, "chosen": chosen, "flops": sum(s.flops for s in samples)}


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def run_solutions(cfg: SolutionsConfig) -> SolutionsResult:
    """Sample every (generator, temperature) on the seed problems, verify, merge and deduplicate."""
    out = Path(cfg.out)
    parts = Path(str(out) + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    problems, seeds = cfg.problems, None
    if cfg.student:
        seeds = choose_seeds(cfg, parts)
        write_json(str(out) + ".seeds.json", seeds)
        chosen = set(seeds["chosen"])
        problems = str(out) + ".seeds.jsonl"
        write_records(problems, [p for p in read_problems(cfg.problems) if p.id in chosen])
    kept: list[Solution] = []
    rejected: list[Rejection] = []
    seen: dict[tuple[str, str], Solution] = {}
    counters: dict[str, int] = {}
    for gi, gen in enumerate(cfg.generators):
        for ti, temp in enumerate(cfg.temperatures):
            part = parts / f"g{gi}-t{ti}"
            samples, verdicts = _sample_verify(cfg, problems, part, gen, cfg.n, temp, cfg.seed + ti)
            vmap = {key(v): v for v in verdicts}
            for s in sorted(samples, key=lambda s: (s.problem_id, s.sample_index)):
                v = vmap[key(s)]
                sol = Solution(s.problem_id, counters.get(s.problem_id, 0), gen, float(temp), s.text, v.extracted,
                               bool(v.correct), s.prompt_template, s.completion_tokens, s.flops, s.finish_reason,
                               s.seed, f"{part.name}:{s.problem_id}/{s.sample_index}")
                first = seen.get((s.problem_id, _norm(s.text)))
                if cfg.dedup and first is not None:
                    rejected.append(Rejection(sol, "dedup", f"same text as solution {first.sample_index} "
                                                            f"({first.generator}, t={first.temperature:g})"))
                    continue
                seen[(s.problem_id, _norm(s.text))] = sol
                counters[s.problem_id] = sol.sample_index + 1
                kept.append(sol)
    write_records(out, kept)
    write_rejected(str(out) + ".rejected.jsonl", rejected,
                   lambda s: {"problem_id": s.problem_id, "generator": s.generator, "temperature": s.temperature,
                              "source": s.source, "text": s.text})
    by_gen = {g: {"solutions": sum(1 for s in kept if s.generator == g),
                  "correct": sum(1 for s in kept if s.generator == g and s.correct)} for g in cfg.generators}
    write_json(str(out) + ".summary.json", {"solutions": len(kept), "duplicates": len(rejected), "by_generator": by_gen,
                                            "flops": sum(s.flops for s in kept) + sum(r.item.flops for r in rejected)
                                            + (seeds["flops"] if seeds else 0.0),
                                            "seeds": seeds["chosen"] if seeds else None})
    return SolutionsResult(str(out), len(kept), by_gen, len(rejected), seeds)


def cli_run(cfg: SolutionsConfig) -> int:
    print(run_solutions(cfg).line())
    return 0
