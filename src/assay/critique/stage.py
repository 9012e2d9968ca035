"""``assay critique``: teachers critique every solution; the consistent critiques become CFT rows.

Any ``Generator`` backend is a teacher (embedded or local models through ``hf``, a vLLM server,
an OpenAI-compatible API), and several teachers run one after another, each loaded only while
it has work. Every call is cached in ``<out>.cache.jsonl`` under a hash of (teacher, template,
decoding, the backend's output-changing options, question, solution), appended as each critique
finishes, so a rerun costs nothing and a killed run resumes where it stopped, with no duplicate.

Outputs: ``<out>`` (every critique, parsed, with the verifier's verdicts), ``<out>.rejected.jsonl``
(each dropped critique with its filter step and reason), ``<out>.summary.json`` (the funnel, each
teacher's confusion matrix against the verifier, FLOPs) and ``dataset``: the kept critiques as chat
rows ``assay train`` takes (user: the critique request with the problem and the solution;
assistant: the critique). One problem with many solutions is One-Shot CFT; many problems with
``per_problem=1`` is the multi-problem variant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

from assay.core.checks import at_least, fail, keyed, one_of
from assay.core.config import opt
from assay.core.io import InputError, read_problems, read_records, write_json, write_records
from assay.core.records import Sample, SFTExample
from assay.critique.consistency import agreement_line, confusion, consistency_filter
from assay.critique.prompts import CRITIQUE_TEMPLATES, parse_critique
from assay.critique.solutions import Solution
from assay.data.prompts import render_ids
from assay.models import check_model, resolve
from assay.sampling.backends import check_backend, greedy_protocol, make_generator, options_of
from assay.sampling.base import Decoding, PromptGroup
from assay.sampling.cached import cached_generate, call_key, served_by
from assay.select.filters import write_rejected
from assay.verify.stage import VerifyConfig, index_problems, verify_samples

TEACHER = "qwen2.5-coder-1.5b-instruct"


@dataclass
class Critique:
    """One teacher's critique of one solution, parsed, next to the verifier's verdicts."""

    problem_id: str
    sample_index: int
    """The solution's index within its problem (``Solution.sample_index``)."""
    generator: str
    """Who wrote the solution."""
    teacher: str
    template: str
    text: str
    verdict: Optional[str]
    """``right``, ``wrong``, or None when the critique does not parse."""
    parse_error: Optional[str]
    corrected: Optional[str]
    """The critique's last ``\\boxed{}`` answer (its corrected answer when it says wrong)."""
    corrected_correct: Optional[bool]
    """The verifier's verdict on ``corrected`` (None when there is none)."""
    solution_correct: bool
    completion_tokens: int
    flops: float
    finish_reason: str
    row_tokens: Optional[int] = None
    """Tokens of its training row (request + critique) under the student's chat template, when counted."""

    kind: ClassVar[str] = "critique"


@dataclass
class CritiqueConfig:
    INPUTS, OUTPUTS = ("problems", "solutions"), ("out", "dataset")
    problems: str = opt("problems.jsonl", help="Problem JSONL with the reference answers")
    solutions: str = opt("solutions.jsonl", help="Solution JSONL from `assay solutions`")
    out: str = opt("critiques.jsonl", help="Critique JSONL to write (every critique, parsed); cache, rejections "
                                           "and summary beside it")
    dataset: str = opt("cft.jsonl", help="SFT JSONL of the kept critiques, for `assay train`")
    teachers: list = opt([TEACHER], help="model specs of the teachers (served model names with generator=openai)")
    generator: str = opt("hf", help="the teachers' backend: hf, vllm or openai")
    base_url: str = opt("", help="generator=openai: the server URL (default $OPENAI_BASE_URL)")
    backend_options: dict = opt({}, help="the backend's own options (see `assay sample --help`)")
    template: str = opt("critique-v1", help="critique prompt template id")
    max_new_tokens: int = opt(768, help="critique length limit (a cut critique has no conclusion and is dropped)")
    temperature: float = opt(0.0, help="teacher temperature (0: greedy)")
    seed: int = opt(0, help="teacher sampling seed (temperature > 0) and the seed of the dataset caps")
    limit: int = opt(0, help="critique at most this many solutions (0 = all)")
    require_verdict: bool = opt(True, help="drop a critique whose verdict differs from the verifier's")
    require_corrected: bool = opt(True, help="drop a 'wrong' critique whose corrected answer is not the reference")
    min_tokens: int = opt(0, help="drop critiques shorter than this")
    max_tokens: int = opt(0, help="drop critiques longer than this (0: no limit)")
    per_problem: int = opt(0, help="keep at most this many critiques per problem in the dataset (0: all); "
                                   "1 for multi-problem CFT")
    rows: int = opt(0, help="keep at most this many dataset rows (0: all)")
    cache: str = opt("", help="the call cache (default <out>.cache.jsonl); keyed by content, so one cache may serve "
                              "several runs, and a run whose filter settings change reuses every critique")
    max_length: int = opt(0, help="drop rows longer than this many tokens of `tokenizer` (the student's `assay train "
                                  "max_length`), so training never cuts off a critique's conclusion (0: no check)")
    tokenizer: str = opt("", help="max_length: the model spec whose tokenizer and chat template count a row")


def check(c: CritiqueConfig, key: str = "", skip=(), files: bool = False) -> None:
    k = keyed(key)
    if not c.teachers:
        raise fail(k("teachers"), "give at least one teacher")
    if len(set(c.teachers)) < len(c.teachers):
        raise fail(k("teachers"), f"names a teacher twice: {c.teachers}")
    check_backend(k, c, "generator")
    if c.generator == "hf" and "teachers" not in skip:
        for t in c.teachers:
            check_model(k("teachers"), t)
    one_of(k("template"), c.template, CRITIQUE_TEMPLATES.names(), "critique template")
    at_least(k("max_new_tokens"), c.max_new_tokens, 1)
    at_least(k("temperature"), c.temperature, 0)
    if c.max_length and not c.tokenizer:
        raise fail(k("tokenizer"), "max_length counts a row's tokens with a tokenizer: name the student model")
    for name in ("limit", "min_tokens", "max_tokens", "per_problem", "rows", "max_length"):
        at_least(k(name), getattr(c, name), 0)
    if files:
        for name in ("problems", "solutions"):
            if not Path(getattr(c, name)).exists():
                raise InputError(f"{getattr(c, name)}: no such file")


def _options(cfg: CritiqueConfig):
    return options_of(cfg, cfg.generator, defaults={"max_batch": 16, "concurrency": 16,
                                                    "cache": str(cfg.out) + ".api_cache.jsonl"})


def _identity(cfg: CritiqueConfig, options) -> dict:
    """What changes a critique besides its inputs: decoding, the backend's numerics, a sampling seed."""
    ident = {**Decoding(cfg.temperature, 1.0, cfg.max_new_tokens, ()).as_dict(), "backend": greedy_protocol(options),
             **served_by(cfg.generator, options)}
    return {**ident, "seed": cfg.seed} if cfg.temperature > 0 else ident


@dataclass
class CritiqueResult:
    out: str
    dataset: str
    critiques: int
    rows: int
    funnel: list = field(default_factory=list)
    confusion: dict = field(default_factory=dict)
    generated: int = 0
    """Critiques generated by this run (the rest came from the cache)."""

    def line(self) -> str:
        return (f"[assay] critique: {self.critiques} critiques ({self.generated} new), {self.rows} kept as CFT rows; "
                f"{agreement_line(self.confusion)} -> {self.dataset}")


def _critique_all(cfg: CritiqueConfig, items: list[tuple[str, Solution]], make=None) -> tuple[dict, int]:
    """Every (teacher, solution) critique, from the cache or generated (appended to the cache as it finishes)."""
    template = CRITIQUE_TEMPLATES.get(cfg.template)
    options = _options(cfg)
    decoding = Decoding(cfg.temperature, 1.0, cfg.max_new_tokens, ())
    ident = _identity(cfg, options)
    calls, generated = {}, 0
    for teacher in cfg.teachers:
        requests: dict[str, PromptGroup] = {}
        for question, sol in items:
            k = call_key(teacher, template.id, ident, question, sol.text)
            requests.setdefault(k, PromptGroup(k, template.messages(question, sol.text), [(0, cfg.seed)]))
        got, n = cached_generate(cfg.cache or str(cfg.out) + ".cache.jsonl", requests, decoding,
                                 lambda teacher=teacher: (make or make_generator)(cfg.generator, teacher, options),
                                 f"critique {teacher}", unit="critique")
        calls.update(got)
        generated += n
    return calls, generated


def _verify_corrected(problems, pairs: list[tuple[str, str]]) -> list[bool]:
    """The verifier's verdict on each (problem_id, corrected answer), as if it were a boxed final answer."""
    if not pairs:
        return []
    samples = [Sample(pid, i, "critique", "critique", f"\\boxed{{{ans}}}", 0, 0, 0.0, "stop", {}, 0)
               for i, (pid, ans) in enumerate(pairs)]
    cfg = VerifyConfig(problems="-", samples="-", out="-")
    return [bool(v.correct) for v in verify_samples(problems, samples, cfg)]


def _count_row_tokens(tokenizer: str, crits: list[Critique], by_id: dict, sol_of: dict) -> None:
    """Each critique's training-row length under ``tokenizer``'s chat template (what ``assay train`` truncates)."""
    from transformers import AutoTokenizer  # on use: the CLI checks configs without loading transformers

    tok = AutoTokenizer.from_pretrained(resolve(tokenizer))
    for c in crits:
        row = to_row(c, by_id[c.problem_id].question, sol_of[(c.problem_id, c.sample_index)].text, "")
        c.row_tokens = len(render_ids(row.messages, tok))


def to_row(c: Critique, question: str, solution: str, selected_by: str) -> SFTExample:
    user = CRITIQUE_TEMPLATES.get(c.template).user_text(question, solution)
    return SFTExample(id=f"{c.problem_id}/{c.sample_index}/{c.teacher}",
                      messages=[{"role": "user", "content": user}, {"role": "assistant", "content": c.text}],
                      problem_id=c.problem_id, sample_index=c.sample_index, model=c.teacher,
                      prompt_template=c.template, completion_tokens=c.completion_tokens, selected_by=selected_by)


def run_critique(cfg: CritiqueConfig, make=None) -> CritiqueResult:
    """Critique, parse, verify the corrected answers, filter, and write the CFT dataset.

    ``make(backend, model, options)`` replaces ``make_generator`` (a test's scripted teacher)."""
    problems = read_problems(cfg.problems)
    by_id = index_problems(problems)
    sols = read_records(cfg.solutions, Solution)
    seen: dict[tuple[str, int], int] = {}
    for i, s in enumerate(sols):
        if s.problem_id not in by_id:
            raise InputError(f"{cfg.solutions}:{i + 1}: solution {s.problem_id}/{s.sample_index} names a problem "
                             f"that is not in {cfg.problems}")
        if (s.problem_id, s.sample_index) in seen:
            raise InputError(f"{cfg.solutions}:{i + 1}: solution {s.problem_id}/{s.sample_index} repeats line "
                             f"{seen[(s.problem_id, s.sample_index)]}")
        seen[(s.problem_id, s.sample_index)] = i + 1
    if cfg.limit and cfg.limit < len(sols):  # a seeded sample across generators, in file order
        chosen = set(random.Random(cfg.seed).sample(range(len(sols)), cfg.limit))
        sols = [s for i, s in enumerate(sols) if i in chosen]
    items = [(by_id[s.problem_id].question, s) for s in sols]
    calls, generated = _critique_all(cfg, items, make)
    template = CRITIQUE_TEMPLATES.get(cfg.template)
    ident = _identity(cfg, _options(cfg))
    crits, sol_of = [], {}
    for teacher in cfg.teachers:
        for question, s in items:
            call = calls[call_key(teacher, template.id, ident, question, s.text)]
            p = parse_critique(call.text)
            crits.append(Critique(s.problem_id, s.sample_index, s.generator, teacher, template.id, call.text,
                                  p.verdict, p.error, p.corrected, None, s.correct, call.completion_tokens,
                                  call.flops, call.finish_reason))
            sol_of[(s.problem_id, s.sample_index)] = s
    with_answer = [c for c in crits if c.corrected is not None]
    for c, ok in zip(with_answer, _verify_corrected(problems, [(c.problem_id, c.corrected) for c in with_answer])):
        c.corrected_correct = ok
    if cfg.max_length:
        _count_row_tokens(cfg.tokenizer, crits, by_id, sol_of)
    write_records(cfg.out, crits)
    kept, rejected, funnel = consistency_filter(
        crits, require_verdict=cfg.require_verdict, require_corrected=cfg.require_corrected,
        min_tokens=cfg.min_tokens, max_tokens=cfg.max_tokens, max_length=cfg.max_length,
        per_problem=cfg.per_problem, rows=cfg.rows, seed=cfg.seed)
    write_rejected(str(cfg.out) + ".rejected.jsonl", rejected,
                   lambda c: {"problem_id": c.problem_id, "sample_index": c.sample_index, "teacher": c.teacher,
                              "verdict": c.verdict, "solution_correct": c.solution_correct})
    selected_by = ">".join(row["step"] for row in funnel[1:])
    rows = [to_row(c, by_id[c.problem_id].question, sol_of[(c.problem_id, c.sample_index)].text, selected_by)
            for c in kept]
    write_records(cfg.dataset, rows)
    conf = confusion(crits)
    write_json(str(cfg.out) + ".summary.json", {
        "critiques": len(crits), "rows": len(rows), "funnel": funnel, "confusion": conf,
        "flops": sum(c.flops for c in crits), "mean_critique_tokens":
            sum(c.completion_tokens for c in crits) / len(crits) if crits else None,
        "teachers": list(cfg.teachers), "template": template.id, "generated_this_run": generated})
    return CritiqueResult(str(cfg.out), str(cfg.dataset), len(crits), len(rows), funnel, conf, generated)


def cli_run(cfg: CritiqueConfig) -> int:
    print(run_critique(cfg).line())
    return 0
