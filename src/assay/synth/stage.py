"""``assay synthesize``: a model writes new problems with worked solutions from seed texts.

Seeds are any JSONL: ``Problem`` files (question, plus a reference solution in ``meta``), GSM8K
rows (question + worked answer), MATH rows (problem + solution), or any record with a text field
(``text_field=``). Every (seed, template, i < n) is one call of the model through any backend,
cached in ``<out>.cache.jsonl`` (``assay.sampling.cached``): a rerun costs nothing and a killed run
resumes. Each output is parsed strictly (``templates.parse_synthesis``); a kept one becomes a
``Problem`` whose reference answer is its solution's boxed answer, with the seed, template, model
and cost in ``meta``; a malformed one goes to ``<out>.rejected.jsonl`` with the reason. The kept
(prompt -> output) pairs are also written as chat rows (``<out>.pairs.jsonl``): training a small
model on a teacher's pairs with ``assay train`` distils it into a synthesizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from assay.core.checks import at_least, fail, keyed
from assay.core.config import opt
from assay.core.io import InputError, iter_json_lines, write_json, write_records
from assay.core.records import Problem, SFTExample
from assay.core.registry import did_you_mean
from assay.models import check_model
from assay.sampling.backends import check_backend, greedy_protocol, make_generator, options_of
from assay.sampling.base import Decoding, PromptGroup
from assay.sampling.cached import cached_generate, call_key, served_by
from assay.sampling.runner import sample_seed
from assay.synth.templates import SYNTH_TEMPLATES, SynthTemplate, custom_template, parse_synthesis

TEACHER = "qwen2.5-coder-1.5b-instruct"
_TEXT_FIELDS = ("question", "problem", "text", "content")
_SOLUTION_FIELDS = ("solution", "answer")


@dataclass
class SynthesizeConfig:
    INPUTS, OUTPUTS = ("seeds", "model"), ("out",)
    seeds: str = opt("seeds.jsonl", help="seed JSONL: Problem files, GSM8K/MATH rows, or any record with text_field")
    text_field: str = opt("", help="the seed text's field (default: question/problem/text, plus a worked "
                                   "solution or answer when the record has one)")
    id_field: str = opt("id", help="the seed id's field (default: the file's stem and line number when absent)")
    templates: list = opt(["grade-school-v1"], help="synthesis templates: " + ", ".join(SYNTH_TEMPLATES.names())
                                                    + ", or ids of custom_templates")
    custom_templates: dict = opt({}, help="your own levels, {id: instruction}, with the standard layout")
    n: int = opt(1, help="outputs per (seed, template)")
    model: str = opt(TEACHER, help="the model that writes problems: a teacher, or a distilled synthesizer")
    backend: str = opt("hf", help="generation backend (hf, vllm, openai)")
    base_url: str = opt("", help="openai backend: the server URL")
    backend_options: dict = opt({}, help="the backend's own options (see `assay sample --help`)")
    temperature: float = opt(1.0, help="sampling temperature (JiuZhang3.0 samples its synthesizer at 1.0)")
    top_p: float = opt(1.0, help="nucleus sampling mass")
    max_new_tokens: int = opt(640, help="output limit (a 250-350 word solution is ~450 tokens)")
    max_seed_chars: int = opt(1000, help="characters of seed text in the prompt")
    seed: int = opt(0, help="sampling seed")
    limit: int = opt(0, help="use only the first N seeds (0 = all)")
    out: str = opt("synthetic.jsonl", help="Problem JSONL of the kept problems; rejections, pairs, summary and "
                                           "cache beside it")


def templates_of(cfg: SynthesizeConfig) -> list[SynthTemplate]:
    return [custom_template(t, cfg.custom_templates[t]) if t in cfg.custom_templates else SYNTH_TEMPLATES.get(t)
            for t in cfg.templates]


def check(c: SynthesizeConfig, key: str = "", skip=(), files: bool = False) -> None:
    k = keyed(key)
    if not c.templates:
        raise fail(k("templates"), "give at least one template")
    for t in c.templates:
        if t not in c.custom_templates and t not in SYNTH_TEMPLATES:
            raise fail(k("templates"), f"'{t}' is not a known synthesis template"
                                       f"{did_you_mean(t, SYNTH_TEMPLATES.names() + list(c.custom_templates))}")
    for t, instr in c.custom_templates.items():
        if not isinstance(instr, str) or not instr.strip():
            raise fail(k(f"custom_templates.{t}"), "must be the level's instruction text")
    for name in ("n", "max_new_tokens", "max_seed_chars"):
        at_least(k(name), getattr(c, name), 1)
    at_least(k("temperature"), c.temperature, 0)
    at_least(k("limit"), c.limit, 0)
    check_backend(k, c, "backend")
    if c.backend == "hf" and "model" not in skip:
        check_model(k("model"), c.model)
    if files and not Path(c.seeds).exists():
        raise InputError(f"{c.seeds}: no such file")


def seed_text(obj: dict, text_field: str, where: str) -> str:
    if text_field:
        v = obj.get(text_field)
        if not isinstance(v, str) or not v.strip():
            raise InputError(f"{where}: no text in field '{text_field}'")
        return v
    name = next((f for f in _TEXT_FIELDS if isinstance(obj.get(f), str) and obj[f].strip()), None)
    if name is None:
        raise InputError(f"{where}: no seed text (none of the fields {', '.join(_TEXT_FIELDS)}; set text_field)")
    text = obj[name]
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    worked = next((v for f in _SOLUTION_FIELDS for v in (obj.get(f), meta.get(f))
                   if isinstance(v, str) and len(v.split()) > 3), None)  # a worked solution, not a bare answer
    return f"{text}\n\n{worked}" if worked else text


def read_seeds(path: str, text_field: str = "", id_field: str = "id") -> list[tuple[str, str]]:
    """(seed id, seed text) per record; a record without text, or a repeated id, is an error naming its line."""
    out, seen = [], {}
    for lineno, obj in iter_json_lines(path):
        where = f"{path}:{lineno}"
        sid = obj.get(id_field)
        sid = str(sid) if sid not in (None, "") else f"{Path(path).stem}-{lineno}"
        if sid in seen:
            raise InputError(f"{where}: seed id '{sid}' repeats line {seen[sid]}")
        seen[sid] = lineno
        out.append((sid, seed_text(obj, text_field, where)))
    return out


@dataclass
class SynthesizeResult:
    out: str
    calls: int
    kept: int
    rejected: int
    generated: int = 0
    flops: float = 0.0
    reasons: dict = field(default_factory=dict)

    def line(self) -> str:
        why = ", ".join(f"{n} {r}" for r, n in sorted(self.reasons.items(), key=lambda x: -x[1])[:3])
        return (f"[assay] synthesize: {self.kept} of {self.calls} outputs kept as problems ({self.generated} new"
                f"{'; rejected: ' + why if why else ''}) -> {self.out}")


def _identity(cfg: SynthesizeConfig, options) -> dict:
    d = Decoding(cfg.temperature, cfg.top_p, cfg.max_new_tokens, ()).as_dict()
    return {**d, "backend": greedy_protocol(options), **served_by(cfg.backend, options), "seed": cfg.seed}


def run_synthesize(cfg: SynthesizeConfig, make=None) -> SynthesizeResult:
    """Write, parse and keep (or reject with the reason) one new problem per call.

    ``make(backend, model, options)`` replaces ``make_generator`` (a test's scripted model)."""
    seeds = read_seeds(cfg.seeds, cfg.text_field, cfg.id_field)
    seeds = seeds[: cfg.limit] if cfg.limit else seeds
    options = options_of(cfg, cfg.backend, defaults={"max_batch": 16, "concurrency": 16,
                                                     "cache": str(cfg.out) + ".api_cache.jsonl"})
    ident = _identity(cfg, options)
    decoding = Decoding(cfg.temperature, cfg.top_p, cfg.max_new_tokens, ())
    plan: list[tuple[str, SynthTemplate, int, str]] = []
    requests: dict[str, PromptGroup] = {}
    for sid, text in seeds:
        for t in templates_of(cfg):
            for i in range(cfg.n):
                prompt = t.prompt(text, cfg.max_seed_chars)
                k = call_key(cfg.model, t.id, prompt, ident, i)
                plan.append((sid, t, i, k))
                requests.setdefault(k, PromptGroup(k, [{"role": "user", "content": prompt}],
                                                   [(0, sample_seed(cfg.seed, f"{sid}/{t.id}", i))]))
    calls, generated = cached_generate(str(cfg.out) + ".cache.jsonl", requests, decoding,
                                       lambda: (make or make_generator)(cfg.backend, cfg.model, options),
                                       f"synthesize {cfg.model}", unit="problem")
    kept, pairs, rejected, reasons, done = [], [], [], {}, set()
    for sid, t, i, k in plan:
        if k in done:  # two seeds with the same text and template: one call, one problem
            continue
        done.add(k)
        c = calls[k]
        p = parse_synthesis(c.text)
        if p.error:
            rejected.append({"seed_id": sid, "template": t.id, "index": i, "step": "wellformed", "reason": p.error,
                             "text": c.text})
            reasons[p.error] = reasons.get(p.error, 0) + 1
            continue
        pid = f"synth-{k[:12]}"
        kept.append(Problem(pid, p.question, p.answer, f"synth:{t.id}", {
            "seed_id": sid, "template": t.id, "index": i, "solution": p.solution, "model": cfg.model,
            "completion_tokens": c.completion_tokens, "flops": c.flops, "call": k}))
        pairs.append(SFTExample(f"{sid}/{t.id}/{i}", [*requests[k].messages, {"role": "assistant", "content": c.text}],
                                pid, i, cfg.model, t.id, c.completion_tokens, "wellformed"))
    write_records(cfg.out, kept)
    write_records(str(cfg.out) + ".rejected.jsonl", rejected)
    write_records(str(cfg.out) + ".pairs.jsonl", pairs)
    flops = sum(calls[k].flops for k in done)
    write_json(str(cfg.out) + ".summary.json", {
        "model": cfg.model, "calls": len(done), "kept": len(kept), "rejected": len(rejected), "reasons": reasons,
        "flops": flops, "flops_per_kept": flops / len(kept) if kept else None, "generated_this_run": generated,
        "prompt_tokens": sum(calls[k].prompt_tokens for k in done),
        "completion_tokens": sum(calls[k].completion_tokens for k in done),
        "templates": [t.id for t in templates_of(cfg)], "seeds": len(seeds)})
    return SynthesizeResult(str(cfg.out), len(done), len(kept), len(rejected), generated, flops, reasons)


def cli_run(cfg: SynthesizeConfig) -> int:
    print(run_synthesize(cfg).line())
    return 0
