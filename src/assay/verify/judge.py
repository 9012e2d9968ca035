"""Judging reasoning, not answers: the false-positive rate of answer-verified samples.

A sample can reach the right answer by wrong reasoning (a lucky guess, two cancelling errors).
Answer verification cannot see that; Bansal et al. (2024) report it as the false-positive rate
(FPR): among answer-correct solutions, the fraction whose reasoning is wrong. Judging goes
through a small ``Judge`` protocol with two backends:

- ``llm``: a model reads the problem, the reference answer and the solution under a versioned
  prompt template and ends with ``VERDICT: VALID`` or ``VERDICT: INVALID``; the verdict is parsed
  leniently (last verdict word wins, common synonyms accepted, anything else is "unparsed", never
  guessed). Calls are cached on disk by a hash of (judge model, template, decoding, problem,
  solution), so a rerun costs nothing and an interrupted run resumes.
- ``human``: an audit sheet (CSV) with the solution and an empty ``label`` column is exported;
  people fill it in; the import checks every row and names the file, line and field of a bad one.

FPR is reported with a Wilson 95% interval and the number of items actually judged.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional, Protocol

from assay.core.checks import at_least, keyed, one_of
from assay.core.config import from_mapping, opt, to_mapping
from assay.core.executor import ShardPlan, executor_options
from assay.core.io import (
    InputError,
    open_resumable,
    read_numbered,
    read_problems,
    read_records,
    write_json,
    write_records,
)
from assay.core.records import Sample, Verdict
from assay.core.registry import Registry, did_you_mean
from assay.eval.stats import wilson
from assay.models import DEFAULT_MODEL, check_model
from assay.sampling.backends import check_backend, greedy_protocol, make_generator, options_of
from assay.sampling.base import Decoding, PromptGroup


@dataclass
class Judgment:
    """A judge's verdict on one solution's reasoning."""

    problem_id: str
    sample_index: int
    judge: str
    """``llm:<model>`` or ``human:<sheet>``."""
    valid: Optional[bool]
    """True: reasoning sound; False: reasoning wrong; None: no usable verdict."""
    template: str
    """Judge prompt template id (``human`` for audits)."""
    raw: str = ""
    """The judge's full output (or the human label as written)."""

    kind = "judgment"


@dataclass(frozen=True)
class JudgeTemplate:
    id: str
    system: str
    user: str

    def messages(self, question: str, reference: str, solution: str) -> list[dict]:
        user = self.user.replace("{question}", question).replace("{reference}", reference).replace("{solution}", solution)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


JUDGE_TEMPLATES: Registry[JudgeTemplate] = Registry("judge template")
JUDGE_TEMPLATES.add("judge-v1", JudgeTemplate(
    "judge-v1",
    "You check worked solutions to problems. A solution is VALID only if every step of its reasoning is "
    "correct; a correct final answer reached through a wrong step, a guess, or errors that cancel is INVALID.",
    "Problem:\n{question}\n\nReference final answer: {reference}\n\nSolution to check:\n{solution}\n\n"
    "Go through the steps briefly, then end with exactly one line: VERDICT: VALID or VERDICT: INVALID",
))

_VALID = {"valid", "correct", "sound", "yes", "true", "pass"}
_INVALID = {"invalid", "incorrect", "wrong", "unsound", "no", "false", "fail", "flawed"}
_VERDICT = re.compile(r"verdict\s*[:=\-]?\s*\**\s*\[?([a-z]+)", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{\s*([a-z]+)\s*\}", re.IGNORECASE)


_NEGATED = re.compile(r"\b(?:not|isn't|is not)\s+(valid|correct|sound)\b", re.IGNORECASE)


def parse_verdict(text: str) -> Optional[bool]:
    """VALID -> True, INVALID -> False, anything else -> None. The last explicit verdict wins.

    "VERDICT: NOT VALID" and a closing "... is not valid" are verdicts of INVALID.
    """
    text = _NEGATED.sub("invalid", text or "")
    for pattern in (_VERDICT, _BOXED):
        words = [m.group(1).lower() for m in pattern.finditer(text or "")]
        for w in reversed(words):
            if w in _VALID:
                return True
            if w in _INVALID:
                return False
    tail = (text or "").strip().lower().rstrip(".! ")
    last = tail.split()[-1] if tail.split() else ""
    if last in ("valid", "invalid"):
        return last == "valid"
    return None


class Judge(Protocol):
    name: str

    def judge(self, items: list[dict]) -> Iterable[Judgment]:
        """Items are dicts with problem_id, sample_index, question, reference, solution."""
        ...


def cache_key(judge: str, template: str, decoding: dict, item: dict) -> str:
    payload = json.dumps([judge, template, decoding, item["question"], item["reference"], item["solution"]],
                         sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class _CacheRow:
    key: str
    raw: str

    kind = "judge_cache"


class LLMJudge:
    """A judge backed by any ``Generator`` (``assay.sampling.backends``: local HF or an OpenAI-compatible server)."""

    def __init__(self, generator, model_name: str, template: str = "judge-v1", max_new_tokens: int = 512,
                 cache: Optional[str | Path] = None, protocol: Optional[dict] = None):

        self.generator, self.model_name = generator, model_name
        # The backend's output-changing options (dtype, and the batch shape in bf16) are part of
        # every cache key: a verdict judged in fp32 is not reused for a bf16 judge.
        self.protocol = dict(protocol or {})
        self.template = JUDGE_TEMPLATES.get(template)
        self.name = f"llm:{model_name}"
        self.decoding = Decoding(0.0, 1.0, max_new_tokens, ())
        self.cache_path = Path(cache) if cache else None

    def judge(self, items: list[dict]) -> list[Judgment]:
        cached: dict[str, str] = {}
        writer = None
        if self.cache_path is not None:
            rows, writer = open_resumable(self.cache_path, _CacheRow, lambda r: r.key)
            cached = {r.key: r.raw for r in rows}
        try:
            decoding = {**self.decoding.as_dict(), **({"backend": self.protocol} if self.protocol else {})}
            keys = [cache_key(self.name, self.template.id, decoding, it) for it in items]
            todo = {}
            for it, k in zip(items, keys):
                if k not in cached and k not in todo:
                    todo[k] = PromptGroup(k, self.template.messages(it["question"], it["reference"], it["solution"]),
                                          [(0, 0)])
            if todo:
                for g in self.generator.generate(list(todo.values()), self.decoding):
                    cached[g.problem_id] = g.text
                    if writer is not None:
                        writer.write(_CacheRow(g.problem_id, g.text))
        finally:
            if writer is not None:
                writer.close()
        return [Judgment(it["problem_id"], it["sample_index"], self.name, parse_verdict(cached[k]), self.template.id,
                         cached[k]) for it, k in zip(items, keys)]


AUDIT_FIELDS = ["problem_id", "sample_index", "question", "reference", "solution", "label"]
HUMAN_VALID = {"valid", "v", "1", "yes", "y", "true", "ok"}
HUMAN_INVALID = {"invalid", "i", "0", "no", "n", "false", "wrong"}


def export_audit(items: list[dict], path: str | Path) -> int:
    """Write an audit sheet: one row per solution, ``label`` left empty for a person to fill."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=AUDIT_FIELDS)
        w.writeheader()
        for it in items:
            w.writerow({**{k: it[k] for k in AUDIT_FIELDS if k != "label"}, "label": ""})
    return len(items)


def import_audit(path: str | Path) -> list[Judgment]:
    """Read a filled audit sheet; blank labels stay unjudged (valid=None), bad ones are an error."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [f for f in ("problem_id", "sample_index", "label") if f not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}:1: missing column(s) {', '.join(missing)}")
        for row in reader:
            line = reader.line_num
            label = (row.get("label") or "").strip()
            low = label.lower()
            if low in HUMAN_VALID:
                valid = True
            elif low in HUMAN_INVALID:
                valid = False
            elif not low:
                valid = None
            else:
                raise InputError(f"{path}:{line}: field 'label': {label!r} is not one of valid/invalid (or 1/0, yes/no)")
            try:
                index = int(row["sample_index"])
            except (TypeError, ValueError):
                raise InputError(f"{path}:{line}: field 'sample_index': expected an integer, got {row['sample_index']!r}") from None
            out.append(Judgment(row["problem_id"], index, f"human:{path.name}", valid, "human", label))
    return out


def false_positive_rate(judgments: list[Judgment]) -> dict:
    """FPR over answer-correct items with a verdict, with a Wilson 95% interval."""

    judged = [j for j in judgments if j.valid is not None]
    invalid = sum(1 for j in judged if j.valid is False)
    n = len(judged)
    lo, hi = wilson(invalid, n)
    return {"fpr": invalid / n if n else None, "ci95": [lo, hi] if n else None, "judged": n,
            "invalid": invalid, "unjudged": len(judgments) - n}


def correct_items(problems, samples, verdicts, where: str = "samples", lines: Optional[list[int]] = None) -> list[dict]:
    """The answer-correct samples, as judge items.

    A sample of a problem not in ``problems`` is an error naming ``where`` and its line (``lines``,
    else its position): dropping it would bias the FPR without a word.
    """
    by_id = {p.id: p for p in problems}
    ok = {(v.problem_id, v.sample_index) for v in verdicts if v.correct}
    items = []
    for i, s in enumerate(samples):
        if s.problem_id not in by_id:
            raise InputError(f"{where}:{lines[i] if lines else i + 1}: sample {s.problem_id}/{s.sample_index} "
                             f"names problem '{s.problem_id}', which is not in the problem file")
        if (s.problem_id, s.sample_index) in ok:
            p = by_id[s.problem_id]
            items.append({"problem_id": s.problem_id, "sample_index": s.sample_index, "question": p.question,
                          "reference": p.answer, "solution": s.text})
    return items


def judgments_to_dicts(js: list[Judgment]) -> list[dict]:
    return [asdict(j) for j in js]


@dataclass
class JudgeConfig:
    INPUTS, OUTPUTS = ("problems", "samples", "verdicts"), ("out",)
    problems: str = opt("problems.jsonl", help="Problem JSONL")
    samples: str = opt("samples.jsonl", help="Sample JSONL")
    verdicts: str = opt("verdicts.jsonl", help="Verdict JSONL: only answer-correct samples are judged")
    out: str = opt("judgments.jsonl", help="Judgment JSONL to write; the FPR summary goes to <out>.fpr.json")
    backend: str = opt("llm", help="llm (a model judges), export (write an audit CSV), import (read a filled one)")
    model: str = opt(DEFAULT_MODEL, help="llm: the judge model spec (or the served model's name with generator=openai)")
    generator: str = opt("hf", help="llm: hf (local) or openai (an OpenAI-compatible server, see --base-url)")
    base_url: str = opt("", help="llm with generator=openai: the server URL (default $OPENAI_BASE_URL)")
    backend_options: dict = opt({}, help="llm: the generator's own options (see `assay sample --help`), e.g. "
                                         "dtype=bfloat16 or n_params=7e9,concurrency=4")
    template: str = opt("judge-v1", help="llm: judge prompt template id")
    max_new_tokens: int = opt(512, help="llm: judge output limit")
    audit: str = opt("audit.csv", help="export/import: the audit sheet path")
    limit: int = opt(0, help="judge at most this many answer-correct samples (0 = all)")
    executor: str = opt("local", help="llm: where the judging shards run: local or ray (Ray tasks, one shard per worker)")
    executor_options: dict = opt({}, help="ray: address, workers, num_cpus, num_gpus, max_retries")


def judge_options(cfg: JudgeConfig, section: str = ""):
    """The checked options of the judge's generator: 16 rows (or requests) at once unless set."""

    return options_of(cfg, cfg.generator, section=section,
                      defaults={"max_batch": 16, "concurrency": 16, "cache": str(cfg.out) + ".api_cache.jsonl"})


def judge_generator(cfg: JudgeConfig):
    return make_generator(cfg.generator, cfg.model, judge_options(cfg))


class _LazyGenerator:
    """Builds the judge's generator on its first request: a rerun answered from the cache loads no model."""

    def __init__(self, cfg: JudgeConfig):
        self.cfg, self.g = cfg, None

    def generate(self, groups, decoding):
        if self.g is None:
            self.g = judge_generator(self.cfg)
        return self.g.generate(groups, decoding)

    def close(self) -> None:
        g, self.g = self.g, None
        if g is not None and hasattr(g, "close"):
            g.close()


def _llm_judge(cfg: JudgeConfig, cache: str) -> LLMJudge:
    return LLMJudge(_LazyGenerator(cfg), cfg.model, cfg.template, cfg.max_new_tokens, cache=cache,
                    protocol=greedy_protocol(judge_options(cfg)))


def _judge(cfg: JudgeConfig, cache: str, items: list[dict]) -> list[Judgment]:
    judge = _llm_judge(cfg, cache)
    try:
        return judge.judge(items)
    finally:
        judge.generator.close()  # a vLLM server it started goes with the stage


def _judge_shard(payload: dict) -> int:
    """One shard, in a Ray worker: judge its items into its own cache file (and its own request
    cache: ``cfg.out`` is the shard file, so an API backend's cache lies beside it)."""
    cfg = from_mapping(JudgeConfig, payload["cfg"])
    return len(_judge(cfg, payload["cache"], payload["items"]))


def _judge_on_ray(cfg: JudgeConfig, o, items: list[dict]) -> None:
    """Every N-th item per Ray task, each shard's raw judge outputs in its own resumable cache; the
    shard caches are then merged into ``<out>.cache.jsonl``, from which the local pass that follows
    writes exactly what a local run writes."""
    cache = str(cfg.out) + ".cache.jsonl"
    existing, writer = open_resumable(cache, _CacheRow, lambda r: r.key)  # a torn last line is cut
    writer.close()
    probe = _llm_judge(cfg, cache)
    decoding = {**probe.decoding.as_dict(), **({"backend": probe.protocol} if probe.protocol else {})}
    cached = {r.key for r in existing}
    todo = list({k: it for it in items
                 if (k := cache_key(probe.name, probe.template.id, decoding, it)) not in cached}.values())
    if not todo:
        return  # all answered by the cache: no Ray, no model
    plan = ShardPlan(cache, o, "judge")
    payloads = [{"cfg": to_mapping(dataclasses.replace(cfg, out=str(f), executor="local", executor_options={})),
                 "cache": str(f), "items": todo[i::plan.n]} for i, f in enumerate(plan.files)]
    plan.run(o, _judge_shard, payloads, len(todo), "item")
    plan.merge(_CacheRow, lambda r: r.key, existing, lambda r: r.key)
    plan.cleanup()


@dataclass
class JudgeResult:
    """``exported`` items written to an audit sheet, or the false-positive rate of ``items`` judged."""

    out: str
    items: int
    exported: int = 0
    audit: str = ""
    fpr: Optional[dict] = None

    def line(self) -> str:
        if self.fpr is None:
            return (f"[assay] judge: wrote {self.exported} answer-correct solutions to {self.audit}; fill the "
                    "'label' column (valid/invalid) and run with --backend import")
        if self.fpr["judged"]:
            lo, hi = self.fpr["ci95"]
            return (f"[assay] judge: FPR {self.fpr['fpr']:.3f} (95% CI {lo:.3f}..{hi:.3f}) over {self.fpr['judged']} "
                    f"judged answer-correct solutions, {self.fpr['unjudged']} without a verdict -> {self.out}")
        return f"[assay] judge: no verdicts among {self.items} items -> {self.out}"


def cli_run(cfg: JudgeConfig) -> int:
    print(run_judge(cfg).line())
    return 0


def check(c: JudgeConfig, key: str = "", skip=(), files: bool = False) -> None:
    k = keyed(key)
    one_of(k("backend"), c.backend, ("llm", "export", "import"), "judge backend")
    if c.backend == "llm":
        check_backend(k, c, "generator")
        one_of(k("template"), c.template, JUDGE_TEMPLATES.names(), "judge template")
        if c.generator == "hf":
            check_model(k("model"), c.model)
    at_least(k("limit"), c.limit, 0)
    executor_options(c.executor, c.executor_options, k("executor_options"))


def run_judge(cfg: JudgeConfig) -> JudgeResult:
    """Judge (or export for a human audit, or import the filled audit of) the answer-correct samples."""

    if cfg.backend == "import":
        js = import_audit(cfg.audit)
    else:
        numbered = read_numbered(cfg.samples, Sample)
        items = correct_items(read_problems(cfg.problems), [s for _, s in numbered],
                              read_records(cfg.verdicts, Verdict), cfg.samples, [n for n, _ in numbered])
        items = items[: cfg.limit] if cfg.limit else items
        if cfg.backend == "export":
            return JudgeResult(str(cfg.out), len(items), exported=export_audit(items, cfg.audit), audit=str(cfg.audit))
        if cfg.backend != "llm":
            raise InputError(f"judge backend '{cfg.backend}'{did_you_mean(cfg.backend, ['llm', 'export', 'import'])}")
        o = executor_options(cfg.executor, cfg.executor_options)
        if o is not None:
            _judge_on_ray(cfg, o, items)
        js = _judge(cfg, str(cfg.out) + ".cache.jsonl", items)
    write_records(cfg.out, judgments_to_dicts(js))
    fpr = false_positive_rate(js)
    write_json(str(cfg.out) + ".fpr.json", {**fpr, "judge": js[0].judge if js else None})
    return JudgeResult(str(cfg.out), len(js), fpr=fpr)
