"""The ``problems`` stage: turn a named source into a Problem JSONL file every later stage reads.

One place decides what "the problem set" is (which rows, in which order, with which ids and
reference answers), so a sampling run, a verification run and a benchmark table all point at the
same file, and its ``.config.yaml`` says how to make it again. Sources are benchmark presets
(``gsm8k-test``, ``math500``, ...; see ``assay.data.sources``), any JSONL file with a field mapping,
reasoning-gym generators (``rg:<task>``) and Hugging Face datasets (``hf:<name>``).

Problems whose reference answer is provably wrong are not dropped quietly: they go to
``<out>.rejected.jsonl`` with the reason, and the summary says how many and why.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from assay.core.checks import keyed, one_of, passes
from assay.core.config import opt, save_yaml
from assay.core.io import InputError, write_records
from assay.core.records import Problem, to_dict
from assay.core.registry import did_you_mean
from assay.data.sources import (
    PRESET_FILES,
    SOURCES,
    check_label,
    load_hf,
    load_jsonl,
    load_rg,
    resolve_data_dir,
    rg_task_names,
)

__all__ = ["ProblemsConfig", "SOURCES", "check_label", "cli_run", "load_problems", "resolve_config", "run_problems",
           "source_kind"]


@dataclass
class ProblemsConfig:
    """Settings of ``assay problems``."""

    OUTPUTS = ("out",)

    source: str = opt("rg:chain_sum", help=(
        "a preset (" + ", ".join(sorted(PRESET_FILES)) + "), rg:<reasoning-gym task>, hf:<dataset name or "
        "local folder>, or a path to a JSONL file"))
    out: str = opt("problems.jsonl", help="where to write the Problem JSONL (config and rejects are saved beside it)")
    limit: Optional[int] = opt(None, help="keep at most this many problems (after offset); default all")
    offset: int = opt(0, help="skip this many source rows first; with limit, carves disjoint pools from one source")
    seed: int = opt(0, help=(
        "rg: generator seed; item i of nearly every task is drawn from seed + i, so seeds s and s+1 share "
        "all but one item: carve disjoint pools with offset/limit, not with seeds"))
    size: int = opt(500, help="rg: how many problems to generate before offset/limit")
    task_kwargs: dict[str, Any] = opt({}, help="rg: the task's config, e.g. task_kwargs.max_terms=4 or '{max_terms: 4}'")
    data_dir: Optional[str] = opt(None, help="folder of the preset files (default $ASSAY_DATA, else ../shared/data)")
    question_field: Optional[str] = opt(None, help="JSONL/hf: field holding the question (default 'question')")
    answer_field: Optional[str] = opt(None, help="JSONL/hf: field holding the reference answer (default 'answer')")
    id_field: Optional[str] = opt(None, help="JSONL/hf: field holding a unique id (default: <name>-<row index>)")
    subset: Optional[str] = opt(None, help="hf: the dataset's configuration name, e.g. 'main'")
    split: Optional[str] = opt(None, help="hf: the split to load (default 'train')")
    distinct: bool = opt(False, help=(
        "keep only the first of problems with the same question (whitespace/case-normalised); the "
        "repeats go to the rejects file. Small generators repeat themselves: 2-term chain_sum does"))


# Options meaningful for each kind of source; setting another is a mistake worth stopping for
# (e.g. --question-field on a preset would otherwise be ignored).
_APPLIES = {
    "preset": set(),
    "jsonl": {"question_field", "answer_field", "id_field"},
    "hf": {"question_field", "answer_field", "id_field", "subset", "split"},
    "rg": {"task_kwargs"},
}
_OPTIONAL = ("question_field", "answer_field", "id_field", "subset", "split", "task_kwargs")


def source_kind(source: str) -> tuple[str, str]:
    """``(kind, name)`` with kind one of preset, jsonl, rg, hf; unknown names get a suggestion."""
    source = source.strip()
    for prefix, kind in (("rg:", "rg"), ("hf:", "hf"), ("jsonl:", "jsonl")):
        if source.startswith(prefix):
            name = source[len(prefix):].strip()
            if not name:
                raise InputError(f"source '{source}': nothing after '{prefix}'")
            return kind, name
    if source in SOURCES:
        return "preset", source
    if source.endswith(".jsonl") or "/" in source or Path(source).is_file():
        return "jsonl", source
    raise InputError(f"unknown problem source '{source}'{did_you_mean(source, SOURCES.names())}; "
                     "or rg:<task>, hf:<name>, or a path to a .jsonl file")


def _parse_task_kwargs(value: Any) -> dict:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        # From the command line the dict arrives as text; JSON is YAML, so both spellings work.
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise InputError(f"task_kwargs: not a mapping ({exc})") from None
    if not isinstance(value, dict):
        raise InputError(f"task_kwargs: expected a mapping, got {value!r:.60}")
    return dict(value)


def resolve_config(cfg: ProblemsConfig) -> ProblemsConfig:
    """Check the options against the source and fill in what was implicit (data dir, split, kwargs)."""
    kind, _ = source_kind(cfg.source)
    task_kwargs = _parse_task_kwargs(cfg.task_kwargs)
    for name in _OPTIONAL:
        value = task_kwargs if name == "task_kwargs" else getattr(cfg, name)
        if value not in (None, {}) and name not in _APPLIES[kind]:
            raise InputError(f"'{name}' does not apply to source '{cfg.source}' ({kind})")
    if cfg.offset < 0:
        raise InputError(f"offset must be >= 0, got {cfg.offset}")
    if cfg.limit is not None and cfg.limit < 1:
        raise InputError(f"limit must be >= 1, got {cfg.limit}")
    if kind == "rg" and cfg.size < 1:
        raise InputError(f"size must be >= 1, got {cfg.size}")
    return dataclasses.replace(
        cfg,
        task_kwargs=task_kwargs,
        data_dir=str(resolve_data_dir(cfg.data_dir)) if kind == "preset" else cfg.data_dir,
        split=(cfg.split or "train") if kind == "hf" else cfg.split,
    )


def _load_source(cfg: ProblemsConfig) -> list[Problem]:
    kind, name = source_kind(cfg.source)
    fields = dict(question=cfg.question_field or "question", answer=cfg.answer_field or "answer",
                  ident=cfg.id_field)
    if kind == "preset":
        return SOURCES.get(name)(resolve_data_dir(cfg.data_dir))
    if kind == "jsonl":
        return load_jsonl(name, **fields)
    if kind == "rg":
        return load_rg(name, size=cfg.size, seed=cfg.seed, task_kwargs=_parse_task_kwargs(cfg.task_kwargs))
    return load_hf(name, cfg.subset, cfg.split or "train", **fields)


def load_problems(cfg: ProblemsConfig) -> tuple[list[Problem], list[dict]]:
    """The problems of ``cfg.source`` in rows ``[offset, offset + limit)``, split into (kept, rejected).

    Rejected rows are the problem as a dict plus ``reason`` (see ``assay.data.sources.check_label``).
    Duplicate ids anywhere in the source are an InputError: every later stage keys on the id.
    """
    cfg = resolve_config(cfg)
    problems = _load_source(cfg)
    if not problems:
        raise InputError(f"{cfg.source}: no problems in it")
    seen: dict[str, int] = {}
    for index, p in enumerate(problems):
        if p.id in seen:
            raise InputError(f"{cfg.source}: duplicate problem id '{p.id}' (rows {seen[p.id]} and {index})")
        seen[p.id] = index
    if cfg.offset >= len(problems):
        raise InputError(f"offset {cfg.offset} is past the end of the {len(problems)} problems of {cfg.source}")
    end = None if cfg.limit is None else cfg.offset + cfg.limit
    kept: list[Problem] = []
    rejected: list[dict] = []
    first: dict[str, str] = {}
    for p in problems[cfg.offset:end]:
        reason = check_label(p)
        if reason is None and cfg.distinct:
            q = " ".join(p.question.lower().split())
            if q in first:
                reason = f"duplicate question: same as {first[q]}"
            else:
                first[q] = p.id
        if reason is None:
            kept.append(p)
        else:
            rejected.append({**to_dict(p), "reason": reason})
    return kept, rejected


def rejects_path(out: str | Path) -> Path:
    return Path(str(out) + ".rejected.jsonl")


def summarize_rejects(rejected: list[dict], examples: int = 3) -> str:
    """``"wrong label: 12, unevaluable expression: 1"`` plus a few full reasons."""
    counts = Counter(r["reason"].split(":", 1)[0] for r in rejected)
    head = ", ".join(f"{k}: {v}" for k, v in counts.most_common())
    shown = "".join(f"\n    {r['id']}: {r['reason']}" for r in rejected[:examples])
    return f"{head}{shown}"


@dataclass
class ProblemsResult:
    """What ``run_problems`` wrote: ``kept`` problems to ``out``, ``rejected`` to ``rejects`` (of ``taken`` rows)."""

    out: str
    source: str
    kept: int
    rejected: int
    taken: int
    offset: int
    limit: Optional[int]
    rejects: str
    reasons: str = ""  # the rejections counted by reason, with a few full reasons


def run_problems(cfg: ProblemsConfig) -> ProblemsResult:
    """Write ``cfg.out``, ``<out>.config.yaml`` and (when any) ``<out>.rejected.jsonl``."""
    cfg = resolve_config(cfg)
    kept, rejected = load_problems(cfg)
    out = Path(cfg.out)
    write_records(out, kept)
    save_yaml(Path(str(out) + ".config.yaml"), cfg)
    rpath = rejects_path(out)
    if rejected:
        write_records(rpath, rejected)
    elif rpath.exists():
        # A rejects file from an earlier run would be read as belonging to this one.
        rpath.unlink()
    return ProblemsResult(str(out), cfg.source, len(kept), len(rejected), len(kept) + len(rejected), cfg.offset,
                          cfg.limit, str(rpath), summarize_rejects(rejected) if rejected else "")


def summary_lines(r: ProblemsResult) -> list[str]:
    """The lines ``assay problems`` prints (pipelines print them too, so their logs read the same)."""
    lines = [f"[assay] problems: {r.kept} from {r.source} (rows {r.offset}..{r.offset + r.taken - 1}) -> {r.out}"]
    if r.limit is not None and r.taken < r.limit:
        lines.append(f"[assay] note: limit {r.limit} asked, but only {r.taken} rows remain after offset {r.offset}")
    if r.rejected:
        lines.append(f"[assay] rejected {r.rejected} of {r.taken} (wrong or uncheckable reference answer, or a "
                     f"repeated question) -> {r.rejects}\n  {r.reasons}")
        if not r.kept:
            lines.append(f"[assay] warning: every problem was rejected; {r.out} is empty")
    return lines


def cli_run(cfg: ProblemsConfig) -> int:
    """Write the problem set (``run_problems``) and print a summary."""
    for line in summary_lines(run_problems(cfg)):
        print(line)
    return 0


def check(c: ProblemsConfig, key: str = "", skip=(), files: bool = False) -> None:
    """The source names something loadable (a reasoning-gym task that exists)."""

    k = keyed(key)
    kind, name = passes(k("source"), source_kind, c.source)
    if kind == "rg":
        one_of(k("source"), name, rg_task_names(), "reasoning-gym task")
