"""LIMO-style curation: from a large pool to the few hundred examples that matter.

Each step is a pure function from the items it is given to (kept, rejected-with-reason),
registered as a filter (``assay.select.filters``, the protocol ``assay select``'s selectors share),
and ``run_curation`` runs them through the same loop, writing both sides of every step plus the
same funnel, so a user can audit every decision (Ye et al. 2025, "LIMO: Less is More for Reasoning"):

- ``difficulty``: keep problems whose pass rate under each reference model lies in a band (for
  example solved 1-3 times out of 32 by a strong model and never by a weak one);
- ``decontaminate``: drop problems sharing a word n-gram (13 by default, the common practice)
  with any benchmark item; each drop names the benchmark item it overlaps;
- ``dedup``: cluster near-duplicate problems by word-shingle Jaccard similarity and keep the
  first of each cluster; the clusters are reported;
- ``rubric``: score each correct chain on elaboration (length), self-verification, exploration
  and adaptive granularity (keyword hits per 100 words, lists in ``data/rubric_keywords.yaml``),
  weighted 30/20/25/25 by default, and keep the top chain per problem;
- ``diverse``: choose the final N round-robin across groups (task, topic or dedup cluster), as
  in s1's domain-uniform sampling.
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from assay.core.checks import fail, keyed, one_of, passes
from assay.core.config import opt
from assay.core.io import InputError, read_problems, read_records, write_json, write_records
from assay.core.records import Sample, Verdict
from assay.core.registry import Registry, did_you_mean
from assay.data import DATA_DIR
from assay.data.benchmarks import BENCHMARKS
from assay.data.problems import load_problems
from assay.data.text import Match, find_duplicates, find_matches, words
from assay.select.filters import Context, Filter, FunctionFilter, Step, run_filters, write_rejected
from assay.select.selectors import Candidate, to_example


@dataclass
class Item:
    """One problem moving through the curation steps, with what the steps learned about it."""

    problem: Any
    chains: list = field(default_factory=list)
    """Answer-correct samples (Sample records) for this problem."""
    attempts: dict = field(default_factory=dict)
    """reference model -> (correct, total) over its samples."""
    scores: dict = field(default_factory=dict)
    best: Any = None
    """The chosen chain after ``rubric``."""
    group: Optional[str] = None
    """Cluster id from ``dedup`` (used by ``diverse``)."""

Rejected = tuple[Item, str]
STEPS: Registry[Filter] = Registry("curation step")


def step(name: str):
    """Register ``fn(items, **options)`` as the curation step ``name``; the function itself is returned."""
    def deco(fn):
        STEPS.add(name, FunctionFilter(name, fn, call=lambda f, items, ctx: f(items, **(ctx.options or {}))))
        return fn

    return deco


@step("difficulty")
def difficulty(items: list[Item], bands: dict) -> tuple[list[Item], list[Rejected]]:
    """``bands``: {model: [min_correct, max_correct]}; a problem must sit inside every band."""
    if not bands:
        raise InputError("curate difficulty: give bands, e.g. {strong-model: [1, 3], weak-model: [0, 0]}")
    kept, rej = [], []
    for it in items:
        reason = None
        for model, band in bands.items():
            if not (isinstance(band, (list, tuple)) and len(band) == 2):
                raise InputError(f"curate difficulty: band of '{model}' must be [min_correct, max_correct], got {band!r}")
            lo, hi = band
            c, n = it.attempts.get(model, (0, 0))
            if n == 0:
                reason = f"no samples from {model}"
                break
            if not lo <= c <= hi:
                reason = f"solved {c}/{n} by {model}, outside the band {lo}-{hi}"
                break
        it.scores["pass_counts"] = {m: list(it.attempts.get(m, (0, 0))) for m in bands}
        (rej.append((it, reason)) if reason else kept.append(it))
    return kept, rej


@step("decontaminate")
def decontaminate(items: list[Item], against: list, n: int = 13) -> tuple[list[Item], list[Rejected]]:
    """Drop items sharing a word n-gram with any benchmark problem in ``against``."""
    hits = find_matches([it.problem.question for it in items], [p.question for p in against], Match("ngram", n=n))
    kept, rej = [], []
    for it, j in zip(items, hits):
        if j is None:
            kept.append(it)
        else:
            it.scores["contaminated_by"] = against[j].id
            rej.append((it, f"shares a {n}-gram with benchmark item {against[j].id}"))
    return kept, rej


@step("dedup")
def dedup(items: list[Item], threshold: float = 0.8, shingle: int = 3) -> tuple[list[Item], list[Rejected]]:
    """Keep the first item of each near-duplicate cluster."""
    ids = find_duplicates([it.problem.question for it in items], Match("jaccard", n=shingle, threshold=threshold))
    first: dict[int, Item] = {}
    kept, rej = [], []
    for it, c in zip(items, ids):
        if c in first:
            it.group = first[c].group
            rej.append((it, f"near-duplicate of {first[c].problem.id} (Jaccard >= {threshold})"))
        else:
            it.group = f"cluster-{len(first)}"
            first[c] = it
            kept.append(it)
    return kept, rej


DEFAULT_WEIGHTS = {"elaboration": 0.30, "self_verification": 0.20, "exploration": 0.25, "granularity": 0.25}


def load_keywords(path: Optional[str] = None) -> dict[str, list[str]]:
    p = Path(path) if path else DATA_DIR / "rubric_keywords.yaml"
    if not p.exists():
        raise InputError(f"{p}: no such keyword file")
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    for k in ("self_verification", "exploration", "granularity"):
        if not isinstance(data.get(k), list):
            raise InputError(f"{p}: field '{k}': expected a list of keywords")
    return data


def _hits(tokens: list[str], phrases: list[str]) -> int:
    text = " " + " ".join(tokens) + " "
    return sum(text.count(" " + " ".join(words(ph)) + " ") for ph in phrases)


def rubric_scores(text: str, keywords: dict, length_scale: int = 500) -> dict[str, float]:
    """Per-criterion scores in [0, 1]; keyword criteria are hits per 100 words, capped at 1 per 10 words."""
    tokens = words(text)
    n = max(1, len(tokens))
    out = {"elaboration": min(1.0, len(tokens) / length_scale)}
    for k in ("self_verification", "exploration", "granularity"):
        per100 = 100.0 * _hits(tokens, keywords[k]) / n
        out[k] = min(1.0, per100 / 10.0)
    return out


@step("rubric")
def rubric(items: list[Item], weights: Optional[dict] = None, keywords: Optional[str] = None,
           length_scale: int = 500) -> tuple[list[Item], list[Rejected]]:
    """Score every correct chain; keep the problem with its top chain, or reject it without one."""
    w = dict(DEFAULT_WEIGHTS, **(weights or {}))
    unknown = set(w) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise InputError(f"curate rubric: unknown weight(s) {sorted(unknown)}; use {sorted(DEFAULT_WEIGHTS)}")
    kw = load_keywords(keywords)
    kept, rej = [], []
    for it in items:
        if not it.chains:
            rej.append((it, "no correct chain to keep"))
            continue
        scored = []
        for s in it.chains:
            parts = rubric_scores(s.text, kw, length_scale)
            scored.append((sum(w[k] * parts[k] for k in w), -s.sample_index, s, parts))
        scored.sort(key=lambda x: (x[0], x[1]), reverse=True)
        total, _, best, parts = scored[0]
        it.best = best
        it.scores["rubric"] = {"total": round(total, 6), **{k: round(v, 6) for k, v in parts.items()},
                               "chains_scored": len(scored)}
        kept.append(it)
    return kept, rej


@step("diverse")
def diverse(items: list[Item], n: int, by: str = "group", seed: int = 0) -> tuple[list[Item], list[Rejected]]:
    """Pick ``n`` items round-robin over groups in random (seeded) order: every group gets its turn."""
    if n < 1:
        raise InputError("curate diverse: n must be >= 1")
    def key(it: Item) -> str:
        if by == "group":
            return it.group or "all"
        v = it.problem.meta.get(by) if isinstance(it.problem.meta, dict) else None
        return str(v) if v is not None else (it.problem.source if by == "source" else "unknown")

    rng = random.Random(seed)
    groups: dict[str, list[Item]] = {}
    for it in items:
        groups.setdefault(key(it), []).append(it)
    for g in groups.values():
        rng.shuffle(g)
    order = sorted(groups)
    rng.shuffle(order)
    chosen: list[Item] = []
    while len(chosen) < n and any(groups[g] for g in order):
        for g in order:
            if groups[g] and len(chosen) < n:
                chosen.append(groups[g].pop())
    picked = {id(it) for it in chosen}
    return ([it for it in items if id(it) in picked],
            [(it, f"not drawn: {n} chosen round-robin across {len(order)} groups by {by}") for it in items
             if id(it) not in picked])


@dataclass
class CurateConfig:
    INPUTS, OUTPUTS = ("problems",), ("out",)
    problems: str = opt("problems.jsonl", help="Problem JSONL (the pool)")
    references: dict = opt({}, help="reference model -> [samples.jsonl, verdicts.jsonl], for difficulty and chains")
    steps: list = opt([{"dedup": {"threshold": 0.8}}, {"rubric": {}}],
                      help="steps in order, each {name: options}: difficulty, decontaminate, dedup, rubric, diverse")
    chains_from: str = opt("", help="reference model whose correct samples are the chains (default: the first)")
    finished_only: bool = opt(True, help="chains only from completions that ended on their own; one cut off at "
                                         "max_new_tokens still counts as solved for difficulty, but never teaches "
                                         "the model to stop")
    out: str = opt("curated", help="output folder: per-step kept/rejected JSONL, funnel.json, sft.jsonl")
    data_dir: Optional[str] = opt(None, help="folder of shared benchmark files (for decontaminate against names)")


def _benchmark_problems(names: list[str], data_dir: Optional[str], workdir: Path) -> list:
    out = []
    for name in names:
        if name in BENCHMARKS.names():
            kept, _ = load_problems(BENCHMARKS.get(name).problems_config(str(workdir / f"{name}.jsonl"), None, data_dir))
            out.extend(kept)
        elif Path(name).exists():
            out.extend(read_problems(name))
        else:
            BENCHMARKS.get(name)  # raises with a suggestion
    return out


def run_curation(cfg: CurateConfig) -> dict:
    """Run the steps; write every step's kept and rejected items and the funnel."""
    problems = read_problems(cfg.problems)
    items = {p.id: Item(p) for p in problems}
    chains_from = cfg.chains_from or next(iter(cfg.references), "")
    if cfg.references and chains_from not in cfg.references:
        raise InputError(f"curate chains_from '{chains_from}' is not one of the references"
                         f"{did_you_mean(chains_from, list(cfg.references))}")
    for model, files in cfg.references.items():
        if not isinstance(files, list) or len(files) != 2:
            raise InputError(f"curate references.{model}: expected [samples.jsonl, verdicts.jsonl]")
        samples = read_records(files[0], Sample)
        ok = {(v.problem_id, v.sample_index): v.correct for v in read_records(files[1], Verdict)}
        for s in samples:
            it = items.get(s.problem_id)
            if it is None:
                continue
            c, n = it.attempts.get(model, (0, 0))
            good = ok.get((s.problem_id, s.sample_index), False)
            it.attempts[model] = (c + good, n + 1)
            if good and model == chains_from and not (cfg.finished_only and s.finish_reason == "length"):
                it.chains.append(s)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = []
    for i, spec in enumerate(cfg.steps):
        if not isinstance(spec, dict) or len(spec) != 1:
            raise InputError(f"curate steps[{i}]: expected {{name: options}}, got {spec!r}")
        (name, opts), = spec.items()
        flt = STEPS.get(name)
        opts = dict(opts or {})
        params = [p for p in inspect.signature(flt).parameters if p not in ("items", "against")]
        for k in opts:
            if k not in params + (["benchmarks"] if name == "decontaminate" else []):
                raise InputError(f"curate steps[{i}].{name}: unknown option '{k}'{did_you_mean(k, params)}")
        if name == "decontaminate":
            opts["against"] = _benchmark_problems(opts.pop("benchmarks", []), cfg.data_dir, out)
        steps.append(Step(flt, Context(step=name, options=opts)))

    def write_step(i: int, st: Step, kept: list, rej: list) -> None:
        tag = f"{i + 1:02d}_{st.ctx.step}"
        write_records(out / f"{tag}.kept.jsonl", [_row(it) for it in kept])
        write_rejected(out / f"{tag}.rejected.jsonl", rej, _row)

    current, rejected, funnel = run_filters(list(items.values()), steps, after=write_step)
    # Every rejection in one file too, as `assay select` writes them.
    write_rejected(out / "rejected.jsonl", rejected, _row)
    write_records(out / "problems.jsonl", [it.problem for it in current])
    examples = [to_example(_candidate(it), "curate:" + ">".join(next(iter(s)) for s in cfg.steps))
                for it in current if it.best is not None]
    write_records(out / "sft.jsonl", examples)
    summary = {"funnel": funnel, "problems": len(current), "examples": len(examples)}
    write_json(out / "funnel.json", summary)
    return summary


def _row(it: Item) -> dict:
    return {"id": it.problem.id, "question": it.problem.question, "group": it.group, "scores": it.scores,
            "best_sample": it.best.sample_index if it.best is not None else None,
            "attempts": {m: list(v) for m, v in it.attempts.items()}}


def _candidate(it: Item) -> Candidate:
    return Candidate(it.problem, it.best, None)


def cli_run(cfg: CurateConfig) -> int:
    s = run_curation(cfg)
    print("[assay] curate: " + " -> ".join(f"{f['step']} {f['kept']}" for f in s["funnel"])
          + f"; {s['examples']} SFT examples -> {cfg.out}")
    return 0


def check(c: CurateConfig, key: str = "", skip=(), files: bool = False) -> None:
    k = keyed(key)
    for model, refs in c.references.items():
        if not isinstance(refs, list) or len(refs) != 2:
            raise fail(k(f"references.{model}"), f"expected [samples.jsonl, verdicts.jsonl], got {refs!r}")
    for i, spec in enumerate(c.steps):
        if not isinstance(spec, dict) or len(spec) != 1:
            raise fail(k("steps"), f"steps[{i}]: expected {{name: options}}, got {spec!r}")
        (name, opts), = spec.items()
        fn = passes(k("steps"), STEPS.get, name)
        params = [p for p in inspect.signature(fn).parameters if p not in ("items", "against")]
        params += ["benchmarks"] if name == "decontaminate" else []
        if opts is not None and not isinstance(opts, dict):
            raise fail(k("steps"), f"steps[{i}].{name}: options must be a mapping, got {opts!r}")
        for option in opts or {}:
            one_of(k("steps"), option, params, f"option of curation step '{name}' (steps[{i}])")
